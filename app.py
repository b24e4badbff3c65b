"""fbloop's Streamlit app: the annotation form for people, and a dashboard of the runs.

Start it with `fbloop app` (or `streamlit run app.py`); the database comes from
the FBLOOP_DB environment variable (default runs/fbloop.db). UI only: what the
form stores goes through fbloop.agents.people, what it shows comes from
fbloop.app.form, what the dashboard shows from fbloop.app.views, drawn by the
builders in fbloop.app.charts.

Access (FBLOOP_ACCESS): ``invite`` (the default) needs a link with ``?token=``:
an annotator's invitation opens the form on the experiments they were invited
to, the owner's opens the dashboard; anything else sees nothing. ``open`` (local,
one person) shows a name field, every experiment and the dashboard.
"""

import os
import time
from pathlib import Path

import altair as alt
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import streamlit as st  # noqa: E402

from fbloop.agents import people as human  # noqa: E402
from fbloop.app import charts, form, views  # noqa: E402
from fbloop.errors import FbloopError  # noqa: E402
from fbloop.store import Store  # noqa: E402

PAGES = ("Annotate", "Dashboard")
ACCESS = os.environ.get("FBLOOP_ACCESS", "invite")  # "invite" or "open"
PRACTICE = 3  # practice triplets before the real ones (triplet runs; tuple runs start with the guide)
BUTTONS_PER_ROW = 6  # answer buttons side by side; more (closest of 8) wrap to a second row
REPEAT_GUARD_S = 0.4  # a click this soon after a question is drawn is the tail of a double click or a held key
DB = os.environ.get("FBLOOP_DB", "runs/fbloop.db")

st.set_page_config(page_title="fbloop", page_icon="🔁", layout="wide")

# Session keys, set once per browser session.
st.session_state.setdefault("page", "Dashboard" if st.query_params.get("page") == "dashboard" else "Annotate")
st.session_state.setdefault("question", None)  # the Question on screen (with its token)
st.session_state.setdefault("shown_at", 0.0)  # when it was first shown, for the response time
st.session_state.setdefault("sent", set())  # tokens this session has already submitted
st.session_state.setdefault("last", None)  # what the last click did, for a one-line receipt
st.session_state.setdefault("practice", {})  # run -> practice triplets answered this session
# Streamlit forgets a widget's value when its page is not drawn; writing it back keeps the
# annotator's name and the chosen experiments across page switches.
for kept in ("annotator", "annotate_run", "run"):
    if kept in st.session_state:
        st.session_state[kept] = st.session_state[kept]


# The response clock runs in the browser: mounted with the question's token, it notes the time from the
# question's display to the press (a button, or a shortcut key pressed outside any text field) and sends
# it with the click, so reading time is not stretched by the network or a busy server.
CLOCK_JS = """
export default function(component) {
  const { data, setStateValue } = component;
  // When each question's buttons appeared (their container carries the class st-key-answer-<token>-…),
  // noted by one observer of the page that outlives reruns: under load this component may mount a
  // while after the question is on screen, and its clock must not start late.
  const shown = (window.__fbloopShown = window.__fbloopShown || {});
  if (!window.__fbloopObserver) {
    const note = () => document.querySelectorAll('[class*="st-key-answer-"]').forEach((el) => {
      const m = el.className.match(/st-key-answer-([0-9a-f]{32})-/);
      if (m && !(m[1] in shown)) shown[m[1]] = performance.now();
    });
    window.__fbloopObserver = new MutationObserver(note);
    window.__fbloopObserver.observe(document.body, {childList: true, subtree: true});
    note();
  }
  if (!(data.token in shown)) shown[data.token] = performance.now();
  const t0 = shown[data.token];
  const keys = (data.keys || ['1', '2', 'e', 's']).map((k) => k.toLowerCase());  // this question's shortcuts
  const handler = (e) => {
    const t = e.target;
    if (e.type === 'keydown') {
      if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
      if (!keys.includes(String(e.key).toLowerCase())) return;
    } else if (!(t && t.closest && t.closest('button'))) { return; }
    setStateValue('shown', {token: data.token, ms: Math.round(performance.now() - t0)});
  };
  document.addEventListener('pointerdown', handler, true);
  document.addEventListener('keydown', handler, true);
  return () => {
    document.removeEventListener('pointerdown', handler, true);
    document.removeEventListener('keydown', handler, true);
  };
}
"""
clock = st.components.v2.component("fbloop.response_clock", js=CLOCK_JS)


