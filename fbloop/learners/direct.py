"""The direct learner: ``Φ̂`` entry by entry from 1- and 2-sparse equality pairs.

The sparse constructive design (Thm 2) and the eigendecomposition design in its
eigenbasis (Thm 1, see :class:`fbloop.queries.designs.EigenDesign`) ask only pairs with
one or two nonzeros. Each answer is then a linear equation in at most three
entries of ``Φ`` (scale fixed by the anchor, ``yᵀΦy = 1``):

- ``u = a·e_i``:          ``c = a²Φ_ii``                     → ``Φ_ii = c / a²``
- ``u = a·e_i + b·e_j``:  ``c = a²Φ_ii + b²Φ_jj + 2ab·Φ_ij`` → ``Φ_ij = (c − a²Φ_ii − b²Φ_jj) / 2ab``

so no optimisation is needed: answers are summed into dense ``p × p``
accumulators as they arrive (memory ``O(p²)`` however many answers there are;
repeated questions are averaged), and :meth:`DirectLearner.factor` solves every
entry in ``O(p²)``, then projects onto the PSD cone (one ``eigh``) and returns
``U`` with ``Φ̂ = U Uᵀ``.

A zero diagonal ``Φ_ii = 0`` zeroes row ``i`` (a PSD matrix with a zero
diagonal entry has a zero row) — this is how the eigen design's null vectors
pin the null space. Entries no answer reaches are left at 0 and counted in
:attr:`DirectLearner.undetermined`.

Cost at the ChessGPT shape (p = 4096): four ``p × p`` float64 accumulators
(512 MiB) and one ``eigh`` at the end.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, NonFiniteError, ShapeError
from ..sparse import SparseBatch

ZERO_TOL = 1e-12  # a diagonal answer below ZERO_TOL × the largest counts as Φ_ii = 0
MAX_P = 8192  # dense accumulators: 4 × p² × 8 bytes (2 GiB at this p)


def checked_scales(u: SparseBatch, c: np.ndarray, p: int) -> np.ndarray:
    """A chunk's scales as float64, after checking them against its activations (count, dimension, finite)."""
    c = np.asarray(c, dtype=np.float64)
    if c.shape != (len(u),):
        raise ShapeError(f"Expect {len(u)} scales, got shape {c.shape}.")
    if u.p != p:
        raise ShapeError(f"Expect activations of dimension p={p}, got p={u.p}.")
    if not np.all(np.isfinite(c)):
        raise NonFiniteError(f"Scales hold NaN or Inf at rows {np.flatnonzero(~np.isfinite(c))[:5].tolist()}.")
    return c


class SolvedLearner:
    """A learner that solves once from everything added: ``step`` is a no-op, ``finish`` solves."""

    last_loss: float | None = None

    def view(self) -> np.ndarray:
        """The factor for a readout (the gradient learner's avoids a copy; here it is :meth:`factor`)."""
        return self.factor()

    def factor(self) -> np.ndarray:
        raise NotImplementedError

    def step(self, n_steps: int = 1) -> float | None:
        return self.last_loss

    def finish(self) -> float | None:
        self.factor()
        return self.last_loss


