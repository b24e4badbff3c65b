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

from . import human, metrics, seeding
from .active import ActiveConfig, ActiveStrategy, NoiseModel
from .agents import Answers, OracleAgent, OracleConfig
from .agents.llm import LLMAgent, LLMConfig
from .bisection import BisectionAgent, BisectionConfig
from .designs import Design, DesignConfig, Queries, make_design, n_params
from .direct import SolvedLearner
from .errors import ConfigError, StoreError
from .learner import GradientLearner, LearnerConfig
from .pool import AgentPool, MemberSpec, PoolConfig
from .querying import ActiveQueries, Prequential, random_positions, stored_chunk
from .reliability import Sources, source_noise
from .sparse import SparseBatch
from .store import Store
from .targets import Target, load_target

LearnerName = Literal["gradient", "exact", "direct", "pivot", "auto"]
EXACT_MAX_P = 40  # "auto" uses the exact learner for pair runs up to this p
DIRECT_DESIGNS = ("constructive", "eigen")  # 1- and 2-sparse pairs: "auto" solves them directly above EXACT_MAX_P
AGENTS = ("oracle", "llm", "human", "pool")
ACTIVE_STEPS = 100  # active runs: learner steps after each chunk at least (the strategy scores under Φ̂)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run; stored with it as JSON."""

    target: str = "rfm"  # a target spec, see fbloop.targets
    design: DesignConfig = field(default_factory=DesignConfig)
    agent: Literal["oracle", "llm", "human", "pool"] = "oracle"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    llm: LLMConfig | None = None  # the llm agent's endpoint and options; None (oracle runs) keeps old configs equal
    check_rate: float | None = None  # human agent: share of attention checks in its queue; None → 0.1
    bisection: BisectionConfig | None = None  # pair designs answered by ternary comparisons (fbloop.bisection)
    budget: int | None = None  # answers to collect; None → the design's count (or a default)
    learner: LearnerName = "gradient"
    learner_config: LearnerConfig = field(default_factory=LearnerConfig)
    chunk: int | None = None  # queries per transaction / learner update; None → budget/500 within [64, 16384]
    snapshot_every: int | None = None  # answers between PCC snapshots; None → ~40 per run
    rfm_mse: bool = True  # RFM targets: score Φ̂ by the predictor's test MSE at the end (a 4000² solve)
    holdout: float | None = None  # triplet runs: share of queries answered and stored, never learned from
    active: ActiveConfig | None = None  # triplet runs: choose each chunk's queries from Φ̂ (fbloop.active)
    pool: tuple[MemberSpec, ...] | None = None  # agent "pool": its members (fbloop.pool)
    pool_config: PoolConfig | None = None  # agent "pool": routing shares; None → PoolConfig(seed=seed)
    stop_at: float | None = None  # stop asking once a snapshot's PCC reaches this (needs a Φ*; simulations)
    # Triplet runs: fit each source's answers at its estimated flip rate (people by their attention checks,
    # an LLM by its order swaps; fbloop.reliability). None is on (and keeps older stored configs equal);
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


class ExactLearner(SolvedLearner):
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
    """The learner a run uses: ``auto`` picks pivot (the pivot design), exact (small p), direct or gradient."""
    from .direct import MAX_P as DIRECT_MAX_P

    if config.learner == "pivot" and design.config.name != "pivot":
        raise ConfigError(f"The pivot learner solves the pivot design's answers; got design "
                          f"{design.config.name!r}. Use --design pivot or another learner.")
    if config.learner != "auto":
        if config.learner in ("exact", "direct") and design.kind != "pair":
            raise ConfigError(f"The {config.learner} learner takes equality pairs; use --learner gradient "
                              "for triplets.")
        from .exact import ExactConfig

        max_p = ExactConfig().max_p
        if config.learner == "exact" and design.p > max_p:
            raise ConfigError(f"The exact learner handles p ≤ {max_p}, got p={design.p}; use --learner gradient.")
        if config.learner == "direct" and (design.config.name not in DIRECT_DESIGNS or design.p > DIRECT_MAX_P):
            raise ConfigError(f"The direct learner solves the {' and '.join(DIRECT_DESIGNS)} designs up to "
                              f"p = {DIRECT_MAX_P}; got design {design.config.name!r} at p={design.p}. "
                              "Use --learner gradient.")
        return config.learner
    if design.config.name == "pivot":
        return "pivot"
    if design.kind == "pair" and design.p <= EXACT_MAX_P:
        return "exact"
    if design.config.name in DIRECT_DESIGNS and design.p <= DIRECT_MAX_P:
        return "direct"
    return "gradient"


