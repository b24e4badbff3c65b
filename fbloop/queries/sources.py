"""Where a run's queries come from: its fixed design, or an active strategy that never keeps an agent waiting.

A fixed design's queries are a pure function of their positions
(:meth:`fbloop.queries.designs.Design.queries`). An active run's are chosen from what the
learner knows (:class:`fbloop.queries.active.ActiveStrategy`), so they exist only once
asked: they are stored with their answers, and a resumed run reads them back.

**Scoring never blocks answering.** :class:`ActiveQueries` scores the *next*
chunk's candidates in a background thread while the agent answers the current
one (and the learner learns from it): chunk ``k + 1`` is chosen under the ``Φ̂``
learnt from chunks ``≤ k − 1``, one chunk behind. The loop only waits when
scoring takes longer than answering and learning together; ``wait_s`` counts
that time, ``score_s`` the time scoring took, so a run reports how much of the
scoring was hidden. numpy releases the GIL in its kernels, so on two cores the
scoring and the learner's steps do run side by side.

**The random share.** Which positions get a uniformly random query (the
strategy's unbiased share, ``ActiveConfig.random_share``) is a pure function of
``(seed, position)`` (:func:`random_positions`), like the held-out set, so a
resumed run agrees on them. They are learned from like every other answer; the
loop scores each of them *before* learning from it (:class:`Prequential`) —
an agreement readout for runs with no ``Φ*`` that the chosen (hard by
construction) queries cannot give.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from .. import metrics, seeding
from ..errors import StoreError
from ..records import Answers, Queries
from ..records import TUPLE_KINDS
from .active import ActiveConfig, ActiveStrategy, Proposal
from .active_tuples import TupleStrategy, answered_first, predicted_first
from .designs import DesignConfig

RANDOM_SALT = 1_000_003  # the random share's hash seed is the run's seed plus this: not the held-out set


def make_strategy(p: int, config: ActiveConfig, design: DesignConfig) -> ActiveStrategy:
    """The active strategy for a design: triplets, or closest / rank / odd-one-out tuples."""
    return (TupleStrategy if design.name in TUPLE_KINDS else ActiveStrategy)(p, config, design)


def random_positions(seed: int, seq: np.ndarray, share: float) -> np.ndarray:
    """Which positions of an active run are asked a uniformly random query (bool mask)."""
    return seeding.held_out(seed + RANDOM_SALT, seq, share)


class ActiveQueries:
    """An active run's queries, chunk by chunk, the next one scored while the current one is answered."""

    def __init__(self, strategy: ActiveStrategy, seed: int):
        self.strategy, self.seed = strategy, seed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fbloop-scoring")
        self._next: tuple[int, int, Future[tuple[Proposal, float]]] | None = None
        self.score_s = 0.0  # seconds spent choosing queries (in the background thread, mostly)
        self.wait_s = 0.0  # seconds the loop stood waiting for them
        self.wait_max_s = 0.0
        self.chunks = 0

    def _propose(self, start: int, stop: int, factor: np.ndarray | None) -> tuple[Proposal, float]:
        t0 = time.perf_counter()
        seq = np.arange(start, stop, dtype=np.int64)
        mask = random_positions(self.seed, seq, self.strategy.config.random_share)
        rng = np.random.default_rng([self.seed, start])  # the draws depend on the position, not on timing
        prop = self.strategy.propose(stop - start, factor, rng, start=start, random_mask=mask)
        return prop, time.perf_counter() - t0

    def prefetch(self, start: int, stop: int, factor: np.ndarray | None) -> None:
        """Start choosing the queries at ``[start, stop)`` under ``factor``, in the background."""
        if start >= stop or (self._next is not None and self._next[:2] == (start, stop)):
            return
        self.cancel()
        self._next = (start, stop, self._pool.submit(self._propose, start, stop, factor))

    def get(self, start: int, stop: int, factor: np.ndarray | None) -> Queries:
        """The queries at ``[start, stop)``: the prefetched ones, or chosen now (counted as waiting)."""
        t0 = time.perf_counter()
        if self._next is not None and self._next[:2] == (start, stop):
            prop, took = self._next[2].result()
            self._next = None
        else:
            self.cancel()
            prop, took = self._propose(start, stop, factor)
        waited = time.perf_counter() - t0
        self.score_s += took
        self.wait_s += waited
        self.wait_max_s = max(self.wait_max_s, waited)
        self.chunks += 1
        return prop.queries

    def observe(self, queries: Queries) -> None:
        """Count stored queries (a resumed run's) towards the strategy's coverage."""
        self.strategy.observe(queries)

    def cancel(self) -> None:
        if self._next is not None:
            self._next[2].cancel()
            self._next = None

    def close(self) -> None:
        self.cancel()
        self._pool.shutdown(wait=True)

    def summary(self) -> dict:
        return {"strategy": self.strategy.config.strategy, "chunks": self.chunks,
                "score_s_total": round(self.score_s, 4), "wait_s_total": round(self.wait_s, 4),
                "wait_s_max": round(self.wait_max_s, 4)}


