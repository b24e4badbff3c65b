"""fbloop's Streamlit app: the annotation form for people, and a dashboard of the runs.

Start it with `fbloop app` (or `streamlit run app.py`); the database comes from
the FBLOOP_DB environment variable (default runs/fbloop.db). UI only: what the
form stores goes through fbloop.human, what the dashboard shows comes from
fbloop.views.
"""

import os
import time
from pathlib import Path

import altair as alt
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import streamlit as st  # noqa: E402

from fbloop import human, views  # noqa: E402
from fbloop.errors import FbloopError  # noqa: E402
from fbloop.store import Store  # noqa: E402

PAGES = ("Annotate", "Dashboard")
CHOICES = {  # answer: (button label, keyboard shortcut); the order is the buttons' order
    "first": ("◀ Closer to first", "1"),
    "equal": ("Equally close", "E"),
    "skip": ("Skip", "S"),
    "second": ("Closer to second ▶", "2"),
}
REPEAT_GUARD_S = 0.4  # a click this soon after a question is drawn is the tail of a double click or a held key
DB = os.environ.get("FBLOOP_DB", "runs/fbloop.db")
ROUTE_COLOURS = ["#4c78a8", "#f58518", "#54a24b", "#e45756"]  # shared, hard, rest, skipped (views.ROUTES)

st.set_page_config(page_title="fbloop", page_icon="🔁", layout="wide")

# Session keys, set once per browser session.
st.session_state.setdefault("page", "Dashboard" if st.query_params.get("page") == "dashboard" else "Annotate")
st.session_state.setdefault("question", None)  # the Question on screen (with its token)
st.session_state.setdefault("shown_at", 0.0)  # when it was first shown, for the response time
st.session_state.setdefault("sent", set())  # tokens this session has already submitted
st.session_state.setdefault("last", None)  # what the last click did, for a one-line receipt
# Streamlit forgets a widget's value when its page is not drawn; writing it back keeps the
# annotator's name and the chosen experiments across page switches.
for kept in ("annotator", "annotate_run", "run"):
    if kept in st.session_state:
        st.session_state[kept] = st.session_state[kept]


def open_store() -> Store:
    return Store(DB)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


with st.sidebar:
    st.title("fbloop")
    st.caption("Features from feedback")
    page = st.radio("Page", PAGES, key="page", label_visibility="collapsed")
    st.query_params["page"] = page.lower()

if not Path(DB).exists():
    st.info(f"No database at {DB} yet. Run `fbloop demo` or `fbloop run` first.")
    st.stop()


# ---------------------------------------------------------------- the annotation form


def on_answer(run_id: str, seq: int, token: str, annotator: str, choice: str) -> None:
    """A button's callback, bound to the question on screen when it was drawn."""
    if token in st.session_state.sent:  # a double click: this question was already sent
        st.session_state.last = {"choice": choice, "stored": False, "seq": seq}
        return
    seconds = time.time() - st.session_state.shown_at
    if seconds < REPEAT_GUARD_S:  # too soon to have read it: not an answer to this question
        st.session_state.last = {"too_quick": True}
        return
    try:
        with open_store() as store:
            stored = human.submit(store, run_id, seq, annotator, choice, 1000 * seconds, token)
    except FbloopError as exc:
        st.session_state.last = {"error": str(exc)}
        return
    st.session_state.sent.add(token)
    st.session_state.question = None  # draw the next one
    st.session_state.last = {"choice": choice, "stored": stored, "seq": seq}


def block(title: str, text: str) -> None:
    with st.container(border=True):
        st.markdown(f"**{title}**")
        st.code(text, language=None, wrap_lines=True)


