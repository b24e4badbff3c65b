"""Sparse activations as SQLite BLOBs.

Activations are stored compactly: the nonzero slots of each activation as
little-endian ``int32`` indices and ``float64`` values in two BLOB columns.
"""

from __future__ import annotations

import numpy as np

from ..sparse import SparseBatch


# ---------------------------------------------------------------- encoding


def _encode(batch: SparseBatch) -> list[tuple[bytes, bytes]]:
    """Each activation's nonzero slots as ``(int32 indices, float64 values)`` blobs, vectorised by count."""
    nz = batch.values != 0  # (n, s)
    order = np.argsort(~nz, axis=1, kind="stable")  # nonzeros first, in slot order
    idx = np.take_along_axis(batch.indices, order, 1).astype("<i4")
    val = np.take_along_axis(batch.values, order, 1).astype("<f8")
    counts = nz.sum(axis=1)
    out_i = np.full(len(batch), b"", dtype=object)
    out_v = np.full(len(batch), b"", dtype=object)
    for k in np.unique(counts[counts > 0]):
        rows = np.flatnonzero(counts == k)
        out_i[rows] = np.ascontiguousarray(idx[rows, :k]).view(f"V{4 * k}").ravel().tolist()
        out_v[rows] = np.ascontiguousarray(val[rows, :k]).view(f"V{8 * k}").ravel().tolist()
    return list(zip(out_i.tolist(), out_v.tolist()))


def _decode(rows: list[tuple[bytes, bytes]], p: int) -> SparseBatch:
    idx = [np.frombuffer(i, "<i4") for i, _ in rows]
    val = [np.frombuffer(v, "<f8") for _, v in rows]
    s = max(1, max((len(x) for x in idx), default=1))
    out_i = np.zeros((len(rows), s), np.int64)
    out_v = np.zeros((len(rows), s))
    for k, (i, v) in enumerate(zip(idx, val)):
        out_i[k, : len(i)] = i
        out_v[k, : len(v)] = v
    return SparseBatch(out_i, out_v, p)