def make_learner(name: str, p: int, config: LearnerConfig, anchor: SparseBatch, design: Design | None = None):
    if name == "pivot":
        from .pivots import PivotLearner

        return PivotLearner(design)  # type: ignore[arg-type]
    if name == "exact":
        return ExactLearner(p, anchor)
    if name == "direct":
        from .direct import DirectLearner

        return DirectLearner(p)
    learner = GradientLearner(p, config, anchor)
    learner.name = "gradient"
    return learner


class HeldOut:
    """A run's held-out triplets: asked and stored like the others, never given to the learner.

    Which positions are held out is a pure function of ``(seed, seq)``
    (:func:`fbloop.seeding.held_out`), so a resumed run — replaying its stored
    answers — holds out the same ones. The first ``MAX_ROWS`` held-out ok answers
    are kept in memory; :meth:`agreement` scores ``Φ̂``'s predicted signs on them,
    the readout of a run with no ``Φ*`` (people, an LLM).
    """

    MAX_ROWS = 20_000

    def __init__(self, share: float, seed: int):
        self.share, self.seed = share, seed
        self._kept: list[tuple[Queries, np.ndarray]] = []
        self.n = 0

    def mask(self, seq: np.ndarray) -> np.ndarray:
        return seeding.held_out(self.seed, seq, self.share)

    def keep(self, queries: Queries, answers: Answers) -> None:
        """Remember the held-out ok answers among ``answers`` (to ``queries``, any order, a superset)."""
        rows = np.flatnonzero(answers.ok & self.mask(answers.seq))[: self.MAX_ROWS - self.n]
        if len(rows) == 0:
            return
        pos = {int(s): i for i, s in enumerate(queries.seq)}
        self._kept.append((queries.select(np.array([pos[int(s)] for s in answers.seq[rows]])),
                           answers.value[rows]))
        self.n += len(rows)

    def agreement(self, learner) -> float | None:
        """Share of the kept held-out answers whose sign ``learner``'s ``Φ̂`` predicts; ``None`` without any."""
        if not self.n or not hasattr(learner, "predict_triplets"):
            return None
        agree = sum(metrics.triplet_agreement(learner.predict_triplets(q.a, q.b, q.c), v) * len(v)
                    for q, v in self._kept)
        return agree / self.n


def feed(learner, queries: Queries, answers: Answers, held: HeldOut | None = None,
         source: int | np.ndarray = 0) -> None:
    """Give the learner the ok answers of a chunk; held-out ones go to ``held`` instead.

    ``source`` names who gave them (:class:`fbloop.reliability.Sources` ids: one, or one per
    answer), for a learner that weighs each source by its reliability.
    """
    ok = answers.ok
    if held is not None:
        held.keep(queries, answers)
        ok = ok & ~held.mask(answers.seq)
    if not ok.any():
        return
    pos = {int(s): i for i, s in enumerate(queries.seq)}
    rows = np.array([pos[int(s)] for s in answers.seq[ok]])
    q = queries.select(rows)
    if q.kind == "pair":
        learner.add_pairs(q.a, answers.value[ok])
    else:  # triplets always go to the gradient learner (choose_learner)
        src = source if np.ndim(source) == 0 else np.asarray(source)[ok]
        learner.add_triplets(q.a, q.b, q.c, answers.value[ok], source=src)


# ---------------------------------------------------------------- the loop


