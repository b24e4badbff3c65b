import numpy as np
import pytest

from fbloop import targets
from fbloop.agents import OracleAgent, OracleConfig
from fbloop.agents.pool import AgentPool, MemberConfig, PoolConfig
from fbloop.errors import ConfigError, ShapeError
from fbloop.queries.active import ActiveStrategy, ActiveConfig
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import Answers
from fbloop.sparse import SparseBatch


@pytest.fixture(scope="module")
def target():
    return targets.load_target("synthetic:p=12,rank=4,seed=2")


def oracle(target, name: str, **noise) -> OracleAgent:
    anchor = SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), target.p)
    agent = OracleAgent(target.factor, anchor, OracleConfig(**noise))
    agent.name = name
    return agent


def queries(target, n: int, start: int = 0):
    return make_design(DesignConfig(name="triplet", mu=0.7), target, 0).queries(start, start + n)


class Counter:
    """An agent that answers +1 to everything and remembers what it was asked."""

    def __init__(self, name: str):
        self.name = name
        self.seen: list[int] = []

    def answer(self, q) -> Answers:
        self.seen += [int(s) for s in q.seq]
        return Answers(self.name, q.seq.copy(), np.ones(len(q)), np.full(len(q), "ok"))


def test_least_sure_go_to_the_reliable_agent_the_rest_to_the_cheapest():
    people, llm = Counter("people"), Counter("llm")
    pool = AgentPool([(people, MemberConfig(cost=1.0, accuracy=0.99)), (llm, MemberConfig(cost=0.01, accuracy=0.8))],
                     PoolConfig(hard_share=0.25, shared_share=0.0))
    u = np.arange(100, dtype=float)  # row 99 is the least sure
    r = pool.route(u)
    np.testing.assert_array_equal(r.rows["people"], np.arange(75, 100))
    np.testing.assert_array_equal(r.rows["llm"], np.arange(75))
    assert r.hard.sum() == 25 and not r.shared.any() and len(r.skipped) == 0


def test_shared_queries_go_to_everyone_and_measure_agreement(target):
    truth = oracle(target, "truth")
    noisy = oracle(target, "noisy", noise="flip", flip=0.2, seed=3)
    pool = AgentPool([(truth, MemberConfig(cost=1.0, reference=True)), (noisy, MemberConfig(cost=0.01))],
                     PoolConfig(shared_share=0.5, min_shared=50))
    sets = pool.answer_sets(queries(target, 2000))
    assert {s.agent for s in sets} == {"truth", "noisy"}
    agree = pool.agreement()[("noisy", "truth")]
    assert agree[1] == pytest.approx(1000, abs=2)
    acc = pool.accuracy()
    assert acc["truth"] == (1.0, "reference")
    assert acc["noisy"][0] == pytest.approx(0.8, abs=0.04) and acc["noisy"][1] == "against truth"
    s = pool.report()
    assert s["routing"]["shared"] == pytest.approx(1000, abs=2)
    assert s["total_cost"] == pytest.approx(s["agents"]["truth"]["asked"] * 1.0 + s["agents"]["noisy"]["asked"] * 0.01)


def test_accuracy_from_agreement_of_three_agents_without_a_reference(target):
    agents = [oracle(target, f"a{f}", noise="flip", flip=f, seed=i) for i, f in enumerate((0.05, 0.15, 0.3))]
    pool = AgentPool([(a, MemberConfig(cost=1.0)) for a in agents], PoolConfig(shared_share=1.0))
    pool.answer_sets(queries(target, 4000))
    acc = pool.accuracy()
    for a, f in zip(agents, (0.05, 0.15, 0.3)):
        est, source = acc[a.name]
        assert source == "from agreement" and est == pytest.approx(1 - f, abs=0.03)
    assert pool.by_reliability() == ["a0.05", "a0.15", "a0.3"]