def annotate_page() -> None:
    with open_store() as store:
        queued = store.queued_runs()
        with st.sidebar:
            annotator = st.text_input("Your name", key="annotator", max_chars=human.MAX_NAME,
                                      placeholder="e.g. alice")
            run_id = st.selectbox("Experiment", list(queued)[::-1], key="annotate_run",
                                  format_func=lambda r: f"{r} ({queued[r]} triplets)")
        st.header("Which candidate is the reference closer to?")
        if not queued:
            st.info(f"No experiment in {DB} has triplets queued for people yet. Queue some with "
                    f"`fbloop run --design triplet --agent human --budget 50 --db {DB}`.")
            st.stop()
        if not annotator.strip():
            st.info("Enter your name in the sidebar to start.")
            st.stop()
        try:
            human.agent_name(annotator)
        except FbloopError as exc:
            st.error(str(exc))
            st.stop()

        q = st.session_state.question
        if q is None or q.run_id != run_id or q.annotator != annotator:
            q = human.next_query(store, run_id, annotator, views.descriptions(store, run_id))
            st.session_state.question = q
            st.session_state.shown_at = time.time()
        prog = human.progress(store, run_id, annotator)

    done = prog["queued"] - prog["remaining"]
    st.progress(done / max(prog["queued"], 1), text=f"{done} of {prog['queued']} triplets done")
    cols = st.columns(4)
    cols[0].metric("Answered", prog["answered"])
    cols[1].metric("Skipped", prog["skipped"])
    cols[2].metric("Remaining", prog["remaining"])
    cols[3].metric("Attention checks", pct(prog["check_accuracy"]),
                   help="Share of the known-answer triplets you answered correctly "
                        f"({prog['checks_correct']} of {prog['checks']}).")
    last = st.session_state.last
    if last and "error" in last:
        st.error(last["error"])
    elif last and "too_quick" in last:
        st.caption("That click came right after the question appeared, so it was not taken as an answer.")
    elif last and not last["stored"]:
        st.caption(f"Your answer to triplet {last['seq']} was already stored; not stored twice.")
    elif last:
        st.caption(f"Stored your last answer: {CHOICES[last['choice']][0].strip('◀▶ ').lower()}.")

    if q is None:
        st.success("You have answered every queued triplet of this experiment. Thank you!")
        return
    texts = q.texts()
    block("Reference", texts["reference"])
    left, right = st.columns(2)
    with left:
        block("First candidate", texts["first"])
    with right:
        block("Second candidate", texts["second"])
    # Keys carry the question's token: a click that arrives after the next question is drawn
    # names a button that no longer exists, so it can never answer the new question.
    for col, (choice, (label, key)) in zip(st.columns(4), CHOICES.items()):
        col.button(label, key=f"answer-{choice}-{q.token}", shortcut=key, width="stretch",
                   type="primary" if choice in ("first", "second") else "secondary",
                   on_click=on_answer, args=(run_id, q.seq, q.token, annotator, choice))
    st.caption("Keys: 1 = closer to first · 2 = closer to second · E = equally close · S = skip. "
               "Weights are the features' activations; a feature without a description shows a placeholder.")


# ---------------------------------------------------------------- the dashboard


def readout_chart(curve: dict[str, list], held: dict[str, list], pairs: dict[str, list] | None = None) -> alt.Chart:
    """PCC, held-out agreement and the held-out pairs' PCC against answers, one line each (any may be empty)."""
    rows = [{"answers": a, "value": v, "readout": "PCC"} for a, v in zip(curve["answers"], curve["pcc"])]
    rows += [{"answers": a, "value": v, "readout": "held-out agreement"}
             for a, v in zip(held["answers"], held["agreement"])]
    if pairs:
        rows += [{"answers": a, "value": v, "readout": "held-out pairs' PCC"}
                 for a, v in zip(pairs["answers"], pairs["pcc"])]
    low = min(0.0, min(r["value"] for r in rows))
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X("answers:Q", axis=alt.Axis(format="d", title="answers")),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[low, 1.0]), title=None),
        color=alt.Color("readout:N", legend=alt.Legend(title=None, orient="bottom")),
        tooltip=["readout:N", "answers:Q", alt.Tooltip("value:Q", format=".4f")])
    return (base.mark_line() + base.mark_point(filled=True, size=40)).properties(height=280)


