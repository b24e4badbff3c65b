"""What is asked and what comes back: :class:`Queries` (a chunk of pair, triplet or tuple queries as
sparse activations) and :class:`Answers` (one answer per query, with its status, raw text and extras).

Query kinds and their answers' ``value``:

| kind | activations | value |
|---|---|---|
| ``pair`` | ``a`` | the scale ``c = aᵀΦa / yᵀΦy`` against the run's anchor |
| ``triplet`` | ``a`` (reference), ``b``, ``c`` | +1: ``a`` closer to ``b``; −1: closer to ``c``; 0: equal |
| ``closest`` | ``a`` (reference), ``cands`` (k) | ``j`` in 1…k: candidate ``j`` is the closest; 0: no clear winner |
| ``rank`` | ``a`` (reference), ``cands`` (k) | the ranking (candidates closest first) as its Lehmer code, :func:`ranking_code` |
| ``odd`` | ``a``, ``b``, ``c`` (three items) | ``i`` in 1…3: item ``i`` is the odd one out (the other two are the closest pair) |

Every layer speaks these two records: designs and strategies make ``Queries``, agents return
``Answers``, the store keeps both, learners read both. An answer that could not be understood is
kept with status ``invalid`` (and its raw text), never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import ShapeError
from .sparse import SparseBatch


Kind = Literal["pair", "triplet", "closest", "rank", "odd"]
KINDS: tuple[str, ...] = ("pair", "triplet", "closest", "rank", "odd")
CANDIDATE_KINDS: tuple[str, ...] = ("closest", "rank")  # a reference and k candidates (``cands``)
TUPLE_KINDS: tuple[str, ...] = ("closest", "rank", "odd")  # more than a triplet's three answers
MAX_K = 16  # candidates per query at most: a ranking's code stays an exact float64 (16! < 2**53)


@dataclass(frozen=True)
class Queries:
    """A chunk of queries. Pairs use ``a`` only; triplets and odd-one-out ``a``, ``b``, ``c``;
    closest-of-k and rank-k the reference ``a`` and the ``k`` candidates ``cands``."""

    kind: Kind
    seq: np.ndarray  # (n,) int64 positions in the run's query sequence
    a: SparseBatch
    b: SparseBatch | None = None
    c: SparseBatch | None = None
    cands: tuple[SparseBatch, ...] | None = None  # closest / rank: k batches of n candidates each

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ShapeError(f"Unknown query kind {self.kind!r}; expect one of {list(KINDS)}.")
        if self.kind in CANDIDATE_KINDS:
            k = len(self.cands or ())
            if not 2 <= k <= MAX_K:
                raise ShapeError(f"Expect 2 to {MAX_K} candidates for {self.kind!r} queries, got {k}.")
            if any(len(x) != len(self.seq) for x in self.cands):
                raise ShapeError(f"Expect {len(self.seq)} rows in every candidate batch, got "
                                 f"{[len(x) for x in self.cands]}.")

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def k(self) -> int:
        """Answers a query offers a choice among: candidates (closest, rank), 3 (odd), 2 (triplet)."""
        return len(self.cands) if self.cands is not None else 3 if self.kind == "odd" else 2

    def select(self, mask: np.ndarray) -> Queries:
        """The queries at ``mask`` (a boolean mask, or indices in the order wanted)."""
        pick = lambda x: None if x is None else x[mask]  # noqa: E731
        cands = None if self.cands is None else tuple(x[mask] for x in self.cands)
        return Queries(self.kind, self.seq[mask], self.a[mask], pick(self.b), pick(self.c), cands)

    @classmethod
    def concat(cls, parts: list[Queries]) -> Queries:
        """Chunks of one kind (and, for closest / rank, one ``k``) one after another."""
        kinds, ks = {q.kind for q in parts}, {q.k for q in parts}
        if len(kinds) != 1 or len(ks) != 1:
            raise ShapeError(f"Expect chunks of one kind and k to concatenate, got kinds {sorted(kinds)}, "
                             f"k {sorted(ks)}.")
        join = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                             else SparseBatch.concat([getattr(q, name) for q in parts]))
        cands = None if parts[0].cands is None else tuple(
            SparseBatch.concat([q.cands[j] for q in parts]) for j in range(parts[0].k))
        return cls(parts[0].kind, np.concatenate([q.seq for q in parts]), join("a"), join("b"), join("c"), cands)


def shown_per_question(kind: str, k: int | None = None) -> int:
    """Activations one question shows its answerer: a pair's and the anchor (2), a triplet's or an
    odd-one-out question's three, a reference and ``k`` candidates (closest, rank: ``k + 1``)."""
    if kind in CANDIDATE_KINDS:
        if k is None:
            raise ShapeError(f"Expect the number of candidates k for {kind!r} questions, got None.")
        return int(k) + 1
    return 2 if kind == "pair" else 3


# ---------------------------------------------------------------- rankings as one number