def browser_ms(token: str) -> float | None:
    """The response time the browser measured for the question ``token``, or ``None`` (no browser clock)."""
    state = st.session_state.get("clock") or {}
    shown = state.get("shown") if hasattr(state, "get") else None
    if isinstance(shown, dict) and shown.get("token") == token and isinstance(shown.get("ms"), (int, float)):
        return float(shown["ms"])
    return None


def open_store() -> Store:
    return Store(DB)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


if not Path(DB).exists():
    st.info(f"No database at {DB} yet. Run `fbloop demo` or `fbloop run` first.")
    st.stop()

# Who is here. The token stays in the address (?token=…), so a reload keeps them signed in.
if ACCESS == "open":
    access = None
    pages = PAGES
else:
    with Store(DB) as _store:
        access = human.sign_in(_store, st.query_params.get("token"))
    if access is None:
        st.title("fbloop")
        st.error("This page needs a valid invitation link. Ask the experiment's owner for yours.")
        st.stop()
    pages = ("Dashboard",) if access.role == "owner" else ("Annotate",)
    if st.session_state.page not in pages:
        st.session_state.page = pages[0]

with st.sidebar:
    st.title("fbloop")
    st.caption("Features from feedback")
    if len(pages) > 1:
        page = st.radio("Page", pages, key="page", label_visibility="collapsed")
    else:
        page = pages[0]
    st.query_params["page"] = page.lower()


# ---------------------------------------------------------------- the annotation form


def on_answer(run_id: str, seq: int, token: str, annotator: str, choice, kind: str = "triplet") -> None:
    """A button's callback, bound to the question on screen when it was drawn. ``choice`` is the answer in
    the question's own terms (:func:`fbloop.agents.people.submit`)."""
    if token in st.session_state.sent:  # a double click: this question was already sent
        st.session_state.last = {"choice": choice, "kind": kind, "stored": False}
        return
    ms, source = browser_ms(token), "browser"
    if ms is None:  # no browser clock (a test harness): the server's, which includes the round trips
        ms, source = 1000 * (time.time() - st.session_state.shown_at), "server"
    if ms < 1000 * REPEAT_GUARD_S:  # too soon to have read it: not an answer to this question
        st.session_state.last = {"too_quick": True, "ms": ms, "clock": source}
        return
    try:
        with open_store() as store:
            stored = human.submit(store, run_id, seq, annotator, choice, ms, token, source)
    except FbloopError as exc:  # the question stays on screen: nothing was lost
        st.session_state.last = {"error": f"Your answer could not be stored ({exc}). It is still on screen; "
                                          "please answer again."}
        return
    st.session_state.sent.add(token)
    st.session_state.question = None  # draw the next one
    st.session_state.last = {"choice": choice, "kind": kind, "stored": stored}


def on_rank(run_id: str, seq: int, token: str, annotator: str, k: int) -> None:
    """The ranking's submit button: the order built in the list, refused (nothing stored) while a
    candidate is missing or placed twice."""
    order = [int(j) for j in st.session_state.get(f"rank-{token}") or []]
    if token not in st.session_state.sent:  # a repeat goes on to on_answer, which says so
        problem = form.ranking_problem(order, k)
        if problem:
            st.session_state.last = {"refused": problem}
            return
    on_answer(run_id, seq, token, annotator, order, "rank")