def test_budgets_fall_through_and_then_skip():
    people, llm = Counter("people"), Counter("llm")
    pool = AgentPool([(people, MemberConfig(cost=1.0, budget=10, accuracy=0.99)),
                      (llm, MemberConfig(cost=0.5, budget=20, accuracy=0.7))],
                     PoolConfig(hard_share=0.5, shared_share=0.0))
    target = targets.load_target("synthetic:p=12,rank=4,seed=2")
    q = queries(target, 100)
    u = np.linspace(0, 1, 100)
    sets = pool.answer_sets(q, uncertainty=u)
    by = {s.agent: s for s in sets}
    assert len(by["people"]) == 10 and set(by["people"].seq) == set(range(90, 100))  # the 10 least sure
    assert len(by["llm"]) == 40  # its budget: 20 / 0.5
    assert len(by["pool"]) == 50 and np.all(by["pool"].status == "skipped")
    assert pool.spent_ == {"people": 10.0, "llm": 20.0}
    assert pool.affordable("people") == 0 and pool.affordable("llm") == 0
    again = pool.answer_sets(queries(target, 5, start=100), uncertainty=np.ones(5))
    assert [s.agent for s in again] == ["pool"]


def test_pool_answer_prefers_the_reliable_ok_answer(target):
    truth = oracle(target, "truth")
    noisy = oracle(target, "noisy", noise="flip", flip=0.5, seed=1)
    pool = AgentPool([(truth, MemberConfig(cost=1.0, accuracy=1.0)), (noisy, MemberConfig(cost=0.1, accuracy=0.6))],
                     PoolConfig(shared_share=1.0))
    q = queries(target, 200)
    got = pool.answer(q)
    assert got.agent == "pool" and len(got) == 200
    np.testing.assert_array_equal(got.value, truth.answer(q).value)
    assert {m["agent"] for m in got.meta} == {"truth"}


def test_uncertainty_comes_from_the_factor_when_not_given(target):
    people, llm = Counter("people"), Counter("llm")
    pool = AgentPool([(people, MemberConfig(cost=1.0, accuracy=0.99)), (llm, MemberConfig(cost=0.01))],
                     PoolConfig(hard_share=0.1, shared_share=0.0))
    pool.factor = target.factor
    q = ActiveStrategy(target.p, ActiveConfig(strategy="random"), DesignConfig(name="triplet", mu=0.7)
                       ).next_queries(300, None, np.random.default_rng(0))
    pool.answer_sets(q)
    from fbloop.queries.active import relative_margins

    rho = np.abs(relative_margins(q.a, q.b, q.c, target.factor))
    hard = np.isin(q.seq, people.seen)
    assert hard.sum() == 30 and rho[hard].max() <= rho[~hard].min() + 1e-12


@pytest.mark.parametrize("kwargs, match", [
    ({"cost": -1.0}, "cost=-1.0"),
    ({"budget": -5.0}, "budget=-5.0"),
    ({"accuracy": 0.3}, "accuracy=0.3"),
])
def test_bad_member_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MemberConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"hard_share": 1.2}, "hard_share=1.2"),
    ({"shared_share": -0.1}, "shared_share=-0.1"),
    ({"min_shared": 0}, "min_shared=0"),
])
def test_bad_pool_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        PoolConfig(**kwargs)


def test_bad_pools():
    with pytest.raises(ConfigError, match="at least one"):
        AgentPool([])
    with pytest.raises(ConfigError, match="'x'"):
        AgentPool([(Counter("x"), MemberConfig()), (Counter("x"), MemberConfig())])
    with pytest.raises(ConfigError, match="at most one reference"):
        AgentPool([(Counter("x"), MemberConfig(reference=True)), (Counter("y"), MemberConfig(reference=True))])
    with pytest.raises(ShapeError, match=r"\(n,\)"):
        AgentPool([(Counter("x"), MemberConfig())]).route(np.zeros((2, 2)))


# ---------------------------------------------------------------- members as runs store them


def test_parse_member_reads_the_agent_its_noise_and_its_terms():
    from fbloop.agents.pool import MemberSpec, parse_member

    m = parse_member("cheap:oracle,noise=flip,flip=0.2,cost=0.01,budget=5,accuracy=0.8,seed=4")
    assert m == MemberSpec("cheap", "oracle", OracleConfig(noise="flip", flip=0.2, seed=4),
                           MemberConfig(cost=0.01, budget=5.0, accuracy=0.8))
    assert parse_member("people:oracle,reference").terms.reference
    assert parse_member("gpt:llm,cost=0.01").agent == "llm"
    assert parse_member("people:human,cost=1,reference").agent == "human"
    assert MemberSpec(**{"name": "a", "oracle": {"noise": "flip"}, "terms": {"cost": 2.0}}).terms.cost == 2.0


