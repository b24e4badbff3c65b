"""The paper's query designs, as chunked generators of sparse activations.

A design turns a target and a seed into a deterministic sequence of queries:
*equality pairs* ``u`` (answered with the scale ``c = uᵀΦu / yᵀΦy`` against the
design's anchor ``y``) or *ternary triplets* ``(a, b, c)``. Query ``i`` depends only
on ``(design, target, seed, i)``, so a resumed run regenerates exactly the
queries it had.

| design        | paper  | queries                                   | count               |
|---------------|--------|-------------------------------------------|---------------------|
| eigen         | Thm 1  | ``v_i``, ``v_i+v_j`` (i<j≤r) vs ``y=Σv_i``, null ``v_k`` (in the eigenbasis) | ``r(r+1)/2 + p − r`` |
| constructive  | Thm 2  | ``e_i``, ``e_i+e_j`` vs ``y = e_0``       | ``P = p(p+1)/2``    |
| gaussian      | Thm 3  | i.i.d. ``N(0, I_p)`` vs a Gaussian anchor | ``P − 1``           |
| sparse        | Thm 4  | coordinate 0 w.p. ``μ`` else U(0,1], ≤ s nonzeros, vs ``e_0`` | more than ``P`` |
| coverage      | —      | as sparse, ``s`` nonzeros on supports that cover the coordinates evenly | more than ``P`` |
| pivot         | —      | adaptive: ``e_i + e_j`` against pivots chosen from the answers (:mod:`fbloop.queries.pivots`) | ``≈ p·r`` |
| triplet       | —      | random ternary triplets ``(a, b, c)``     | open-ended          |
| closest, rank | —      | a reference and ``k`` candidates: the closest one, or their order (:mod:`fbloop.queries.tuples`) | open-ended |
| odd           | —      | three items: the odd one out (:mod:`fbloop.queries.tuples`) | open-ended |

Coordinates: a design may carry an orthonormal ``basis`` ``B`` (``p × p``, held
implicitly as an :class:`EigenBasis`: the range eigenvectors from the target's
thin SVD plus a Householder completion, ``O(p·r)`` memory, never ``p × p``); its
queries are then sparse *in that basis* and stand for the activations ``B w``.
The eigendecomposition design does this: ``v_i + v_j`` is the 2-sparse
``e_i + e_j`` over the eigenvectors, so its 134,912 queries at the ChessGPT shape
are stored as 2 nonzeros each instead of 4096. :meth:`Design.to_native` turns
such queries into feature coordinates (for the LLM and the form),
:meth:`Design.design_factor` gives the oracle ``Φ*`` in the design's coordinates
(``Bᵀ V``), and :meth:`Design.native_factor` maps a learned ``U`` back (``B U``).

Choice (documented in the README): the sparse design never emits an all-zero
activation (it carries no information); the number of nonzeros is drawn from
``Binomial(p, 1 − μ)`` conditioned on ≥ 1 and capped at ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import metrics, seeding
from ..errors import ConfigError
from ..records import MAX_K, Queries, shown_per_question
from ..sparse import SparseBatch
from ..targets.target import Target

DesignName = Literal["eigen", "constructive", "gaussian", "sparse", "coverage", "pivot", "triplet", "closest", "rank",
                     "odd"]
DESIGNS: tuple[str, ...] = ("eigen", "constructive", "gaussian", "sparse", "coverage", "pivot", "triplet", "closest",
                            "rank", "odd")
DEFAULT_K = 4  # closest / rank: candidates per query when the config leaves k open


@dataclass(frozen=True)
class DesignConfig:
    name: DesignName = "gaussian"
    mu: float = 0.9  # sparse/triplet: probability that a coordinate is zero
    s: int = 3  # sparse/triplet: maximum nonzeros per activation
    dist: Literal["sparse", "gaussian"] = "sparse"  # triplet: activation distribution
    block: int | None = None  # pivot: the block's first size (None → fbloop.queries.pivots.DEFAULT_BLOCK); it grows
    rank_tol: float | None = None  # pivot: residual share the rank test reads as 0 (None → pivots.PIVOT_TOL)
    k: int | None = None  # closest / rank: candidates per query (None → DEFAULT_K); None keeps older configs equal

    def __post_init__(self) -> None:
        if self.name not in DESIGNS:
            raise ConfigError(f"Unknown design {self.name!r}; expect one of {list(DESIGNS)}.")
        if not 0.0 <= self.mu < 1.0:
            raise ConfigError(f"Expect μ in [0, 1), got mu={self.mu}.")
        if self.s < 1:
            raise ConfigError(f"Expect s ≥ 1 nonzeros, got s={self.s}.")
        if self.dist not in ("sparse", "gaussian"):
            raise ConfigError(f"Expect dist 'sparse' or 'gaussian', got {self.dist!r}.")
        if self.block is not None and (self.name != "pivot" or self.block < 2):
            raise ConfigError(f"Expect block ≥ 2 and only for the pivot design, got block={self.block} "
                              f"with design {self.name!r}.")
        if self.k is not None and (self.name not in ("closest", "rank") or not 2 <= self.k <= MAX_K):
            raise ConfigError(f"Expect k in [2, {MAX_K}] and only for the closest and rank designs, got k={self.k} "
                              f"with design {self.name!r}.")
        if self.rank_tol is not None and (self.name != "pivot" or not 0.0 < self.rank_tol < 1.0):
            raise ConfigError(f"Expect rank_tol in (0, 1) and only for the pivot design, got "
                              f"rank_tol={self.rank_tol} with design {self.name!r}.")


# ---------------------------------------------------------------- bounds


def n_params(p: int) -> int:
    """``P = p(p+1)/2``, the number of free entries of a symmetric ``p × p`` matrix."""
    return p * (p + 1) // 2


# ---------------------------------------------------------------- counts


def fixed_count(name: str, p: int, r: int) -> int | None:
    """Pairs a fixed design needs (and, for the constructive ones, emits) for ``(p, r)``; ``None`` for
    sampling designs without a closed form (sparse, coverage, triplet). The pivot design's count is
    :func:`fbloop.queries.pivots.pivot_count`; :func:`fbloop.queries.catalogue.design_count` has both."""
    if name == "eigen":
        return r * (r + 1) // 2 + (p - r)
    if name == "constructive":
        return n_params(p)
    if name == "gaussian":
        return n_params(p) - 1
    return None


# ---------------------------------------------------------------- samplers


def sample_sparse(rng: np.random.Generator, n: int, p: int, mu: float, s: int, argsort_max_p: int = 512
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sparse activations: ``(indices, values)`` of shape ``(n, min(s, p))``.

    Nonzero count ``k ~ min(Binomial(p, 1−μ) | k ≥ 1, s)``; distinct uniform
    indices; values ``Uniform(0, 1]``; unused slots hold value 0. Indices come from
    an argsort of ``(n, p)`` uniforms up to ``p = argsort_max_p``, by rejection above
    (same law; the designs keep 512, since their draws are part of the run format).
    """
    from scipy import stats  # here: importing scipy.stats costs ~1 s that the other designs need not pay

    s = min(s, p)
    ks = np.arange(1, s + 1)
    pmf = stats.binom.pmf(ks, p, 1 - mu)
    pmf[-1] = stats.binom.sf(s - 1, p, 1 - mu)  # P(k ≥ s) goes to the cap
    if pmf.sum() <= 0:  # μ so close to 1 that only k = 1 is representable
        pmf = np.eye(s)[0]
    k = rng.choice(ks, size=n, p=pmf / pmf.sum())  # (n,)
    if p <= argsort_max_p:
        idx = np.argsort(rng.random((n, p)), axis=1)[:, :s]
    else:  # rejection: redraw rows with a repeated index (rare for large p)
        idx = rng.integers(0, p, size=(n, s))
        while True:
            srt = np.sort(idx, axis=1)
            bad = np.any(srt[:, 1:] == srt[:, :-1], axis=1)
            if not bad.any():
                break
            idx[bad] = rng.integers(0, p, size=(int(bad.sum()), s))
    values = 1.0 - rng.random((n, s))  # (0, 1]
    values[np.arange(s)[None, :] >= k[:, None]] = 0.0
    idx = np.where(values > 0, idx, 0)
    return idx, values