def share_chart(rows: list[dict], y: str, color: str | None = None, tooltip: list | None = None) -> alt.Chart:
    """Horizontal bars of a share in [0, 1] (``rows`` carry ``y``, ``share``, ``label``), labelled at their tips."""
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y(f"{y}:N", title=None),
        x=alt.X("share:Q", scale=alt.Scale(domain=[0, 1.3]),  # room for the labels past 100%
                axis=alt.Axis(format="%", title=None, values=[0, 0.25, 0.5, 0.75, 1])))
    split = {"yOffset": f"{color}:N"} if color else {}
    bars = base.mark_bar().encode(**split, **({"color": alt.Color(f"{color}:N", legend=alt.Legend(title=None))}
                                              if color else {}), **({"tooltip": tooltip} if tooltip else {}))
    text = base.mark_text(align="left", dx=4).encode(text="label:N", **split)
    return (bars + text).properties(height=(70 if color else 45) * len({r[y] for r in rows}) + 20)


def compare_chart(rows: list[dict], x: str, y_title: str, strategies: list[str]) -> alt.Chart:
    """A readout against ``x`` (answers or cost) for several runs: one line per run, coloured by strategy.

    ``strategies`` fixes the colours, so that a strategy keeps its colour in every chart.
    """
    low = min(0.0, min(r["value"] for r in rows))
    tooltip = ["run:N", "strategy:N", alt.Tooltip("answers:Q", format=",d")]
    if any(r["cost"] is not None for r in rows):
        tooltip.append(alt.Tooltip("cost:Q", format=",.2f"))
    base = alt.Chart(alt.Data(values=rows)).encode(
        x=alt.X(f"{x}:Q", axis=alt.Axis(format=",d" if x == "answers" else ",.4~g", title=x)),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[low, 1.0]), title=y_title),
        color=alt.Color("strategy:N", scale=alt.Scale(domain=strategies, scheme="tableau10"),
                        legend=alt.Legend(title=None, orient="bottom")),
        detail="run:N",
        tooltip=tooltip + [alt.Tooltip("value:Q", title=y_title, format=".4f")])
    return (base.mark_line() + base.mark_point(filled=True, size=30)).properties(height=300)


def amount_chart(rows: list[dict], x: str, label: str) -> alt.Chart:
    """Horizontal bars of an amount per agent (``rows`` carry ``agent``, ``x``, ``label``), labelled at their tips."""
    top = max([r[x] for r in rows] + [1e-9])
    base = alt.Chart(alt.Data(values=rows)).encode(
        y=alt.Y("agent:N", title=None),
        x=alt.X(f"{x}:Q", scale=alt.Scale(domain=[0, 1.35 * top]), axis=alt.Axis(title=None, tickCount=4)))
    bars = base.mark_bar().encode(tooltip=["agent:N", alt.Tooltip(f"{x}:Q", format=",.4~g")])
    text = base.mark_text(align="left", dx=4).encode(text=f"{label}:N")
    return (bars + text).properties(height=45 * len(rows) + 20)


def routing_chart(routing: list[dict]) -> alt.Chart:
    """The routing split as one stacked bar: shared / hard / rest / skipped queries, counted in the legend."""
    rows = [{**r, "rank": i, "part": f"{r['route']}: {r['queries']:,} ({r['share']:.0%})"}
            for i, r in enumerate(routing)]
    return alt.Chart(alt.Data(values=rows)).mark_bar().encode(  # no y: the bar spans the chart's height
        x=alt.X("queries:Q", stack="zero", title="queries routed"),
        color=alt.Color("part:N", scale=alt.Scale(domain=[r["part"] for r in rows], range=ROUTE_COLOURS),
                        legend=alt.Legend(title=None, orient="right")),
        order=alt.Order("rank:Q"),
        tooltip=["route:N", alt.Tooltip("queries:Q", format=",d"), alt.Tooltip("share:Q", format=".1%")],
    ).properties(height=120)  # the whole chart, axis included (Streamlit fits it)


def seconds(x: float) -> str:
    if x < 1:  # scoring a small chunk, or an oracle's answers, take milliseconds
        return f"{1000 * x:.1f} ms" if x < 0.01 else f"{1000 * x:.0f} ms"
    return f"{x:.2f} s" if x < 10 else f"{x:,.0f} s"