def on_undo(run_id: str, annotator: str) -> None:
    try:
        with open_store() as store:
            seq = human.undo(store, run_id, annotator)
    except FbloopError as exc:
        st.session_state.last = {"error": f"Could not undo ({exc})."}
        return
    st.session_state.question = None  # the undone triplet comes back: it is leased to them again
    st.session_state.last = {"undone": seq is not None}


def on_practice(run_id: str, item: dict, choice: str) -> None:
    done = st.session_state.practice.setdefault(run_id, [])
    done.append({"choice": choice, "answer": item["answer"], "why": item["why"]})
    ok = choice == item["answer"]
    st.session_state.last = {"practice": ok, "text": ("Right: " if ok else f"Not quite — the answer was "
                                                     f"{item['answer']}: ") + item["why"] + "."}
    st.session_state.shown_at = time.time()


def practice_feedback() -> None:
    last = st.session_state.last
    if last and "practice" in last:
        (st.success if last["practice"] else st.warning)(last["text"])


def question_tables(kind: str, reference, options) -> None:
    """The reference (full width) above the options, two to a row (odd one out: its three items in a row);
    features shared with the reference (odd one out: with another item) first, marked ◆."""
    reference, *options = form.aligned(reference, *options)
    ref_shared, shared = form.shared_blocks(reference, options)
    titles = form.option_titles(kind, len(options))
    if reference is not None:
        st.markdown(form.feature_table(reference, ref_shared, "Reference"), unsafe_allow_html=True)
    per_row = 3 if kind == "odd" else 2
    for lo in range(0, len(options), per_row):
        for col, block, mark, title in zip(st.columns(per_row), options[lo:lo + per_row], shared[lo:lo + per_row],
                                           titles[lo:lo + per_row]):
            col.markdown(form.feature_table(block, mark, title), unsafe_allow_html=True)
    st.caption(("◆ = a feature another item has too (listed first)" if reference is None else
                "◆ = a feature the reference shares with a candidate (listed first, in the reference's order)")
               + ". Bars show each feature's weight.")


def answer_buttons(prefix: str, spec: list, on_click, args_of, fit: bool = False) -> None:
    """One button per ``(answer, label, key)`` of ``spec`` (:func:`fbloop.app.form.answer_buttons`), in
    equal columns, or (``fit``) columns as wide as their labels ("No clear winner" beside "Candidate 1")."""
    per_row = min(len(spec), BUTTONS_PER_ROW)
    for lo in range(0, len(spec), per_row):
        row = spec[lo:lo + per_row]
        widths = [max(len(label), 9) + 3 for _, label, _ in row] if fit else len(row)  # + 3: the key's hint
        for col, (answer, label, key) in zip(st.columns(widths), row):
            plain = isinstance(answer, str) and answer in ("equal", "skip") or answer == 0
            col.button(label, key=f"{prefix}-{answer}", shortcut=key, width="stretch",
                       type="secondary" if plain else "primary", on_click=on_click, args=args_of(answer))


def forget_refusal() -> None:
    """The ranking changed: a refusal of the earlier one no longer describes it."""
    if st.session_state.last and "refused" in st.session_state.last:
        st.session_state.last = None


def rank_input(q, run_id: str, annotator: str) -> None:
    """The ranking: candidates picked closest first into a list, then submitted (or the question skipped)."""
    st.multiselect("Candidates, closest first", list(range(1, q.k + 1)), key=f"rank-{q.token}",
                   format_func=lambda j: f"Candidate {j}", max_selections=q.k, on_change=forget_refusal,
                   placeholder="Pick the closest candidate first, then the next, … to the farthest")
    left, right = st.columns([3, 1])
    left.button("Submit ranking", key=f"answer-{q.token}-rank", type="primary", width="stretch",
                on_click=on_rank, args=(run_id, q.seq, q.token, annotator, q.k))
    for answer, label, key in form.answer_buttons("rank", q.k):  # skip
        right.button(label, key=f"answer-{q.token}-{answer}", shortcut=key, width="stretch",
                     on_click=on_answer, args=(run_id, q.seq, q.token, annotator, answer, "rank"))