class EigenBasis:
    """An orthonormal ``p × p`` basis ``B`` whose first ``r`` columns are given, never formed densely.

    ``q`` (``p × r``, orthonormal columns: ``Φ*``'s range eigenvectors) is completed by the
    Householder QR of ``q``: ``H = H₁⋯H_r = I − Y T Yᵀ`` (compact WY form, ``Y`` unit lower
    trapezoidal ``p × r``, ``T`` upper triangular ``r × r``) has ``H[:, :r] = q · diag(s)`` with
    ``s = ±1``, and its columns ``r…p−1`` span the null space. ``B = H · diag(s, 1, …, 1)`` so
    ``B[:, :r] = q`` exactly. Memory ``O(p·r)``, set-up ``O(p·r²)``; applying ``B`` or ``Bᵀ`` to
    ``n`` columns costs ``O(p·r·n)``. For ``p = 262,144``, ``r = 512`` that is 1 GiB and seconds,
    where a dense basis would take 512 GiB.
    """

    BLOCK = 65_536  # rows per block when applying B: temporaries stay O(BLOCK·n), not O(p·n)

    def __init__(self, q: np.ndarray):
        """``q`` (``p × r``, orthonormal columns) is overwritten: pass an array you own."""
        from scipy.linalg import qr

        p, r = q.shape
        # Factorised in place (q is a Fortran-ordered float64 array the caller hands over, as
        # Target.range_vectors returns): its strict lower part holds the Householder vectors, so Y
        # is made from it without another p × r array.
        y = np.asfortranarray(q, dtype=np.float64)
        del q
        (y, tau), rr = qr(y, mode="raw", overwrite_a=True)
        top = np.tril(y[:r, :r], -1)  # (r, r): zero R above the diagonal, unit diagonal
        top[np.arange(r), np.arange(r)] = 1.0
        y[:r, :r] = top
        g = y.T @ y  # (r, r)
        t = np.zeros((r, r))
        for i in range(r):  # LAPACK dlarft's forward, column-wise recurrence
            t[:i, i] = -tau[i] * (t[:i, :i] @ g[:i, i])
            t[i, i] = tau[i]
        self.p, self.r = p, r
        self.y, self.t = y, t
        self.signs = np.sign(np.diag(rr))  # (r,): R = diag(±1) for orthonormal q
        self.signs[self.signs == 0] = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``B x`` for ``x`` of shape ``(p, n)``."""
        out = np.array(x, dtype=np.float64)
        out[: self.r] *= self.signs[:, None]
        small = self.t @ (self.y.T @ out)  # (r, n)
        for lo in range(0, self.p, self.BLOCK):
            out[lo:lo + self.BLOCK] -= self.y[lo:lo + self.BLOCK] @ small
        return out

    def apply_t(self, x: np.ndarray) -> np.ndarray:
        """``Bᵀ x`` for ``x`` of shape ``(p, n)``."""
        out = np.array(x, dtype=np.float64)
        small = self.t.T @ (self.y.T @ out)  # (r, n)
        for lo in range(0, self.p, self.BLOCK):
            out[lo:lo + self.BLOCK] -= self.y[lo:lo + self.BLOCK] @ small
        out[: self.r] *= self.signs[:, None]
        return out

    def dense(self) -> np.ndarray:
        """The ``(p, p)`` matrix, for tests and small ``p`` (refused above ``DENSE_P_LIMIT``)."""
        from ..targets.target import check_dense

        check_dense(self.p, "A dense eigenbasis")
        return self.apply(np.eye(self.p))


class Design:
    """A deterministic query sequence for one target and seed."""

    kind: Literal["pair", "triplet", "closest", "rank", "odd"] = "pair"
    adaptive = False  # True: later queries depend on earlier answers (:meth:`observe`, :meth:`ready_until`)
    _readout: tuple | None = None  # (V, BᵀV, Bᵀ1) for :meth:`pcc` in a basis, computed once

    @property
    def shown(self) -> int:
        """Activations one query shows its answerer: a pair's and the anchor, a triplet's three."""
        return shown_per_question(self.kind)

    def __init__(self, config: DesignConfig, target: Target, seed: int):
        self.config = config
        self.p = target.p
        self.rank = target.rank
        self.seed = seed

    @property
    def basis(self) -> EigenBasis | None:
        """The orthonormal ``p × p`` basis the queries are sparse in (implicit); ``None``: feature coordinates."""
        return None

    def to_native(self, batch: SparseBatch) -> SparseBatch:
        """Activations in feature coordinates (``B w``; dense when the design has a basis)."""
        if self.basis is None:
            return batch
        return SparseBatch.from_dense(self.basis.apply(batch.to_dense().T).T)

    def design_factor(self, factor: np.ndarray) -> np.ndarray:
        """A target factor ``V`` (p, k) in the design's coordinates: ``Bᵀ V``."""
        return factor if self.basis is None else self.basis.apply_t(factor)

    def native_factor(self, factor: np.ndarray) -> np.ndarray:
        """A learned factor ``U`` (p, r) in the design's coordinates, back in feature coordinates: ``B U``."""
        return factor if self.basis is None else self.basis.apply(factor)

    def pcc(self, factor: np.ndarray, target_factor: np.ndarray) -> float:
        """PCC of ``Φ̂ = U Uᵀ`` (``U`` learnt in the design's coordinates) with ``Φ* = V Vᵀ``.

        A basis design reads it in its own coordinates (``BᵀV``, and ``Bᵀ1`` for the entry sums:
        :func:`fbloop.metrics.pcc_factored`), the same number without forming ``B U``: at
        ``p = 262,144``, ``r = 512`` that would be a 1 GiB temporary at every snapshot."""
        if self.basis is None:
            return metrics.pcc_factored(factor, target_factor)
        if self._readout is None or self._readout[0] is not target_factor:
            ones = self.basis.apply_t(np.ones((self.p, 1)))[:, 0]
            self._readout = (target_factor, self.design_factor(target_factor), ones)
        _, v, ones = self._readout
        return metrics.pcc_factored(factor, v, ones)

    @property
    def total(self) -> int | None:
        """Distinct queries the design has, or ``None`` when it is open-ended."""
        return None

    @property
    def count(self) -> int | None:
        """The design's theoretical pair count for this target."""
        return fixed_count(self.config.name, self.p, self.rank)

    def anchor(self) -> SparseBatch:
        """The fixed anchor ``y`` (one row); triplet designs have none but return ``e_0``."""
        return SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), self.p)

    def observe(self, queries: Queries, answers) -> None:
        """Take answers in (replayed or new); a fixed design ignores them."""

    def ready_until(self, start: int, stop: int) -> int:
        """How far from ``start`` queries can be asked now (an adaptive design waits on earlier answers)."""
        return stop

    def summary(self) -> dict:
        """What an adaptive design chose, for the run's final snapshot."""
        return {}

    def queries(self, start: int, stop: int) -> Queries:
        """Queries ``start:stop`` of the sequence."""
        total = self.total
        if start < 0 or stop <= start or (total is not None and stop > total):
            raise ConfigError(f"Query range [{start}, {stop}) is outside design "
                              f"{self.config.name!r} of {total} queries.")
        return self._queries(start, stop)

    def _queries(self, start: int, stop: int) -> Queries:
        raise NotImplementedError