def heatmaps(pair) -> None:
    hat, star = pair
    mats = [(hat, r"learned $\hat{\Phi}$")] + ([(star, r"target $\Phi^*$")] if star is not None else [])
    fig, axes = plt.subplots(1, len(mats), figsize=(4 * len(mats), 3.6), squeeze=False)
    for ax, (mat, title) in zip(axes[0], mats):
        im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    st.pyplot(fig)
    plt.close(fig)


def dashboard_body(run_id: str) -> None:
    with open_store() as store:
        run = store.require_run(run_id)
        info = next(r for r in store.runs() if r["id"] == run_id)
        queue = store.queue_progress(run_id)
        curve = views.pcc_curve(store, run_id)
        held = views.holdout_curve(store, run_id)
        pairs = views.pair_holdout_curve(store, run_id)
        counts = views.answers_by_agent(store, run_id)
        pair = views.phi_pair(store, run_id)
        agree = views.agreement(store, run_id)
        checks = views.check_accuracy(store, run_id)
        llm = views.llm_stats(store, run_id)
        noise = views.source_noise(store, run_id)
        pool = views.pool_summary(store, run_id)
        timing = views.active_timing(store, run_id)

    cols = st.columns(4)
    cols[0].metric("Status", info["status"])
    cols[1].metric("Answers", f"{ok_answers(counts)}", help=f"budget {run['budget']}; attention checks not counted")
    cols[2].metric("PCC", "—" if info["pcc"] is None else f"{info['pcc']:.4f}", help="latest snapshot")
    cols[3].metric("Queued for people", f"{queue['answered']}/{queue['queued']}" if queue["queued"] else "—",
                   help="queued triplets with an answer or skip from anyone")

    left, right = st.columns(2)
    with left:
        st.subheader("PCC and held-out agreement" if held["answers"] else
                     "PCC and held-out pairs" if pairs["answers"] else "PCC against answers")
        if curve["answers"] or held["answers"] or pairs["answers"]:
            st.altair_chart(readout_chart(curve, held, pairs), width="stretch")
        else:
            st.caption("No snapshot yet.")
        if held["answers"]:
            st.caption(f"Held-out agreement: the share of {held['n'][-1]} held-out triplet answers (never learned "
                       r"from) whose sign $\hat\Phi$ predicts — the readout when there is no $\Phi^*$.")
        if pairs["answers"]:
            st.caption(rf"Held-out pairs' PCC: how well the scales $\hat\Phi$ predicts for {pairs['n'][-1]} random "
                       r"pairs (never learned from) follow their answers — the readout when there is no $\Phi^*$.")
    with right:
        st.subheader("Answers per agent")
        if counts["agent"]:
            st.bar_chart(counts, x="agent", y="count", color="answer", horizontal=True,
                         height=60 * len(set(counts["agent"])) + 100)
        else:
            st.caption("No answers yet.")

    left, right = st.columns(2)
    with left:
        st.subheader(r"$\hat\Phi$ beside $\Phi^*$")
        if pair is None:
            st.caption(f"Shown once a factor is stored (p ≤ {views.HEATMAP_MAX_P}).")
        else:
            heatmaps(pair)
            if pair[1] is None:
                st.caption(r"$\Phi^*$ is not available here; the agreement on the right is the readout.")
    with right:
        st.subheader(r"Agreement of $\hat\Phi$ with the answers")
        rows = [{"agent": a["agent"], "answers": label, "share": a[key], "label": f"{a[key]:.0%} of {a['n_' + key]}"}
                for a in agree for key, label in (("held_out", "held out"), ("fit", "fit")) if a[key] is not None]
        if rows:
            st.altair_chart(share_chart(rows, "agent", color="answers"), width="stretch")
            st.caption(r"Share of triplet answers $\hat\Phi$ predicts; held out = stored after $\hat\Phi$ was fit.")
        else:
            st.caption("Triplet runs with a stored factor only.")

    left, right = st.columns(2)
    with left:
        st.subheader("Attention checks")
        if checks:
            rows = [{"annotator": c["agent"], "share": c["accuracy"] or 0.0,
                     "label": f"{c['correct']}/{c['checks']} correct, {c['skipped']} skipped"
                              + (f"; fitted at flip rate {noise[c['agent']]:.2f}" if c["agent"] in noise else "")}
                    for c in checks]
            st.altair_chart(share_chart(rows, "annotator"), width="stretch")
            st.caption("Triplets with a known answer, mixed into the queue; their answers never reach a learner. "
                       "The learner fits each person's answers at the flip rate their checks show.")
        else:
            st.caption("No attention check answered yet.")
    with right:
        st.subheader("LLM agents")
        for m in llm or [None]:
            if m is not None:
                eps = noise.get(f"llm:{m['model']}")
                st.markdown(f"**{m['model']}** · {m['answers']} answers, {m['requests']} requests"
                            + ("" if eps is None else f" · fitted at flip rate {eps:.3f} (from its order swaps)"))
            cols = st.columns(2) + st.columns(2)
            cols[0].metric("Invalid replies", pct(m and m["invalid_rate"]))
            cols[1].metric("Position bias", pct(m and m["position_bias"]),
                           help="how often the answer changes when the candidates are swapped")
            cols[2].metric("Tokens", "—" if m is None else f"{m['prompt_tokens'] + m['completion_tokens']:,}")
            cols[3].metric("Cost", "—" if m is None or m["cost"] is None else f"${m['cost']:.4f}")
        if not llm:
            st.caption("No LLM answers in this run.")

    if run["config"].get("active"):
        active_section(timing)
    if run["config"].get("agent") == "pool" or pool is not None:
        pool_section(pool)
    compare_section(run_id)


