"""Nyström's estimate of ``Φ`` from the pivot design's answers (:mod:`fbloop.queries.pivots`), as a
learner: :class:`PivotLearner`."""

from __future__ import annotations

import numpy as np

from ..queries.pivots import HOLD_KEEP, PIVOT_TOL, PivotDesign
from ..sparse import SparseBatch
from .direct import SolvedLearner, checked_scales


class PivotLearner(SolvedLearner):
    """Nyström's estimate from the pivot design's answers; the incremental learner's interface.

    Keeps the diagonal and, per coordinate, the answers to ``e_i + e_{c_j}`` for the
    design's earlier coordinates ``c_j`` (``j`` below ``i``'s place and ``MAX_BLOCK``):
    ``p × k`` sums and counts, grown as columns are used (96 MiB at p = 32,768,
    a block of 243 in 256 columns). Anything that is not a design query (the hold-outs) goes
    to the readout instead.
    """

    name = "pivot"

    def __init__(self, design: PivotDesign):
        self.design = design
        self.p = p = design.p
        self.rank_of = design.rank_of
        self.diag_sum = np.zeros(p)
        self.diag_n = np.zeros(p, np.int64)
        self.col_sum = np.zeros((p, 0))  # [i, j]: Σ c over answers to e_i + e_{c_j}, j < rank_of[i]
        self.col_n = np.zeros((p, 0), np.int32)
        self.hold_u: list[SparseBatch] = []
        self.hold_c: list[np.ndarray] = []
        self.n_hold = 0
        self.answers = 0
        self.last_loss: float | None = None
        self.holdout_pcc: float | None = None
        self.rank: int | None = None
        self._factor: np.ndarray | None = None

    def _grow(self, cols: int) -> None:
        have = self.col_sum.shape[1]
        if cols <= have:
            return
        new = min(max(cols, 2 * have), self.design.k_cap)
        self.col_sum = np.hstack([self.col_sum, np.zeros((self.p, new - have))])
        self.col_n = np.hstack([self.col_n, np.zeros((self.p, new - have), np.int32)])

    def add_pairs(self, u: SparseBatch, c: np.ndarray) -> None:
        """Sum a chunk of answers: design queries into the accumulators, anything else into the readout."""
        c = checked_scales(u, c, self.p)
        val = u.values
        nz = val != 0
        nnz = nz.sum(axis=1)
        ones = np.all((val == 1.0) | ~nz, axis=1)
        order = np.argsort(~nz, axis=1, kind="stable")  # nonzeros first
        idx = np.take_along_axis(u.indices, order, 1)
        i = idx[:, 0]
        j = idx[:, 1] if idx.shape[1] > 1 else np.zeros_like(i)
        ri, rj = self.rank_of[i], self.rank_of[j]
        row, col = np.where(ri > rj, i, j), np.minimum(ri, rj)  # the later coordinate's row, the earlier's column
        one = ones & (nnz == 1)
        two = ones & (nnz == 2) & (col < self.design.k_cap)
        np.add.at(self.diag_sum, i[one], c[one])
        np.add.at(self.diag_n, i[one], 1)
        if two.any():
            self._grow(int(col[two].max()) + 1)
            np.add.at(self.col_sum, (row[two], col[two]), c[two])
            np.add.at(self.col_n, (row[two], col[two]), 1)
        rest = ~(one | two)
        if rest.any() and self.n_hold < HOLD_KEEP:
            take = np.flatnonzero(rest)[: HOLD_KEEP - self.n_hold]
            self.hold_u.append(u[take])
            self.hold_c.append(c[take])
            self.n_hold += len(take)
        self.answers += len(c)
        self._factor = None

    def factor(self) -> np.ndarray:
        """``U`` (p, r̂): block rows from ``Φ̂_KK = L Lᵀ``, every other row ``Φ̂_iS W_SS⁺ L_S``."""
        if self._factor is not None:
            return self._factor
        p = self.p
        k = min(self.design.k, self.col_sum.shape[1]) if self.col_sum.shape[1] else 0
        block = self.design.coords[:k]
        diag = np.where(self.diag_n > 0, self.diag_sum / np.maximum(self.diag_n, 1), 0.0)
        if k == 0:
            self._factor = np.zeros((p, 1))
            return self._factor
        seen = self.col_n[:, :k] > 0  # (p, k)
        y = np.where(seen, (self.col_sum[:, :k] / np.maximum(self.col_n[:, :k], 1) - diag[:, None]
                            - diag[block][None, :]) / 2, 0.0)  # Φ̂_{i, c_j}
        w = np.tril(y[block], -1)
        w += w.T
        w[np.diag_indices(k)] = diag[block]
        lam, vec = np.linalg.eigh(w)
        keep = lam > (self.design.config.rank_tol or PIVOT_TOL) * max(float(lam[-1]), 1e-300)
        if self.design.final and self.design.k == k:  # no more directions than the rank the design read
            keep &= np.arange(k) >= k - self.design.rank_detected  # type: ignore[operator]
        if not keep.any():
            self._factor, self.rank = np.zeros((p, 1)), 0
            return self._factor
        lfac = vec[:, keep] * np.sqrt(lam[keep])  # (k, r̂)
        wpsd = lfac @ lfac.T
        out = np.zeros((p, lfac.shape[1]))
        others = np.flatnonzero(self.rank_of >= k)
        patterns, inverse = np.unique(np.packbits(seen[others], axis=1), axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        for g, pat in enumerate(patterns):
            s = np.unpackbits(pat)[:k].astype(bool)
            if not s.any():
                continue
            rows = others[inverse == g]
            proj = np.linalg.pinv(wpsd[np.ix_(s, s)], rcond=1e-10, hermitian=True) @ lfac[s]  # (|S|, r̂)
            out[rows] = y[np.ix_(rows, s)] @ proj
        out[block] = lfac
        out[diag <= 0] = 0.0  # a zero (or unasked) diagonal: a null or unknown coordinate
        self._factor, self.rank = out, lfac.shape[1]
        self._score_holdout(out)
        return out
    def _score_holdout(self, factor: np.ndarray) -> None:
        if not self.hold_u:
            return
        u = SparseBatch.concat(self.hold_u)
        c = np.concatenate(self.hold_c)
        proj = np.einsum("ns,nsr->nr", u.values, factor[u.indices])  # (n, r̂): uᵀU
        chat = np.sum(proj**2, axis=1)
        self.last_loss = float(np.sqrt(np.mean((chat - c) ** 2) / max(np.mean(c**2), 1e-300)))
        self.holdout_pcc = float(np.corrcoef(chat, c)[0, 1]) if len(c) > 1 and chat.std() > 0 else None

    def summary(self) -> dict:
        """Readouts for the run's final snapshot."""
        self.factor()
        k = min(self.design.k, self.col_n.shape[1])
        per = (self.col_n[self.rank_of >= k, :k] > 0).sum(axis=1)
        return {"rank": self.rank, "holdout_pcc": self.holdout_pcc, "holdout_n": self.n_hold,
                "holdout_rel_rmse": self.last_loss, "pivots_per_coordinate_min": int(per.min()) if len(per) else None,
                "pivots_per_coordinate_max": int(per.max()) if len(per) else None}
