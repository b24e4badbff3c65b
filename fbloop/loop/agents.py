"""Who answers a run's queries: :func:`make_agent` builds the agent a run's config names, composing
basis views, bisection and pools around the oracle, the LLM and people."""

from __future__ import annotations

import dataclasses

from ..agents import people
from ..agents.base import Agent, ImmediateAgent
from ..agents.basis import BasisView
from ..agents.batch import BatchAgent, batch_llm
from ..agents.bisection import BisectionAgent
from ..agents.llm import LLMAgent
from ..agents.oracle import OracleAgent
from ..agents.pool import AgentPool, PoolConfig
from ..agents.tuple_llm import TupleLLMAgent
from ..errors import ConfigError
from ..queries.active import NoiseModel
from ..queries.designs import Design
from ..records import TUPLE_KINDS
from ..store import Store
from ..targets.target import Target
from .config import RunConfig


def make_agent(config: RunConfig, target: Target, design: Design, store: Store | None = None) -> Agent:
    """The run's agent; an LLM agent checks its endpoint first and caches replies in ``store``.

    The oracle answers in the design's coordinates (``Φ*`` rotated into its basis); the LLM sees
    feature coordinates (a :class:`BasisView`), as a person would. A pair design answered by ternary
    comparisons goes through :class:`BisectionAgent`. A pool builds each member the same way, under
    the member's name.
    """
    if config.agent == "pool":
        return _pool(config, target, design, store)
    if config.agent == "human":
        return _people("human", config, target, store, design)
    if config.batch is not None:
        return _batch(config, target, design, store)
    agent = _answerer(config, target, design, store)
    if config.bisection is not None and design.kind == "pair":
        agent = BisectionAgent(agent, design.anchor(), config.bisection)
    return agent


def _answerer(config: RunConfig, target: Target, design: Design, store: Store | None) -> ImmediateAgent:
    if config.agent == "llm":
        if design.kind in TUPLE_KINDS:
            agent: LLMAgent = TupleLLMAgent(config.llm, design.kind, design.k, target.descriptions, cache=store)
        else:
            agent = LLMAgent(config.llm, target.descriptions, cache=store)
        agent.check()  # a missing key or a dead endpoint fails here, before any query is spent
        return agent if design.basis is None else BasisView(agent, design)
    return OracleAgent(design.design_factor(target.factor), design.anchor(), config.oracle)


def _batch(config: RunConfig, target: Target, design: Design, store: Store | None) -> BatchAgent:
    """The LLM through batch jobs; the provider's endpoint is checked (and probed) first, as for
    synchronous requests; offline there is no endpoint to check."""
    if store is None:
        raise ConfigError("Batch mode needs the run's store to keep its batches in.")
    if design.kind not in ("triplet", *TUPLE_KINDS) or design.basis is not None:
        raise ConfigError(f"Batch mode asks triplets or tuple questions in feature coordinates; design "
                          f"{config.design.name!r} does not. Use --design triplet (or closest, rank, odd).")
    llm = batch_llm(config.llm, design.kind, design.k if design.kind in TUPLE_KINDS else None, target.descriptions)
    agent = BatchAgent(llm, config.batch, store, active=config.active is not None)
    if config.batch.mode == "batch":
        llm.check()
    return agent


def _people(name: str, config: RunConfig, target: Target, store: Store | None, design: Design) -> people.People:
    if store is None:
        raise ConfigError(f"Agent {name!r} (people) needs the run's store to queue in.")
    rate = people.CHECK_RATE if config.check_rate is None else config.check_rate
    k = design.k if design.kind in TUPLE_KINDS else 2  # options per question: what a flipped answer's chance is
    return people.People(name, store, rate, target.factor, config.seed, design.kind, k)


def _pool(config: RunConfig, target: Target, design: Design, store: Store | None) -> AgentPool:
    members = []
    for spec in config.pool or ():
        if spec.agent == "human":  # the people in the app: what is routed to them is queued for the form
            member = _people(spec.name, config, target, store, design)
        else:
            member = _answerer(dataclasses.replace(config, agent=spec.agent, oracle=spec.oracle, pool=None),
                               target, design, store)
            member.name = spec.name
        members.append((member, spec.terms))
    noise = config.active.noise if config.active is not None else NoiseModel()
    return AgentPool(members, config.pool_config or PoolConfig(seed=config.seed), noise, design.kind,
                     design.k if design.kind in ("closest", "rank") else None)