def active_section(timing: dict | None) -> None:
    st.subheader("Active querying")
    if timing is None:
        st.caption("Scoring and waiting times are stored with the run's final snapshot.")
        return
    cols = st.columns(4)
    cols[0].metric("Strategy", timing["strategy"] or "—")
    cols[1].metric("Scoring", seconds(timing["score_s_total"]),
                   help=f"seconds spent scoring candidate queries, over {timing['chunks']} chunks, in the "
                        "background while the agent answered")
    cols[2].metric("Waited for queries", seconds(timing["wait_s_total"]),
                   help="seconds the loop stood waiting for the next chunk's queries: scoring not hidden")
    cols[3].metric("Longest wait", seconds(timing["wait_s_max"]), help="the longest wait for one chunk's queries")
    if timing["hidden_share"] is not None:
        st.caption(f"{pct(timing['hidden_share'])} of the scoring ran while the agent answered: nobody "
                   "waited for it.")


def pool_section(pool: dict | None) -> None:
    st.subheader("Agent pool")
    if pool is None:
        st.caption("The pool's summary appears with its first snapshot.")
        return
    routes = {r["route"]: r for r in pool["routing"]}
    cols = st.columns(4)
    cols[0].metric("Total cost", f"{pool['total_cost']:,.2f}",
                   help=f"every answer asked, invalid ones included; as of {pool['answers']} answers")
    cols[1].metric("Shared queries", f"{routes['shared']['queries']:,}", help="asked of every agent with budget left")
    cols[2].metric("Hard queries", f"{routes['hard']['queries']:,}",
                   help="the learner's least sure, sent to the most reliable agent")
    cols[3].metric("Skipped", f"{routes['skipped']['queries']:,}", help="no agent had budget left for them")

    left, right = st.columns(2)
    with left:
        st.markdown("**Accuracy per agent**")
        rows = [{"agent": a["agent"], "share": a["accuracy"] or 0.0, "source": a["accuracy_source"],
                 "label": "unknown" if a["accuracy"] is None else f"{a['accuracy']:.0%} ({a['accuracy_source']})"}
                for a in pool["agents"]]
        st.altair_chart(share_chart(rows, "agent", tooltip=["agent:N", alt.Tooltip("share:Q", title="accuracy",
                                                                                   format=".1%"), "source:N"]),
                        width="stretch")
        st.markdown("**Agreement on shared queries**")
        rows = [{"pair": g["pair"], "share": g["agreement"], "label": f"{g['agreement']:.0%} of {g['shared']}"}
                for g in pool["agreement"] if g["agreement"] is not None]
        if rows:
            st.altair_chart(share_chart(rows, "pair"), width="stretch")
        else:
            st.caption("No query answered by two agents yet.")
    with right:
        st.markdown("**Cost spent per agent**")
        rows = [{**a, "label": f"{a['spent']:,.2f}" + ("" if a["budget_left"] is None
                                                         else f" ({a['budget_left']:,.2f} left)")}
                for a in pool["agents"]]
        st.altair_chart(amount_chart(rows, "spent", "label"), width="stretch")
        st.markdown("**Answers asked per agent**")
        rows = [{**a, "label": f"{a['asked']:,} at {a['cost_per_answer'] or 0:,.4g} each"} for a in pool["agents"]]
        st.altair_chart(amount_chart(rows, "asked", "label"), width="stretch")
    st.markdown("**Routing split**")
    st.altair_chart(routing_chart(pool["routing"]), width="stretch")
    st.caption("Shared: asked of every agent, to measure agreement and accuracy · hard: the learner's least sure, "
               "to the most reliable agent · rest: to the cheapest · skipped: no agent could pay. Accuracy comes "
               "from a reference agent, from pairwise agreement, or from the agent's prior (hover a bar).")


