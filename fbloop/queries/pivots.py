"""Adaptive supports for equality pairs: pivot coordinates chosen from the answers, then every coordinate against them.

The paper's sparse design asks random 3-sparse pairs. Below the target's degrees
of freedom (``p·r − r(r−1)/2``, ~7.0M at the Pythia shape) they cannot pin ``Φ*``,
and they spread what they do pin thinly: each answer mixes three fresh entries.
The **pivot design** spends every answer on one entry that the answers so far have
not pinned and that the low-rank structure cannot supply. Coordinates are taken in
a random order ``c_0, c_1, …`` (fixed by the seed):

1. **Block** (``k(k+1)/2`` pairs): ``e_{c_b}`` and ``e_{c_a} + e_{c_b}`` for ``a < b < k``,
   column ``b`` by column — ``Φ*`` on the first ``k`` coordinates, exactly. The block
   *grows from the answers*: it starts at ``block`` (default 32) coordinates and,
   each time ``Φ̂`` on it is full rank (the target's rank may be larger), grows by
   a quarter (:func:`grown`), up to ``MAX_BLOCK``: the final block exceeds the rank by
   at most a quarter, where doubling could spend 4× the block's answers (ChessGPT
   shape, rank 512: a block of 594 coordinates, 177k answers, against 1024 and 525k).
   Once it is rank deficient, its numerical rank ``r̂`` is the target's rank as the
   answers show it and the block is final.
2. **Diagonal** (``p − k`` pairs): ``e_i`` for every coordinate outside the block.
3. **Rounds** (``p − k`` pairs each): round ``t`` asks ``e_i + e_{π_t}`` for every
   coordinate ``i`` outside the block, in a fresh random order each round. The pivot
   order ``π`` is chosen *from the block's answers*: a greedy pivoted Cholesky of
   ``Φ̂_KK``, each pivot the block coordinate its predecessors explain least (the
   largest residual variance), so round ``t`` adds the entry that adds most to
   what rounds ``< t`` pinned. After ``r̂`` rounds noise-free answers determine
   ``Φ*``; rounds go on through the rest of ``π`` (averaging noise), then start over.

The estimate (:class:`PivotLearner`) is Nyström's: with ``W = Φ̂_KK = L Lᵀ`` and
coordinate ``i`` measured against pivots ``S``, ``U_i = Φ̂_iS W_SS⁺ L_S`` — the
minimum-norm row consistent with its answers, so ``Φ̂_ij = Φ̂_iS W_SS⁺ Φ̂_Sj``.
For a target whose atoms are isotropic in their ``r``-dimensional span, ``T`` rounds
give a PCC near ``sqrt(T / r)``: measuring every coordinate against the same ``T``
pivots beats completing ``T·p/r`` coordinates fully (PCC ``T/r``), since
``E min(f_i, f_j)`` is largest when every coordinate's share ``f`` is equal.

Choices (the README repeats them):

- **2-sparse, values 1.** A third nonzero would put a second unknown entry into the
  same answer. Every design query has 1 or 2 nonzeros of value 1.
- **Hold-out.** Every ``HOLDOUT_EVERY``-th position (5 %) is a random pair from the
  paper's sparse design (``μ``, ``s`` of the design config): an unbiased sample on
  which the learner's predicted scale is scored against the answer (its
  ``holdout_pcc``), with no ``Φ*`` needed. The pivot learner does not fit them.
- **Barriers.** A block stage's size, and so every later position, depends on the
  previous stage's answers: :meth:`PivotDesign.ready_until` cuts the loop's chunk at
  the end of an undecided stage, and a decision is made once every query before it
  has been asked (answers that never came count as 0). Decisions read only the
  block's own entries, so a resumed run, replaying its stored answers, makes the
  same ones.
- **Noisy answers.** The rank test reads a residual variance below ``rank_tol`` (default
  ``PIVOT_TOL``) × the largest diagonal as zero. Noise makes ``Φ̂_KK`` indefinite, so the
  residuals fall below zero soon after the signal's rank, and the learner keeps no more
  directions of ``Φ̂_KK`` than the rank read. Measured on ``synthetic:p=300,rank=20`` with
  the oracle's logistic pair noise, 9,000 answers: the default read rank 21 in the first
  block of 32, PCC 0.9866 (T = 0.01) and 0.9999 (T = 0.001); ``rank_tol = 0.03`` read 20
  and gave 0.9755 and 0.9831, so the default stays.
- **A full-rank block at** ``MAX_BLOCK`` is reported (``block_full_rank``): ``Φ̂`` is
  then at most a rank-``MAX_BLOCK`` approximation.
"""

