"""The dashboard's readouts for active querying and agent pools, on real on-disk stores.

Runs are written the way the loop writes them: a ``RunConfig`` dict (plus ``active``
and ``agent: "pool"``) through ``create_run``, snapshots with the ``extra`` keys
``cost``, ``pool`` (``AgentPool.summary()``) and ``active``.
"""

import math

import numpy as np
import pytest

from fbloop.agents.pool import AgentPool, MemberConfig, PoolConfig
from fbloop.app import views
from fbloop.errors import ConfigError
from fbloop.loop import RunConfig
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import Answers
from fbloop.store import Store
from fbloop.targets.load import load_target

SPEC = "synthetic:p=8,rank=3"
CURVE = ((50, 0.4), (100, 0.7), (150, 0.9))
POOL = {  # an AgentPool.summary() as the loop stores it (NaN: an accuracy not known yet)
    "agents": {
        "people": {"asked": 40, "cost_per_answer": 1.0, "spent": 40.0, "budget_left": 10.0, "accuracy": 0.95,
                   "accuracy_source": "prior"},
        "llm": {"asked": 150, "cost_per_answer": 0.01, "spent": 1.5, "budget_left": None,
                "accuracy": float("nan"), "accuracy_source": "unknown"},
    },
    "routing": {"shared": 10, "hard": 30, "rest": 120, "skipped": 0},
    "total_cost": 41.5,
    "agreement": {"llm|people": {"agreement": 0.8, "shared": 10}},
}
ACTIVE = {"strategy": "uncertainty", "chunks": 3, "score_s_total": 2.4, "wait_s_total": 0.6, "wait_s_max": 0.5}


def add_run(store: Store, run_id: str, *, strategy: str | None = None, design: str = "triplet",
            target: str = SPEC, agent: str = "oracle", curve=CURVE, cost_per_answer: float | None = None,
            holdout: bool = False, final: dict | None = None, answers: dict[str, int] | None = None) -> None:
    """A finished run with one snapshot per ``(answers, readout)`` of ``curve``.

    ``holdout``: the readout is held-out agreement and there is no PCC (no ``Φ*``);
    ``cost_per_answer``: every snapshot records the cost so far; ``final``: extra keys
    of the last snapshot (``pool``, ``active``); ``answers``: how many triplets each agent
    answered (the first ones, ``p = 8``), stored with their queries.
    """
    config = RunConfig(target=target, design=DesignConfig(name=design)).to_dict()
    config.update(agent=agent, active={"strategy": strategy, "pool_size": 8} if strategy else None)
    store.create_run(run_id, kind="triplet", p=8, budget=curve[-1][0], config=config, target={"spec": target},
                     anchor=None)
    if answers:
        queries = make_design(DesignConfig(name="triplet", mu=0.7), load_target(SPEC), 0).queries(
            0, max(answers.values()))
        store.record(run_id, queries, [Answers(name, queries.seq[:n].copy(), np.where(queries.seq[:n] % 3, 1.0, -1.0),
                                               np.full(n, "ok")) for name, n in answers.items()])
    for i, (answers, value) in enumerate(curve):
        extra = {"final": i == len(curve) - 1}
        if holdout:
            extra.update(holdout_agreement=value, holdout_n=20)
        if cost_per_answer is not None:
            extra["cost"] = cost_per_answer * answers
        if final and i == len(curve) - 1:
            extra.update(final)
        store.add_snapshot(run_id, answers, None if holdout else value, 0.1 * i, extra)
    store.set_status(run_id, "done")


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "views.db") as s:
        yield s


@pytest.mark.parametrize("config, label", [
    ({"design": {"name": "gaussian"}, "active": None}, "fixed: gaussian"),
    ({"design": {"name": "triplet"}}, "fixed: triplet"),  # a config from before active querying
    ({"design": {"name": "pivot", "block": 32}, "active": None}, "adaptive: pivot"),
    ({"design": {"name": "triplet"}, "active": {"strategy": "ensemble", "pool_size": 8}}, "ensemble"),
    ({"design": {"name": "triplet"}, "active": {"strategy": "random"}}, "random"),
])
def test_strategy_label(config, label):
    assert views.strategy_label(config) == label


def test_runs_on_the_same_target_and_their_labels(store):
    add_run(store, "fixed")
    add_run(store, "other-target", strategy="ensemble", target="synthetic:p=8,rank=2")
    add_run(store, "unsure", strategy="uncertainty")
    add_run(store, "eigen", design="eigen")
    assert views.same_target_runs(store, "unsure") == ["fixed", "unsure", "eigen"]
    assert views.same_target_runs(store, "other-target") == ["other-target"]
    assert views.strategy_labels(store) == {"fixed": "fixed: triplet", "other-target": "ensemble",
                                            "unsure": "uncertainty", "eigen": "fixed: eigen"}


