"""What every agent shares: given queries, return answers.

The oracle, the LLM agent and the human form all produce :class:`Answers`
and write them through the same store call. An answer that could not be
understood is kept with status ``invalid`` (and its raw text), never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from ..designs import Queries
from ..errors import ShapeError

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


class Agent(Protocol):
    """Anything that answers queries."""

    name: str

    def answer(self, queries: Queries) -> Answers: ...
