"""One run's working state (:class:`Session`): opening it (checks, the learner, the agent, the query
source) and, on a resumed run, replaying what the store holds.

A session is built once per ``fbloop run`` call. Everything the loop needs between chunks lives
here, so the loop's steps (:mod:`fbloop.loop.run`) are short functions of a session.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..agents.base import Agent, Ledger
from ..agents.reliability import Sources
from ..errors import ConfigError, StoreError
from ..queries.catalogue import make_design
from ..queries.designs import Design, n_params
from ..queries.sources import ActiveQueries, ActiveSource, FixedQueries, Prequential, make_strategy
from ..records import TUPLE_KINDS
from ..store import Store
from ..targets.load import load_target
from ..targets.target import Target
from .agents import make_agent
from .config import Progress, RunConfig
from .learners import HeldOut, choose_learner, feed, make_learner


@dataclass
class Session:
    """A run between its chunks: what it is, who answers, what it has learnt, what it reported."""

    config: RunConfig
    store: Store
    run_id: str
    target: Target
    design: Design
    budget: int
    chunk: int
    every: int  # answers between snapshots
    learner: object
    learner_name: str
    agent: Agent
    source: FixedQueries | ActiveSource
    ledger: Ledger
    resumed: bool
    held: HeldOut | None = None
    preq: Prequential | None = None
    sources: Sources = field(default_factory=Sources)
    learns_noise: bool = False
    noise: dict[int, float] = field(default_factory=dict)
    history: list[tuple[int, float | None]] = field(default_factory=list)
    n_ok: int = 0
    last_snap: int = 0
    pcc: float | None = None
    t0: float = field(default_factory=time.perf_counter)
    progress: Callable[[Progress], None] | None = None

    def report(self, answers: int, pcc: float | None, loss: float | None, **kw) -> None:
        if self.progress is not None:
            self.progress(Progress(answers, self.budget, pcc, loss, **kw))

    def factor_now(self) -> np.ndarray | None:
        """``Φ̂``'s factor as learnt so far, once something was learnt (for a strategy or a pool's routing)."""
        learnt = getattr(self.learner, "n_triplets", 0) + getattr(self.learner, "n_tuples", 0)
        return self.learner.factor() if learnt else None


def default_budget(design: Design) -> int:
    if design.count is not None:
        return design.count
    return 4 * n_params(design.p) if design.kind == "pair" else 20 * n_params(design.p)


def auto_chunk(budget: int) -> int:
    """Queries per transaction when the config leaves it open: ~500 chunks a run, 64 to 16,384 each."""
    return int(min(max(budget // 500, 64), 16_384))


def new_run_id(config: RunConfig) -> str:
    return f"{config.design.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def check_config(config: RunConfig, design: Design, budget: int) -> None:
    """Combinations no agent or design can serve, refused before anything is stored."""
    if design.total is not None and budget > design.total:
        raise ConfigError(f"Budget {budget} exceeds the {design.total} distinct queries of design "
                          f"{config.design.name!r} at p={design.p}, rank={design.rank}.")
    if config.agent == "llm" and design.kind == "pair" and config.bisection is None:
        raise ConfigError("The llm agent answers triplets; pair designs need the bisection route "
                          "(--bisection 1e-3) or --design triplet.")
    if config.agent == "human" and design.kind not in ("triplet", *TUPLE_KINDS):
        raise ConfigError(f"People answer triplets and tuple questions (closest, rank, odd) in the form; design "
                          f"{config.design.name!r} asks {design.kind}s. Use --design triplet (or closest, rank, odd).")
    if config.agent == "pool" and design.kind not in ("triplet", *TUPLE_KINDS):
        raise ConfigError(f"The pool agent answers triplets and tuple questions; design {config.design.name!r} "
                          f"asks {design.kind}s. Use --design triplet (or closest, rank, odd) with --agent pool.")
    if config.holdout and design.kind == "pair":
        raise ConfigError(f"A held-out share scores triplet and tuple answers; design {config.design.name!r} "
                          "asks pairs.")
    if config.active is not None and config.design.name not in ("triplet", *TUPLE_KINDS):
        raise ConfigError(f"Active strategies choose triplets or tuples; design {config.design.name!r} is fixed "
                          "in advance. Use --design triplet, closest, rank or odd with --active.")


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: stored {va!r}, given {vb!r}")
    return out


def claim_run(config: RunConfig, store: Store, run_id: str | None, design: Design, target: Target,
              budget: int) -> tuple[str, bool]:
    """The run's id, creating the run if new; ``(run_id, resumed)``. A stored run must have this config."""
    if run_id is None:
        run_id = new_run_id(config)
        while store.get_run(run_id) is not None:  # a new run never lands on another's id (same second, same suffix)
            run_id = new_run_id(config)
    cfg_json = json.loads(json.dumps(config.to_dict()))
    existing = store.get_run(run_id)
    if existing is None:
        store.create_run(run_id, kind=design.kind, p=target.p, budget=budget, config=cfg_json,
                         target=target.summary(), anchor=design.anchor())
        return run_id, False
    diff = _config_diff(existing["config"], cfg_json)
    if diff:
        raise StoreError(f"Run {run_id!r} exists with another config ({'; '.join(diff[:3])}); use a new --run-id.")
    return run_id, True