def answer_names(agent) -> list[str]:
    """The agent names an agent's answers are stored under (the LLM agent's order swap adds one)."""
    if isinstance(agent, AgentPool):
        return [*agent.agents, agent.name]
    inner = agent.agent if isinstance(agent, NativeView) else agent  # bisection answers are pairs, one name
    return [agent.name] + ([inner.swap_name] if isinstance(inner, LLMAgent) and inner.config.order_swap else [])


def default_budget(design: Design) -> int:
    if design.count is not None:
        return design.count
    return 4 * n_params(design.p) if design.kind == "pair" else 20 * n_params(design.p)


def auto_chunk(budget: int) -> int:
    """Queries per transaction when the config leaves it open: ~500 chunks a run, 64 to 16,384 each."""
    return int(min(max(budget // 500, 64), 16_384))


def new_run_id(config: RunConfig) -> str:
    return f"{config.design.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


class NativeView:
    """Shows an agent a basis design's queries in feature coordinates (see :class:`fbloop.designs.Design`)."""

    def __init__(self, agent: LLMAgent, design: Design):
        self.agent, self.design = agent, design
        self.name = agent.name

    def _native(self, q: Queries) -> Queries:
        conv = lambda x: None if x is None else self.design.to_native(x)  # noqa: E731
        return Queries(q.kind, q.seq, conv(q.a), conv(q.b), conv(q.c))

    def answer(self, queries: Queries) -> Answers:
        return self.agent.answer(self._native(queries))

    def answer_sets(self, queries: Queries) -> list[Answers]:
        return self.agent.answer_sets(self._native(queries))

    def run_summary(self, store: Store, run_id: str) -> dict:
        return self.agent.run_summary(store, run_id)


def make_agent(config: RunConfig, target: Target, design: Design, store: Store | None = None
               ) -> OracleAgent | LLMAgent | NativeView | AgentPool:
    """The run's agent; an LLM agent checks its endpoint first and caches replies in ``store``.

    The oracle answers in the design's coordinates (``Φ*`` rotated into its basis);
    the LLM sees feature coordinates, as a person would. A pool builds each member
    the same way, under the member's name.
    """
    if config.agent == "pool":
        members = []
        for spec in config.pool or ():
            if spec.agent == "human":  # the people in the app: what is routed to them is queued for the form
                if store is None:
                    raise ConfigError(f"Pool member {spec.name!r} (people) needs the run's store to queue in.")
                rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
                member = human.PeopleMember(spec.name, store, rate, target.factor, config.seed)
            else:
                member = make_agent(dataclasses.replace(config, agent=spec.agent, oracle=spec.oracle, pool=None),
                                    target, design, store)
                member.name = spec.name
            members.append((member, spec.terms))
        noise = config.active.noise if config.active is not None else NoiseModel()
        return AgentPool(members, config.pool_config or PoolConfig(seed=config.seed), noise)
    if config.agent == "llm":
        agent = LLMAgent(config.llm, target.descriptions, cache=store)
        agent.check()  # a missing key or a dead endpoint fails here, before any query is spent
        return agent if design.basis is None else NativeView(agent, design)
    return OracleAgent(design.design_factor(target.factor), design.anchor(), config.oracle)


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
    learner = make_learner(learner_name, target.p, config.learner_config, anchor, design)
    if config.agent == "llm" and design.kind != "triplet" and config.bisection is None:
        raise ConfigError("The llm agent answers triplets; pair designs need the bisection route "
                          "(--bisection 1e-3) or --design triplet.")
    if config.agent in ("human", "pool") and design.kind != "triplet":
        raise ConfigError(f"The {config.agent} agent answers triplets; use --design triplet with --agent "
                          f"{config.agent}.")
    if config.holdout and design.kind != "triplet":
        raise ConfigError(f"A held-out share scores triplet answers; design {config.design.name!r} asks pairs.")
    if config.active is not None and config.design.name != "triplet":
        raise ConfigError(f"Active strategies choose triplets; design {config.design.name!r} is fixed in "
                          "advance. Use --design triplet with --active.")
    held = HeldOut(config.holdout, config.seed) if config.holdout else None
    agent = make_agent(config, target, design, store)
    if config.bisection is not None and design.kind == "pair":
        agent = BisectionAgent(agent, anchor, config.bisection)
    pool = agent if isinstance(agent, AgentPool) else None
    people = next((m for m in pool.agents.values() if isinstance(m, human.PeopleMember)), None) if pool else None
    names = answer_names(agent)
    sources = Sources(list(pool.agents) if pool is not None else names)  # the learner's source ids
    noise_aware = isinstance(learner, GradientLearner) and design.kind == "triplet" and (
        pool.config.noise_aware if pool is not None else config.noise_aware is not False)
    active = (ActiveQueries(ActiveStrategy(target.p, config.active, config.design), config.seed)
              if config.active is not None else None)
    preq = Prequential() if active is not None else None

    if run_id is None:
        run_id = new_run_id(config)
        while store.get_run(run_id) is not None:  # a new run never lands on another's id (same second, same suffix)
            run_id = new_run_id(config)
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
        replays = [{"agent": who} for who in pool.agents] if pool is not None else [{}]
        if people is not None:
            replays.append({"prefix": human.PREFIX})  # every annotator's answers
        for which in replays:  # replay what was stored
            for queries, answers in store.iter_answered(run_id, **which):
                feed(learner, queries, answers, held, sources.of(answers))
                design.observe(queries, answers)
                if active is not None:
                    active.observe(queries)
        if pool is not None:
            rows = store.answer_values(run_id)
            if people is not None:  # annotators answer as the people member; it was charged per triplet queued
                rows = [(q, people.name if a.startswith(human.PREFIX) else a, st, v) for q, a, st, v in rows]
            pool.replay(rows)
        if config.learner_config.steps_per_chunk:
            learner.step(config.learner_config.steps_per_chunk)
    if people is not None:  # what the run queued for people before counts as asked (and charged)
        people.bind(run_id)
        pool.asked_[people.name] = len(people.queued)
        pool.spent_[people.name] = pool.members[people.name].cost * len(people.queued)
    # An LLM asking both orders: its own tally of this process's swapped pairs, on top of what was stored before.
    inner = agent.agent if isinstance(agent, NativeView) else agent
    swapper = inner if pool is None and isinstance(inner, LLMAgent) and inner.config.order_swap else None
    stored_swaps = store.agreement(run_id, *names) if swapper is not None else None

    def swaps() -> tuple[int, int] | None:  # (answered in both orders, agreeing)
        if swapper is None:
            return None
        u = swapper.usage
        return (stored_swaps["both"] + u.swap_pairs, stored_swaps["agree"] + u.swap_pairs - u.swap_disagreements)

    noise: dict[int, float] = {}
    if noise_aware:
        noise = source_noise(store, run_id, "human" if people is not None else config.agent, pool, sources,
                             swaps(), names)
        learner.set_source_noise(noise)
    stored_until = store.next_position(run_id) if active is not None and existing is not None else 0

    chunk = config.chunk or auto_chunk(budget)
    every = config.snapshot_every or max(chunk, budget // 40)
    history: list[tuple[int, float | None]] = [(s["answers"], s["pcc"]) for s in store.snapshots(run_id)]
    n_ok = store.count_answers(run_id)
    last_snap = history[-1][0] if history else 0

    def current_factor() -> np.ndarray | None:
        return learner.factor() if getattr(learner, "n_triplets", 0) else None

    def live_extra() -> dict:
        extra: dict = {}
        if held is not None:
            extra["holdout_agreement"], extra["holdout_n"] = held.agreement(learner), held.n
        elif preq is not None:
            extra["holdout_agreement"], extra["holdout_n"] = preq.agreement(), preq.n
            extra["holdout_kind"] = "prequential"
        if pool is not None:
            summary = pool.summary()
            extra["cost"], extra["pool"] = summary["total_cost"], summary
        if noise:  # the flip rate each source's answers are fitted at
            extra["source_noise"] = sources.named(noise)
        if learner_name == "pivot":  # its rank and the hold-out pairs' PCC, the readout without Φ*
            extra["pivot"] = learner.summary()
        return extra

    def snapshot() -> float:  # a snapshot while answers arrive; the final one is stored after the fit
        pcc = metrics.pcc_factored(design.native_factor(learner.factor()), target.factor)
        extra = {"loss": learner.last_loss, "learner": learner_name, "final": False, **live_extra()}
        store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0, extra)
        history.append((n_ok, pcc))
        return pcc

    pcc: float | None = history[-1][1] if history else None
    store.set_status(run_id, "running")
    if config.agent == "human":  # people answer in the app: queue the triplets, learn from what is in so far
        rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
        if active is None:
            human.queue(store, run_id, design.queries(0, budget), check_rate=rate, factor=target.factor,
                        seed=config.seed)
        elif n_ok == 0:  # the first chunk, random; later ones are chosen after the fit below
            top_up_queue(store, run_id, active, budget, chunk, None, rate, target.factor, config.seed)
        if n_ok == 0:  # nothing answered yet, nothing to learn
            store.set_status(run_id, "waiting")
            if active is not None:
                active.close()
            return RunResult(run_id, None, 0, budget, design.count, learner_name, time.perf_counter() - t0,
                             np.zeros((target.p, 1)), history)
    names = answer_names(agent)
    try:
        stop = 0
        while stop < (budget if config.agent != "human" else 0):
            start = stop
            # An adaptive design (the pivot design) may end a chunk early where its next queries wait on answers.
            stop = design.ready_until(start, min(start + chunk, budget))
            done = store.answered(run_id, start, stop, None if pool is not None else agent.name)
            if people is not None:  # queued for people counts as asked: their answers come later
                done = np.union1d(done, [s for s in range(start, stop) if s in people.queued]).astype(np.int64)
            # A resumed run asks again what got only invalid answers (an unparseable reply), one attempt later.
            retry = store.invalid_only(run_id, start, stop, names) if existing is not None else {}
            if len(done) == stop - start and not retry:
                continue  # answered before a restart; already replayed
            # Φ̂ as learnt so far, copied once a chunk for the strategy and the pool's routing
            factor = current_factor() if active is not None or pool is not None else None
            if active is None:
                queries = design.queries(start, stop)
            else:
                queries = stored_chunk(store, run_id, start, stop) if start < stored_until else None
                if queries is None:
                    queries = active.get(start, stop, factor)
                if stop < budget and stop >= stored_until:  # score the next chunk while this one is answered
                    active.prefetch(stop, min(stop + chunk, budget), factor)
            pending = queries.select(~np.isin(queries.seq, done) | np.isin(queries.seq, list(retry)))
            if pool is not None:
                pool.factor = factor  # the pool routes the least sure queries to its most reliable member
            # An agent may give several answer sets per query (the LLM agent's order swap); all are kept.
            sets = agent.answer_sets(pending) if hasattr(agent, "answer_sets") else [agent.answer(pending)]
            if retry:
                store.record_attempts(run_id, queries, sets, retry)
            else:
                store.record(run_id, queries, sets)
            for answers in sets:
                n_ok += int(answers.ok.sum())
                if preq is not None:  # score the random share before learning from it
                    preq.score(learner, pending, answers,
                               random_positions(config.seed, answers.seq, config.active.random_share))
                feed(learner, pending, answers, held, sources.of(answers))
                design.observe(pending, answers)
            if noise_aware:
                noise = source_noise(store, run_id, "human" if people is not None else config.agent, pool,
                                     sources, swaps(), names)
                learner.set_source_noise(noise)
            loss = None
            if learner_name == "gradient":
                steps = learner.arrival_steps(stop - start)
                loss = learner.step(max(steps, ACTIVE_STEPS) if active is not None else steps)
            if n_ok - last_snap >= every and learner_name in ("gradient", "pivot"):
                pcc, last_snap = snapshot(), n_ok
            if progress:
                progress(Progress(min(stop, budget), budget, pcc, loss))
            if config.stop_at is not None and pcc is not None and pcc >= config.stop_at:
                break  # good enough: no more answers are paid for
    finally:
        if active is not None:
            active.close()

    if isinstance(learner, GradientLearner):
        fit_pcc, reports = pcc, [0]

        def fit_progress(done: int, total: int, loss: float) -> None:
            nonlocal fit_pcc
            reports[0] += 1
            if reports[0] % 10 == 0:  # a PCC readout costs O(p·r²): every tenth report
                fit_pcc = metrics.pcc_factored(design.native_factor(learner.factor()), target.factor)
            if progress:
                progress(Progress(budget, budget, fit_pcc, loss, fit=(done, total)))

        learner.finish(progress=fit_progress)
    else:
        learner.finish()
    factor = design.native_factor(learner.factor())
    pcc = metrics.pcc_factored(factor, target.factor)
    if progress:
        progress(Progress(budget, budget, pcc, learner.last_loss))
    store.save_factor(run_id, factor)
    extra = readouts(target, factor) if config.rfm_mse else {}
    asker = agent.agent if isinstance(agent, BisectionAgent) else agent  # who actually answered
    asker = asker.agent if isinstance(asker, NativeView) else asker
    if hasattr(asker, "run_summary"):  # requests, tokens, cost, position bias
        extra["llm"] = asker.run_summary(store, run_id)
    for member in (pool.agents.values() if pool is not None else ()):
        if hasattr(member, "run_summary"):  # a pool's LLM member
            extra["llm"] = member.run_summary(store, run_id)
    if isinstance(agent, BisectionAgent):  # every ternary answer behind the bisected pairs
        extra["ternary_answers"] = store.sum_meta(run_id, "triplets")
    extra.update(live_extra())
    if active is not None:
        extra["active"] = active.summary()
    if design.adaptive:
        extra["design"] = design.summary()
    store.add_snapshot(run_id, n_ok, pcc, time.perf_counter() - t0,  # one final snapshot, every readout in it
                       {"loss": learner.last_loss, "learner": learner_name, "final": True, **extra})
    history.append((n_ok, pcc))
    if config.agent == "human" and active is not None:  # the next chunk, chosen under what was just learnt
        rate = human.CHECK_RATE if config.check_rate is None else config.check_rate
        top_up_queue(store, run_id, active, budget, chunk, learner.factor(), rate, target.factor, config.seed)
    store.set_status(run_id, "waiting" if (config.agent == "human" or people is not None)
                     and human.waiting(store, run_id) else "done")
    return RunResult(run_id, pcc, n_ok, budget, design.count, learner_name,
                     time.perf_counter() - t0, factor, history, extra)


def top_up_queue(store: Store, run_id: str, active: ActiveQueries, budget: int, chunk: int,
                 factor: np.ndarray | None, check_rate: float, truth: np.ndarray | None, seed: int) -> int:
    """Active runs with people: queue the next chunk of chosen triplets when fewer than a chunk wait.

    People never wait for scoring: the queue always holds up to a chunk ahead, and
    the run (``fbloop run`` again, or ``fbloop run --watch``) chooses the next one
    under the ``Φ̂`` learnt from the answers in so far. Returns how many were queued.
    """
    info = store.queue_progress(run_id)
    unanswered = info["queued"] - info["answered"]
    start = store.next_position(run_id)
    if unanswered >= chunk or start >= budget:
        return 0
    stop = min(start + chunk, budget)
    queries = active.get(start, stop, factor)
    return human.queue(store, run_id, queries, check_rate=check_rate, factor=truth, seed=seed)["queued"]


def readouts(target: Target, factor: np.ndarray) -> dict:
    """Target-specific readouts beyond PCC: for the RFM target, the paper's test MSE."""
    if target.meta.get("kind") != "rfm":
        return {}
    from . import rfm

    result = rfm.fit_rfm(rfm.RFMConfig(figure=target.meta["figure"], seed=target.meta["seed"]))
    base = rfm.baseline_mses(result)
    return {"mse": rfm.test_mse(result, factor @ factor.T), "mse_truth": base["truth"],
            "mse_identity": base["identity"]}