HEADS = {"triplet": "Which candidate is the reference closer to?",
         "closest": "Which candidate is closest to the reference?",
         "rank": "Order the candidates by how close each is to the reference, closest first",
         "odd": "Which item is the odd one out, the least like the other two?"}
GUIDE = ("**How to answer.** Each triplet shows a *reference* and two *candidates*, each a few features with "
         "weights. Pick the candidate whose features are closer to the reference's: the same features, with "
         "similar weights, count most; descriptions tell you what a feature means. *Equally close* when you "
         "cannot tell, *Skip* when you cannot judge it. Keys: 1 · 2 · E · S.")
CLOSE = ("The same features, with similar weights, count most; descriptions tell you what a feature means. "
         "*Skip* when you cannot judge it.")
GUIDES = {
    "triplet": GUIDE,
    "closest": ("**How to answer.** Each question shows a *reference* and several numbered *candidates*, each a "
                f"few features with weights. Pick the candidate closest to the reference. {CLOSE} *No clear "
                "winner* when two or more are equally close. Keys: the candidate's number · N · S."),
    "rank": ("**How to answer.** Each question shows a *reference* and several numbered *candidates*, each a few "
             "features with weights. Put every candidate in order, the closest to the reference first: pick "
             f"them one after another in the list, then *Submit ranking*. {CLOSE} Key: S."),
    "odd": ("**How to answer.** Each question shows three numbered *items*, each a few features with weights. "
            f"Two of them are more alike: pick the third, the odd one out. {CLOSE} Keys: 1 · 2 · 3 · S."),
}


def practice(run_id: str, p: int, descriptions) -> bool:
    """The practice round with feedback; returns True once it is done."""
    items = form.practice_triplets(p, descriptions, PRACTICE)
    done = st.session_state.practice.get(run_id, [])
    if len(done) >= len(items):
        return True
    st.header("Practice first")
    st.markdown(GUIDE)
    practice_feedback()
    item = items[len(done)]
    st.caption(f"Practice triplet {len(done) + 1} of {len(items)} (not stored)")
    answer_buttons(f"practice-{len(done)}", form.answer_buttons("triplet", 2), on_practice,
                   lambda choice: (run_id, item, choice))
    question_tables("triplet", item["reference"], (item["first"], item["second"]))
    return False