def test_pcc_curves_side_by_side_with_cost(store):
    add_run(store, "fixed")
    add_run(store, "pool", strategy="uncertainty", agent="pool", cost_per_answer=0.5,
            curve=((50, 0.6), (100, 0.95)))
    out = views.strategy_curves(store, ["fixed", "pool"])
    assert out["readout"] == "pcc" and out["label"] == "PCC" and out["available"] == ["pcc"]
    assert out["missing"] == []
    assert [(r["run"], r["strategy"], r["answers"], r["value"], r["cost"]) for r in out["rows"]] == [
        ("fixed", "fixed: triplet", 50, 0.4, None), ("fixed", "fixed: triplet", 100, 0.7, None),
        ("fixed", "fixed: triplet", 150, 0.9, None),
        ("pool", "uncertainty", 50, 0.6, 25.0), ("pool", "uncertainty", 100, 0.95, 50.0)]
    assert views.strategy_curves(store, [])["rows"] == []


def test_held_out_agreement_stands_in_without_phi_star(store):
    add_run(store, "held-a", holdout=True)
    add_run(store, "held-b", strategy="ensemble", holdout=True, curve=((40, 0.8),))
    out = views.strategy_curves(store, ["held-a", "held-b"])
    assert out["readout"] == "holdout" and out["label"] == "held-out agreement"
    assert [(r["run"], r["value"]) for r in out["rows"]] == [("held-a", 0.4), ("held-a", 0.7), ("held-a", 0.9),
                                                           ("held-b", 0.8)]
    # A run with Φ* beside them: PCC is preferred, the others are named as missing it.
    add_run(store, "with-phi")
    out = views.strategy_curves(store, ["held-a", "with-phi", "held-b"])
    assert out["readout"] == "pcc" and out["available"] == ["pcc", "holdout"]
    assert {r["run"] for r in out["rows"]} == {"with-phi"} and out["missing"] == ["held-a", "held-b"]
    assert len(views.strategy_curves(store, ["held-a", "with-phi"], readout="holdout")["rows"]) == 3
    with pytest.raises(ConfigError, match="readout"):
        views.strategy_curves(store, ["held-a"], readout="mse")


def test_no_readout_yet(store):
    store.create_run("empty", kind="triplet", p=8, budget=10, config={"target": SPEC}, target={}, anchor=None)
    out = views.strategy_curves(store, ["empty"])
    assert out["readout"] is None and out["rows"] == [] and out["missing"] == ["empty"]


def test_pool_summary_takes_the_latest_pool_snapshot(store):
    add_run(store, "pool", strategy="uncertainty", agent="pool", cost_per_answer=0.2,
            final={"pool": {**POOL, "total_cost": 1.0}})
    store.add_snapshot("pool", 160, 0.92, 0.4, {"cost": 41.5, "pool": POOL})
    store.add_snapshot("pool", 170, 0.93, 0.5, {"cost": 42.0})  # snapshots between pool summaries carry none
    out = views.pool_summary(store, "pool")
    assert out["answers"] == 160 and out["total_cost"] == 41.5
    assert [a["agent"] for a in out["agents"]] == ["llm", "people"]
    llm, people = out["agents"]
    assert llm["accuracy"] is None and llm["accuracy_source"] == "unknown" and llm["budget_left"] is None
    assert people == {"agent": "people", "asked": 40, "cost_per_answer": 1.0, "spent": 40.0, "budget_left": 10.0,
                      "accuracy": 0.95, "accuracy_source": "prior"}
    assert out["agreement"] == [{"pair": "llm · people", "a": "llm", "b": "people", "agreement": 0.8, "shared": 10}]
    assert [(r["route"], r["queries"]) for r in out["routing"]] == [("shared", 10), ("hard", 30), ("rest", 120),
                                                                   ("skipped", 0)]
    assert sum(r["share"] for r in out["routing"]) == pytest.approx(1.0)
    add_run(store, "fixed", answers={"oracle": 20})
    assert views.pool_summary(store, "fixed") is None
    assert views.answers_by_agent(store, "fixed") == {"agent": ["oracle"], "answer": ["ok"], "count": [20]}


class Always:
    """An agent that answers +1 (or ``value``) to everything."""

    def __init__(self, name: str, value: float = 1.0):
        self.name, self.value = name, value

    def answer(self, q) -> Answers:
        return Answers(self.name, q.seq.copy(), np.full(len(q), self.value), np.full(len(q), "ok"))