from __future__ import annotations

import numpy as np

from .. import seeding
from ..errors import ConfigError, NonFiniteError, ShapeError
from ..records import Queries
from ..sparse import SparseBatch
from ..targets.target import Target
from .designs import Design, DesignConfig, sample_sparse

DEFAULT_BLOCK = 32  # the block's first size; it grows by GROWTH while Φ̂ on it is full rank
GROWTH = 1.25  # a full-rank block's next size, relative (at least 8 coordinates more)
MAX_BLOCK = 2048  # the largest block (its accumulators: 2048² entries); ranks above it are not seen
HOLDOUT_EVERY = 20  # every 20th position is a random sparse pair: the 5 % unbiased hold-out
PIVOT_TOL = 1e-9  # residual variance below this share of the largest diagonal counts as zero (rank)
HOLD_KEEP = 100_000  # hold-out answers the learner keeps for its readout


def tri(k: int) -> int:
    """Block slots of a ``k``-coordinate block: ``k(k+1)/2``."""
    return k * (k + 1) // 2


def grown(k: int, cap: int) -> int:
    """The block size after a stage whose ``k``-coordinate block was full rank."""
    return min(max(int(np.ceil(GROWTH * k)), k + 8), cap)


def pivot_count(p: int, r: int, block: int | None = None) -> int:
    """Positions until noise-free answers determine a rank-``r`` ``Φ*`` (``p × p``), hold-outs included."""
    cap = min(p, MAX_BLOCK)
    k = min(block or DEFAULT_BLOCK, cap)
    while k <= r and k < cap:
        k = grown(k, cap)
    return position(tri(k) + (p - k) * (1 + min(r, k)))


def position(slot: int) -> int:
    """The position of design slot ``slot`` (hold-out positions take no slot)."""
    return slot + slot // (HOLDOUT_EVERY - 1)