def annotate_page() -> None:
    with open_store() as store:
        if access is None:  # open access: any name, every experiment
            queued = store.queued_runs()
        else:
            queued = {r: n for r, n in store.queued_runs().items() if r in access.runs}
        kinds = store.run_kinds()
        with st.sidebar:
            if access is None:
                annotator = st.text_input("Your name", key="annotator", max_chars=human.MAX_NAME,
                                          placeholder="e.g. alice")
            else:
                annotator = access.name
                st.text(f"Signed in as {access.name}")  # text: a name is data, never markup
            run_id = st.selectbox("Experiment", list(queued)[::-1], key="annotate_run",
                                  format_func=lambda r: f"{r} ({queued[r]} {form.question_noun(kinds[r])})")
        if not queued:
            st.info("No experiment of yours has questions queued yet. " + (
                f"Queue some with `fbloop run --design triplet --agent human --budget 50 --db {DB}`."
                if access is None else "Come back later."))
            st.stop()
        if not annotator.strip():
            st.info("Enter your name in the sidebar to start.")
            st.stop()
        try:
            human.agent_name(annotator)
        except FbloopError as exc:
            st.error(str(exc))
            st.stop()
        prog = human.progress(store, run_id, annotator)
        descriptions = views.descriptions(store, run_id)
        run = store.require_run(run_id)
        kind = run["kind"]
        first_time = prog["answered"] + prog["skipped"] == 0
        if kind == "triplet" and first_time and not practice(run_id, run["p"], descriptions):  # practice: triplets
            return
        q = st.session_state.question
        if q is None or q.run_id != run_id or q.annotator != human.normalise_name(annotator):
            q = human.next_query(store, run_id, annotator, descriptions)
            st.session_state.question = q
            st.session_state.shown_at = time.time()

    last = st.session_state.last
    noun = form.question_noun(kind)
    if q is None:
        st.success(f"You have answered every {form.question_noun(kind, 1)} there is for you in this experiment. "
                   "Thank you!")
    else:
        if kind != "triplet" and first_time:
            st.markdown(GUIDES[kind])
        st.markdown(f"#### {HEADS[q.kind]}")
        # Keys carry the question's token: a click that arrives after the next question is drawn
        # names a button that no longer exists, so it can never answer the new question.
        spec = form.answer_buttons(q.kind, q.k)
        if q.kind == "rank":
            rank_input(q, run_id, annotator)
        else:
            answer_buttons(f"answer-{q.token}", spec, on_answer,
                           lambda choice: (run_id, q.seq, q.token, annotator, choice, q.kind), fit=q.kind != "triplet")
        clock(key="clock", data={"token": q.token, "keys": [key for _, _, key in spec if key]},
              on_shown_change=lambda: None)
    done = prog["answered"] + prog["skipped"]
    line = f"{done} answered by you · {prog['remaining']} {noun} still open"
    if last and "practice" in last:
        practice_feedback()
        st.caption("Practice done: the real triplets start here. " + line)
        line = None
    elif last and "error" in last:
        st.error(last["error"])
    elif last and "refused" in last:
        st.warning(last["refused"])
    elif last and "too_quick" in last:
        st.caption(f"That click came {last['ms']:.0f} ms after the question appeared ({last['clock']} clock), "
                   "so it was not taken as an answer.")
    elif last and "undone" in last:
        st.caption("Your last answer was taken back; answer it again." if last["undone"]
                   else "Nothing to undo.")
    elif last and not last["stored"]:
        st.warning(f"You had already answered that {form.question_noun(kind, 1)} (another tab, or a double "
                   "click); it was not stored twice. Here is the next one.")
    elif last:
        st.caption(f"Stored: {form.answer_label(last.get('kind', 'triplet'), last['choice'])}. {line}")
        line = None
    if line:
        st.caption(line)
    if done:
        st.button("↶ Undo last answer", key="undo", on_click=on_undo, args=(run_id, annotator))
    if q is not None:
        question_tables(q.kind, q.reference, q.options)
        with st.expander("How to answer"):
            st.markdown(GUIDES[q.kind])


# ---------------------------------------------------------------- the dashboard


def seconds(x: float) -> str:
    if x < 1:  # scoring a small chunk, or an oracle's answers, take milliseconds
        return f"{1000 * x:.1f} ms" if x < 0.01 else f"{1000 * x:.0f} ms"
    return f"{x:.2f} s" if x < 10 else f"{x:,.0f} s"


