"""What defines a run (:class:`RunConfig`) and what it reports (:class:`Progress`, :class:`RunResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..agents import OracleConfig
from ..agents.batch import BatchConfig
from ..agents.bisection import BisectionConfig
from ..agents.llm import LLMConfig
from ..agents.pool import MemberSpec, PoolConfig
from ..errors import ConfigError
from ..learners import LearnerConfig
from ..queries.active import ActiveConfig
from ..queries.designs import DesignConfig

LearnerName = Literal["gradient", "exact", "direct", "pivot", "auto"]
AGENTS = ("oracle", "llm", "human", "pool")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; stored with it as JSON."""

    target: str = "rfm"  # a target spec, see fbloop.targets
    design: DesignConfig = field(default_factory=DesignConfig)
    agent: Literal["oracle", "llm", "human", "pool"] = "oracle"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    llm: LLMConfig | None = None  # the llm agent's endpoint and options; None (oracle runs) keeps old configs equal
    # the llm agent through a Batch API or an offline engine (fbloop.agents.batch); None: synchronous requests
    batch: BatchConfig | None = None
    check_rate: float | None = None  # human agent: share of attention checks in its queue; None → 0.1
    bisection: BisectionConfig | None = None  # pair designs answered by ternary comparisons (fbloop.agents.bisection)
    budget: int | None = None  # answers to collect; None → the design's count (or a default)
    learner: LearnerName = "gradient"
    learner_config: LearnerConfig = field(default_factory=LearnerConfig)
    chunk: int | None = None  # queries per transaction / learner update; None → budget/500 within [64, 16384]
    snapshot_every: int | None = None  # answers between PCC snapshots; None → ~40 per run
    rfm_mse: bool = True  # RFM targets: score Φ̂ by the predictor's test MSE at the end (a 4000² solve)
    holdout: float | None = None  # triplet and tuple runs: share of queries answered and stored, never learned from
    active: ActiveConfig | None = None  # triplet runs: choose each chunk's queries from Φ̂ (fbloop.queries.active)
    pool: tuple[MemberSpec, ...] | None = None  # agent "pool": its members (fbloop.agents.pool)
    pool_config: PoolConfig | None = None  # agent "pool": routing shares; None → PoolConfig(seed=seed)
    stop_at: float | None = None  # stop asking once a snapshot's PCC reaches this (needs a Φ*; simulations)
    # Triplet runs: fit each source's answers at its estimated flip rate (people by their attention checks,
    # an LLM by its order swaps; fbloop.agents.reliability). None is on (and keeps older stored configs equal);
    # False takes every answer as exact. Pools: pool_config.noise_aware.
    noise_aware: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.agent not in AGENTS:
            raise ConfigError(f"Unknown agent {self.agent!r}; expect one of {list(AGENTS)}.")
        if self.pool is not None:
            object.__setattr__(self, "pool", tuple(m if isinstance(m, MemberSpec) else MemberSpec(**m)
                                                   for m in self.pool))
        if self.agent == "pool":
            if not self.pool:
                raise ConfigError("Agent 'pool' needs members (--member NAME:AGENT,...); got none.")
            names = [m.name for m in self.pool]
            if len(set(names)) != len(names):
                raise ConfigError(f"Expect distinct pool member names, got {names}.")
            if sum(m.agent == "human" for m in self.pool) > 1:
                raise ConfigError("Expect at most one people (human) member in a pool: every annotator "
                                  "answers through it.")
            if any(m.agent == "llm" for m in self.pool) and self.llm is None:
                object.__setattr__(self, "llm", LLMConfig())
        elif self.pool:
            raise ConfigError(f"Pool members are given but the agent is {self.agent!r}; use --agent pool.")
        if self.check_rate is not None and not 0.0 <= self.check_rate <= 0.5:
            raise ConfigError(f"Expect a check rate in [0, 0.5], got check_rate={self.check_rate}.")
        if self.agent == "llm" and self.llm is None:
            object.__setattr__(self, "llm", LLMConfig())
        if self.batch is not None:
            if isinstance(self.batch, dict):
                object.__setattr__(self, "batch", BatchConfig(**self.batch))
            if self.agent != "llm":
                raise ConfigError(f"Batch mode is for --agent llm; the agent is {self.agent!r}.")
            if self.bisection is not None:
                raise ConfigError("Batch mode asks triplets; bisection asks one question after another. "
                                  "Use --design triplet.")
            if self.chunk is None:  # a chunk is one batch of requests: bounded memory, whatever the budget
                object.__setattr__(self, "chunk", self.batch.chunk)
        if self.learner not in ("gradient", "exact", "direct", "pivot", "auto"):
            raise ConfigError(f"Unknown learner {self.learner!r}; expect gradient, exact, direct, pivot or auto.")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"Expect a budget ≥ 1, got budget={self.budget}.")
        if self.chunk is not None and self.chunk < 1:
            raise ConfigError(f"Expect chunk ≥ 1, got chunk={self.chunk}.")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ConfigError(f"Expect snapshot_every ≥ 1, got {self.snapshot_every}.")
        if self.stop_at is not None and not 0.0 < self.stop_at <= 1.0:
            raise ConfigError(f"Expect stop_at in (0, 1], a PCC, got stop_at={self.stop_at}.")
        if self.holdout is not None and not 0.0 <= self.holdout < 1.0:
            raise ConfigError(f"Expect a held-out share in [0, 1), got holdout={self.holdout}.")

    def learns_noise(self) -> bool:
        """Whether each source's answers are fitted at its estimated flip rate (a pool's own setting)."""
        if self.agent == "pool":
            return (self.pool_config or PoolConfig()).noise_aware
        return self.noise_aware is not False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        data = dict(data)
        data["design"] = DesignConfig(**data.get("design", {}))
        data["oracle"] = OracleConfig(**data.get("oracle", {}))
        data["learner_config"] = LearnerConfig(**data.get("learner_config", {}))
        if data.get("llm") is not None:
            data["llm"] = LLMConfig.from_dict(data["llm"])
        if data.get("batch") is not None:
            data["batch"] = BatchConfig(**data["batch"])
        if data.get("bisection") is not None:
            data["bisection"] = BisectionConfig(**data["bisection"])
        if data.get("active") is not None:
            data["active"] = ActiveConfig(**data["active"])
        if data.get("pool") is not None:
            data["pool"] = tuple(MemberSpec(**m) for m in data["pool"])
        if data.get("pool_config") is not None:
            data["pool_config"] = PoolConfig(**data["pool_config"])
        return cls(**data)


@dataclass(frozen=True)
class Progress:
    """One progress report: answers so far out of the budget, with the latest readout."""

    answers: int
    budget: int
    pcc: float | None
    loss: float | None
    fit: tuple[int, int] | None = None  # the final fit's (steps done, steps in all), once every answer is in
    # Work without a count, named (e.g. "L-BFGS polish", "rank choice"); "done" ends the run's reports.
    stage: str | None = None


@dataclass(frozen=True)
class RunResult:
    run_id: str
    pcc: float | None
    answers: int
    budget: int
    bound: int | None  # the design's theoretical pair count for this target
    learner: str
    elapsed_s: float
    factor: np.ndarray  # (p, r) Φ̂ = U Uᵀ
    history: list[tuple[int, float | None]]  # (answers, pcc) snapshots
    extra: dict = field(default_factory=dict)  # e.g. RFM test MSE readouts

    def summary(self) -> dict:
        return {"run_id": self.run_id, "pcc": self.pcc, "answers": self.answers, "budget": self.budget,
                "bound": self.bound, "learner": self.learner, "elapsed_s": round(self.elapsed_s, 3),
                **self.extra}
