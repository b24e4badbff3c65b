"""What the app shows, computed outside the UI.

PCC curves and held-out agreement curves, Φ̂ beside Φ*, answers per agent,
attention-check accuracy, the agreement of Φ̂ with stored triplet answers (the
readouts when there is no Φ*),
an LLM agent's invalid-reply rate, position bias and token cost; and, for active
querying and agent pools, readout curves of several runs side by side labelled by
strategy, a pool's per-agent accuracy, agreement, cost and routing split, and an
active run's scoring and waiting times; what the answers cost (activations shown,
tokens, people's reading time). Every function takes an open
:class:`~fbloop.store.Store` and returns plain numbers, lists and arrays; ``None``
where there is nothing to show yet. The annotation form's tables and words are
:mod:`fbloop.app.form`'s.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..agents import people as human
from ..agents.oracle import triplet_margins
from ..errors import ConfigError, FbloopError
from ..metrics import triplet_agreement
from ..records import shown_per_question
from ..store import Store
from ..targets.load import load_target
from ..targets.target import Target

HEATMAP_MAX_P = 256  # beyond this a heatmap is unreadable and Φ is too big to form
AGREEMENT_MAX_ROWS = 20_000  # answers scored per agent for the agreement readout
SWAP_SUFFIX = "#swap"  # the LLM agent's answers with the candidates swapped
READOUTS = {"pcc": "PCC", "holdout": "held-out agreement"}  # curve readouts, in order of preference
ROUTES = ("shared", "hard", "rest", "skipped")  # a pool's routing split, in the order it is drawn
PEOPLE = "people"  # every annotator (agents human:<name>) as one row where per-person rows would not fit
FOLD_PEOPLE_OVER = 8  # more annotators than this: answers per agent shows them as one bar
ALPHA_MAX_ITEMS = 100_000  # shared triplets read for the agreement between people
MEDIAN_MAX_ROWS = 200_000  # people's response times read for their medians


@functools.lru_cache(maxsize=8)
def target(spec: str) -> Target | None:
    """The target of a spec, or ``None`` when it cannot be loaded here (a moved file, say).

    Cached: the RFM target takes seconds to build, and targets are read-only.
    """
    try:
        return load_target(spec)
    except FbloopError:
        return None


def descriptions(store: Store, run_id: str) -> tuple[str, ...] | None:
    """The run's feature descriptions, or ``None`` (the placeholder is shown instead)."""
    t = target(store.require_run(run_id)["config"]["target"])
    return None if t is None else t.descriptions


def pcc_curve(store: Store, run_id: str) -> dict[str, list]:
    """The run's PCC snapshots: ``{"answers": [...], "pcc": [...]}``."""
    snaps = [s for s in store.snapshots(run_id) if s["pcc"] is not None]
    return {"answers": [s["answers"] for s in snaps], "pcc": [s["pcc"] for s in snaps]}


def holdout_curve(store: Store, run_id: str) -> dict[str, list]:
    """The run's held-out agreement snapshots (runs with ``holdout``): ``{"answers", "agreement", "n"}``,
    ``agreement`` the share of held-out triplet answers ``Φ̂`` predicted, ``n`` how many it was scored on."""
    snaps = [s for s in store.snapshots(run_id) if s["extra"].get("holdout_agreement") is not None]
    return {"answers": [s["answers"] for s in snaps], "agreement": [s["extra"]["holdout_agreement"] for s in snaps],
            "n": [s["extra"].get("holdout_n") for s in snaps]}


def pair_holdout_curve(store: Store, run_id: str) -> dict[str, list]:
    """The pivot design's hold-out readout per snapshot: ``{"answers", "pcc", "n"}``, ``pcc`` the PCC
    between the scales ``Φ̂`` predicts for the held-out random pairs (never learned from) and their answers."""
    snaps = [s for s in store.snapshots(run_id) if _number((s["extra"].get("pivot") or {}).get("holdout_pcc"))
             is not None]
    return {"answers": [s["answers"] for s in snaps], "pcc": [s["extra"]["pivot"]["holdout_pcc"] for s in snaps],
            "n": [s["extra"]["pivot"].get("holdout_n") for s in snaps]}


