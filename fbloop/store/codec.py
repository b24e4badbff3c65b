"""Sparse activations as SQLite BLOBs; answers' meta as JSON text (:func:`encode_metas`).

Activations are stored compactly: the nonzero slots of each activation as
little-endian ``int32`` indices and ``float64`` values in two BLOB columns.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as _str

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


# ---------------------------------------------------------------- k candidates in one pair of blobs


def _encode_cands(cands: tuple[SparseBatch, ...]) -> list[tuple[bytes, bytes]]:
    """A query's ``k`` candidates in one ``(indices, values)`` blob pair per row.

    The indices blob starts with the header ``int32 [k, n_1, …, n_k]`` (each candidate's nonzero
    count), then the candidates' ``int32`` indices one after another; the values blob holds their
    ``float64`` values in the same order.
    """
    per = [_encode(c) for c in cands]  # k lists of n (idx, val)
    out = []
    for row in zip(*per):
        head = np.array([len(row)] + [len(i) // 4 for i, _ in row], dtype="<i4").tobytes()
        out.append((head + b"".join(i for i, _ in row), b"".join(v for _, v in row)))
    return out


def _decode_cands(rows: list[tuple[bytes, bytes]], p: int) -> tuple[SparseBatch, ...]:
    """The ``k`` candidate batches of :func:`_encode_cands`'s rows (every row has the same ``k``)."""
    if not rows:
        return ()
    split: list[list[tuple[bytes, bytes]]] = []
    for idx, val in rows:
        k = int(np.frombuffer(idx[:4], "<i4")[0])
        counts = np.frombuffer(idx[4:4 + 4 * k], "<i4")
        if split and len(split) != k:
            raise ValueError(f"Candidate sets of different sizes in one read: {len(split)} and {k}.")
        split = split or [[] for _ in range(k)]
        ends = np.concatenate([[0], np.cumsum(counts)])
        body = idx[4 + 4 * k:]
        for j in range(k):
            split[j].append((body[4 * ends[j]:4 * ends[j + 1]], val[8 * ends[j]:8 * ends[j + 1]]))
    return tuple(_decode(col, p) for col in split)


# ---------------------------------------------------------------- answers' meta as JSON text


def encode_metas(metas: list[dict | None]) -> list[str | None]:
    """``[json.dumps(m) for m in metas]`` (``None`` stays ``None``): the same texts, built a column at a time.

    The answers of one block (a batch's result lines, a chunk of LLM replies) carry metas with the same
    keys, most of whose values repeat from one answer to the next (template, model, order, batch id).
    Metas sharing the commonest key order are written through one format: a field whose value (and
    type) is the same in all of them is encoded once, the others a column at a time. The rest, and any
    value that is not a string, an int, a bool or ``None``, go through ``json.dumps`` itself.
    """
    out: list[str | None] = [None] * len(metas)
    shapes: dict[tuple, list[int]] = {}
    for i, m in enumerate(metas):
        if type(m) is dict:
            shapes.setdefault(tuple(m), []).append(i)
        elif m is not None:
            out[i] = json.dumps(m)
    for keys, rows in shapes.items():
        texts = _encode_shape(keys, [metas[i] for i in rows]) if len(rows) > 1 else None
        for j, i in enumerate(rows):
            out[i] = texts[j] if texts is not None else json.dumps(metas[i])
    return out


_SIMPLE = {str: _str, int: int.__repr__, bool: lambda v: "true" if v else "false", type(None): lambda v: "null"}


def _encode_shape(keys: tuple, metas: list[dict]) -> list[str] | None:
    """The JSON texts of ``metas``, dicts with exactly ``keys`` in that order; ``None`` when a key is not
    a string or a value not one :data:`_SIMPLE` encodes exactly as ``json`` does."""
    if any(type(k) is not str for k in keys):
        return None
    fields, varying = [], []
    for k, key in enumerate(keys):
        col = [m[key] for m in metas]
        kinds = set(map(type, col))
        if len(kinds) != 1 or (kind := kinds.pop()) not in _SIMPLE:
            return None
        enc = _SIMPLE[kind]
        head = f"{_str(key)}: ".replace("%", "%%")
        if col.count(col[0]) == len(col):  # one value (of one type) throughout: written once
            fields.append(head + enc(col[0]).replace("%", "%%"))
        else:
            fields.append(head + "%s")
            varying.append([enc(v) for v in col])
    form = "{" + ", ".join(fields) + "}"
    if not varying:
        return [form.replace("%%", "%")] * len(metas)
    return [form % values for values in zip(*varying)]
