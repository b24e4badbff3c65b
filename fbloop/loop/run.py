"""Running one experiment: :func:`run_loop`.

The loop is the same for every agent (:class:`fbloop.agents.base.Agent`)::

    choose queries (a fixed design or an active strategy) → ask → collect what is in
        → learn → snapshot → stop rule

Each chunk's queries and answers commit in one transaction (an immediate agent's) or wait in the
store for their answerers (a deferred agent's: people, batch jobs). The learner takes a few steps
after each chunk that brought answers, and a PCC snapshot is stored every ``snapshot_every``
answers. Calling it again with the same ``run_id`` resumes: stored answers are replayed into a fresh
learner (:func:`fbloop.loop.session.open_session`) and only unasked queries are asked — nothing is
lost or asked twice. With ``watch`` the run stays up while a deferred agent's answers come in,
learning as they arrive and asking the next chunk when the agent is ready for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from ..errors import NoUsableAnswersError
from ..queries.sources import random_positions
from ..records import Answers, Queries
from ..store import Store
from ..targets.target import Target
from .config import Progress, RunConfig, RunResult
from .learners import feed
from .session import Session, auto_chunk, default_budget, new_run_id, open_session, refit_noise

ACTIVE_STEPS = 100  # active runs: learner steps after each chunk at least (the strategy scores under Φ̂)
WATCH_POLL_S = 2.0  # seconds between looks at the store while watching
LIVE_FACTOR_MAX_P = 256  # up to this p each snapshot also stores Φ̂'s factor: the dashboard's heatmap follows

__all__ = ["run_loop", "ACTIVE_STEPS", "WATCH_POLL_S", "auto_chunk", "default_budget", "new_run_id", "readouts"]


def run_loop(config: RunConfig, store: Store, run_id: str | None = None,
             progress: Callable[[Progress], None] | None = None, target: Target | None = None,
             watch: threading.Event | None = None, poll_s: float = WATCH_POLL_S) -> RunResult:
    """Run (or resume) one experiment and return its result.

    ``watch``: keep the run up while a deferred agent has answers outstanding, until every asked
    query is answered or the event is set (Ctrl+C / SIGTERM in ``fbloop run --watch``).
    """
    s = open_session(config, store, run_id, target, progress)
    store.set_status(s.run_id, "running")
    try:
        stopped = advance(s)
        while watch is not None and not stopped and not watch.is_set() and waits_for_answers(s):
            watch.wait(poll_s)
            stopped = advance(s)
        if watch is not None and not stopped:  # what arrived between the last collection and the look that
            stopped = advance(s)  # found nothing outstanding: the answers that filled the queue are all in
    finally:
        s.source.close()
    if s.n_ok == 0 and s.agent.outstanding():  # nothing answered yet, nothing to learn
        store.set_status(s.run_id, "waiting")
        return RunResult(s.run_id, None, 0, s.budget, s.design.count, s.learner_name,
                         time.perf_counter() - s.t0, np.zeros((s.target.p, 1)), s.history)
    no_usable_answers(store, s.run_id, s.n_ok)
    return finish(s)


def waits_for_answers(s: Session) -> bool:
    """Whether a watched run has anything left to wait for: answers outstanding, or a deferred agent's
    queries still to ask (an active run's next chunk)."""
    if s.agent.outstanding() > 0:
        return True
    return s.agent.deferred and s.store.next_position(s.run_id) < s.budget


def advance(s: Session) -> bool:
    """One pass over the run's positions: ask what is unasked (while the agent is ready), collect what
    came in, learn. Returns whether the stop rule (``stop_at``) ended the run."""
    stop = 0
    while stop < s.budget:
        start = stop
        # An adaptive design (the pivot design) may end a chunk early where its next queries wait on answers.
        stop = s.design.ready_until(start, min(start + s.chunk, s.budget))
        ask_chunk(s, start, stop)
        arrived = s.agent.collect()
        if not arrived:
            continue  # answered before (replayed), or waiting for a deferred agent
        loss = learn(s, arrived, stop - start)
        s.report(min(stop, s.budget), s.pcc, loss)
        if s.config.stop_at is not None and s.pcc is not None and s.pcc >= s.config.stop_at:
            return True  # good enough: no more answers are paid for
    return False


def ask_chunk(s: Session, start: int, stop: int) -> bool:
    """Ask the positions of ``[start, stop)`` not asked before (and, on a resumed run, those that got
    only invalid answers, one attempt later). Returns whether anything was asked."""
    asked = s.agent.asked(start, stop)
    retry = s.ledger.invalid_only(start, stop, s.agent.sources()) if s.resumed else {}
    if len(asked) == stop - start and not retry:
        return False
    if not s.agent.ready(s.chunk):
        return False  # a deferred agent with a chunk still waiting: the next one is chosen later
    factor = _once(s.factor_now)  # Φ̂ as learnt so far, copied once a chunk for the strategy and a pool
    queries = s.source.get(start, stop, factor)
    pending = queries.select(~np.isin(queries.seq, asked) | np.isin(queries.seq, list(retry)))
    s.agent.ask(pending, retry, factor)
    return True


def learn(s: Session, arrived: list[tuple[Queries, Answers]], n_asked: int) -> float | None:
    """Learn from the answers that arrived, and snapshot every ``every`` answers. Returns the loss of
    the learner's steps (gradient learner), else ``None``."""
    for queries, answers in arrived:
        s.n_ok += int(answers.ok.sum())
        if s.preq is not None:  # score the random share before learning from it
            s.preq.score(s.learner, queries, answers,
                         random_positions(s.config.seed, answers.seq, s.config.active.random_share))
        feed(s.learner, queries, answers, s.held, s.sources.of(answers))
        s.design.observe(queries, answers)
    refit_noise(s)
    loss = None
    if s.learner_name == "gradient":
        steps = s.learner.arrival_steps(n_asked)
        loss = s.learner.step(max(steps, ACTIVE_STEPS) if s.config.active is not None else steps)
        s.learner.fit_sharpness()  # learn_sharpness: each source's κ from its scored new answers
    if s.n_ok - s.last_snap >= s.every and s.learner_name in ("gradient", "pivot"):
        s.pcc, s.last_snap = snapshot(s), s.n_ok
    return loss


def _once(fn: Callable[[], np.ndarray | None]) -> Callable[[], np.ndarray | None]:
    """``fn``, computed on the first call only (a chunk's factor is read by the strategy and a pool)."""
    box: list = []

    def get():
        if not box:
            box.append(fn())
        return box[0]

    return get


def live_extra(s: Session, final: bool = False) -> dict:
    """The readouts stored with each snapshot: hold-out agreement, the agent's own, the noise fitted."""
    extra: dict = {}
    if s.held is not None:
        extra["holdout_agreement"], extra["holdout_n"] = s.held.agreement(s.learner), s.held.n
    elif s.preq is not None:
        extra["holdout_agreement"], extra["holdout_n"] = s.preq.agreement(), s.preq.n
        extra["holdout_kind"] = "prequential"
    extra.update(s.agent.summary(final))
    if s.noise:  # the flip rate each source's answers are fitted at
        extra["source_noise"] = s.sources.named(s.noise)
    if s.learner_name == "gradient" and s.learner.source_sharpness:  # and the κ, where fitted
        extra["source_sharpness"] = s.sources.named(s.learner.source_sharpness)
    if s.learner_name == "pivot":  # its rank and the hold-out pairs' PCC, the readout without Φ*
        extra["pivot"] = s.learner.summary()
    return extra


def snapshot(s: Session) -> float:
    """A snapshot while answers arrive; the final one is stored after the fit."""
    u = s.learner.view()  # read in place: nothing steps the learner while the snapshot is taken
    pcc = s.design.pcc(u, s.target.factor)
    if s.target.p <= LIVE_FACTOR_MAX_P:  # small enough to store each time (the final fit stores it anyway)
        s.store.save_factor(s.run_id, s.design.native_factor(u))
    extra = {"loss": s.learner.last_loss, "learner": s.learner_name, "final": False, **live_extra(s)}
    s.store.add_snapshot(s.run_id, s.n_ok, pcc, time.perf_counter() - s.t0, extra)
    s.history.append((s.n_ok, pcc))
    return pcc


def final_fit(s: Session) -> None:
    """Fit to convergence, reporting the fit's steps and stages."""
    if s.learner_name != "gradient":
        s.report(s.n_ok, s.pcc, None, stage=f"{s.learner_name} solve")
        s.learner.finish()
        return
    fit_pcc, reports = s.pcc, [0]

    def fit_progress(done: int, total: int, loss: float) -> None:
        nonlocal fit_pcc
        reports[0] += 1
        if reports[0] % 10 == 0:  # a PCC readout costs O(p·r²): every tenth report
            fit_pcc = s.design.pcc(s.learner.view(), s.target.factor)
        s.report(s.n_ok, fit_pcc, loss, fit=(done, total))

    s.learner.fit_sharpness(final=True)
    s.learner.finish(progress=fit_progress, stage=lambda name: s.report(s.n_ok, fit_pcc, None, stage=name))


def finish(s: Session) -> RunResult:
    """The final fit, the final snapshot with every readout, and the run's status."""
    final_fit(s)
    pcc = s.design.pcc(s.learner.view(), s.target.factor)
    factor = s.design.native_factor(s.learner.factor())  # float64, the run's own
    s.store.save_factor(s.run_id, factor)
    if s.config.rfm_mse and s.target.meta.get("kind") == "rfm":
        s.report(s.n_ok, pcc, None, stage="RFM test MSE")
    extra = readouts(s.target, factor) if s.config.rfm_mse else {}
    extra.update(live_extra(s, final=True))
    extra.update(s.source.summary())
    # What the answers cost a reader: activations shown, one question per stored answer (any status)
    extra["activations_shown"] = s.store.count_answers(s.run_id, status=None) * s.design.shown
    if s.learner_name == "gradient":  # every answer learnt once: the stored ok answers, held-out ones aside
        extra["learned"] = s.learner.n_given
        held = s.learner.n_pairs + s.learner.n_triplets + s.learner.n_tuples
        if held < extra["learned"]:  # LearnerConfig.max_rows: the fit held a uniform sample of them
            extra["held"] = held
    if s.design.adaptive:
        extra["design"] = s.design.summary()
    s.store.add_snapshot(s.run_id, s.n_ok, pcc, time.perf_counter() - s.t0,  # one final snapshot, every readout
                         {"loss": s.learner.last_loss, "learner": s.learner_name, "final": True, **extra})
    s.history.append((s.n_ok, pcc))
    s.store.set_status(s.run_id, "waiting" if s.agent.outstanding() else "done")
    s.report(s.n_ok, pcc, s.learner.last_loss, stage="done")
    return RunResult(s.run_id, pcc, s.n_ok, s.budget, s.design.count, s.learner_name,
                     time.perf_counter() - s.t0, factor, s.history, extra)


def no_usable_answers(store: Store, run_id: str, n_ok: int) -> None:
    """Stop before the final fit when no answer is usable (an LLM whose every reply was invalid): one
    clear error instead of a learner failing on no data. The run stays resumable (status ``no-data``):
    run it again to ask the invalid ones again."""
    if n_ok > 0:
        return
    info = store.invalid_reasons(run_id)
    store.set_status(run_id, "no-data")
    reasons = "; ".join(f"{why!r} ×{k}" for why, k in info["reasons"]) or "none stored"
    raise NoUsableAnswersError(f"Run {run_id!r} has no usable answer: {info['answers']} asked, {info['invalid']} "
                               f"invalid; commonest reasons: {reasons}. Resume with --run-id {run_id} to ask "
                               "the invalid ones again.")


def readouts(target: Target, factor: np.ndarray) -> dict:
    """Target-specific readouts beyond PCC: for the RFM target, the paper's test MSE."""
    if target.meta.get("kind") != "rfm":
        return {}
    from ..targets import rfm

    result = rfm.fit_rfm(rfm.RFMConfig(figure=target.meta["figure"], seed=target.meta["seed"]))
    base = rfm.baseline_mses(result)
    return {"mse": rfm.test_mse(result, factor @ factor.T), "mse_truth": base["truth"],
            "mse_identity": base["identity"]}
