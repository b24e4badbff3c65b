"""Agent pools: several agents answer one experiment, each at its own cost and within its budget.

An :class:`AgentPool` is itself an agent (it has ``name`` and answers queries), so the
loop can use it where it uses one agent. It returns one :class:`~fbloop.agents.base.Answers`
per agent that answered (:meth:`AgentPool.answer_sets`, the form the loop already stores
and feeds for the LLM agent's order swap), each under that agent's own name.

A pool answers triplets or tuple questions (closest of ``k``, rank ``k``, odd one out: the
``kind`` and ``k`` it is built for). Routing, per batch of queries with the learner's uncertainty
per query (given as ``uncertainty=`` or computed from :attr:`AgentPool.factor` under the current
``Φ̂``: :func:`fbloop.queries.active.uncertainty_scores` for triplets, the entropy of the predicted
first place, :func:`fbloop.queries.active_tuples.first_place_entropy`, for tuples):

1. a random ``shared_share`` of the batch goes to *every* agent with budget left: these
   shared queries measure agreement;
2. of the rest, the ``hard_share`` the learner is least sure about go to the most
   reliable agent;
3. everything else goes to the cheapest agent.

An agent whose budget cannot pay for all it was sent takes the most uncertain of them it
can afford; the rest fall through to the next agent in the same order (most reliable →
next most reliable; cheapest → next cheapest). Queries no agent can pay for come back as
``skipped`` answers under the pool's name. Cost is charged per answer asked, invalid ones
included (an LLM bills a malformed reply too).

Reliability is an agent's estimated *accuracy* (the share of questions it answers as the
truth would; for tuples, whose first place it gets right — a ranking is compared on its first
place, as hold-out and attention checks score it), in order of preference:

- against a ``reference`` member (an exact oracle standing in for the truth), on shared queries;
- from pairwise agreement when three or more agents share queries: for questions of ``m`` answers
  (a triplet's 2, closest or rank ``k``'s ``k``, odd one out's 3) with independent errors spread
  evenly over the wrong ones, ``s_ij = (m·agree_ij − 1)/(m − 1) = r_i r_j`` with
  ``r = (m·accuracy − 1)/(m − 1)`` (:func:`~fbloop.agents.reliability.pair_signal`), so
  ``r_i = sqrt(s_ij s_ik / s_jk)`` (the median over pairs ``j, k``);
- the member's prior ``accuracy`` until ``min_shared`` shared answers exist;
- unknown (NaN): ranked after every known one, the costlier first (you pay more for a reason).

Noise-aware learning: with ``noise_aware`` (the default) the loop gives the learner each
source's estimated flip rate after every chunk (:meth:`AgentPool.noise`: ``1 − accuracy`` for a
member answering under its own name — for rankings ``(1 − accuracy)/(1 − 1/k)``, a flipped ranking
being a random one — overridden by the member's own estimate where it has one, such as each
person's attention checks); the learner's loss then expects that share of the source's answers
to be wrong (``GradientLearner.set_source_noise``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ConfigError, ShapeError
from ..queries.active import NoiseModel, uncertainty_scores
from ..queries.active_tuples import first_place_entropy
from ..records import Answers, Queries, ranking_from_code
from .base import Agent, ImmediateAgent, Ledger
from .oracle import OracleConfig
from .reliability import accuracy_from_signal, flip_rate_from_accuracy, options_compared, pair_signal


@dataclass(frozen=True)
class MemberConfig:
    cost: float = 1.0  # per answer asked
    budget: float | None = None  # total spend allowed, in cost units; None: unlimited
    accuracy: float | None = None  # prior accuracy in [0.5, 1], used until it is measured
    reference: bool = False  # its answers count as the truth when scoring the others

    def __post_init__(self) -> None:
        if not self.cost >= 0:
            raise ConfigError(f"Expect cost ≥ 0 per answer, got cost={self.cost}.")
        if self.budget is not None and not self.budget >= 0:
            raise ConfigError(f"Expect budget ≥ 0 (or None for unlimited), got budget={self.budget}.")
        if self.accuracy is not None and not 0.5 <= self.accuracy <= 1.0:
            raise ConfigError(f"Expect a prior accuracy in [0.5, 1], got accuracy={self.accuracy}.")


@dataclass(frozen=True)
class PoolConfig:
    hard_share: float = 0.2  # the most uncertain share of each batch goes to the most reliable agent
    shared_share: float = 0.05  # asked of every agent: agreement and accuracy
    min_shared: int = 30  # shared answers before a measured accuracy replaces the prior
    noise_aware: bool = True  # the loop tells the learner each member's estimated flip rate (1 − accuracy)
    seed: int = 0  # chooses the shared queries

    def __post_init__(self) -> None:
        for name in ("hard_share", "shared_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"Expect {name} in [0, 1], got {name}={value}.")
        if self.min_shared < 1:
            raise ConfigError(f"Expect min_shared ≥ 1, got min_shared={self.min_shared}.")


MEMBER_AGENTS = ("oracle", "llm", "human")


@dataclass(frozen=True)
class MemberSpec:
    """One member of a run's pool, as the run stores it: its name, which agent, and its terms.

    ``agent="oracle"`` is a simulated oracle with its own noise (``oracle``): the
    stand-in for people (exact) or for a cheap noisy agent; ``agent="llm"`` is the
    run's LLM endpoint (``RunConfig.llm``); ``agent="human"`` is the people answering
    in the app (:class:`fbloop.agents.people.People`: what is routed to them is queued
    for the form, and a later run learns from their answers). Parsed from the CLI's
    ``--member`` (:func:`parse_member`).
    """

    name: str
    agent: Literal["oracle", "llm", "human"] = "oracle"
    oracle: OracleConfig = field(default_factory=OracleConfig)
    terms: MemberConfig = field(default_factory=MemberConfig)

    def __post_init__(self) -> None:
        if isinstance(self.oracle, dict):  # from a stored run's JSON
            object.__setattr__(self, "oracle", OracleConfig(**self.oracle))
        if isinstance(self.terms, dict):
            object.__setattr__(self, "terms", MemberConfig(**self.terms))
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"Expect a member name of letters, digits, '-' or '_', got {self.name!r}.")
        if self.name == AgentPool.name:
            raise ConfigError(f"Member name {self.name!r} is the pool's own; choose another.")
        if self.agent not in MEMBER_AGENTS:
            raise ConfigError(f"Unknown pool member agent {self.agent!r}; expect one of {list(MEMBER_AGENTS)}.")
        if self.agent == "human" and self.oracle != OracleConfig():
            raise ConfigError(f"Member {self.name!r} is people (human): oracle noise options do not apply.")


_ORACLE_KEYS = {"noise": str, "temperature": float, "flip": float, "tie_band": float, "seed": int}
_TERM_KEYS = {"cost": float, "budget": float, "accuracy": float}


def parse_member(text: str) -> MemberSpec:
    """``NAME:AGENT[,key=value…][,reference]``, e.g. ``people:oracle,cost=1,reference`` or
    ``cheap:oracle,noise=flip,flip=0.2,cost=0.01`` or ``gpt:llm,cost=0.01`` or ``people:human,cost=1``.

    Keys: the oracle's ``noise``, ``temperature``, ``flip``, ``tie_band``, ``seed``; the
    terms' ``cost``, ``budget``, ``accuracy`` (a prior); the flag ``reference``.
    """
    head, _, rest = str(text).partition(",")
    name, sep, agent = head.partition(":")
    if not sep:
        raise ConfigError(f"Expect a member as NAME:AGENT[,key=value...], got {text!r}.")
    oracle: dict = {}
    terms: dict = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key == "reference" and not eq:
            terms["reference"] = True
        elif eq and key in _ORACLE_KEYS:
            oracle[key] = _convert(_ORACLE_KEYS[key], value, key, text)
        elif eq and key in _TERM_KEYS:
            terms[key] = _convert(_TERM_KEYS[key], value, key, text)
        else:
            known = sorted([*_ORACLE_KEYS, *_TERM_KEYS, "reference"])
            raise ConfigError(f"Unknown member option {item!r} in {text!r}; expect one of {known}.")
    return MemberSpec(name.strip(), agent.strip(), OracleConfig(**oracle), MemberConfig(**terms))  # type: ignore[arg-type]


def _convert(kind: type, value: str, key: str, text: str):
    try:
        return kind(value.strip())
    except ValueError:
        raise ConfigError(f"Expect {key}= a {kind.__name__}, got {value!r} in {text!r}.") from None


def _deferred(member) -> bool:
    """A member that answers later (people); any object with ``name`` and ``answer`` answers at once."""
    return getattr(member, "deferred", False)


@dataclass(frozen=True)
class Routing:
    """Row indices of a batch per agent (shared rows appear under every agent that got them)."""

    rows: dict[str, np.ndarray]  # agent name → (k,) int64 rows of the batch
    shared: np.ndarray  # (n,) bool: asked of every agent with budget
    hard: np.ndarray  # (n,) bool: among the least sure, routed by reliability
    skipped: np.ndarray  # (k,) rows no agent could pay for


class AgentPool(ImmediateAgent):
    """Several agents behind one ``answer_sets`` call; see the module docstring for the rule."""

    name = "pool"

    def __init__(self, members: Sequence[tuple[Agent, MemberConfig]], config: PoolConfig = PoolConfig(),
                 noise: NoiseModel = NoiseModel(), kind: str = "triplet", k: int | None = None):
        if not members:
            raise ConfigError("Expect at least one agent in a pool, got none.")
        names = [agent.name for agent, _ in members]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"Expect distinct agent names in a pool, got {dupes} more than once; "
                              "set each agent's .name.")
        if self.name in names:
            raise ConfigError(f"Agent name {self.name!r} is the pool's own; rename that agent.")
        if sum(m.reference for _, m in members) > 1:
            raise ConfigError("Expect at most one reference agent in a pool.")
        self.kind = kind
        self.k = options_compared(kind, k)  # the answers compared: 2 (triplet), 3 (odd one out) or k
        self.agents = {agent.name: agent for agent, _ in members}
        self.members = {agent.name: cfg for agent, cfg in members}
        self.config = config
        self.noise_model = noise  # the answer model the uncertainty scores assume
        self.factor: np.ndarray | None = None  # the learner's current U (p, r), for uncertainty
        self.rng = np.random.default_rng(config.seed)
        self.spent_ = {n: 0.0 for n in names}
        self.asked_ = {n: 0 for n in names}
        self.routed_ = {"shared": 0, "hard": 0, "rest": 0, "skipped": 0}
        self._shared: dict[int, dict[str, float]] = {}  # seq → agent → ok answer, for shared queries

    # ------------------------------------------------------------ budgets and order

    def affordable(self, name: str) -> int | float:
        """How many more answers ``name`` can pay for (``inf`` when unlimited or free)."""
        cfg = self.members[name]
        if cfg.budget is None or cfg.cost == 0:
            return np.inf
        return int(np.floor((cfg.budget - self.spent_[name]) / cfg.cost + 1e-9))

    def by_reliability(self) -> list[str]:
        """Agents, most reliable first (unknown accuracy last, costlier first among ties)."""
        acc = {n: est for n, (est, _) in self.accuracy().items()}
        return sorted(self.agents, key=lambda n: (-(acc[n] if np.isfinite(acc[n]) else -1.0),
                                                  -self.members[n].cost))

    def by_cost(self) -> list[str]:
        """Agents, cheapest first (more reliable first among equal costs)."""
        acc = {n: est for n, (est, _) in self.accuracy().items()}
        return sorted(self.agents, key=lambda n: (self.members[n].cost,
                                                  -(acc[n] if np.isfinite(acc[n]) else -1.0)))

    # ------------------------------------------------------------ routing

    def route(self, uncertainty: np.ndarray, rng: np.random.Generator | None = None) -> Routing:
        """Assign the rows of a batch (scores ``uncertainty`` (n,), larger = less sure) to agents.

        Pure with respect to the pool's state (budgets are read, not charged).
        """
        u = np.asarray(uncertainty, dtype=np.float64)
        if u.ndim != 1:
            raise ShapeError(f"Expect one uncertainty per query, shape (n,), got {u.shape}.")
        rng = self.rng if rng is None else rng
        n = len(u)
        cfg = self.config
        left = {name: self.affordable(name) for name in self.agents}
        rows: dict[str, list[np.ndarray]] = {name: [] for name in self.agents}
        shared = np.zeros(n, bool)
        n_shared = min(n, int(np.floor(cfg.shared_share * n + rng.random()))) if len(self.agents) > 1 else 0
        shared[rng.choice(n, size=n_shared, replace=False)] = True
        for name in self.agents:
            if n_shared and left[name] > 0:
                take = np.flatnonzero(shared)[: int(min(left[name], n_shared))]
                rows[name].append(take)
                left[name] -= len(take)
        rest = np.flatnonzero(~shared)
        order = rest[np.argsort(-u[rest], kind="stable")]  # least sure first
        n_hard = int(round(cfg.hard_share * len(rest)))
        hard, easy = order[:n_hard], order[n_hard:]
        skipped = []
        for group, agents in ((hard, self.by_reliability()), (easy, self.by_cost())):
            pending = group  # kept least-sure first, so a short budget pays for the hardest
            for name in agents:
                if not len(pending):
                    break
                k = int(min(left[name], len(pending)))
                if k:
                    rows[name].append(pending[:k])
                    left[name] -= k
                    pending = pending[k:]
            skipped.append(pending)
        out = {name: np.sort(np.concatenate(r)).astype(np.int64) if r else np.zeros(0, np.int64)
               for name, r in rows.items()}
        is_hard = np.zeros(n, bool)
        is_hard[hard] = True
        return Routing(out, shared, is_hard, np.sort(np.concatenate(skipped)).astype(np.int64))

    # ------------------------------------------------------------ answering

    def answer_sets(self, queries: Queries, uncertainty: np.ndarray | None = None) -> list[Answers]:
        """One :class:`Answers` per agent that was asked (plus ``skipped`` ones under the pool's name)."""
        if queries.kind != self.kind or queries.k != self.k:
            raise ShapeError(f"This pool answers {self.kind} questions (k={self.k}), got {queries.kind} "
                             f"questions with k={queries.k}.")
        if uncertainty is None:
            if self.factor is None:  # nothing known yet: every query is as hard as any other
                uncertainty = np.zeros(len(queries))
            elif queries.kind == "triplet":
                uncertainty = uncertainty_scores(queries.a, queries.b, queries.c, self.factor, self.noise_model)
            else:
                uncertainty = first_place_entropy(queries, self.factor, self.noise_model)
        if len(uncertainty) != len(queries):
            raise ShapeError(f"Expect {len(queries)} uncertainties, got {len(uncertainty)}.")
        routing = self.route(uncertainty)
        sets = []
        self.routed_["shared"] += int(routing.shared.sum())
        self.routed_["hard"] += int(routing.hard.sum())
        self.routed_["rest"] += int((~routing.shared & ~routing.hard).sum())
        self.routed_["skipped"] += len(routing.skipped)
        for name, rows in routing.rows.items():
            if not len(rows):
                continue
            got = self._ask_member(name, queries.select(rows))
            self.spent_[name] += self.members[name].cost * len(rows)
            self.asked_[name] += len(rows)
            sets.append(got)
            shared = np.isin(got.seq, queries.seq[rows[routing.shared[rows]]])
            for seq, value, ok, sh in zip(got.seq, self.compared(got.value), got.ok, shared):
                if sh and ok:
                    self._shared.setdefault(int(seq), {})[name] = float(value)
        if len(routing.skipped):
            k = len(routing.skipped)
            sets.append(Answers(self.name, queries.seq[routing.skipped].copy(), np.full(k, np.nan),
                                np.full(k, "skipped"), meta=[{"reason": "no budget left"}] * k))
        return sets

    def compared(self, value: np.ndarray) -> np.ndarray:
        """What agreement compares of answers ``value``: the value itself, a ranking's first place."""
        value = np.asarray(value, dtype=np.float64)
        if self.kind != "rank":
            return value
        out = np.full_like(value, np.nan)
        ok = ~np.isnan(value)
        out[ok] = ranking_from_code(value[ok], self.k)[:, 0]
        return out

    def _ask_member(self, name: str, queries: Queries) -> Answers:
        """A member's answers now; none from a deferred member (it is asked, its answers come later)."""
        member = self.agents[name]
        if not _deferred(member):
            return member.answer(queries)
        member.ask(queries)
        return Answers(name, np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0, dtype=str))

    def answer(self, queries: Queries, uncertainty: np.ndarray | None = None) -> Answers:
        """One answer per query: from its most reliable answering agent (``agent`` is the pool's name).

        Use :meth:`answer_sets` to keep every agent's answers (the loop does).
        """
        sets = self.answer_sets(queries, uncertainty)
        rank = {n: i for i, n in enumerate(self.by_reliability() + [self.name])}
        best: dict[int, tuple[bool, int, float, str, str]] = {}  # seq → (not ok, rank, value, status, agent)
        for s in sets:
            for seq, value, status in zip(s.seq, s.value, s.status):
                cand = (status != "ok", rank[s.agent], float(value), str(status), s.agent)
                best[int(seq)] = min(best.get(int(seq), cand), cand)  # an ok answer first, then the most reliable
        seq = queries.seq.copy()
        value = np.array([best[int(q)][2] for q in seq])
        status = np.array([best[int(q)][3] for q in seq])
        return Answers(self.name, seq, value, status, meta=[{"agent": best[int(q)][4]} for q in seq])

    def replay(self, rows: Iterable[tuple[int, str, str, float | None]]) -> None:
        """Restore spending and agreement from a run's stored answers ``(seq, agent, status, value)``.

        A resumed run calls this before asking anything. Spending counts every stored
        answer of a member; a query more than one member answered was a shared one.
        The routing split (hard / rest) is not stored and restarts from zero.
        """
        seen: dict[int, dict[str, float]] = {}
        for seq, agent, status, value in rows:
            if agent not in self.members:
                continue
            self.asked_[agent] += 1
            self.spent_[agent] += self.members[agent].cost
            if status == "ok" and value is not None:
                seen.setdefault(int(seq), {})[agent] = float(self.compared(np.array([value]))[0])
        for seq, got in seen.items():
            if len(got) > 1:
                self._shared[seq] = got
                self.routed_["shared"] += 1

    # ------------------------------------------------------------ the agent protocol

    def start(self, ledger: Ledger, resumed: bool) -> None:
        """Attach every member; on a resumed run restore spending and agreement from the store. A member
        that counts what it was asked (people: what is queued) is charged for that."""
        super().start(ledger, resumed)
        for member in self.agents.values():
            member.start(ledger, resumed)
        if resumed:  # each stored answer counts for the member that owns its name (people: human:<name>)
            owner: dict[str, str] = {}
            for _, agent, _, _ in ledger.store.answer_values(ledger.run_id):
                if agent not in owner:
                    owner[agent] = next((n for n, m in self.agents.items() if n == agent or m.owns(agent)), agent)
            self.replay((q, owner[a], st, v) for q, a, st, v in ledger.store.answer_values(ledger.run_id))
        for name, member in self.agents.items():
            count = member.asked_count()
            if count is not None:
                self.asked_[name], self.spent_[name] = count, self.members[name].cost * count

    def stored(self):
        """Members' stored answers, member by member (deferred members' after the others')."""
        for name, member in self.agents.items():
            if not _deferred(member):
                yield from self._ledger().stored(agent=name)
        for member in self.agents.values():
            if _deferred(member):
                yield from member.stored()

    def sources(self) -> list[str]:
        return [*self.agents, self.name]

    def owns(self, agent: str) -> bool:
        return agent == self.name or any(n == agent or m.owns(agent) for n, m in self.agents.items())

    def asked(self, start: int, stop: int) -> np.ndarray:
        done = [self._ledger().answered(start, stop)]
        done += [m.asked(start, stop) for m in self.agents.values() if _deferred(m)]
        return np.unique(np.concatenate(done)).astype(np.int64)

    def ask(self, queries: Queries, attempts: dict[int, int] | None = None, factor=None) -> None:
        self.factor = factor() if factor is not None else None  # routes the least sure to the most reliable
        sets = self.answer_sets(queries)
        self._ledger().record(queries, sets, attempts)
        self._arrived += [(queries, answers) for answers in sets]

    def collect(self) -> list:
        out = super().collect()
        for member in self.agents.values():
            if _deferred(member):
                out += member.collect()
        return out

    def outstanding(self) -> int:
        return sum(m.outstanding() for m in self.agents.values() if m.deferred)

    def noise(self) -> dict[str, float]:
        """Each source's flip rate from its accuracy (:func:`~fbloop.agents.reliability.flip_rate_from_accuracy`)
        for a member answering under its own name, then each member's own estimates over it."""
        out: dict[str, float] = {}
        for name, (acc, _) in self.accuracy().items():
            member = self.agents[name]
            if np.isfinite(acc) and name in member.sources():
                out[name] = flip_rate_from_accuracy(acc, self.kind, self.k)
            out.update(member.noise())
        return out

    def summary(self, final: bool = False) -> dict:
        """The pool's readout (each member's spending, accuracy; the routing), and each member's own."""
        out: dict = {}
        for member in self.agents.values():
            out.update(member.summary(final))
        report = self.report()
        return {**out, "cost": report["total_cost"], "pool": report}

    # ------------------------------------------------------------ agreement and accuracy

    def agreement(self) -> dict[tuple[str, str], tuple[float, int]]:
        """Pairwise agreement on shared queries: ``(a, b) → (share of equal answers, count)``, a < b (a
        ranking's first place)."""
        out = {}
        for x, y in itertools.combinations(sorted(self.agents), 2):
            pairs = [(v[x], v[y]) for v in self._shared.values() if x in v and y in v]
            out[(x, y)] = (float(np.mean([p == q for p, q in pairs])) if pairs else float("nan"), len(pairs))
        return out

    def accuracy(self) -> dict[str, tuple[float, str]]:
        """Each agent's estimated accuracy and where it comes from (see the module docstring)."""
        cfg = self.config
        agree = self.agreement()

        def pair(x: str, y: str) -> tuple[float, int]:
            return agree[(x, y) if x < y else (y, x)]

        ref = next((n for n, m in self.members.items() if m.reference), None)
        out: dict[str, tuple[float, str]] = {}
        for name in self.agents:
            est, source = float("nan"), "unknown"
            if name == ref:
                est, source = 1.0, "reference"
            elif ref is not None and pair(name, ref)[1] >= cfg.min_shared:
                est, source = pair(name, ref)[0], f"against {ref}"
            else:
                others = [o for o in self.agents if o != name]
                rs = []
                m = self.k
                for j, k in itertools.combinations(others, 2):
                    (aij, nij), (aik, nik), (ajk, njk) = pair(name, j), pair(name, k), pair(j, k)
                    if min(nij, nik, njk) >= cfg.min_shared and pair_signal(ajk, m) > 0.05:
                        rs.append(np.sqrt(max(pair_signal(aij, m) * pair_signal(aik, m) / pair_signal(ajk, m), 0.0)))
                if rs:
                    est, source = accuracy_from_signal(float(np.median(rs)), m), "from agreement"
                elif self.members[name].accuracy is not None:
                    est, source = self.members[name].accuracy, "prior"
            out[name] = (est, source)
        return out

    def report(self) -> dict:
        """Per agent: answers asked, cost spent, budget left, accuracy and its source; the routing split."""
        acc = self.accuracy()
        agents = {}
        for name, cfg in self.members.items():
            left = None if cfg.budget is None else cfg.budget - self.spent_[name]
            agents[name] = {"asked": self.asked_[name], "cost_per_answer": cfg.cost, "spent": self.spent_[name],
                            "budget_left": left, "accuracy": acc[name][0], "accuracy_source": acc[name][1]}
        return {"agents": agents, "routing": dict(self.routed_), "total_cost": sum(self.spent_.values()),
                "agreement": {f"{x}|{y}": {"agreement": a, "shared": k} for (x, y), (a, k) in self.agreement().items()}}
