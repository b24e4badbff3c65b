"""Sparse activations: the batch type every design, agent and learner shares.

An activation ``a ∈ R^p`` travels as a fixed number ``s`` of (index, value)
slots. Activations with fewer than ``s`` nonzeros are padded with value 0 at
index 0, which contributes nothing to any quadratic form. Dense designs
(Gaussian sampling, eigenvectors) simply use ``s = p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import NonFiniteError, ShapeError


@dataclass(frozen=True)
class SparseBatch:
    """``n`` activations in ``R^p`` as ``indices``/``values`` of shape ``(n, s)``."""

    indices: np.ndarray  # (n, s) int64, in [0, p)
    values: np.ndarray  # (n, s) float64, 0 in padded slots
    p: int

    def __post_init__(self) -> None:
        idx = np.asarray(self.indices)
        val = np.asarray(self.values, dtype=np.float64)
        if idx.ndim != 2 or val.shape != idx.shape:
            raise ShapeError(
                f"Expect indices and values of the same shape (n, s), got {idx.shape} and {val.shape}."
            )
        if not np.issubdtype(idx.dtype, np.integer):
            raise ShapeError(f"Expect integer indices, got dtype {idx.dtype}.")
        if idx.size and (idx.min() < 0 or idx.max() >= self.p):
            raise ShapeError(
                f"Expect indices in [0, {self.p}), got range [{idx.min()}, {idx.max()}]."
            )
        if not np.all(np.isfinite(val)):
            raise NonFiniteError("Activation values hold NaN or Inf.")
        object.__setattr__(self, "indices", idx.astype(np.int64, copy=False))
        object.__setattr__(self, "values", val)

    def __len__(self) -> int:
        return self.indices.shape[0]

    @property
    def s(self) -> int:
        """Slots per activation (maximum number of nonzeros)."""
        return self.indices.shape[1]

    def __getitem__(self, key: slice | np.ndarray) -> SparseBatch:
        return SparseBatch(self.indices[key], self.values[key], self.p)

    def to_dense(self) -> np.ndarray:
        """Dense ``(n, p)`` array; only for small ``p``."""
        out = np.zeros((len(self), self.p))
        rows = np.repeat(np.arange(len(self)), self.s)
        np.add.at(out, (rows, self.indices.ravel()), self.values.ravel())
        return out

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseBatch:
        """Every coordinate becomes a slot: ``s = p``."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        n, p = x.shape
        return cls(np.broadcast_to(np.arange(p), (n, p)).copy(), x, p)

    @classmethod
    def concat(cls, batches: list[SparseBatch]) -> SparseBatch:
        """Stack batches of the same ``p``, padding to the widest ``s``."""
        if not batches:
            raise ShapeError("Cannot concatenate an empty list of batches.")
        p = batches[0].p
        if any(b.p != p for b in batches):
            raise ShapeError(f"Expect batches of one p, got {sorted({b.p for b in batches})}.")
        s = max(b.s for b in batches)
        idx = [np.pad(b.indices, ((0, 0), (0, s - b.s))) for b in batches]
        val = [np.pad(b.values, ((0, 0), (0, s - b.s))) for b in batches]
        return cls(np.concatenate(idx), np.concatenate(val), p)

    def nnz(self) -> np.ndarray:
        """Number of nonzero values per activation, shape ``(n,)``."""
        return np.count_nonzero(self.values, axis=1)


def quad_form(batch: SparseBatch, factor: np.ndarray) -> np.ndarray:
    """``aᵀ (V Vᵀ) a = ‖Vᵀ a‖²`` for every activation, in ``O(s·k)`` each.

    ``factor`` is ``V`` of shape ``(p, k)``; returns shape ``(n,)``.
    """
    proj = np.einsum("ns,nsk->nk", batch.values, factor[batch.indices])  # (n, k)
    return np.einsum("nk,nk->n", proj, proj)


def project(batch: SparseBatch, factor: np.ndarray) -> np.ndarray:
    """``Vᵀ a`` for every activation: shape ``(n, k)``."""
    return np.einsum("ns,nsk->nk", batch.values, factor[batch.indices])


def difference(a: SparseBatch, b: SparseBatch) -> SparseBatch:
    """``a − b`` as a batch with ``s_a + s_b`` slots (duplicate indices simply add)."""
    if a.p != b.p or len(a) != len(b):
        raise ShapeError(f"Expect batches of equal length and p, got {len(a)}×{a.p} and {len(b)}×{b.p}.")
    return SparseBatch(
        np.concatenate([a.indices, b.indices], axis=1),
        np.concatenate([a.values, -b.values], axis=1),
        a.p,
    )
