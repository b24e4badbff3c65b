"""Active runs in the loop: chosen queries stored and resumed, scoring in the background, the random share."""

import numpy as np
import pytest

from fbloop.agents import OracleConfig
from fbloop.errors import ConfigError, StoreError
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.active import ActiveConfig, ActiveStrategy, NoiseModel
from fbloop.queries.designs import DesignConfig
from fbloop.queries.sources import ActiveQueries, Prequential, random_positions, stored_chunk
from fbloop.store import Store

SPEC = "synthetic:p=12,rank=3"


def active_config(budget=600, strategy="uncertainty", **kw):
    return RunConfig(target=SPEC, design=DesignConfig(name="triplet"), budget=budget, chunk=64, rfm_mse=False,
                     oracle=OracleConfig(noise="logistic", temperature=0.05),
                     active=ActiveConfig(strategy=strategy, noise=NoiseModel("logistic", temperature=0.05)), **kw)


class Killed(Exception):
    """Stands in for a killed process: raised from the progress callback mid-run."""


def run_killed_after(cfg, store, run_id, answers):
    """Run until ``answers`` are in, then die; returns nothing (the store keeps what was committed)."""
    def die(event):
        if event.fit is None and event.answers >= answers:
            raise Killed

    with pytest.raises(Killed):
        run_loop(cfg, store, run_id=run_id, progress=die)


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        yield s


def test_random_positions_are_a_pure_function_and_not_the_held_out_set():
    seq = np.arange(20_000)
    a, b = random_positions(3, seq, 0.1), random_positions(3, seq[::-1], 0.1)[::-1]
    assert np.array_equal(a, b) and 0.09 < a.mean() < 0.11
    from fbloop import seeding
    assert abs(np.mean(a & seeding.held_out(3, seq, 0.1)) - 0.01) < 0.003  # independent of the held-out set


def test_proposal_puts_random_queries_where_the_mask_says():
    strat = ActiveStrategy(12, ActiveConfig(strategy="uncertainty"))
    factor = np.random.default_rng(0).standard_normal((12, 3))
    mask = np.zeros(50, bool)
    mask[[3, 17, 40]] = True
    prop = strat.propose(50, factor, np.random.default_rng(1), start=100, random_mask=mask)
    assert np.array_equal(prop.holdout, mask)
    assert np.isnan(prop.score[mask]).all() and np.isfinite(prop.score[~mask]).all()
    assert np.array_equal(prop.queries.seq, np.arange(100, 150))
    cold = strat.propose(10, None, np.random.default_rng(1), random_mask=np.zeros(10, bool))
    assert cold.holdout.all()  # nothing learnt yet: every query is random
    with pytest.raises(Exception, match="random mask"):
        strat.propose(10, factor, random_mask=np.zeros(9, bool))


def test_prefetched_chunk_is_used_and_waits_are_counted():
    strat = ActiveStrategy(12, ActiveConfig(strategy="ensemble"))
    factor = np.random.default_rng(0).standard_normal((12, 3))
    src = ActiveQueries(strat, seed=0)
    try:
        src.prefetch(0, 64, factor)
        q = src.get(0, 64, factor)
        assert np.array_equal(q.seq, np.arange(64)) and src.chunks == 1
        assert src.score_s > 0 and src.wait_s >= 0
        score0, wait0 = src.score_s, src.wait_s
        q2 = src.get(64, 96, factor)  # not prefetched: chosen now, all of it counted as waiting
        # the scoring interval lies inside the waiting one, whatever the machine's load
        assert len(q2) == 32 and src.wait_s - wait0 >= src.score_s - score0 > 0
    finally:
        src.close()


def test_active_run_stores_its_chosen_queries_and_hides_scoring(store):
    result = run_loop(active_config(), store)
    assert result.answers == 600
    stats = result.extra["active"]
    assert stats["strategy"] == "uncertainty" and stats["chunks"] == 10
    assert stats["wait_s_total"] <= stats["score_s_total"]  # the first chunk is random; the rest prefetched
    q = store.load_queries(result.run_id)
    assert len(q) == 600 and np.array_equal(q.seq, np.arange(600))
    assert result.extra["holdout_kind"] == "prequential" and 0 < result.extra["holdout_n"] < 120
    assert result.pcc > 0.9


def test_a_killed_active_run_resumes_without_losing_or_repeating_answers(store):
    cfg = active_config(budget=640)
    run_killed_after(cfg, store, "killed", 256)
    before = store.load_queries("killed")
    assert len(before) == 256
    result = run_loop(cfg, store, run_id="killed")
    after = store.load_queries("killed", np.arange(256))
    assert all(np.array_equal(getattr(before, x).indices, getattr(after, x).indices) for x in "abc")
    rows = store.db.execute("SELECT seq, COUNT(*) FROM answers WHERE run_id = 'killed' GROUP BY seq").fetchall()
    assert len(rows) == 640 and {n for _, n in rows} == {1}  # every position answered exactly once
    assert result.answers == 640