class DirectLearner(SolvedLearner):
    """Solves ``Φ̂`` from 1- and 2-sparse pairs; the incremental learner's interface."""

    name = "direct"

    def __init__(self, p: int):
        if p > MAX_P:
            raise ConfigError(f"The direct learner keeps dense p × p accumulators; expect p ≤ {MAX_P}, got p={p}.")
        self.p = p
        self.diag_sum = np.zeros(p)  # Σ c / a² over 1-sparse answers at i
        self.diag_n = np.zeros(p, np.int64)
        # 2-sparse answers at (i, j), i < j, as Φ_ij = c/2ab − (a/2b)Φ_ii − (b/2a)Φ_jj, summed:
        self.s0 = np.zeros((p, p))
        self.si = np.zeros((p, p))
        self.sj = np.zeros((p, p))
        self.n = np.zeros((p, p), np.int32)
        self.answers = 0
        self.undetermined: int | None = None
        self.last_loss: float | None = None
        self._factor: np.ndarray | None = None

    def add_pairs(self, u: SparseBatch, c: np.ndarray) -> None:
        """Sum a chunk of answers into the accumulators: ``u`` (n, s) with ≤ 2 nonzeros a row."""
        c = checked_scales(u, c, self.p)
        val = u.values
        nnz = np.count_nonzero(val, axis=1)  # (n,)
        if np.any(nnz > 2) or np.any(nnz == 0):
            bad = int(np.flatnonzero((nnz > 2) | (nnz == 0))[0])
            raise ConfigError(f"The direct learner takes pairs with 1 or 2 nonzeros; pair {bad} has "
                              f"{int(nnz[bad])}. Use --learner gradient for this design.")
        # Compact each row: nonzeros first.
        order = np.argsort(val == 0, axis=1, kind="stable")
        idx = np.take_along_axis(u.indices, order, 1)[:, :2]
        val = np.take_along_axis(val, order, 1)[:, :2] if val.shape[1] >= 2 else \
            np.hstack([val, np.zeros((len(val), 1))])
        if idx.shape[1] < 2:
            idx = np.hstack([idx, np.zeros((len(idx), 1), idx.dtype)])
        one = nnz == 1
        i1, a1 = idx[one, 0], val[one, 0]
        np.add.at(self.diag_sum, i1, c[one] / a1**2)
        np.add.at(self.diag_n, i1, 1)
        two = ~one
        i, j, a, b, cc = idx[two, 0], idx[two, 1], val[two, 0], val[two, 1], c[two]
        if np.any(i == j):
            raise ConfigError("A pair repeats an index among its nonzeros; expect distinct indices.")
        swap = i > j  # keep i < j: the upper triangle
        i, j, a, b = np.where(swap, j, i), np.where(swap, i, j), np.where(swap, b, a), np.where(swap, a, b)
        flat = i * self.p + j
        for acc, term in ((self.s0, cc / (2 * a * b)), (self.si, a / (2 * b)), (self.sj, b / (2 * a))):
            np.add.at(acc.reshape(-1), flat, term)
        np.add.at(self.n.reshape(-1), flat, 1)
        self.answers += len(c)
        self._factor = None

    def phi(self) -> np.ndarray:
        """The solved (not yet PSD-projected) symmetric ``Φ̂`` (p × p)."""
        seen = self.diag_n > 0
        diag = np.where(seen, self.diag_sum / np.maximum(self.diag_n, 1), 0.0)  # (p,)
        n = np.maximum(self.n, 1)
        phi = (self.s0 - self.si * diag[:, None] - self.sj * diag[None, :]) / n  # upper triangle
        phi[self.n == 0] = 0.0
        phi = np.triu(phi, 1)
        phi += phi.T
        phi[np.diag_indices(self.p)] = diag
        null = seen & (diag <= ZERO_TOL * max(float(diag.max(initial=0.0)), 1e-300))
        phi[null, :] = 0.0
        phi[:, null] = 0.0
        known = seen & ~null
        missing = np.triu((self.n == 0) & known[:, None] & known[None, :], 1)
        self.undetermined = int(missing.sum()) + int((~seen).sum())
        return phi

    def factor(self) -> np.ndarray:
        """``U`` (p, k) with ``Φ̂ = U Uᵀ``: the PSD projection of :meth:`phi`."""
        if self._factor is None:
            if self.answers == 0:
                return np.zeros((self.p, 1))
            phi = self.phi()
            lam, vec = np.linalg.eigh(phi)
            neg = lam < 0
            # Distance to the PSD cone, relative: 0 when the answers came from a PSD Φ.
            self.last_loss = float(np.sqrt(np.sum(lam[neg] ** 2) / max(np.sum(lam**2), 1e-300)))
            keep = lam > 1e-10 * max(float(lam[-1]), 1e-300)
            self._factor = vec[:, keep] * np.sqrt(lam[keep]) if keep.any() else np.zeros((self.p, 1))
        return self._factor
