"""The feedback loop: target → design → agent → store → learner → readout.

:func:`run_loop` walks the design's query sequence chunk by chunk. Each chunk's
queries and answers commit in one transaction; the learner takes a few steps
after each chunk and a PCC snapshot is stored every ``snapshot_every`` answers.
Calling it again with the same ``run_id`` resumes: stored answers are replayed
into a fresh learner and only unanswered queries are asked — nothing is lost or
asked twice.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from . import human, metrics
from .agents import Answers, OracleAgent, OracleConfig
from .agents.llm import LLMAgent, LLMConfig
from .bisection import BisectionAgent, BisectionConfig
from .designs import Design, DesignConfig, Queries, make_design, n_params
from .errors import ConfigError, StoreError
from .learner import GradientLearner, LearnerConfig
from .sparse import SparseBatch
from .store import Store
from .targets import Target, load_target

LearnerName = Literal["gradient", "exact", "auto"]
EXACT_MAX_P = 40  # "auto" uses the exact learner for pair runs up to this p


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; stored with it as JSON."""

    target: str = "rfm"  # a target spec, see fbloop.targets
    design: DesignConfig = field(default_factory=DesignConfig)
    agent: Literal["oracle", "llm", "human"] = "oracle"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    llm: LLMConfig | None = None  # the llm agent's endpoint and options; None (oracle runs) keeps old configs equal
    check_rate: float | None = None  # human agent: share of attention checks in its queue; None → 0.1
    bisection: BisectionConfig | None = None  # pair designs answered by ternary comparisons (fbloop.bisection)
    budget: int | None = None  # answers to collect; None → the design's count (or a default)
    learner: LearnerName = "gradient"
    learner_config: LearnerConfig = field(default_factory=LearnerConfig)
    chunk: int = 64  # queries per transaction / learner update
    snapshot_every: int | None = None  # answers between PCC snapshots; None → ~40 per run
    rfm_mse: bool = True  # RFM targets: score Φ̂ by the predictor's test MSE at the end (a 4000² solve)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.agent not in ("oracle", "llm", "human"):
            raise ConfigError(f"Unknown agent {self.agent!r}; expect 'oracle', 'llm' or 'human'.")
        if self.check_rate is not None and not 0.0 <= self.check_rate <= 0.5:
            raise ConfigError(f"Expect a check rate in [0, 0.5], got check_rate={self.check_rate}.")
        if self.agent == "llm" and self.llm is None:
            object.__setattr__(self, "llm", LLMConfig())
        if self.learner not in ("gradient", "exact", "auto"):
            raise ConfigError(f"Unknown learner {self.learner!r}; expect gradient, exact or auto.")
        if self.budget is not None and self.budget < 1:
            raise ConfigError(f"Expect a budget ≥ 1, got budget={self.budget}.")
        if self.chunk < 1:
            raise ConfigError(f"Expect chunk ≥ 1, got chunk={self.chunk}.")
        if self.snapshot_every is not None and self.snapshot_every < 1:
            raise ConfigError(f"Expect snapshot_every ≥ 1, got {self.snapshot_every}.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        data = dict(data)
        data["design"] = DesignConfig(**data.get("design", {}))
        data["oracle"] = OracleConfig(**data.get("oracle", {}))
        data["learner_config"] = LearnerConfig(**data.get("learner_config", {}))
        if data.get("llm") is not None:
            data["llm"] = LLMConfig(**data["llm"])
        if data.get("bisection") is not None:
            data["bisection"] = BisectionConfig(**data["bisection"])
        return cls(**data)


@dataclass(frozen=True)
class Progress:
    """One progress report: answers so far out of the budget, with the latest readout."""

    answers: int
    budget: int
    pcc: float | None
    loss: float | None


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


# ---------------------------------------------------------------- learners


class ExactLearner:
    """Adapter giving the batch exact solver the incremental learner's interface."""

    name = "exact"

    def __init__(self, p: int, anchor: SparseBatch):
        self.p, self.anchor = p, anchor
        self._u: list[SparseBatch] = []
        self._c: list[np.ndarray] = []
        self._factor: np.ndarray | None = None
        self.last_loss: float | None = None
        self.method: str | None = None

    def add_pairs(self, u: SparseBatch, c: np.ndarray) -> None:
        self._u.append(u)
        self._c.append(np.asarray(c, dtype=np.float64))
        self._factor = None

    def step(self, n_steps: int = 1) -> float | None:
        return self.last_loss

    def finish(self) -> float | None:
        self.factor()
        return self.last_loss

    def factor(self) -> np.ndarray:
        if self._factor is None:
            from .exact import fit_exact

            if not self._u:
                return np.zeros((self.p, 1))
            res = fit_exact(SparseBatch.concat(self._u), np.concatenate(self._c), self.anchor)
            lam, vec = np.linalg.eigh(res.phi)
            keep = lam > 1e-12 * max(lam[-1], 1e-300)
            self._factor = vec[:, keep] * np.sqrt(lam[keep]) if keep.any() else np.zeros((self.p, 1))
            self.last_loss, self.method = res.residual, res.method
        return self._factor


def choose_learner(config: RunConfig, design: Design) -> str:
    if config.learner != "auto":
        if config.learner == "exact" and design.kind != "pair":
            raise ConfigError("The exact learner takes equality pairs; use --learner gradient for triplets.")
        from .exact import ExactConfig

        max_p = ExactConfig().max_p
        if config.learner == "exact" and design.p > max_p:
            raise ConfigError(f"The exact learner handles p ≤ {max_p}, got p={design.p}; use --learner gradient.")
        return config.learner
    return "exact" if design.kind == "pair" and design.p <= EXACT_MAX_P else "gradient"


def make_learner(name: str, p: int, config: LearnerConfig, anchor: SparseBatch):
    if name == "exact":
        return ExactLearner(p, anchor)
    learner = GradientLearner(p, config, anchor)
    learner.name = "gradient"
    return learner


def feed(learner, queries: Queries, answers: Answers) -> None:
    """Give the learner the ok answers of a chunk."""
    ok = answers.ok
    if not ok.any():
        return
    pos = {int(s): i for i, s in enumerate(queries.seq)}
    rows = np.array([pos[int(s)] for s in answers.seq[ok]])
    q = queries.select(rows)
    if q.kind == "pair":
        learner.add_pairs(q.a, answers.value[ok])
    else:
        learner.add_triplets(q.a, q.b, q.c, answers.value[ok])


# ---------------------------------------------------------------- the loop


def default_budget(design: Design) -> int:
    if design.count is not None:
        return design.count
    return 4 * n_params(design.p) if design.kind == "pair" else 20 * n_params(design.p)


def new_run_id(config: RunConfig) -> str:
    return f"{config.design.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def make_agent(config: RunConfig, target: Target, anchor: SparseBatch, store: Store | None = None
               ) -> OracleAgent | LLMAgent:
    """The run's agent; an LLM agent checks its endpoint first and caches replies in ``store``."""
    if config.agent == "llm":
        agent = LLMAgent(config.llm, target.descriptions, cache=store)
        agent.check()  # a missing key or a dead endpoint fails here, before any query is spent
        return agent
    return OracleAgent(target.factor, anchor, config.oracle)


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: stored {va!r}, given {vb!r}")
    return out