def pivot_order(w: np.ndarray, tol: float = PIVOT_TOL) -> tuple[np.ndarray, int]:
    """Greedy pivoted-Cholesky order of a PSD ``w`` (k × k) and its numerical rank.

    Pivot ``t`` is the coordinate with the largest residual variance given pivots
    ``< t``. Once every residual is below ``tol`` × the largest diagonal, the rest
    follow in decreasing diagonal order (they add nothing noise-free answers would
    not already imply). Returns ``(order, rank)``.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ShapeError(f"Expect a square block, got shape {w.shape}.")
    if not np.all(np.isfinite(w)):
        raise NonFiniteError("The block's answers hold NaN or Inf.")
    k = len(w)
    resid = np.diag(w).copy()
    scale = max(float(resid.max(initial=0.0)), 1e-300)
    chol = np.zeros((k, k))
    order: list[int] = []
    left = np.ones(k, dtype=bool)
    for t in range(k):
        j = int(np.argmax(np.where(left, resid, -np.inf)))
        if resid[j] <= tol * scale:
            break
        col = (w[:, j] - chol[:, :t] @ chol[j, :t]) / np.sqrt(resid[j])
        chol[:, t] = col
        resid = resid - col**2
        left[j] = False
        order.append(j)
    rank = len(order)
    rest = np.flatnonzero(left)
    rest = rest[np.argsort(-np.diag(w)[rest], kind="stable")]
    return np.concatenate([np.array(order, dtype=np.int64), rest]).astype(np.int64), rank


class PivotDesign(Design):
    """The pivot design: a block grown from the answers, the diagonal, then rounds against pivots."""

    adaptive = True

    def __init__(self, config: DesignConfig, target: Target, seed: int):
        super().__init__(config, target, seed)
        p = self.p
        self.coords = seeding.block_rng(seed, "pivot-block", 0).permutation(p)  # (p,) c_0, c_1, …
        self.rank_of = np.empty(p, np.int64)
        self.rank_of[self.coords] = np.arange(p)
        self.k_cap = min(p, MAX_BLOCK)
        self.k = min(config.block or DEFAULT_BLOCK, self.k_cap)  # the block's current size
        self.final = False  # the block's size is decided (and π with it)
        self.stages = [self.k]
        self.diag_sum = np.zeros(self.k_cap)
        self.diag_n = np.zeros(self.k_cap, np.int32)
        self.pair_sum = np.zeros((self.k_cap, self.k_cap))  # [b, a], a < b: Σ c over e_{c_a} + e_{c_b}
        self.pair_n = np.zeros((self.k_cap, self.k_cap), np.int32)
        self.asked_until = 0  # one past the last slot observed (answered or not)
        self.order: np.ndarray | None = None  # π, positions in the block, once it is final
        self.rank_detected: int | None = None

    # ------------------------------------------------------------ layout

    @property
    def block(self) -> np.ndarray:
        """The block's coordinates (its current size until it is final)."""
        return self.coords[: self.k]

    @property
    def count(self) -> int:
        """Positions until noise-free answers determine a rank-``r`` ``Φ*``, hold-outs included."""
        return pivot_count(self.p, self.rank, self.config.block)

    @staticmethod
    def slots(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per position: is it a hold-out, and its design slot (hold-outs take none)."""
        seq = np.asarray(seq, dtype=np.int64)
        hold = seq % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
        return hold, seq - (seq + 1) // HOLDOUT_EVERY

    def ready_until(self, start: int, stop: int) -> int:
        """The end of the first undecided stage in ``[start, stop)``, deciding stages whose queries were asked."""
        while not self.final and self.asked_until >= tri(self.k):
            self._decide()
        if self.final:
            return stop
        end = position(tri(self.k))  # the stage's last query is at end − 1
        if end <= start:
            raise ConfigError(f"The pivot design's block stage ends at position {end}, but its answers up to "
                              f"slot {tri(self.k)} are not all in (asked until slot {self.asked_until}); "
                              "ask the positions in order.")
        return min(stop, end)

    def _decide(self) -> None:
        """The stage is answered: grow the block if ``Φ̂`` on it is full rank, else fix it and ``π``."""
        order, rank = pivot_order(self.block_phi(), self.config.rank_tol or PIVOT_TOL)
        if rank == self.k and self.k < self.k_cap:
            self.k = grown(self.k, self.k_cap)
            self.stages.append(self.k)
            return
        self.order, self.rank_detected, self.final = order, rank, True

    def _queries(self, start: int, stop: int) -> Queries:
        seq = np.arange(start, stop, dtype=np.int64)
        hold, slot = self.slots(seq)
        if not self.final and slot[~hold].max(initial=-1) >= tri(self.k):
            raise ConfigError(f"Positions [{start}, {stop}) reach past the pivot design's undecided block stage "
                              f"(it ends at {position(tri(self.k))}); cut chunks with ready_until().")
        width = max(2, min(self.config.s, self.p))
        idx = np.zeros((len(seq), width), np.int64)
        val = np.zeros((len(seq), width))
        idx[~hold, :2], val[~hold, :2] = self._slot_queries(slot[~hold])
        if hold.any():
            h = seq[hold] // HOLDOUT_EVERY  # hold-out number: its draw depends on it alone
            cfg = self.config
            hi, hv = seeding.draw(self.seed, "pivot-holdout", int(h.min()), int(h.max()) + 1,
                                  lambda rng, n: sample_sparse(rng, n, self.p, cfg.mu, cfg.s))
            rows = h - h.min()
            idx[hold, : hi.shape[1]], val[hold, : hv.shape[1]] = hi[rows], hv[rows]
        return Queries("pair", seq, SparseBatch(idx, val, self.p))

    def _slot_queries(self, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(slot)
        idx = np.zeros((n, 2), np.int64)
        val = np.zeros((n, 2))
        nb, nr = tri(self.k), self.p - self.k
        if self.final and nr == 0:  # the block is every coordinate: ask it again and again
            slot = slot % nb
        blk = slot < nb
        b = ((np.sqrt(8 * slot[blk] + 1) - 1) // 2).astype(np.int64)  # column: tri(b) ≤ slot < tri(b + 1)
        b -= tri(b) > slot[blk]  # guard the float square root
        b += tri(b + 1) <= slot[blk]
        a = slot[blk] - tri(b)
        diag = a == b
        idx[blk, 0], idx[blk, 1] = self.coords[b], np.where(diag, 0, self.coords[a])
        val[blk, 0], val[blk, 1] = 1.0, np.where(diag, 0.0, 1.0)
        dg = (slot >= nb) & (slot < nb + nr)
        idx[dg, 0], val[dg, 0] = self.coords[self.k + slot[dg] - nb], 1.0
        rnd = slot >= nb + nr
        if rnd.any():
            r = slot[rnd] - nb - nr
            t, pos = r // nr, r % nr
            coord = np.empty(len(r), np.int64)
            for tt in np.unique(t):  # each round visits the coordinates in its own random order
                sel = t == tt
                perm = seeding.block_rng(self.seed, "pivot", int(tt)).permutation(nr)
                coord[sel] = self.coords[self.k + perm[pos[sel]]]
            idx[rnd] = np.stack([coord, self.coords[self.order[t % self.k]]], 1)  # type: ignore[index]
            val[rnd] = 1.0
        return idx, val

    # ------------------------------------------------------------ adaptivity

    def observe(self, queries: Queries, answers) -> None:
        """Take a chunk's ok answers into the block's estimate (entries among the first ``k_cap`` coordinates)."""
        if self.final:
            return  # the block and π are fixed
        hold, slot = self.slots(queries.seq)
        if len(slot):
            self.asked_until = max(self.asked_until, int(slot.max()) + 1)
        ok = answers.ok
        pos = {int(s): i for i, s in enumerate(queries.seq)}
        rows = np.array([pos[int(s)] for s in answers.seq[ok]], dtype=np.int64)
        if not len(rows):
            return
        keep = ~hold[rows]
        rows, c = rows[keep], answers.value[ok][keep]
        u = queries.a[rows]
        nnz = np.count_nonzero(u.values, axis=1)
        ranks = self.rank_of[u.indices[:, :2]]  # (n, 2)
        one = (nnz == 1) & (ranks[:, 0] < self.k_cap)
        np.add.at(self.diag_sum, ranks[one, 0], c[one])
        np.add.at(self.diag_n, ranks[one, 0], 1)
        two = (nnz == 2) & (ranks.max(axis=1) < self.k_cap)
        hi, lo = ranks[two].max(axis=1), ranks[two].min(axis=1)
        np.add.at(self.pair_sum, (hi, lo), c[two])
        np.add.at(self.pair_n, (hi, lo), 1)

    def block_phi(self) -> np.ndarray:
        """``Φ̂`` on the block's current ``k`` coordinates, from its answers so far (unanswered entries 0)."""
        k = self.k
        diag = self.diag_sum[:k] / np.maximum(self.diag_n[:k], 1)
        s, n = self.pair_sum[:k, :k], self.pair_n[:k, :k]
        w = np.where(n > 0, (s / np.maximum(n, 1) - diag[:, None] - diag[None, :]) / 2, 0.0)
        w = np.tril(w, -1)
        w += w.T
        w[np.diag_indices(k)] = diag
        return w

    def summary(self) -> dict:
        return {"block": self.k, "stages": list(self.stages), "rank_detected": self.rank_detected,
                "block_full_rank": (self.rank_detected == self.k) if self.final else None,
                "pivots": None if self.order is None else [int(x) for x in self.block[self.order[:8]]]}
