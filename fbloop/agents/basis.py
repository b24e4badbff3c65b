"""Basis views: an agent that sees a basis design's queries in feature coordinates.

A basis design (the eigendecomposition design) stores its queries sparse in its own basis
(:class:`fbloop.queries.designs.Design`); an LLM or a person must see the activations themselves.
:class:`BasisView` composes: it turns each query into feature coordinates and asks the agent it
wraps; everything else (sources, noise, summary) is that agent's.
"""

from __future__ import annotations

from ..queries.designs import Design
from ..records import Answers, Queries
from .base import ImmediateAgent, Ledger


class BasisView(ImmediateAgent):
    """Shows ``agent`` the queries of ``design`` (a basis design) in feature coordinates."""

    def __init__(self, agent: ImmediateAgent, design: Design):
        self.agent, self.design = agent, design
        self.name = agent.name

    def _native(self, q: Queries) -> Queries:
        conv = lambda x: None if x is None else self.design.to_native(x)  # noqa: E731
        return Queries(q.kind, q.seq, conv(q.a), conv(q.b), conv(q.c))

    def answer(self, queries: Queries) -> Answers:
        return self.agent.answer(self._native(queries))

    def answer_sets(self, queries: Queries) -> list[Answers]:
        return self.agent.answer_sets(self._native(queries))

    def start(self, ledger: Ledger, resumed: bool) -> None:
        super().start(ledger, resumed)
        self.agent.start(ledger, resumed)

    def sources(self) -> list[str]:
        return self.agent.sources()

    def noise(self) -> dict[str, float]:
        return self.agent.noise()

    def summary(self, final: bool = False) -> dict:
        return self.agent.summary(final)