def run_loop(config: RunConfig, store: Store, run_id: str | None = None,
             progress: Callable[[Progress], None] | None = None,
             target: Target | None = None) -> RunResult:
    """Run (or resume) one experiment and return its result."""
    t0 = time.perf_counter()
    target = target or load_target(config.target)
    design = make_design(config.design, target, config.seed)
    anchor = design.anchor()
    budget = config.budget or default_budget(design)
    if design.total is not None and budget > design.total:
        raise ConfigError(f"Budget {budget} exceeds the {design.total} distinct queries of design "
                          f"{config.design.name!r} at p={target.p}, rank={target.rank}.")
    learner_name = choose_learner(config, design)
    learner = make_learner(learner_name, target.p, config.learner_config, anchor)
    if config.agent == "llm" and design.kind != "triplet" and config.bisection is None:
        raise ConfigError("The llm agent answers triplets; pair designs need the bisection route "
                          "(--bisection 1e-3) or --design triplet.")
    if config.agent == "human" and design.kind != "triplet":
        raise ConfigError("People answer triplets in the app; use --design triplet with --agent human.")
    agent = make_agent(config, target, anchor, store)
    if config.bisection is not None and design.kind == "pair":
        agent = BisectionAgent(agent, anchor, config.bisection)

    run_id = run_id or new_run_id(config)
    cfg_json = json.loads(json.dumps(config.to_dict()))
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, kind=design.kind, p=target.p, budget=budget, config=cfg_json,
                         target=target.summary(), anchor=anchor)
    else:
        diff = _config_diff(existing["config"], cfg_json)
        if diff:
            raise StoreError(f"Run {run_id!r} exists with another config ({'; '.join(diff[:3])}); "
                             "use a new --run-id.")
        for queries, answers in store.iter_answered(run_id):  # replay what was stored
            feed(learner, queries, answers)
        if config.learner_config.steps_per_chunk:
            learner.step(config.learner_config.steps_per_chunk)

    every = config.snapshot_every or max(config.chunk, budget // 40)
    history: list[tuple[int, float | None]] = [(s["answers"], s["pcc"]) for s in store.snapshots(run_id)]
    n_ok = store.count_answers(run_id)
    last_snap = history[-1][0] if history else 0

    def snapshot(final: bool = False) -> float:
        pcc = metrics.pcc_factored(learner.factor(), target.factor)
        extra = {"loss": learner.last_loss, "learner": learner_name, "final": final}
        store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0, extra)
        history.append((n_ok, pcc))
        return pcc

    pcc: float | None = history[-1][1] if history else None
    store.set_status(run_id, "running")
    if config.agent == "human":  # people answer in the app: queue the triplets, learn from what is in so far
        rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
        human.queue(store, run_id, design.queries(0, budget), check_rate=rate, factor=target.factor,
                    seed=config.seed)
        if n_ok == 0:  # nothing answered yet, nothing to learn
            store.set_status(run_id, "waiting")
            return RunResult(run_id, None, 0, budget, design.count, learner_name, time.perf_counter() - t0,
                             np.zeros((target.p, 1)), history)
    for start in range(0, budget if config.agent != "human" else 0, config.chunk):
        stop = min(start + config.chunk, budget)
        done = store.answered(run_id, start, stop, agent.name)
        if len(done) == stop - start:
            continue  # answered before a restart; already replayed
        queries = design.queries(start, stop)
        pending = queries.select(~np.isin(queries.seq, done))
        # An agent may give several answer sets per query (the LLM agent's order swap); all are kept.
        sets = agent.answer_sets(pending) if hasattr(agent, "answer_sets") else [agent.answer(pending)]
        store.record(run_id, queries, sets)
        for answers in sets:
            n_ok += int(answers.ok.sum())
            feed(learner, pending, answers)
        loss = learner.step(config.learner_config.steps_per_chunk) if learner_name == "gradient" else None
        if n_ok - last_snap >= every and learner_name == "gradient":
            pcc, last_snap = snapshot(), n_ok
        if progress:
            progress(Progress(min(stop, budget), budget, pcc, loss))

    learner.finish()
    pcc = snapshot(final=True)
    if progress:
        progress(Progress(budget, budget, pcc, learner.last_loss))
    factor = learner.factor()
    store.save_factor(run_id, factor)
    extra = readouts(target, factor) if config.rfm_mse else {}
    asker = agent.agent if isinstance(agent, BisectionAgent) else agent  # who actually answered
    if hasattr(asker, "run_summary"):  # requests, tokens, cost, position bias
        extra["llm"] = asker.run_summary(store, run_id)
    if asker is not agent:  # every ternary answer behind the bisected pairs
        extra["ternary_answers"] = store.sum_meta(run_id, "triplets")
    if extra:
        store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0, {"final": True, **extra})
    store.set_status(run_id, "waiting" if config.agent == "human" and human.waiting(store, run_id) else "done")
    return RunResult(run_id, pcc, n_ok, budget, design.count, learner_name,
                     time.perf_counter() - t0, factor, history, extra)


def readouts(target: Target, factor: np.ndarray) -> dict:
    """Target-specific readouts beyond PCC: for the RFM target, the paper's test MSE."""
    if target.meta.get("kind") != "rfm":
        return {}
    from . import rfm

    result = rfm.fit_rfm(rfm.RFMConfig(figure=target.meta["figure"], seed=target.meta["seed"]))
    base = rfm.baseline_mses(result)
    return {"mse": rfm.test_mse(result, factor @ factor.T), "mse_truth": base["truth"],
            "mse_identity": base["identity"]}