def test_pool_summary_reads_what_a_real_pool_reports(store):
    """The contract end to end: AgentPool.summary() through the store's JSON, NaN agreement included."""
    target = load_target(SPEC)
    queries = make_design(DesignConfig(name="triplet", mu=0.7), target, 0).queries(0, 200)
    pool = AgentPool([(Always("people"), MemberConfig(cost=1.0, budget=30.0, accuracy=0.9)),
                      (Always("llm", -1.0), MemberConfig(cost=0.01)), (Always("spare"), MemberConfig(cost=5.0))],
                     PoolConfig(hard_share=0.2, shared_share=0.1, min_shared=5))
    pool.answer_sets(queries, uncertainty=np.linspace(0, 1, len(queries)))
    add_run(store, "pool", agent="pool", final={"pool": pool.report(), "cost": pool.report()["total_cost"]})
    out = views.pool_summary(store, "pool")
    agents = {a["agent"]: a for a in out["agents"]}
    assert set(agents) == {"people", "llm", "spare"}
    assert agents["people"]["spent"] <= 30.0 and agents["people"]["budget_left"] >= 0
    assert out["total_cost"] == pytest.approx(sum(a["spent"] for a in out["agents"]))
    assert sum(r["queries"] for r in out["routing"]) == 200
    pairs = {g["pair"]: g for g in out["agreement"]}
    assert pairs["llm · people"]["agreement"] == 0.0 and pairs["people · spare"]["agreement"] == 1.0
    assert all(a["accuracy"] is None or 0.0 <= a["accuracy"] <= 1.0 for a in out["agents"])
    assert not any(isinstance(v, float) and math.isnan(v) for a in out["agents"] for v in a.values())


def test_active_timing(store):
    add_run(store, "unsure", strategy="uncertainty", final={"active": ACTIVE})
    out = views.active_timing(store, "unsure")
    assert out == {"strategy": "uncertainty", "chunks": 3, "score_s_total": 2.4, "wait_s_total": 0.6,
                   "wait_s_max": 0.5, "hidden_share": pytest.approx(0.75)}
    add_run(store, "idle", strategy="random", final={"active": {**ACTIVE, "score_s_total": 0.0,
                                                                "wait_s_total": 0.0}})
    assert views.active_timing(store, "idle")["hidden_share"] is None
    add_run(store, "fixed")
    assert views.active_timing(store, "fixed") is None


# ---------------------------------------------------------------- the crowd, for the owner


def crowd(tmp_path, answers: dict[str, list[str]], overlap: int = 3) -> Store:
    """A people run whose annotators give ``answers[name][i]`` to the i-th triplet they are shown."""
    from fbloop.agents import people as human

    store = Store(tmp_path / "crowd.db")
    target = load_target(SPEC)
    store.create_run("c", kind="triplet", p=8, budget=20, config={"target": SPEC}, target={}, anchor=None)
    human.queue(store, "c", make_design(DesignConfig(name="triplet", mu=0.7), target, 0).queries(0, 6),
                check_rate=0.0)
    human.set_assignment(store, "c", overlap=overlap)
    for name, choices in answers.items():
        for i, choice in enumerate(choices):
            q = human.next_query(store, "c", name)
            human.submit(store, "c", q.seq, name, choice, 1000 * (i + 1), q.token)
    return store


def test_krippendorff_alpha_between_people(tmp_path):
    from fbloop.agents import people as human

    with crowd(tmp_path, {}) as store:
        for name in "abc":  # everyone gives each triplet the same answer, by its position
            while (q := human.next_query(store, "c", name)) is not None:
                human.submit(store, "c", q.seq, name, ("first", "second", "equal")[q.seq % 3], 900, q.token)
        got = views.people_agreement(store, "c")
        assert got["alpha"] == pytest.approx(1.0) and got["items"] == 6 and got["pairs_agree"] == 1.0
        store.db.execute("UPDATE answers SET value = -value WHERE agent = 'human:c' AND value != 0")
        flipped = views.people_agreement(store, "c")
        assert flipped["alpha"] < 0.5 and flipped["pairs_agree"] < 1.0


def test_alpha_needs_shared_items(tmp_path):
    with crowd(tmp_path, {"a": ["first", "second"]}, overlap=1) as store:
        assert views.people_agreement(store, "c") == {"alpha": None, "items": 0, "answers": 0, "pairs_agree": None}