def dashboard_body(run_id: str) -> None:
    with open_store() as store:
        run = store.require_run(run_id)
        snaps = store.snapshots(run_id)
        queue = store.queue_progress(run_id)
        curve = views.pcc_curve(store, run_id)
        held = views.holdout_curve(store, run_id)
        pairs = views.pair_holdout_curve(store, run_id)
        counts = views.answers_by_agent(store, run_id)
        pair = views.phi_pair(store, run_id)
        agree = views.agreement(store, run_id)
        people = views.annotators(store, run_id)
        llm = views.llm_stats(store, run_id) if views.has_llm(store, run_id) else None
        noise = views.source_noise(store, run_id)
        pool = views.pool_summary(store, run_id)
        timing = views.active_timing(store, run_id)
        cost = views.run_cost(store, run_id)

    cols = st.columns(4)
    cols[0].metric("Status", run["status"])
    cols[1].metric("Answers", f"{ok_answers(counts)}", help=f"budget {run['budget']}; attention checks not counted")
    pcc = snaps[-1]["pcc"] if snaps else None
    cols[2].metric("PCC", "—" if pcc is None else f"{pcc:.4f}", help="latest snapshot")
    cols[3].metric("Queued for people", f"{queue['answered']}/{queue['queued']}" if queue["queued"] else "—",
                   help=f"queued {form.question_noun(run['kind'])} with an answer or skip from anyone")

    left, right = st.columns(2)
    with left:
        st.subheader("PCC and held-out agreement" if held["answers"] else
                     "PCC and held-out pairs" if pairs["answers"] else "PCC against answers")
        if curve["answers"] or held["answers"] or pairs["answers"]:
            st.altair_chart(charts.readout_chart(curve, held, pairs), width="stretch")
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
            fig = charts.heatmaps(*pair)
            st.pyplot(fig)
            plt.close(fig)
            if pair[1] is None:
                st.caption(r"$\Phi^*$ is not available here; the agreement on the right is the readout.")
    with right:
        st.subheader(r"Agreement of $\hat\Phi$ with the answers")
        rows = [{"agent": a["agent"], "answers": label, "share": a[key], "label": f"{a[key]:.0%} of {a['n_' + key]}"}
                for a in agree for key, label in (("held_out", "held out"), ("fit", "fit")) if a[key] is not None]
        if rows:
            st.altair_chart(charts.share_chart(rows, "agent", color="answers"), width="stretch")
            st.caption(r"Share of triplet answers $\hat\Phi$ predicts; held out = stored after $\hat\Phi$ was fit.")
        else:
            st.caption("Triplet runs with a stored factor only.")

    if cost is not None:
        cost_section(cost, llm)
    if llm is not None:
        llm_section(llm, noise)
    if people or queue["queued"]:
        people_section(run_id, people, noise, run["kind"])

    if run["config"].get("active"):
        active_section(timing)
    if run["config"].get("agent") == "pool" or pool is not None:
        pool_section(pool)
    compare_section(run_id)


def cost_section(cost: dict, llm: list[dict] | None) -> None:
    st.subheader("What the answers cost")
    final = "" if cost["final"] is None else f"; the final readout counted {cost['final']:,}"
    cols = st.columns(4)
    cols[0].metric("Activations shown", f"{cost['activations']:,}",
                   help=f"{cost['questions']:,} questions answered (any status; attention checks aside) × "
                        f"{cost['per_question']} activations each{final}")
    cols[1].metric("Shown per question", cost["per_question"],
                   help="a triplet and an odd-one-out question show three; closest of k and rank k a reference "
                        "and k candidates; a pair the pair's and the anchor")
    per = cost["per_usable"]
    cols[2].metric("Shown per usable answer", "—" if per is None else f"{per:.2f}",
                   help=f"activations shown ÷ the {cost['usable']:,} ok answers: invalid replies and skips were "
                        "read too")
    ok = sum(m["ok"] for m in llm or [])
    tokens = sum(m["tokens"] for m in llm or [])
    cols[3].metric("LLM tokens per answer", f"{tokens / ok:,.1f}" if ok else "—",
                   help="prompt and completion tokens of every request ÷ the LLM's ok answers")