class EigenDesign(Design):
    """Thm 1: eigenvectors and their pairwise sums against ``y = Σ_{i≤r} v_i``, in the eigenbasis."""

    def __init__(self, config: DesignConfig, target: Target, seed: int):
        super().__init__(config, target, seed)
        self._target = target  # constructive designs know Φ*; the basis is built on first use
        self._basis: EigenBasis | None = None
        r = self.rank
        iu, ju = np.triu_indices(r, k=1)
        self.plan = np.concatenate([
            np.stack([np.arange(r), np.full(r, -1)], 1),  # v_i
            np.stack([iu, ju], 1),  # v_i + v_j
            np.stack([np.arange(r, self.p), np.full(self.p - r, -1)], 1),  # null v_k
        ])  # (count, 2)

    def design_factor(self, factor: np.ndarray) -> np.ndarray:
        """``Bᵀ V`` with its rows past ``r`` set to 0: ``V``'s columns lie in the range the design
        spans (the rows are rounding noise, or the components below the rank tolerance the design
        already treats as null). Allocated with ``np.zeros``, so those rows take no resident memory:
        ``p = 262,144``, ``k = 512`` costs ``r·k`` values, not 1 GiB."""
        b = self.basis
        r = b.r
        if factor.dtype == np.float64:
            yv = b.y.T @ factor
        else:  # a float32 target factor, taken to float64 a block of rows at a time
            yv = sum(b.y[lo:lo + b.BLOCK].T @ np.asarray(factor[lo:lo + b.BLOCK], dtype=np.float64)
                     for lo in range(0, self.p, b.BLOCK))
        top = np.asarray(factor[:r], dtype=np.float64) - b.y[:r] @ (b.t.T @ yv)  # (r, k): rows < r of (I − Y Tᵀ Yᵀ) V
        out = np.zeros((self.p, factor.shape[1]))  # calloc: untouched rows stay unmapped
        out[:r] = top * b.signs[:, None]
        return out

    @property
    def basis(self) -> EigenBasis:
        # Built lazily: a design made only for its count (the CLI's progress bar) costs no O(p·r²) QR.
        if self._basis is None:
            self._basis = EigenBasis(self._target.range_vectors())
        return self._basis

    @property
    def total(self) -> int:
        return len(self.plan)

    def anchor(self) -> SparseBatch:
        r = self.rank
        return SparseBatch(np.arange(r)[None, :], np.ones((1, r)), self.p)  # Σ_{i<r} e_i over the basis

    def _queries(self, start: int, stop: int) -> Queries:
        plan = self.plan[start:stop]  # (n, 2): basis indices, −1 for "none"
        has_j = plan[:, 1] >= 0
        idx = np.where(has_j[:, None], plan, np.stack([plan[:, 0], np.zeros(len(plan), plan.dtype)], 1))
        val = np.stack([np.ones(len(plan)), has_j.astype(np.float64)], 1)
        return Queries("pair", np.arange(start, stop), SparseBatch(idx, val, self.p))