@pytest.mark.parametrize("text, match", [
    ("people", "NAME:AGENT"), ("pool:oracle", "pool's own"), ("a b:oracle", "letters, digits"),
    ("x:robot", "robot"), ("x:human,flip=0.2", "oracle noise options do not apply"), ("x:oracle,cost=-1", "cost ≥ 0"), ("x:oracle,flip=2", "flip probability"),
    ("x:oracle,speed=3", "speed=3"), ("x:oracle,seed=1.5", "seed= a int"),
])
def test_bad_members_name_the_problem(text, match):
    from fbloop.agents.pool import parse_member

    with pytest.raises(ConfigError, match=match):
        parse_member(text)


def test_replay_restores_spending_and_agreement():
    a, b = OracleAgent(np.eye(3), SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), 3)), None
    a.name = "people"
    b = OracleAgent(np.eye(3), SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), 3))
    b.name = "cheap"
    pool = AgentPool([(a, MemberConfig(cost=1.0, reference=True)), (b, MemberConfig(cost=0.5))],
                     PoolConfig(min_shared=2))
    rows = [(0, "people", "ok", 1.0), (0, "cheap", "ok", 1.0), (1, "people", "ok", -1.0), (1, "cheap", "ok", 1.0),
            (2, "cheap", "invalid", None), (3, "pool", "skipped", None), (4, "people", "ok", 1.0)]
    pool.replay(rows)
    assert pool.spent_ == {"people": 3.0, "cheap": 1.5} and pool.asked_ == {"people": 3, "cheap": 3}
    assert pool.agreement()[("cheap", "people")] == (0.5, 2)
    assert pool.accuracy()["cheap"] == (0.5, "against people")


def test_people_in_a_pool_answer_in_the_form_and_a_later_run_learns_from_them(tmp_path):
    """People as a member: the hard and shared triplets are queued for the form, a cheap noisy oracle answers
    the rest at once; once a person has answered, the next run learns from it and measures the cheap member."""
    from fbloop.agents import people as human
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.agents.pool import parse_member
    from fbloop.store import Store

    spec = "synthetic:p=12,rank=3"
    target = targets.load_target(spec)
    cfg = RunConfig(target=spec, design=DesignConfig(name="triplet"), agent="pool", budget=1500, chunk=100,
                    pool=(parse_member("people:human,cost=1,reference"),
                          parse_member("cheap:oracle,noise=flip,flip=0.25,cost=0.01")),
                    pool_config=PoolConfig(hard_share=0.1), learner_config=LearnerConfig(rank=6), rfm_mse=False)
    truth = OracleAgent(target.factor, None)
    with Store(tmp_path / "pool.db") as store:
        first = run_loop(cfg, store, run_id="mixed")
        people = first.extra["pool"]["agents"]["people"]
        checks = store.checks("mixed")
        real = [s for s in store.queued("mixed") if s not in checks]
        assert store.get_run("mixed")["status"] == "waiting"
        assert people["asked"] == len(real) == len(set(real)) and people["spent"] == len(real)  # checks are free
        assert 0.12 * 1500 <= len(real) <= 0.18 * 1500  # the 10 % hard share and the 5 % shared
        assert 0.05 <= len(checks) / (len(real) + len(checks)) <= 0.15
        assert first.answers == 1500 - len(real) + first.extra["pool"]["routing"]["shared"]
        assert not store.answered("mixed", 0, 1500, "people").size  # nothing stored under the member's name

        n = 0
        while (q := human.next_query(store, "mixed", "ann")) is not None:  # a careful person
            want = checks[q.seq][1] if q.seq in checks else truth.answer(store.load_queries("mixed", [q.seq])).value[0]
            human.submit(store, "mixed", q.seq, "ann", {1.0: "first", -1.0: "second", 0.0: "equal"}[want], 1, q.token)
            n += 1
        assert n == len(real) + len(checks)
        second = run_loop(cfg, store, run_id="mixed")
        assert second.answers == first.answers + len(real) and store.get_run("mixed")["status"] == "done"
        cheap = second.extra["pool"]["agents"]["cheap"]
        assert cheap["accuracy_source"] == "against people" and cheap["accuracy"] == pytest.approx(0.75, abs=0.08)
        assert second.extra["source_noise"]["cheap"] == pytest.approx(0.25, abs=0.08)
        assert second.extra["source_noise"]["human:ann"] < 0.05  # from the attention checks
        assert "people" not in second.extra["source_noise"]  # people answer under their own names
        assert second.pcc > first.pcc + 0.1  # measured: 0.779 → 0.968
        assert second.extra["pool"]["agents"]["people"]["spent"] == len(real)  # nothing asked or charged twice
        third = run_loop(cfg, store, run_id="mixed")
        assert store.queued("mixed").size == len(real) + len(checks) and third.answers == second.answers