def phi_pair(store: Store, run_id: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(Φ̂, Φ*)`` scaled to unit max-abs for side-by-side heatmaps, or ``None``.

    ``None`` when the run has no factor yet or ``p`` is too large to draw; ``Φ*``
    is ``None`` when the target cannot be loaded.
    """
    run = store.require_run(run_id)
    factor = store.load_factor(run_id)
    if factor is None or run["p"] > HEATMAP_MAX_P:
        return None
    hat = factor @ factor.T
    hat = hat / max(np.max(np.abs(hat)), 1e-300)
    t = target(run["config"]["target"])
    if t is None:
        return hat, None
    star = t.phi()
    return hat, star / np.max(np.abs(star))


def answers_by_agent(store: Store, run_id: str) -> dict[str, list]:
    """Long-form counts for a stacked bar chart: ``{"agent", "answer", "count"}`` columns.

    ``answer`` is ok / invalid / skipped, or ``attention check`` for answers to checks. Past
    ``FOLD_PEOPLE_OVER`` annotators, people are one bar (:data:`PEOPLE`); :func:`annotators` has each.
    """
    totals: dict[tuple[str, str], int] = {}
    rows = store.answer_counts(run_id)
    fold = len({r["agent"] for r in rows if r["agent"].startswith(human.PREFIX)}) > FOLD_PEOPLE_OVER
    for row in rows:
        agent = PEOPLE if fold and row["agent"].startswith(human.PREFIX) else row["agent"]
        key = (agent, "attention check" if row["is_check"] else row["status"])
        totals[key] = totals.get(key, 0) + row["n"]
    keys = sorted(totals)
    return {"agent": [k[0] for k in keys], "answer": [k[1] for k in keys], "count": [totals[k] for k in keys]}


def check_accuracy(store: Store, run_id: str) -> list[dict]:
    """Attention-check accuracy per annotator (see :func:`fbloop.agents.people.check_accuracy`)."""
    return human.check_accuracy(store, run_id)


def _agreement_counts(store: Store, run_id: str, agent: str, factor: np.ndarray,
                      since: float | None) -> tuple[int, float]:
    """``(n, agreeing)`` for ``agent``'s ok triplet answers (stored after ``since``) against ``Φ̂``;
    ``agent`` :data:`PEOPLE` takes every annotator's answers together."""
    n, agree = 0, 0.0
    who = {"prefix": human.PREFIX} if agent == PEOPLE else {"agent": agent}
    for queries, answers in store.iter_answered(run_id, chunk=5_000, since=since, **who):
        delta, total = triplet_margins(queries.a, queries.b, queries.c, factor)
        predicted = np.sign(np.where(np.abs(delta) > 1e-12 * np.maximum(total, 1e-300), delta, 0.0))
        agree += triplet_agreement(predicted, answers.value) * len(answers)
        n += len(answers)
        if n >= AGREEMENT_MAX_ROWS:
            break
    return n, agree


def agreement(store: Store, run_id: str) -> list[dict]:
    """Per agent, how often ``Φ̂``'s triplet predictions match the stored answers.

    ``held_out`` scores the answers stored after the current ``Φ̂`` was fit (the
    learner never saw them); ``fit`` the answers it was fit to. Each is ``None``
    when there are no such answers; attention checks are not scored, and at most
    ``AGREEMENT_MAX_ROWS`` answers are read per set. People are scored together, as
    agent :data:`PEOPLE` (one row, not one per annotator: a crowd of 150 would cost 150
    passes). Empty for pair runs or before a first factor.
    """
    run = store.require_run(run_id)
    factor = store.load_factor(run_id)
    saved = store.factor_saved_at(run_id)
    if run["kind"] != "triplet" or factor is None:
        return []
    agents = sorted({PEOPLE if r["agent"].startswith(human.PREFIX) else r["agent"]
                     for r in store.answer_counts(run_id) if r["status"] == "ok" and not r["is_check"]})
    out = []
    for agent in agents:
        n_all, agree_all = _agreement_counts(store, run_id, agent, factor, None)
        n_new, agree_new = _agreement_counts(store, run_id, agent, factor, saved)
        if n_all >= AGREEMENT_MAX_ROWS:  # capped: the first rows stored, all before Φ̂ was fit
            n_fit, agree_fit = n_all, agree_all
        else:
            n_fit, agree_fit = n_all - n_new, agree_all - agree_new
        out.append({"agent": agent, "held_out": agree_new / n_new if n_new else None, "n_held_out": n_new,
                    "fit": agree_fit / n_fit if n_fit > 0 else None, "n_fit": n_fit})
    return out


def llm_stats(store: Store, run_id: str) -> list[dict]:
    """Per LLM model (agents ``llm:<model>``, with ``#swap`` answers folded in): answers (``ok`` of them
    usable), invalid-reply rate, position-bias rate (how often the swapped order disagrees; ``None``
    without the order swap), tokens (prompt, completion, ``tokens`` both, ``tokens_per_answer`` per
    usable answer), and cost (``None`` when the run set no prices): in batch mode at the batch price (``cost``),
    beside the synchronous price of the same tokens (``cost_sync``), with ``mode`` and the batch count."""
    counts: dict[str, dict[str, int]] = {}
    for row in store.answer_counts(run_id):
        if row["agent"].startswith("llm:") and not row["is_check"]:
            by_status = counts.setdefault(row["agent"], {})
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
    config = store.require_run(run_id)["config"]
    prices = config.get("llm") or {}
    batch = config.get("batch") or {}  # batch mode: tokens at the batch price (fbloop.agents.batch)
    discount = float(batch.get("discount", 0.0)) if batch else 0.0
    out = []
    for name in sorted(a for a in counts if not a.endswith(SWAP_SUFFIX)):
        swap = name + SWAP_SUFFIX
        total = sum(counts[name].values()) + sum(counts.get(swap, {}).values())
        invalid = counts[name].get("invalid", 0) + counts.get(swap, {}).get("invalid", 0)
        bias = None
        if swap in counts:
            both = store.agreement(run_id, name, swap)
            bias = (both["both"] - both["agree"]) / both["both"] if both["both"] else None
        usage = store.request_usage(run_id, [name, swap])
        p_cost, c_cost = prices.get("cost_prompt_1k") or 0.0, prices.get("cost_completion_1k") or 0.0
        cost = (usage["prompt_tokens"] * p_cost + usage["completion_tokens"] * c_cost) / 1000
        ok = counts[name].get("ok", 0) + counts.get(swap, {}).get("ok", 0)
        tokens = usage["prompt_tokens"] + usage["completion_tokens"]
        out.append({"model": name.split(":", 1)[1], "answers": total, "ok": ok, "tokens": tokens,
                    "tokens_per_answer": tokens / ok if ok else None,
                    "invalid_rate": invalid / total if total else None, "position_bias": bias,
                    "requests": usage["requests"], "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": usage["completion_tokens"],
                    "cost": cost * (1 - discount) if (p_cost or c_cost) else None,
                    "mode": batch.get("mode", "batch") if batch else "sync", "discount": discount,
                    "cost_sync": cost if (p_cost or c_cost) else None,
                    "batches": len(store.batches(run_id)) if batch else 0})
    return out


# ---------------------------------------------------------------- strategies, pools, active runs


def _number(x: float | None) -> float | None:
    """``x`` as a float, ``None`` for a missing or non-finite value (a pool's unknown accuracy is NaN)."""
    return None if x is None or not math.isfinite(x) else float(x)


ADAPTIVE_DESIGNS = ("pivot",)  # designs whose queries follow the answers (fbloop.queries.pivots)


def strategy_label(config: dict) -> str:
    """How a run chose its queries: the active strategy, ``adaptive: pivot`` for the adaptive pair design, or
    ``fixed: <design>`` for a fixed design."""
    active = config.get("active") or {}
    if active.get("strategy"):
        return str(active["strategy"])
    design = (config.get("design") or {}).get("name", "?")
    return f"{'adaptive' if design in ADAPTIVE_DESIGNS else 'fixed'}: {design}"


def _configs(store: Store) -> dict[str, dict]:
    """Every run's config, in creation order (one query, no counting)."""
    return store.run_configs()


def strategy_labels(store: Store) -> dict[str, str]:
    """Every run's strategy label, in creation order: ``{run_id: label}``."""
    return {run_id: strategy_label(config) for run_id, config in _configs(store).items()}


def same_target_runs(store: Store, run_id: str) -> list[str]:
    """The runs (``run_id`` included) whose config names the same target spec, in creation order."""
    configs = _configs(store)
    spec = configs[store.require_run(run_id)["id"]].get("target")
    return [r for r, config in configs.items() if config.get("target") == spec]


def strategy_curves(store: Store, run_ids: list[str], readout: str | None = None) -> dict:
    """The readout of several runs against answers (and cost), for one chart coloured by strategy.

    ``readout`` is ``"pcc"`` or ``"holdout"`` (held-out agreement, the readout without ``Φ*``);
    ``None`` takes PCC when any of the runs has it, else held-out agreement. Returns
    ``{"readout", "label", "available", "rows", "missing"}``: ``rows`` one per snapshot,
    ``{"run", "strategy", "answers", "value", "cost"}`` (``cost`` ``None`` unless the run
    records its spend, as a pool run does); ``available`` the readouts any run has;
    ``missing`` the runs without a point of the chosen readout. ``readout`` is ``None``
    when no run has either.
    """
    if readout is not None and readout not in READOUTS:
        raise ConfigError(f"Expect readout in {list(READOUTS)}, got {readout!r}.")
    points: dict[str, dict[str, list[dict]]] = {}
    for run_id in run_ids:
        label = strategy_label(store.require_run(run_id)["config"])
        points[run_id] = {key: [] for key in READOUTS}
        for s in store.snapshots(run_id):
            values = {"pcc": s["pcc"], "holdout": s["extra"].get("holdout_agreement")}
            for key, value in values.items():
                if _number(value) is not None:
                    points[run_id][key].append({"run": run_id, "strategy": label, "answers": s["answers"],
                                                "value": float(value), "cost": _number(s["extra"].get("cost"))})
    available = [key for key in READOUTS if any(p[key] for p in points.values())]
    if readout is None:
        readout = available[0] if available else None
    rows = [row for p in points.values() for row in p.get(readout, [])] if readout else []
    return {"readout": readout, "label": READOUTS.get(readout), "available": available, "rows": rows,
            "missing": [r for r in run_ids if not readout or not points[r][readout]]}


def _last_extra(store: Store, run_id: str, key: str) -> tuple[int, dict] | None:
    """``(answers, extra[key])`` of the latest snapshot carrying ``key``, or ``None``."""
    for s in reversed(store.snapshots(run_id)):
        if s["extra"].get(key):
            return s["answers"], s["extra"][key]
    return None


def source_noise(store: Store, run_id: str) -> dict[str, float]:
    """The flip rate the learner last fitted each source's answers at (``{agent: ε}``, :mod:`fbloop.agents.reliability`);
    empty when the run took every answer as exact or has no estimate yet."""
    last = _last_extra(store, run_id, "source_noise")
    return dict(last[1]) if last else {}


def pool_summary(store: Store, run_id: str) -> dict | None:
    """The latest agent-pool summary of a pool run, as chart rows; ``None`` before one is stored.

    ``{"answers", "total_cost", "agents", "agreement", "routing"}``: ``agents`` one row per
    agent (``agent, asked, cost_per_answer, spent, budget_left, accuracy, accuracy_source``,
    ``accuracy`` ``None`` while unknown), ``agreement`` one row per pair of agents
    (``pair, a, b, agreement, shared``; ``agreement`` ``None`` before they share a query),
    ``routing`` one row per route in :data:`ROUTES` (``route, queries, share``). See
    :meth:`fbloop.agents.pool.AgentPool.summary`.
    """
    found = _last_extra(store, run_id, "pool")
    if found is None:
        return None
    answers, pool = found
    agents = [{"agent": name, "asked": int(a.get("asked", 0)), "cost_per_answer": _number(a.get("cost_per_answer")),
               "spent": _number(a.get("spent")) or 0.0, "budget_left": _number(a.get("budget_left")),
               "accuracy": _number(a.get("accuracy")), "accuracy_source": a.get("accuracy_source") or "unknown"}
              for name, a in sorted(pool.get("agents", {}).items())]
    agreement = []
    for key, pair in sorted(pool.get("agreement", {}).items()):
        a, _, b = key.partition("|")
        agreement.append({"pair": f"{a} · {b}", "a": a, "b": b, "agreement": _number(pair.get("agreement")),
                          "shared": int(pair.get("shared", 0))})
    routing = pool.get("routing", {})
    total = sum(int(routing.get(r, 0)) for r in ROUTES)
    return {"answers": answers, "total_cost": _number(pool.get("total_cost")) or 0.0, "agents": agents,
            "agreement": agreement,
            "routing": [{"route": r, "queries": int(routing.get(r, 0)),
                         "share": int(routing.get(r, 0)) / total if total else 0.0} for r in ROUTES]}


def active_timing(store: Store, run_id: str) -> dict | None:
    """An active run's time choosing queries against the time the loop waited for them.

    Scoring runs in the background while the agent answers (:mod:`fbloop.queries.sources`), so only the
    part not hidden behind answering is waited for. From the final snapshot: ``{"strategy",
    "chunks", "score_s_total", "wait_s_total", "wait_s_max", "hidden_share"}``, seconds;
    ``hidden_share`` is the share of the scoring time nobody waited for, ``1 − wait/score``
    (``None`` when nothing was scored). ``None`` for a fixed design or before the run has finished.
    """
    found = _last_extra(store, run_id, "active")
    if found is None:
        return None
    active = found[1]
    score, wait = _number(active.get("score_s_total")) or 0.0, _number(active.get("wait_s_total")) or 0.0
    return {"strategy": active.get("strategy"), "chunks": int(active.get("chunks") or 0), "score_s_total": score,
            "wait_s_total": wait, "wait_s_max": _number(active.get("wait_s_max")) or 0.0,
            "hidden_share": min(max(1.0 - wait / score, 0.0), 1.0) if score > 0 else None}


# ---------------------------------------------------------------- what the answers cost


def run_cost(store: Store, run_id: str) -> dict | None:
    """What a run's answers cost their readers in activations: ``{"kind", "per_question", "questions",
    "usable", "activations", "per_usable", "final"}``. ``questions`` are the stored answers of any status
    (an invalid reply or a skip was read too; attention checks aside, as in the final readout),
    ``activations`` = ``questions × per_question`` (:func:`fbloop.records.shown_per_question`: 3 for a
    triplet, ``k + 1`` for closest / rank), ``per_usable`` that over the ok answers (``None`` before one),
    ``final`` the final readout's ``activations_shown`` (``None`` before a final fit). ``None`` for a run
    with no query stored yet."""
    shape = store.query_shape(run_id)
    if shape is None:
        return None
    kind, k = shape
    rows = [r for r in store.answer_counts(run_id) if not r["is_check"]]
    questions = sum(r["n"] for r in rows)
    usable = sum(r["n"] for r in rows if r["status"] == "ok")
    per = shown_per_question(kind, k)
    final = _last_extra(store, run_id, "activations_shown")
    return {"kind": kind, "per_question": per, "questions": questions, "usable": usable,
            "activations": questions * per, "per_usable": questions * per / usable if usable else None,
            "final": int(final[1]) if final else None}


def median_response_s(times: list[tuple[str, float]]) -> dict[str, float]:
    """Each agent's median response time in seconds, from ``(agent, ms)`` rows."""
    by: dict[str, list[float]] = {}
    for agent, ms in times:
        by.setdefault(agent, []).append(ms)
    return {agent: float(np.median(ms)) / 1000 for agent, ms in by.items()}


def with_costs(rows: list[dict], per_question: int, medians: dict[str, float]) -> list[dict]:
    """Annotator rows (:func:`annotators`) with what each person read and how long it took: ``shown``
    (every question they answered, skipped or were checked with, × ``per_question`` activations),
    ``total_s`` (their response times summed) and ``median_s`` (``None`` without a timed answer)."""
    return [{**r, "shown": (r["answers"] + r["skipped"] + r["checks"]) * per_question,
             "total_s": r["total_ms"] / 1000, "median_s": medians.get(r["agent"])} for r in rows]


def annotator_costs(store: Store, run_id: str, rows: list[dict]) -> list[dict]:
    """:func:`with_costs` for a run's annotator rows; the medians read the people's response times (at most
    :data:`MEDIAN_MAX_ROWS`, the first stored), the rest comes from running totals."""
    shape = store.query_shape(run_id) or ("triplet", 2)
    return with_costs(rows, shown_per_question(*shape), median_response_s(store.response_times(run_id,
                                                                                              MEDIAN_MAX_ROWS)))


# ---------------------------------------------------------------- the crowd, for the owner


def annotators(store: Store, run_id: str, sort: str = "answers", top: int | None = None) -> list[dict]:
    """Per annotator on a run, from running totals: ``agent, name, answers, skipped, checks, correct,
    check_accuracy, mean_s, blocked``, sorted by ``sort`` (largest first; ``check_accuracy`` and
    ``mean_s`` smallest first: the people to look at) and cut to the ``top`` first."""
    keys = ("answers", "skipped", "check_accuracy", "mean_s", "name")
    if sort not in keys:
        raise ConfigError(f"Expect sort in {list(keys)}, got {sort!r}.")
    rows = [{**r, "name": r["agent"][len(human.PREFIX):],
             "mean_s": None if r["mean_ms"] is None else r["mean_ms"] / 1000}
            for r in human.annotator_summary(store, run_id)]
    if sort == "name":
        rows.sort(key=lambda r: r["name"])
    elif sort in ("check_accuracy", "mean_s"):
        rows.sort(key=lambda r: (r[sort] is None, r[sort] if r[sort] is not None else 0.0, r["name"]))
    else:
        rows.sort(key=lambda r: (-r[sort], r["name"]))
    return rows[:top] if top else rows


def answer_domain(kind: str, k: int) -> tuple[float, ...]:
    """The values a person's answer to a ``kind`` question can take (:mod:`fbloop.records`), as nominal
    categories: a triplet's −1 / 0 / +1, closest's 0 (no clear winner) … k, odd's 1…3; a ranking's ``k!``
    codes are too many to list (``()``: the values answered are the categories)."""
    if kind == "triplet":
        return (-1.0, 0.0, 1.0)
    if kind == "closest":
        return tuple(float(j) for j in range(k + 1))
    return tuple(float(j) for j in range(1, k + 1)) if kind == "odd" else ()


def value_counts(rows: list[tuple[int, float, int]], domain: tuple[float, ...] = ()) -> np.ndarray:
    """``(seq, value, count)`` rows as Krippendorff's value counts, ``(items, categories)``: one row per
    question, one column per value of ``domain`` and per other value answered (at least two columns:
    one value alone leaves no domain to agree in)."""
    values = sorted(set(domain) | {r[1] for r in rows})
    values += [math.inf] * (2 - len(values))  # an unanswered category changes no α
    column = {v: j for j, v in enumerate(values)}
    item = {s: i for i, s in enumerate(sorted({r[0] for r in rows}))}
    out = np.zeros((len(item), len(values)), dtype=np.int64)
    for seq, value, n in rows:
        out[item[seq], column[value]] += n
    return out


def people_agreement(store: Store, run_id: str) -> dict:
    """Agreement between people on the questions several of them answered: Krippendorff's α, nominal over
    the answers' values (:func:`answer_domain`: first / second / equal for triplets; the candidate or
    item chosen; the whole ranking), from the ``krippendorff`` package. ``{"alpha", "items", "answers",
    "pairs_agree"}``: ``alpha`` ``None`` below two shared items, ``pairs_agree`` the raw share of agreeing
    answer pairs."""
    shape = store.query_shape(run_id) or ("triplet", 2)
    counts = value_counts(store.human_value_table(run_id, ALPHA_MAX_ITEMS), answer_domain(*shape))
    if not len(counts):  # (items, categories)
        return {"alpha": None, "items": 0, "answers": 0, "pairs_agree": None}
    pairs = (counts * (counts - 1)).sum() / 2
    total = (counts.sum(1) * (counts.sum(1) - 1)).sum() / 2
    alpha = None
    if len(counts) >= 2:
        import krippendorff

        with np.errstate(all="ignore"):
            a = krippendorff.alpha(value_counts=counts, level_of_measurement="nominal")
        alpha = None if not np.isfinite(a) else float(a)
    return {"alpha": alpha, "items": int(len(counts)), "answers": int(counts.sum()),
            "pairs_agree": float(pairs / total) if total else None}


def has_llm(store: Store, run_id: str) -> bool:
    """Whether a run has an LLM: its config sets one up, or some answer is an LLM's (one indexed probe)."""
    return store.require_run(run_id)["config"].get("llm") is not None or store.has_agent_prefix(run_id, "llm:")