class ConstructiveDesign(Design):
    """Thm 2: ``e_i`` and ``e_i + e_j`` against ``y = e_0`` (2-sparse)."""

    @property
    def total(self) -> int:
        return n_params(self.p)

    def _queries(self, start: int, stop: int) -> Queries:
        seq = np.arange(start, stop)
        p = self.p
        # Position q < p is e_q; the rest enumerate i < j row by row.
        idx = np.zeros((len(seq), 2), np.int64)
        val = np.zeros((len(seq), 2))
        single = seq < p
        idx[single, 0] = seq[single]
        val[single, 0] = 1.0
        m = seq[~single] - p  # rank among pairs i<j
        # Row i holds p−1−i pairs; invert the cumulative count.
        starts = np.cumsum(np.concatenate([[0], np.arange(p - 1, 0, -1)]))  # (p,)
        i = np.searchsorted(starts, m, side="right") - 1
        j = i + 1 + (m - starts[i])
        idx[~single] = np.stack([i, j], 1)
        val[~single] = 1.0
        return Queries("pair", seq, SparseBatch(idx, val, p))


class GaussianDesign(Design):
    """Thm 3: i.i.d. dense Gaussian activations against a Gaussian anchor."""

    def anchor(self) -> SparseBatch:
        rng = seeding.block_rng(self.seed, "anchor", 0)
        return SparseBatch.from_dense(rng.standard_normal(self.p))

    def _queries(self, start: int, stop: int) -> Queries:
        p = self.p
        (u,) = seeding.draw(self.seed, "design", start, stop,
                            lambda rng, n: (rng.standard_normal((n, p)),))
        return Queries("pair", np.arange(start, stop), SparseBatch.from_dense(u))