def llm_section(llm: list[dict], noise: dict) -> None:
    st.subheader("LLM agents")
    for m in llm or [None]:
        if m is not None:
            eps = noise.get(f"llm:{m['model']}")
            st.markdown(f"**{m['model']}** · {m['answers']} answers, {m['requests']} requests"
                        + ("" if m.get("mode", "sync") == "sync" else
                           f" · {m['mode']} mode, {m['batches']} batch files")
                        + ("" if eps is None else f" · fitted at flip rate {eps:.3f} (from its order swaps)"))
        cols = st.columns(4)
        cols[0].metric("Invalid replies", pct(m and m["invalid_rate"]))
        cols[1].metric("Position bias", pct(m and m["position_bias"]),
                       help="how often the answer changes when the candidates are swapped")
        cols[2].metric("Tokens", "—" if m is None else f"{m['prompt_tokens'] + m['completion_tokens']:,}")
        batch = m is not None and m.get("mode", "sync") != "sync" and m["cost"] is not None
        cols[3].metric("Cost", "—" if m is None or m["cost"] is None else f"${m['cost']:.4f}",
                       help=(f"at the batch price (−{m['discount']:.0%}); ${m['cost_sync']:.4f} synchronously"
                             if batch else None))
        if m is not None:
            per = "—" if m["tokens_per_answer"] is None else f"{m['tokens_per_answer']:,.1f}"
            price = "" if m["cost"] is None else \
                f" · ${m['cost'] / m['ok']:.6f} per usable answer" if m["ok"] else ""
            st.caption(f"Tokens: {m['prompt_tokens']:,} prompt + {m['completion_tokens']:,} completion = "
                       f"{m['tokens']:,}; {per} per usable answer ({m['ok']:,} ok){price}.")
    if not llm:
        st.caption("No LLM answers in this run yet.")


SORTS = {"answers": "most answers", "check_accuracy": "lowest check accuracy", "mean_s": "fastest",
         "skipped": "most skips", "name": "name"}


def people_section(run_id: str, people: list[dict], noise: dict, kind: str = "triplet") -> None:
    st.subheader("Annotators")
    with open_store() as store:
        agree = views.people_agreement(store, run_id)
        overlap = store.assignment(run_id)["overlap"]
    cols = st.columns(4)
    cols[0].metric("Annotators", len(people))
    one = form.question_noun(kind, 1)
    cols[1].metric(f"Per {one}", overlap, help=f"different people asked per {one} (fbloop annotators overlap)")
    cols[2].metric("Krippendorff's α", "—" if agree["alpha"] is None else f"{agree['alpha']:.2f}",
                   help=f"agreement between people on the {agree['items']} questions several answered "
                        "(nominal over the answers: first / second / equal, the candidate or item chosen, the "
                        "whole ranking; 1 = perfect, 0 = chance)")
    cols[3].metric("Agreeing pairs", pct(agree["pairs_agree"]), help="raw share of answer pairs that agree")
    if not people:
        st.caption("Nobody has answered yet.")
        return
    left, right = st.columns([1, 3])
    sort = left.selectbox("Sort by", list(SORTS), format_func=SORTS.get, key=f"sort-{run_id}")
    top = left.selectbox("Show", [10, 25, 50, 100, 0], format_func=lambda n: f"top {n}" if n else "all",
                         key=f"top-{run_id}")
    with open_store() as store:
        rows = views.annotator_costs(store, run_id, views.annotators(store, run_id, sort=sort, top=top or None))
    right.dataframe([{"annotator": r["name"], "answers": r["answers"], "skipped": r["skipped"],
                      "checks": f"{r['correct']}/{r['checks']}", "check accuracy": r["check_accuracy"],
                      "mean time (s)": None if r["mean_s"] is None else round(r["mean_s"], 1),
                      "median time (s)": None if r["median_s"] is None else round(r["median_s"], 1),
                      "total time (min)": round(r["total_s"] / 60, 1), "activations shown": r["shown"],
                      "fitted flip rate": noise.get(r["agent"]), "blocked": r["blocked"]} for r in rows],
                    hide_index=True, width="stretch", height=min(38 + 35 * len(rows), 400))
    st.caption("Checks: questions with a known answer mixed into the queue (annotators are not told which); "
               "their answers never reach a learner. Times run from a question's display to the answer; "
               "activations shown count every question a person answered, skipped or was checked with. "
               "Blocked annotators' answers stay stored but are left out of learning from the next `fbloop run`.")
    names = [r["name"] for r in people]
    chosen = st.multiselect("Annotators to block or unblock", names, key=f"block-{run_id}")
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Block", key=f"do-block-{run_id}", disabled=not chosen):
        with open_store() as store:
            for name in chosen:
                human.block(store, run_id, name, True)
        st.rerun()
    if b2.button("Unblock", key=f"do-unblock-{run_id}", disabled=not chosen):
        with open_store() as store:
            for name in chosen:
                human.block(store, run_id, name, False)
        st.rerun()