class FixedQueries:
    """A fixed design's queries: position ``i`` is the design's ``i``-th query, whatever was learnt."""

    def __init__(self, design):
        self.design = design

    def get(self, start: int, stop: int, factor: Callable[[], np.ndarray | None]) -> Queries:
        return self.design.queries(start, stop)

    def observe(self, queries: Queries) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict:
        return {}


class ActiveSource:
    """An active run's queries by position: what a killed run had stored is read back; the rest is
    chosen under the learner's current ``Φ̂`` (``factor()``), the next chunk scored in the background."""

    def __init__(self, active: ActiveQueries, store, run_id: str, budget: int, chunk: int):
        self.active, self.store, self.run_id = active, store, run_id
        self.budget, self.chunk = budget, chunk
        self.stored_until = store.next_position(run_id)  # positions below were chosen (and stored) before

    def get(self, start: int, stop: int, factor: Callable[[], np.ndarray | None]) -> Queries:
        u = factor()
        queries = stored_chunk(self.store, self.run_id, start, stop) if start < self.stored_until else None
        if queries is None:
            queries = self.active.get(start, stop, u)
        if self.stored_until <= stop < self.budget:  # score the next chunk while this one is answered
            self.active.prefetch(stop, min(stop + self.chunk, self.budget), u)
        return queries

    def observe(self, queries: Queries) -> None:
        self.active.observe(queries)

    def close(self) -> None:
        self.active.close()

    def summary(self) -> dict:
        return {"active": self.active.summary()}


def stored_chunk(store, run_id: str, start: int, stop: int) -> Queries | None:
    """The queries an active run stored at ``[start, stop)``; ``None`` when none were."""
    got = store.load_queries(run_id, np.arange(start, stop, dtype=np.int64))
    if len(got) == 0:
        return None
    if len(got) != stop - start:  # queries and answers commit together: a partial chunk is damage
        raise StoreError(f"Run {run_id!r} stores {len(got)} of the {stop - start} queries at positions "
                         f"{start}–{stop - 1}; an active run's chunk is stored whole or not at all.")
    return got


class Prequential:
    """Agreement of ``Φ̂``'s predictions with answers it has not yet learned from.

    The loop calls :meth:`score` with a chunk's answers on the random-share
    positions *before* feeding them; :meth:`agreement` is the share of the last
    ``window`` such answers that ``Φ̂`` predicted (the model of the moment, not
    the run's average): a triplet's sign, or a tuple answer's first place (the
    nearest candidate, the odd item; chance is ``1/k``).
    """

    def __init__(self, window: int = 1000):
        self.window = window
        self._recent: deque[tuple[int, float]] = deque()
        self._n_recent = 0
        self.n = 0

    def score(self, learner, queries: Queries, answers: Answers, mask: np.ndarray) -> None:
        learnt = getattr(learner, "n_triplets", 0) + getattr(learner, "n_tuples", 0)
        if not hasattr(learner, "predict_triplets") or learnt == 0:
            return  # nothing learned yet: no prediction to score
        keep = answers.ok & mask
        if queries.kind != "rank":  # a triplet's tie, a "no clear winner": nothing to agree on
            keep &= answers.value != 0
        rows = np.flatnonzero(keep)
        if not len(rows):
            return
        pos = {int(s): i for i, s in enumerate(queries.seq)}
        q = queries.select(np.array([pos[int(s)] for s in answers.seq[rows]]))
        if q.kind == "triplet":
            pred = learner.predict_triplets(q.a, q.b, q.c, band=0.0)
            agree = metrics.triplet_agreement(pred, answers.value[rows])
        else:
            agree = float(np.mean(predicted_first(q, learner.factor()) == answered_first(q, answers.value[rows])))
        self._recent.append((len(rows), agree))
        self._n_recent += len(rows)
        self.n += len(rows)
        while self._n_recent - self._recent[0][0] >= self.window:
            self._n_recent -= self._recent.popleft()[0]

    def agreement(self) -> float | None:
        if not self._n_recent:
            return None
        return sum(k * a for k, a in self._recent) / self._n_recent