class SparseDesign(Design):
    """Thm 4: sparse activations with zero-probability ``μ``, at most ``s`` nonzeros, vs ``e_0``."""

    def _queries(self, start: int, stop: int) -> Queries:
        cfg = self.config
        idx, val = seeding.draw(self.seed, "design", start, stop,
                                lambda rng, n: sample_sparse(rng, n, self.p, cfg.mu, cfg.s))
        return Queries("pair", np.arange(start, stop), SparseBatch(idx, val, self.p))


class CoverageDesign(Design):
    """Sparse sampling whose supports follow the queries asked so far: every coordinate evenly covered.

    Random ``s``-sparse supports touch coordinates at Poisson rates: at the Pythia
    shape (p = 32,768) 2M pairs touch a coordinate 183 times on average but some
    under 150 — fewer than the rank (215) its row of ``U`` has to pin down — while
    others get 220. Here each *round* of ``⌊p/s⌋`` queries takes a fresh random
    permutation of the coordinates, cut into groups of ``s``: within a round every
    coordinate appears at most once, so after ``k`` rounds each has been touched
    ``k`` or ``k − 1`` times, and index pairs still differ round to round. Values are
    the sparse design's U(0, 1], always ``s`` nonzeros (what the sparse design draws
    at large ``p`` anyway: ``P(k < 3) < 1e-300`` at p = 32,768, μ = 0.9). Query ``i``
    depends only on ``(seed, i)``, like every design.
    """

    def _queries(self, start: int, stop: int) -> Queries:
        p, s = self.p, min(self.config.s, self.p)
        per = p // s  # queries per round
        idx, val = [], []
        for rnd in range(start // per, (stop - 1) // per + 1):
            rng = seeding.block_rng(self.seed, "coverage", rnd)
            perm = rng.permutation(p)[: per * s].reshape(per, s)
            values = 1.0 - rng.random((per, s))  # (0, 1]
            lo, hi = max(start - rnd * per, 0), min(stop - rnd * per, per)
            idx.append(perm[lo:hi])
            val.append(values[lo:hi])
        return Queries("pair", np.arange(start, stop), SparseBatch(np.concatenate(idx), np.concatenate(val), p))


class TripletDesign(Design):
    """Random ternary triplets ``(a, b, c)`` from the sparse or Gaussian distribution."""

    kind = "triplet"

    def _queries(self, start: int, stop: int) -> Queries:
        cfg, p = self.config, self.p

        def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
            if cfg.dist == "gaussian":
                x = rng.standard_normal((3, n, p))
                idx = np.broadcast_to(np.arange(p), (3, n, p))
                return idx[0], x[0], idx[1], x[1], idx[2], x[2]
            parts = [sample_sparse(rng, n, p, cfg.mu, cfg.s) for _ in range(3)]
            return tuple(arr for part in parts for arr in part)

        ia, va, ib, vb, ic, vc = seeding.draw(self.seed, "design", start, stop, sample)
        return Queries("triplet", np.arange(start, stop), SparseBatch(ia, va, p),
                       SparseBatch(ib, vb, p), SparseBatch(ic, vc, p))


_CLASSES: dict[str, type[Design]] = {
    "eigen": EigenDesign,
    "constructive": ConstructiveDesign,
    "gaussian": GaussianDesign,
    "sparse": SparseDesign,
    "coverage": CoverageDesign,
    "triplet": TripletDesign,
}
