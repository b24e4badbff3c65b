"""What the app shows, computed outside the UI.

PCC curves and held-out agreement curves, Φ̂ beside Φ*, answers per agent,
attention-check accuracy, the agreement of Φ̂ with stored triplet answers (the
readouts when there is no Φ*),
and an LLM agent's invalid-reply rate, position bias and token cost. Every
function takes an open :class:`~fbloop.store.Store` and returns plain numbers,
lists and arrays; ``None`` where there is nothing to show yet.
"""

from __future__ import annotations

import functools

import numpy as np

from . import human
from .agents.oracle import triplet_margins
from .errors import FbloopError
from .metrics import triplet_agreement
from .store import Store
from .targets import Target, load_target

HEATMAP_MAX_P = 256  # beyond this a heatmap is unreadable and Φ is too big to form
AGREEMENT_MAX_ROWS = 20_000  # answers scored per agent for the agreement readout
SWAP_SUFFIX = "#swap"  # the LLM agent's answers with the candidates swapped


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

    ``answer`` is ok / invalid / skipped, or ``attention check`` for answers to checks.
    """
    totals: dict[tuple[str, str], int] = {}
    for row in store.answer_counts(run_id):
        key = (row["agent"], "attention check" if row["is_check"] else row["status"])
        totals[key] = totals.get(key, 0) + row["n"]
    keys = sorted(totals)
    return {"agent": [k[0] for k in keys], "answer": [k[1] for k in keys], "count": [totals[k] for k in keys]}


def check_accuracy(store: Store, run_id: str) -> list[dict]:
    """Attention-check accuracy per annotator (see :func:`fbloop.human.check_accuracy`)."""
    return human.check_accuracy(store, run_id)


def _agreement_counts(store: Store, run_id: str, agent: str, factor: np.ndarray,
                      since: float | None) -> tuple[int, float]:
    """``(n, agreeing)`` for ``agent``'s ok triplet answers (stored after ``since``) against ``Φ̂``."""
    n, agree = 0, 0.0
    for queries, answers in store.iter_answered(run_id, chunk=5_000, agent=agent, since=since):
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
    ``AGREEMENT_MAX_ROWS`` answers are read per set. Empty for pair runs or before
    a first factor.
    """
    run = store.require_run(run_id)
    factor = store.load_factor(run_id)
    saved = store.factor_saved_at(run_id)
    if run["kind"] != "triplet" or factor is None:
        return []
    agents = sorted({r["agent"] for r in store.answer_counts(run_id) if r["status"] == "ok" and not r["is_check"]})
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
    """Per LLM model (agents ``llm:<model>``, with ``#swap`` answers folded in): answers, invalid-reply
    rate, position-bias rate (how often the swapped order disagrees; ``None`` without the order swap),
    tokens, and cost (``None`` when the run set no prices)."""
    counts: dict[str, dict[str, int]] = {}
    for row in store.answer_counts(run_id):
        if row["agent"].startswith("llm:") and not row["is_check"]:
            by_status = counts.setdefault(row["agent"], {})
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["n"]
    prices = store.require_run(run_id)["config"].get("llm") or {}
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
        out.append({"model": name.split(":", 1)[1], "answers": total,
                    "invalid_rate": invalid / total if total else None, "position_bias": bias,
                    "requests": usage["requests"], "prompt_tokens": usage["prompt_tokens"],
                    "completion_tokens": usage["completion_tokens"],
                    "cost": cost if (p_cost or c_cost) else None})
    return out