def export_section(run_id: str) -> None:
    with st.expander("Export answers"):
        fmt = st.radio("Format", ["csv", "jsonl"], horizontal=True, key=f"export-fmt-{run_id}")
        if st.button("Prepare export", key=f"export-{run_id}"):
            import tempfile

            with tempfile.TemporaryDirectory() as tmp, open_store() as store:
                path = Path(tmp) / f"{run_id}.{fmt}"
                n = store.export(run_id, path, fmt)
                st.session_state[f"export-data-{run_id}"] = (path.read_bytes(), fmt, n)
        ready = st.session_state.get(f"export-data-{run_id}")
        if ready:
            st.download_button(f"Download {ready[2]:,} answers ({ready[1]})", ready[0], f"{run_id}.{ready[1]}",
                               key=f"download-{run_id}")


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
        tooltip = ["agent:N", alt.Tooltip("share:Q", title="accuracy", format=".1%"), "source:N"]
        st.altair_chart(charts.share_chart(rows, "agent", tooltip=tooltip), width="stretch")
        st.markdown("**Agreement on shared queries**")
        rows = [{"pair": g["pair"], "share": g["agreement"], "label": f"{g['agreement']:.0%} of {g['shared']}"}
                for g in pool["agreement"] if g["agreement"] is not None]
        if rows:
            st.altair_chart(charts.share_chart(rows, "pair"), width="stretch")
        else:
            st.caption("No query answered by two agents yet.")
    with right:
        st.markdown("**Cost spent per agent**")
        rows = [{**a, "label": f"{a['spent']:,.2f}" + ("" if a["budget_left"] is None
                                                         else f" ({a['budget_left']:,.2f} left)")}
                for a in pool["agents"]]
        st.altair_chart(charts.amount_chart(rows, "spent", "label"), width="stretch")
        st.markdown("**Answers asked per agent**")
        rows = [{**a, "label": f"{a['asked']:,} at {a['cost_per_answer'] or 0:,.4g} each"} for a in pool["agents"]]
        st.altair_chart(charts.amount_chart(rows, "asked", "label"), width="stretch")
    st.markdown("**Routing split**")
    st.altair_chart(charts.routing_chart(pool["routing"]), width="stretch")
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
        st.altair_chart(charts.compare_chart(rows, "answers", label, strategies), width="stretch")
    with right:
        st.markdown(f"**{label} against cost**")
        if by_cost:
            st.altair_chart(charts.compare_chart(by_cost, "cost", label, strategies), width="stretch")
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
        run_ids = list(store.run_configs())
    if not run_ids:
        st.info(f"{DB} holds no runs yet.")
        st.stop()
    with st.sidebar:
        run_id = st.selectbox("Experiment", run_ids[::-1], key="run")
        live = st.toggle("Live (refresh every 5 s)", key="live")
    st.header(run_id)
    st.fragment(run_every=5 if live else None)(dashboard_body)(run_id)
    export_section(run_id)
    if st.toggle("All experiments", key="all-runs", help="every run with its answers and latest PCC"):
        with open_store() as store:
            runs = store.runs()  # counts every run's answers: only when asked for
        st.dataframe(
            [{"run": r["id"], "status": r["status"], "kind": r["kind"], "p": r["p"],
              "answers": f"{r['answers']}/{r['budget']}", "PCC": r["pcc"]} for r in runs],
            hide_index=True, width="stretch",
        )


if page == "Annotate":
    annotate_page()
else:
    dashboard_page()