@pytest.mark.slow  # 19–29 s on 2 cores
def test_people_members_one_per_pool_and_a_killed_run_queues_nothing_twice(tmp_path, monkeypatch):
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.agents.pool import parse_member
    from fbloop.store import Store

    from conftest import crash_on_record

    with pytest.raises(ConfigError, match="at most one people"):
        RunConfig(agent="pool", pool=(parse_member("a:human"), parse_member("b:human")))
    cfg = RunConfig(target="synthetic:p=12,rank=3", design=DesignConfig(name="triplet"), agent="pool", budget=600,
                    chunk=100, pool=(parse_member("people:human,cost=1"), parse_member("cheap:oracle,cost=0.01")),
                    learner_config=LearnerConfig(rank=6), rfm_mse=False)
    with Store(tmp_path / "kill.db") as store:
        real = crash_on_record(monkeypatch, store, 3)  # killed after chunk 3 was queued, before it was stored
        with pytest.raises(KeyboardInterrupt):
            run_loop(cfg, store, run_id="killed")
        monkeypatch.setattr(store, "record", real)
        resumed = run_loop(cfg, store, run_id="killed")
        whole = run_loop(cfg, store, run_id="whole")
        for run_id, result in (("killed", resumed), ("whole", whole)):
            checks = store.checks(run_id)
            queued = [s for s in store.queued(run_id) if s not in checks]
            assert len(queued) == len(set(queued)) == result.extra["pool"]["agents"]["people"]["asked"]
        # every position is asked once: of people (queued) or of the cheap member (answered)
        cheap = set(store.answered("killed", 0, 600, "cheap").tolist())
        assert cheap | set(store.queued("killed").tolist()) >= set(range(600))


# ---------------------------------------------------------------- tuple questions


def tuple_oracles(target, design, flips):
    agents = []
    for i, f in enumerate(flips):
        a = OracleAgent(design.design_factor(target.factor), None, OracleConfig(noise="flip", flip=f, seed=i))
        a.name = f"a{f}"
        agents.append(a)
    return agents


@pytest.mark.parametrize("kind, k", [("closest", 4), ("rank", 4), ("odd", None), ("rank", 8)])
def test_tuple_flip_rates_from_agreement_of_three_agents(target, kind, k):
    """Three oracles flipping 5, 15 and 30 % of their tuple answers, no reference: the pool's flip rates come
    back from their agreement on the first place (m options; a flipped ranking is a random one)."""
    design = make_design(DesignConfig(name=kind, k=k), target, 0)
    flips = (0.05, 0.15, 0.3)
    agents = tuple_oracles(target, design, flips)
    pool = AgentPool([(a, MemberConfig()) for a in agents], PoolConfig(shared_share=1.0), kind=kind, k=k)
    pool.answer_sets(design.queries(0, 4000))
    acc, noise = pool.accuracy(), pool.noise()
    for a, f in zip(agents, flips):
        assert acc[a.name][1] == "from agreement"
        assert noise[a.name] == pytest.approx(f, abs=0.03)
    assert pool.by_reliability() == ["a0.05", "a0.15", "a0.3"]