def test_annotators_sorted_and_cut(tmp_path):
    with crowd(tmp_path, {"a": ["first"] * 2, "b": ["second"] * 5, "c": ["equal"] * 3}) as store:
        rows = views.annotators(store, "c", sort="answers", top=2)
        assert [(r["name"], r["answers"]) for r in rows] == [("b", 5), ("c", 3)]
        assert views.annotators(store, "c", sort="mean_s")[0]["name"] == "a"  # 1.5 s mean
        assert views.annotators(store, "c", sort="mean_s")[0]["mean_s"] == pytest.approx(1.5)
        assert not views.has_llm(store, "c")
        with pytest.raises(ConfigError, match="sort"):
            views.annotators(store, "c", sort="nope")


# ---------------------------------------------------------------- agreement on tuple questions, and what answers cost


def test_value_counts_keep_a_kinds_whole_domain():
    rows = [(3, 1.0, 2), (3, 2.0, 1), (5, 1.0, 3)]
    assert views.value_counts(rows, views.answer_domain("odd", 3)).tolist() == [[2, 1, 0], [3, 0, 0]]
    assert views.value_counts(rows, views.answer_domain("closest", 2)).tolist() == [[0, 2, 1], [0, 3, 0]]
    assert views.value_counts([(0, 7.0, 2)]).tolist() == [[2, 0]]  # a ranking's code alone: a second column
    assert views.answer_domain("triplet", 2) == (-1.0, 0.0, 1.0) and views.answer_domain("rank", 4) == ()


def test_krippendorff_alpha_on_closest_of_4(tmp_path):
    from fbloop.agents import people as human

    with Store(tmp_path / "c4.db") as store:
        store.create_run("c", kind="closest", p=8, budget=6, config={"target": SPEC}, target={}, anchor=None)
        human.queue(store, "c", make_design(DesignConfig(name="closest", k=4, mu=0.7), load_target(SPEC), 0)
                    .queries(0, 6), check_rate=0.0)
        human.set_assignment(store, "c", overlap=3)
        for name in "abc":  # everyone picks the candidate given by the position (none for every fifth)
            while (q := human.next_query(store, "c", name)) is not None:
                human.submit(store, "c", q.seq, name, q.seq % 5, 900, q.token)
        got = views.people_agreement(store, "c")
        assert got["alpha"] == pytest.approx(1.0) and got["items"] == 6 and got["answers"] == 18
        store.db.execute("UPDATE answers SET value = (value + 1) % 5 WHERE agent = 'human:c'")
        assert views.people_agreement(store, "c")["alpha"] < 0.5


def test_what_a_runs_answers_cost(tmp_path):
    from fbloop.agents import people as human

    with Store(tmp_path / "cost.db") as store:
        assert views.run_cost(store, "nothing") is None
        store.create_run("r", kind="rank", p=8, budget=8, config={"target": SPEC}, target={}, anchor=None)
        human.queue(store, "r", make_design(DesignConfig(name="rank", k=6, mu=0.7), load_target(SPEC), 0)
                    .queries(0, 8), check_rate=0.2)
        checks = store.checks("r")
        for i in range(5):  # 3 rankings, 2 skips, and the checks met on the way
            q = human.next_query(store, "r", "ann")
            human.submit(store, "r", q.seq, "ann", "skip" if i in (1, 3) else [1, 2, 3, 4, 5, 6], 1000 * (i + 1),
                         q.token)
        seen_checks = store.annotator_stats("r")[0]["checks"]
        cost = views.run_cost(store, "r")
        real = 5 - seen_checks  # checks are not counted as the run's answers
        assert cost["per_question"] == 7 and cost["questions"] == real and cost["activations"] == 7 * real
        assert cost["usable"] == real - 2 and cost["per_usable"] == pytest.approx(7 * real / (real - 2))
        assert cost["final"] is None and cost["kind"] == "rank" and len(checks) == 2
        store.add_snapshot("r", 3, None, 1.0, {"final": True, "activations_shown": 21})
        assert views.run_cost(store, "r")["final"] == 21
        (row,) = views.annotator_costs(store, "r", views.annotators(store, "r"))
        assert row["shown"] == 5 * 7 and row["total_s"] == 15.0 and row["median_s"] == 3.0


def test_median_response_times_and_costs_per_person():
    medians = views.median_response_s([("human:a", 1000.0), ("human:b", 500.0), ("human:a", 3000.0),
                                       ("human:a", 8000.0)])
    assert medians == {"human:a": 3.0, "human:b": 0.5}
    rows = [{"agent": "human:a", "answers": 2, "skipped": 1, "checks": 1, "total_ms": 12000.0},
            {"agent": "human:c", "answers": 0, "skipped": 0, "checks": 0, "total_ms": 0.0}]
    out = views.with_costs(rows, 4, medians)
    assert [(r["shown"], r["total_s"], r["median_s"]) for r in out] == [(16, 12.0, 3.0), (0, 0.0, None)]
