"""What is asked and what comes back: :class:`Queries` (a chunk of pair or triplet queries as sparse
activations) and :class:`Answers` (one answer per query, with its status, raw text and extras).

Every layer speaks these two records: designs and strategies make ``Queries``, agents return
``Answers``, the store keeps both, learners read both. An answer that could not be understood is
kept with status ``invalid`` (and its raw text), never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .errors import ShapeError
from .sparse import SparseBatch


@dataclass(frozen=True)
class Queries:
    """A chunk of queries. Pairs use ``a`` only; triplets ``a``, ``b``, ``c``."""

    kind: Literal["pair", "triplet"]
    seq: np.ndarray  # (n,) int64 positions in the run's query sequence
    a: SparseBatch
    b: SparseBatch | None = None
    c: SparseBatch | None = None

    def __len__(self) -> int:
        return len(self.seq)

    def select(self, mask: np.ndarray) -> Queries:
        pick = lambda x: None if x is None else x[mask]  # noqa: E731
        return Queries(self.kind, self.seq[mask], self.a[mask], pick(self.b), pick(self.c))


Status = Literal["ok", "invalid", "skipped"]
STATUSES: tuple[str, ...] = ("ok", "invalid", "skipped")


MIXED = "mixed"  # the agent of answers read back from several agents at once; each row's is in its meta


@dataclass(frozen=True)
class Answers:
    """Answers to queries ``seq``: a scale ``c`` for pairs, +1/−1/0 for triplets.

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