def compare_section(run_id: str) -> None:
    st.subheader("Compare strategies")
    with open_store() as store:
        labels = views.strategy_labels(store)
        default = views.same_target_runs(store, run_id)
    chosen = st.multiselect("Runs to compare", list(labels)[::-1], default=default[::-1], key=f"compare-{run_id}",
                            format_func=lambda r: f"{r} · {labels[r]}",
                            help="By default every run on this run's target.")
    if not chosen:
        st.caption("Pick runs to compare.")
        return
    with open_store() as store:
        curves = views.strategy_curves(store, chosen)
    if curves["readout"] is None:
        st.caption("None of these runs has a PCC or held-out agreement snapshot yet.")
        return
    rows, label = curves["rows"], curves["label"]
    strategies = sorted({r["strategy"] for r in rows})
    by_cost = [r for r in rows if r["cost"] is not None]
    left, right = st.columns(2)
    with left:
        st.markdown(f"**{label} against answers**")
        st.altair_chart(compare_chart(rows, "answers", label, strategies), width="stretch")
    with right:
        st.markdown(f"**{label} against cost**")
        if by_cost:
            st.altair_chart(compare_chart(by_cost, "cost", label, strategies), width="stretch")
        else:
            st.caption("No run here records its cost; pool runs do.")
    notes = []
    if curves["readout"] == "holdout":
        notes.append(r"No $\Phi^*$ for these runs: the readout is the share of triplet answers $\hat\Phi$ "
                     "predicted without having learned from them.")
    if curves["missing"]:
        notes.append(f"No {label} yet: {', '.join(curves['missing'])}.")
    if notes:
        st.caption(" ".join(notes))


def ok_answers(counts: dict[str, list]) -> int:
    return sum(n for a, n in zip(counts["answer"], counts["count"]) if a == "ok")


def dashboard_page() -> None:
    with open_store() as store:
        runs = store.runs()
    if not runs:
        st.info(f"{DB} holds no runs yet.")
        st.stop()
    with st.sidebar:
        run_id = st.selectbox("Experiment", [r["id"] for r in runs][::-1], key="run")
        live = st.toggle("Live (refresh every 5 s)", key="live")
    st.header(run_id)
    st.fragment(run_every=5 if live else None)(dashboard_body)(run_id)
    with st.expander("All experiments"):
        st.dataframe(
            [{"run": r["id"], "status": r["status"], "kind": r["kind"], "p": r["p"],
              "answers": f"{r['answers']}/{r['budget']}", "PCC": r["pcc"]} for r in runs],
            hide_index=True, width="stretch",
        )


if page == "Annotate":
    annotate_page()
else:
    dashboard_page()
