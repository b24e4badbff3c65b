"""Equality pairs from ternary answers: find each pair's scale by bisection.

The paper's designs need the scale ``c = uᵀΦu / yᵀΦy`` of each pair. An agent
that only compares (a person, an LLM) can still give it: the triplet
``(0, u, t·y)`` asks whether ``u`` is closer to the origin than ``t·y``, i.e.
whether ``c < t²``. A bracketing search (doubling / halving from ``t = 1``) then
a bisection in ``log c`` pins ``c`` to a relative precision ``ε`` in about
``log2(range/ε)`` triplets per pair. A tie (``0``) ends the search at once.

Every ternary answer is kept: the pair answer's ``meta`` holds the trace of
``(t², answer)`` steps and the number of triplets asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..records import Answers, Queries
from ..sparse import SparseBatch
from .base import ImmediateAgent, Ledger

SUB_STEPS = 1 << 8  # sub-question slots per pair position: seq·SUB_STEPS + step


@dataclass(frozen=True)
class BisectionConfig:
    precision: float = 1e-3  # relative precision on c (width of the final bracket in log space)
    max_steps: int = 60  # triplets per pair at most (bracketing + bisection)
    max_scale: float = 1e12  # brackets beyond [1/max_scale, max_scale] give up: c is 0 or huge

    def __post_init__(self) -> None:
        if not 0 < self.precision < 1:
            raise ConfigError(f"Expect precision in (0, 1), got {self.precision}.")
        if not 1 <= self.max_steps < SUB_STEPS:
            raise ConfigError(f"Expect max_steps in [1, {SUB_STEPS}), got {self.max_steps}.")
        if not self.max_scale > 1:
            raise ConfigError(f"Expect max_scale > 1, got {self.max_scale}.")


def _zeros(n: int, p: int) -> SparseBatch:
    return SparseBatch(np.zeros((n, 1), np.int64), np.zeros((n, 1)), p)


def _scaled(anchor: SparseBatch, t: np.ndarray) -> SparseBatch:
    return SparseBatch(np.repeat(anchor.indices, len(t), axis=0), anchor.values * t[:, None], anchor.p)


class BisectionAgent(ImmediateAgent):
    """Answers pair queries by asking a ternary ``agent`` triplets ``(0, u, t·y)``; composes any
    immediate agent (the oracle, an LLM, either through a basis view)."""

    def __init__(self, agent: ImmediateAgent, anchor: SparseBatch, config: BisectionConfig = BisectionConfig()):
        self.agent = agent
        self.anchor = anchor
        self.config = config
        self.name = f"{agent.name}+bisect"

    def start(self, ledger: Ledger, resumed: bool) -> None:
        super().start(ledger, resumed)
        self.agent.start(ledger, resumed)  # the inner agent's summary reads the run (an LLM's tokens)

    def summary(self, final: bool = False) -> dict:
        """The inner agent's summary; at the end, every ternary answer behind the bisected pairs too."""
        out = self.agent.summary(final)
        if final:
            out["ternary_answers"] = self._ledger().store.sum_meta(self._ledger().run_id, "triplets")
        return out

    def answer(self, queries: Queries) -> Answers:
        if queries.kind != "pair":
            return self.agent.answer(queries)
        cfg, n, p = self.config, len(queries), queries.a.p
        lo = np.zeros(n)  # c ≥ lo (0 until a lower bracket is seen)
        hi = np.full(n, np.inf)  # c < hi
        t2 = np.ones(n)  # next question: is c < t²?
        done = np.zeros(n, bool)
        status = np.full(n, "ok", dtype=object)
        traces: list[list] = [[] for _ in range(n)]
        for step in range(cfg.max_steps):
            live = np.flatnonzero(~done)
            if not len(live):
                break
            sub = Queries("triplet", queries.seq[live] * SUB_STEPS + step, _zeros(len(live), p),
                          queries.a[live], _scaled(self.anchor, np.sqrt(t2[live])))
            got = self.agent.answer(sub)
            for k, i in enumerate(live):
                if got.status[k] != "ok":
                    status[i], done[i] = got.status[k], True
                    traces[i].append([float(t2[i]), None])
                    continue
                v = float(got.value[k])
                traces[i].append([float(t2[i]), v])
                if v == 0:  # a tie: c = t²
                    lo[i] = hi[i] = t2[i]
                elif v > 0:  # u closer to 0 than t·y: c < t²
                    hi[i] = t2[i]
                else:
                    lo[i] = t2[i]
            # Next question per pair: bracket outwards, then bisect in log space.
            for i in live:
                if done[i]:
                    continue
                if lo[i] == hi[i]:
                    done[i] = True
                elif np.isinf(hi[i]):
                    t2[i] *= 4.0
                    done[i] = t2[i] > cfg.max_scale
                elif lo[i] == 0:
                    t2[i] /= 4.0
                    if t2[i] < 1 / cfg.max_scale:
                        done[i] = True  # c is (numerically) zero
                else:
                    if np.log(hi[i] / lo[i]) <= cfg.precision:
                        done[i] = True
                    else:
                        t2[i] = np.sqrt(lo[i] * hi[i])
        value = np.where(np.isinf(hi), np.nan, np.where(lo == 0, 0.0, np.sqrt(lo * np.where(np.isinf(hi), 1, hi))))
        status = np.where((status == "ok") & np.isnan(value), "invalid", status)
        value = np.where(status == "ok", value, np.nan)
        meta = [{"triplets": len(tr), "trace": tr} for tr in traces]
        return Answers(self.name, queries.seq.copy(), value.astype(np.float64), status.astype(str), meta=meta)


def triplets_used(answers: Answers) -> int:
    """Ternary answers a bisection agent spent on these pair answers."""
    return sum(m["triplets"] for m in (answers.meta or []) if m)