def ranking_code(perm: np.ndarray) -> np.ndarray:
    """Each ranking (a row of ``perm``, ``(n, k)``: 0-based candidate indices, closest first) as its
    Lehmer code, the ranking's position among the ``k!`` in lexicographic order: ``(n,)`` float64,
    exact for ``k ≤ MAX_K``. The identity ranking is 0."""
    perm = np.asarray(perm, dtype=np.int64)
    n, k = perm.shape
    if n and not (np.sort(perm, axis=1) == np.arange(k)).all():
        bad = np.flatnonzero(~(np.sort(perm, axis=1) == np.arange(k)).all(axis=1))[0]
        raise ShapeError(f"Expect rankings that are permutations of 0…{k - 1}, got {perm[bad].tolist()}.")
    code = np.zeros(n, dtype=np.int64)
    for i in range(k):
        smaller_after = (perm[:, i + 1:] < perm[:, i:i + 1]).sum(axis=1)  # (n,)
        code = code * (k - i) + smaller_after
    return code.astype(np.float64)


def codes_with_first(j: int, k: int) -> tuple[float, float]:
    """The Lehmer codes (:func:`ranking_code`) of every ranking of ``k`` that puts candidate ``j``
    (0-based) first: the range ``[j·(k−1)!, (j+1)·(k−1)! − 1]``, both ends included."""
    if not 0 <= j < k <= MAX_K:
        raise ShapeError(f"Expect 0 ≤ j < k ≤ {MAX_K}, got j={j}, k={k}.")
    block = math.factorial(k - 1)
    return float(j * block), float((j + 1) * block - 1)


def ranking_from_code(code: np.ndarray, k: int) -> np.ndarray:
    """The rankings :func:`ranking_code` encoded: ``(n, k)`` int64, closest first."""
    code = np.asarray(code, dtype=np.float64)
    if not 1 <= k <= MAX_K:
        raise ShapeError(f"Expect 1 ≤ k ≤ {MAX_K} candidates, got k={k}.")
    c = code.astype(np.int64)
    if (c != code).any() or (c < 0).any() or (c >= math.factorial(k)).any():
        raise ShapeError(f"Expect ranking codes in 0…{math.factorial(k) - 1} (k={k}), got {code[:5].tolist()}.")
    digits = np.zeros((len(c), k), dtype=np.int64)
    for i in range(k - 1, -1, -1):  # the last digit has base 1, the first base k
        base = k - i
        digits[:, i] = c % base
        c = c // base
    out = np.zeros_like(digits)
    for r in range(len(c)):
        left = list(range(k))
        out[r] = [left.pop(d) for d in digits[r]]
    return out


def from_reversed(kind: str, value: np.ndarray, k: int) -> np.ndarray:
    """Answers given to questions shown with their candidates (or odd-one-out items) in reverse order,
    in the stored order: candidate ``j`` shown is stored candidate ``k + 1 − j``. A triplet's ``±1`` flips
    sign (its two candidates reversed); closest's 0 ("no clear winner") stays 0; a ranking is re-coded;
    NaN (no answer) stays NaN."""
    value = np.asarray(value, dtype=np.float64)
    out = np.full_like(value, np.nan)
    ok = ~np.isnan(value)
    v = value[ok]
    if kind == "triplet":
        out[ok] = -v
    elif kind in ("closest", "odd"):
        n = 3 if kind == "odd" else k
        out[ok] = np.where(v > 0, n + 1 - v, v)
    elif kind == "rank":
        out[ok] = ranking_code(k - 1 - ranking_from_code(v, k))
    else:
        raise ShapeError(f"Expect a triplet or tuple kind to reverse, got {kind!r}.")
    return out


Status = Literal["ok", "invalid", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "invalid", "skipped")


MIXED = "mixed"  # the agent of answers read back from several agents at once; each row's is in its meta


@dataclass(frozen=True)
class Answers:
    """Answers to queries ``seq``: a scale ``c`` for pairs, +1/−1/0 for triplets (other kinds: the
    module's table).

    ``value`` is NaN where ``status`` is not ``ok``. ``raw`` and ``meta`` are
    per-answer extras (an LLM reply, latency, annotator id); ``None`` when unused.
    """

    agent: str
    seq: np.ndarray  # (n,) int64
    value: np.ndarray  # (n,) float64
    status: np.ndarray  # (n,) str, one of STATUSES
    raw: list[str | None] | None = None
    meta: list[dict | None] | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.seq)
        if len(self.value) != n or len(self.status) != n:
            raise ShapeError(f"Expect seq, value and status of one length, got "
                             f"{n}, {len(self.value)}, {len(self.status)}.")
        for extra in (self.raw, self.meta):
            if extra is not None and len(extra) != n:
                raise ShapeError(f"Expect {n} raw/meta entries, got {len(extra)}.")
        bad = set(np.unique(self.status)) - set(STATUSES)
        if bad:
            raise ShapeError(f"Unknown answer status {sorted(bad)}; expect {list(STATUSES)}.")

    def __len__(self) -> int:
        return len(self.seq)

    @property
    def ok(self) -> np.ndarray:
        return self.status == "ok"

    def select(self, rows: np.ndarray) -> Answers:
        """The answers at ``rows`` (a boolean mask or indices)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        pick = (lambda xs: None if xs is None else [xs[i] for i in rows])
        return Answers(self.agent, self.seq[rows], self.value[rows], self.status[rows], pick(self.raw),
                       pick(self.meta))
