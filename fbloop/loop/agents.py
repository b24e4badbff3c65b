"""Who answers a run's queries: the agent (:func:`make_agent`) and the names its answers are stored under."""

from __future__ import annotations

import dataclasses

from .. import human
from ..active import NoiseModel
from ..agents import Answers, OracleAgent
from ..agents.llm import LLMAgent
from ..designs import Design, Queries
from ..errors import ConfigError
from ..pool import AgentPool, PoolConfig
from ..store import Store
from ..targets import Target
from .config import RunConfig


def answer_names(agent) -> list[str]:
    """The agent names an agent's answers are stored under (the LLM agent's order swap adds one)."""
    if isinstance(agent, AgentPool):
        return [*agent.agents, agent.name]
    inner = agent.agent if isinstance(agent, NativeView) else agent  # bisection answers are pairs, one name
    return [agent.name] + ([inner.swap_name] if isinstance(inner, LLMAgent) and inner.config.order_swap else [])


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