def open_session(config: RunConfig, store: Store, run_id: str | None = None, target: Target | None = None,
                 progress: Callable[[Progress], None] | None = None) -> Session:
    """Build (or resume) a run's session; a resumed one has replayed every stored answer."""
    t0 = time.perf_counter()
    target = target or load_target(config.target)
    design = make_design(config.design, target, config.seed)
    budget = config.budget or default_budget(design)
    check_config(config, design, budget)
    learner_name = choose_learner(config, design)
    learner = make_learner(learner_name, target.p, config.learner_config, design.anchor(), design)
    agent = make_agent(config, target, design, store)
    run_id, resumed = claim_run(config, store, run_id, design, target, budget)
    # A deferred agent takes a fixed design's queries at once (people see the whole queue) unless the config
    # names a chunk (a batch run's default: one batch per chunk); else by chunk.
    whole = agent.deferred and config.active is None and config.chunk is None
    chunk = budget if whole else config.chunk or auto_chunk(budget)
    if config.active is not None:
        active = ActiveQueries(make_strategy(target.p, config.active, config.design), config.seed)
        source: FixedQueries | ActiveSource = ActiveSource(active, store, run_id, budget, chunk)
    else:
        source = FixedQueries(design)
    # Snapshots every ~1/40 of the budget; a deferred agent's answers come slowly, so each arrival counts.
    every = config.snapshot_every or (max(budget // 40, 1) if agent.deferred else max(chunk, budget // 40))
    s = Session(config, store, run_id, target, design, budget, chunk, every,
                learner, learner_name, agent, source, Ledger(store, run_id), resumed, t0=t0, progress=progress,
                held=HeldOut(config.holdout, config.seed) if config.holdout else None,
                preq=Prequential() if config.active is not None else None,
                learns_noise=learner_name == "gradient" and design.kind != "pair" and config.learns_noise())
    agent.start(s.ledger, resumed)
    s.sources = Sources(agent.sources())
    if resumed:
        replay(s)
    s.history = [(snap["answers"], snap["pcc"]) for snap in store.snapshots(run_id)]
    s.n_ok = store.count_answers(run_id)
    s.last_snap = s.history[-1][0] if s.history else 0
    s.pcc = s.history[-1][1] if s.history else None
    refit_noise(s)
    return s


def replay(s: Session) -> None:
    """Give a fresh learner every answer the run stored, in the order the agent keeps them."""
    for queries, answers in s.agent.stored():
        feed(s.learner, queries, answers, s.held, s.sources.of(answers))
        s.design.observe(queries, answers)
        s.source.observe(queries)
    if s.config.learner_config.steps_per_chunk:
        s.learner.step(s.config.learner_config.steps_per_chunk)


def refit_noise(s: Session) -> None:
    """Each source's flip rate as its agent estimates it now, given to the learner (noise-aware runs)."""
    if not s.learns_noise:
        return
    named = s.agent.noise()
    s.noise = {s.sources.id(name): eps for name, eps in named.items()}
    s.learner.set_source_noise(s.noise)