def test_tuple_agreement_needs_the_options_counted():
    """Closest of 4: agreement read as if the answers were ±1 (m = 2) misjudges the agents; with m = 4 it
    gives their accuracy back exactly (the model's own agreement rates)."""
    from fbloop.agents.reliability import accuracy_from_signal, pair_signal

    acc = (0.95, 0.85, 0.7)
    agree = {(i, j): acc[i] * acc[j] + (1 - acc[i]) * (1 - acc[j]) / 3 for i in range(3) for j in range(3)}
    for m, close in ((4, True), (2, False)):
        s = {ij: pair_signal(a, m) for ij, a in agree.items()}
        got = accuracy_from_signal(np.sqrt(s[0, 1] * s[0, 2] / s[1, 2]), m)
        assert (got == pytest.approx(acc[0], abs=1e-9)) is close


def test_tuple_routing_sends_the_least_sure_first_places_to_the_reliable_agent(target):
    from fbloop.queries.active_tuples import first_place_entropy

    design = make_design(DesignConfig(name="closest", k=4), target, 0)
    people, llm = Counter("people"), Counter("llm")
    pool = AgentPool([(people, MemberConfig(cost=1.0, accuracy=0.99)), (llm, MemberConfig(cost=0.01))],
                     PoolConfig(hard_share=0.1, shared_share=0.0), kind="closest", k=4)
    pool.factor = design.design_factor(target.factor)
    q = design.queries(0, 300)
    pool.answer_sets(q)
    h = first_place_entropy(q, pool.factor)
    hard = np.isin(q.seq, people.seen)
    assert hard.sum() == 30 and h[hard].min() >= h[~hard].max() - 1e-12
    assert h.max() > 0.5 and h.min() < 0.1  # the scores tell questions apart


def test_a_pool_refuses_questions_of_another_kind(target):
    pool = AgentPool([(Counter("x"), MemberConfig())], kind="rank", k=4)
    with pytest.raises(ShapeError, match="answers rank questions \\(k=4\\), got triplet"):
        pool.answer_sets(queries(target, 5))
    with pytest.raises(ConfigError, match="k=None"):
        AgentPool([(Counter("x"), MemberConfig())], kind="closest")


def test_replay_compares_rankings_on_their_first_place():
    from fbloop.records import ranking_code

    a, b = Counter("people"), Counter("cheap")
    pool = AgentPool([(a, MemberConfig(reference=True)), (b, MemberConfig())], PoolConfig(min_shared=2),
                     kind="rank", k=3)
    c = ranking_code(np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2]]))  # the first two put candidate 0 first
    pool.replay([(0, "people", "ok", c[0]), (0, "cheap", "ok", c[1]), (1, "people", "ok", c[0]),
                 (1, "cheap", "ok", c[2])])
    assert pool.agreement()[("cheap", "people")] == (0.5, 2)


def test_a_pool_answers_rankings_in_a_run_and_fits_each_member_at_its_flip_rate(tmp_path):
    from fbloop.learners import LearnerConfig
    from fbloop.loop import RunConfig, run_loop
    from fbloop.agents.pool import parse_member
    from fbloop.store import Store

    cfg = RunConfig(target="synthetic:p=12,rank=3", design=DesignConfig(name="rank", k=4), agent="pool",
                    budget=1200, chunk=100,
                    pool=(parse_member("people:oracle,cost=1,reference"),
                          parse_member("cheap:oracle,noise=flip,flip=0.25,cost=0.01")),
                    learner_config=LearnerConfig(rank=6, final_steps=0, polish=False), rfm_mse=False)
    with Store(tmp_path / "pool.db") as store:
        got = run_loop(cfg, store, run_id="ranks")
        kinds = {q.kind for q in [store.load_queries("ranks", [0])]}
    cheap = got.extra["pool"]["agents"]["cheap"]
    assert kinds == {"rank"}
    assert cheap["accuracy_source"] == "against people" and cheap["accuracy"] == pytest.approx(0.8125, abs=0.05)
    assert got.extra["source_noise"]["cheap"] == pytest.approx(0.25, abs=0.07)
    assert got.pcc > 0.97