def test_stored_chunk_refuses_a_partial_chunk(store):
    run_loop(active_config(budget=128), store, run_id="whole")
    assert len(stored_chunk(store, "whole", 64, 128)) == 64
    assert stored_chunk(store, "whole", 128, 192) is None
    store.db.execute("PRAGMA foreign_keys = OFF")
    store.db.execute("DELETE FROM answers WHERE run_id = 'whole' AND seq = 70")
    store.db.execute("DELETE FROM queries WHERE run_id = 'whole' AND seq = 70")
    with pytest.raises(StoreError, match="63 of the 64"):
        stored_chunk(store, "whole", 64, 128)


def test_prequential_agreement_scores_before_learning():
    from fbloop.learners import GradientLearner
    from fbloop.records import Answers
    from fbloop.queries.catalogue import make_design
    from fbloop import targets
    from fbloop.agents import OracleAgent

    t = targets.load_target(SPEC)
    d = make_design(DesignConfig(name="triplet"), t, 0)
    q = d.queries(0, 400)
    truth = OracleAgent(t.factor, d.anchor()).answer(q)
    learner = GradientLearner(t.p)
    pre = Prequential(window=100)
    pre.score(learner, q, truth, np.ones(400, bool))
    assert pre.agreement() is None  # nothing learnt: nothing scored
    learner.add_triplets(q.a, q.b, q.c, truth.value)
    learner.finish()
    q2 = d.queries(400, 800)
    pre.score(learner, q2, OracleAgent(t.factor, d.anchor()).answer(q2), np.ones(400, bool))
    assert pre.agreement() > 0.8 and pre.n > 300
    flipped = Answers("x", q2.seq, -OracleAgent(t.factor, d.anchor()).answer(q2).value, np.full(400, "ok"))
    pre.score(learner, q2, flipped, np.ones(400, bool))
    assert pre.agreement() < 0.2  # the window holds only the latest ~100 answers


def test_active_needs_the_triplet_design(store):
    cfg = RunConfig(target=SPEC, design=DesignConfig(name="sparse"), budget=100, active=ActiveConfig())
    with pytest.raises(ConfigError, match="Active strategies choose triplets"):
        run_loop(cfg, store)


@pytest.mark.slow  # 19–29 s on 2 cores
def test_active_config_round_trips_through_the_stored_json(store):
    cfg = active_config(budget=64, strategy="ensemble")
    run_loop(cfg, store, run_id="json")
    again = RunConfig.from_dict(store.get_run("json")["config"])
    assert again == cfg
    run_loop(again, store, run_id="json")  # resumes: same config


def test_people_get_active_queries_a_chunk_ahead(store):
    from fbloop.agents import people as human

    cfg = active_config(budget=256, agent="human", check_rate=0.0)
    first = run_loop(cfg, store, run_id="people")
    assert first.answers == 0 and len(store.queued("people")) == 64
    for _ in range(40):  # an annotator answers 40 of them in the app
        question = human.next_query(store, "people", "ann")
        human.submit(store, "people", question.seq, "ann", "first", 100.0, question.token)
    run_loop(cfg, store, run_id="people")  # learns from the 40; fewer than a chunk wait, so a chunk is added
    assert len(store.queued("people")) == 128
    assert store.next_position("people") == 128
    run_loop(cfg, store, run_id="people")  # 88 wait: nothing added
    assert len(store.queued("people")) == 128


def test_a_killed_pool_run_resumes_with_its_spending(store):
    from fbloop.agents.pool import parse_member

    cfg = active_config(budget=384, agent="pool", pool=(parse_member("people:oracle,cost=1,reference"),
                                                        parse_member("cheap:oracle,noise=flip,flip=0.2,cost=0.01")))
    run_killed_after(cfg, store, "pool", 192)
    spent = dict(store.db.execute("SELECT agent, COUNT(*) FROM answers WHERE run_id = 'pool' GROUP BY agent").fetchall())
    result = run_loop(cfg, store, run_id="pool")
    final = dict(store.db.execute("SELECT agent, COUNT(*) FROM answers WHERE run_id = 'pool' GROUP BY agent").fetchall())
    agents = result.extra["pool"]["agents"]
    assert {n: agents[n]["asked"] for n in final} == final  # spending counts the answers before the kill too
    assert all(final[n] > spent[n] for n in spent)
    assert result.extra["cost"] == pytest.approx(final["people"] + 0.01 * final["cheap"])
    dup = store.db.execute("SELECT seq, agent FROM answers WHERE run_id = 'pool' GROUP BY seq, agent "
                           "HAVING COUNT(*) > 1").fetchall()
    assert dup == [] and store.next_position("pool") == 384
