"""The agent protocol: every answerer, now or later, asks and collects through the store.

An agent is whoever answers a run's queries: the simulated oracle and a synchronous LLM answer at
once; people answer in the app whenever they come back; a provider's batch job within a day. The
loop treats them all alike (:class:`Agent`):

1. :meth:`Agent.start` attaches the agent to the run's :class:`Ledger` (the store, seen through one
   run id) and, on a resumed run, restores what the agent counts from what is stored (a pool's
   spending, the queue people answer from, an LLM's order-swap tally);
2. :meth:`Agent.stored` gives back what the run stored before, for the learner to replay;
3. :meth:`Agent.ask` records what is asked *through the store*: an immediate agent answers and stores
   queries and answers in one transaction; a deferred one stores the queries where its answerers
   will find them (the annotation queue, a batch file);
4. :meth:`Agent.collect` returns the answers that have arrived since the last call, each with its
   queries, already stored: an immediate agent's at once, a deferred agent's as they come in;
5. :meth:`Agent.noise` estimates each source's flip rate (attention checks, order swaps, agreement)
   and :meth:`Agent.summary` reports cost, tokens, swaps, checks and invalid replies.

:meth:`Agent.asked` says which positions need no asking (answered, or waiting for an answer);
:meth:`Agent.ready` whether the agent takes more now (people: while fewer than a chunk wait);
:meth:`Agent.outstanding` how many asked queries still wait for an answer (0 for an immediate agent).

Pools, bisection and basis views *compose* agents: each is an agent built on others. An agent
that answers at once derives from :class:`ImmediateAgent` and only writes :meth:`~ImmediateAgent.answer`
(and :meth:`~ImmediateAgent.answer_sets` when it gives several answer sets per query, as the LLM's
order swap does). An answer that could not be understood is kept with status ``invalid`` (and its
raw text), never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np

from ..records import Answers, Queries
from ..store import Store

Arrived = tuple[Queries, Answers]  # answers with the queries they answer (the queries may be a superset)
FactorHint = Callable[[], "np.ndarray | None"]  # the learner's current U, computed only when asked for


class Ledger:
    """One run's record of what was asked and answered: the store, seen through one run id."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id

    def record(self, queries: Queries, sets: list[Answers], attempts: dict[int, int] | None = None) -> int:
        """Queries and every answer set in one transaction; ``attempts`` (``{seq: attempt}``) for
        queries asked again after invalid answers. Returns the answers stored."""
        if attempts:
            return self.store.record_attempts(self.run_id, queries, sets, attempts)
        return self.store.record(self.run_id, queries, sets)

    def answered(self, start: int, stop: int, agent: str | None = None) -> np.ndarray:
        return self.store.answered(self.run_id, start, stop, agent)

    def invalid_only(self, start: int, stop: int, agents: list[str]) -> dict[int, int]:
        return self.store.invalid_only(self.run_id, start, stop, agents) if agents else {}

    def stored(self, **which) -> Iterator[Arrived]:
        """Stored ok answers with their queries (:meth:`fbloop.store.Store.iter_answered`'s filters)."""
        return self.store.iter_answered(self.run_id, **which)

    def last_answer_id(self) -> int:
        return self.store.last_answer_id(self.run_id)


class Agent(Protocol):
    """What the loop needs of an agent; see the module docstring for the order of calls."""

    name: str
    deferred: bool  # answers arrive later than ask() (people, batch jobs): the loop may wait for them

    def start(self, ledger: Ledger, resumed: bool) -> None: ...

    def stored(self) -> Iterator[Arrived]: ...

    def sources(self) -> list[str]: ...

    def owns(self, agent: str) -> bool: ...

    def asked(self, start: int, stop: int) -> np.ndarray: ...

    def ready(self, chunk: int) -> bool: ...

    def ask(self, queries: Queries, attempts: dict[int, int] | None = None, factor: FactorHint | None = None
            ) -> None: ...

    def collect(self) -> list[Arrived]: ...

    def outstanding(self) -> int: ...

    def noise(self) -> dict[str, float]: ...

    def summary(self, final: bool = False) -> dict: ...


class ImmediateAgent:
    """An agent that answers when asked: :meth:`ask` answers, stores, and holds the answers for
    :meth:`collect`. Subclasses write :meth:`answer` (and :meth:`answer_sets` for several sets)."""

    name: str = "agent"
    deferred = False
    ledger: Ledger | None = None

    def answer(self, queries: Queries) -> Answers:
        raise NotImplementedError

    def answer_sets(self, queries: Queries) -> list[Answers]:
        """Every answer set to ``queries`` (one, unless the agent asks each query more than once)."""
        return [self.answer(queries)]

    def start(self, ledger: Ledger, resumed: bool) -> None:
        self.ledger = ledger
        self._arrived: list[Arrived] = []

    def stored(self) -> Iterator[Arrived]:
        return self._ledger().stored()

    def sources(self) -> list[str]:
        """The agent names its answers are stored under (the learner weighs each source on its own)."""
        return [self.name]

    def owns(self, agent: str) -> bool:
        return agent in self.sources()

    def asked(self, start: int, stop: int) -> np.ndarray:
        return self._ledger().answered(start, stop, self.name)

    def ready(self, chunk: int) -> bool:
        return True

    def ask(self, queries: Queries, attempts: dict[int, int] | None = None, factor: FactorHint | None = None
            ) -> None:
        sets = self.answer_sets(queries)
        self._ledger().record(queries, sets, attempts)
        self._arrived += [(queries, answers) for answers in sets]

    def collect(self) -> list[Arrived]:
        out, self._arrived = self._arrived, []
        return out

    def outstanding(self) -> int:
        return 0

    def noise(self) -> dict[str, float]:
        return {}

    def summary(self, final: bool = False) -> dict:
        return {}

    def asked_count(self) -> int | None:
        """Queries asked so far when the agent counts them itself (people: what is queued); else ``None``."""
        return None

    def _ledger(self) -> Ledger:
        if self.ledger is None:
            raise RuntimeError(f"Agent {self.name!r} is not attached to a run; call start(ledger, resumed) first.")
        return self.ledger
