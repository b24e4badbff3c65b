"""Active selection of tuple questions (closest of k, rank k, odd one out): the scores by hand, the
strategy against random, and runs that choose, store and resume them."""

import math

import numpy as np
import pytest

from fbloop.agents import OracleConfig
from fbloop.errors import ConfigError
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries import active
from fbloop.queries import active_tuples as at
from fbloop.queries.active import ActiveConfig, ActiveStrategy, NoiseModel
from fbloop.queries.designs import DesignConfig
from fbloop.queries.sources import make_strategy
from fbloop.records import Queries, ranking_code

from conftest import one_hot
from fbloop.store import Store

LOGISTIC = NoiseModel("logistic", temperature=0.1)
NONE = NoiseModel("none")


def scores(d, kind, strategy="uncertainty", noise=LOGISTIC, rank_outcome=None):
    """Scores of distances given per factor: ``d`` (m, n, k), no relevance weight."""
    return at.tuple_scores(np.asarray(d, dtype=float), kind, strategy, noise, 0.0, rank_outcome)


# ---------------------------------------------------------------- the scores by hand


@pytest.mark.parametrize("noise", [LOGISTIC, NONE, NoiseModel("flip", flip=0.2)])
def test_equidistant_options_have_maximal_entropy(noise):
    d = np.array([[[1.0, 1.0, 1.0, 1.0], [0.01, 1.0, 2.0, 3.0]]])  # (1, 2, 4): a tie of four, a clear order
    assert scores(d, "closest", noise=noise) == pytest.approx([2.0, scores(d, "closest", noise=noise)[1]])
    assert scores(d, "closest", noise=noise)[1] < 2.0
    full = scores(d, "rank", noise=noise)
    assert full[0] == pytest.approx(math.log2(24)) and full[1] < full[0]  # log2 k! for a full ranking
    assert scores(d, "rank", noise=noise, rank_outcome="first")[0] == pytest.approx(2.0)
    odd = scores(d[..., :3], "odd", noise=noise)
    assert odd[0] == pytest.approx(math.log2(3)) and odd[1] < odd[0]


def test_equidistant_activations_score_highest_through_the_strategy():
    """Under Φ = I the unit vectors e1…e4 are equidistant from e0; a reference next to e1 is not."""
    p = 6
    ref = one_hot(p, [[(0, 1.0)], [(1, 0.9)]])
    cands = tuple(one_hot(p, [[(j, 1.0)], [(j, 1.0)]]) for j in (1, 2, 3, 4))
    st = make_strategy(p, ActiveConfig(strategy="uncertainty", relevance=0.0, noise=LOGISTIC),
                       DesignConfig(name="rank", k=4))
    got = st.score_items((ref, *cands), np.eye(p), np.random.default_rng(0))
    assert got[0] == pytest.approx(math.log2(24), rel=1e-5)
    # next to e1 the first place is sure, the three others are still equidistant: log2 3! bits and a little
    assert got[1] == pytest.approx(math.log2(6), abs=0.1)
    odd = make_strategy(p, ActiveConfig(strategy="uncertainty", relevance=0.0), DesignConfig(name="odd"))
    items = (one_hot(p, [[(0, 1.0)], [(0, 1.0)]]), one_hot(p, [[(1, 1.0)], [(0, 0.95)]]),
             one_hot(p, [[(2, 1.0)], [(2, 1.0)]]))  # e0 e1 e2: no odd one; e0 e0' e2: e2 is odd
    got = odd.score_items(items, np.eye(p), np.random.default_rng(0))
    assert got[0] == pytest.approx(math.log2(3), rel=1e-5) and got[1] < 0.01


def test_two_options_are_the_triplets_model():
    """Closest of 2 is a triplet: the same σ(ρ/T) and the same binary entropy."""
    d = np.array([[[1.0, 1.5], [2.0, 0.3], [0.7, 0.7]]])
    rho = (d[0, :, 1] - d[0, :, 0]) / d[0].sum(axis=1)
    for noise in (LOGISTIC, NONE, NoiseModel("flip", flip=0.1)):
        prob = at.choice_probabilities(d[0], noise)
        np.testing.assert_allclose(prob[:, 0], active.answer_probability(rho, noise), atol=1e-12)
        np.testing.assert_allclose(scores(d, "closest", noise=noise), active.binary_entropy(prob[:, 0]), atol=1e-12)
        if noise.kind != "flip":  # (a flipped ranking is a random one: right half the time at k = 2)
            np.testing.assert_allclose(scores(d, "rank", noise=noise), scores(d, "closest", noise=noise))


def test_flip_noise_spreads_a_sure_answer_over_the_others():
    prob = at.choice_probabilities(np.array([[0.0, 10.0, 10.0, 10.0]]), NoiseModel("flip", flip=0.3))
    np.testing.assert_allclose(prob, [[0.7, 0.1, 0.1, 0.1]], atol=1e-9)
    first = at.ranking_stages(np.array([[[0.0, 10.0, 10.0, 10.0]]]), np.array([[0, 1, 2, 3]]),
                              NoiseModel("flip", flip=0.3), 3)  # (3, 1, 1, 4)
    np.testing.assert_allclose(first[0, 0, 0], [0.7 + 0.3 / 4, 0.075, 0.075, 0.075], atol=1e-9)
    assert first[1, 0, 0, 0] == 0 and first[2, 0, 0, :2].sum() == 0  # ranked options leave the later stages


def test_tie_band_makes_no_clear_winner_an_outcome():
    d = np.array([[1.0, 1.0, 5.0, 5.0], [1.0, 2.0, 5.0, 5.0]])
    prob = at.with_no_clear_winner(at.choice_probabilities(d, NONE), d, band=0.1)
    assert prob.shape == (2, 5)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0)
    # two nearest at one distance: "no clear winner" most likely (σ(band/2 / STEP_T) = σ(2.5)); a gap of 1/3: not
    assert prob[0, 0] == pytest.approx(1 / (1 + math.exp(-2.5))) and prob[1, 0] < 1e-6
    banded = NoiseModel("none", tie_band=0.1)
    assert scores(d[None], "closest", noise=banded)[0] < 0.6 < 0.99 < scores(d[None], "closest", noise=NONE)[0]


def test_ensemble_gain_is_disagreement_not_noise():
    one = np.array([[1.0, 1.0, 1.0, 1.0], [0.1, 1.0, 2.0, 3.0]])
    same = np.stack([one, one, one, one])  # U and three copies that agree
    for kind in ("closest", "rank"):
        gain = scores(same, kind, "ensemble")
        np.testing.assert_allclose(gain, 0.0, atol=1e-5)  # even the tie: its entropy is noise (1e-6 · H breaks ties)
    # Two confident copies, one for candidate 1, one for candidate 2: one bit about which copy is right.
    split = np.array([[[0.1, 0.2, 2.0, 2.0]], [[0.01, 2.0, 2.0, 2.0]], [[2.0, 0.01, 2.0, 2.0]]])
    assert scores(split, "closest", "ensemble", NONE)[0] == pytest.approx(1.0, abs=1e-3)
    # Copies that agree on the first place and split on the rest: the first place alone sees nothing.
    tail = np.array([[[0.1, 1.0, 1.1, 5.0]], [[0.01, 1.0, 3.0, 5.0]], [[0.01, 3.0, 1.0, 5.0]]])
    assert scores(tail, "rank", "ensemble", NONE, rank_outcome="first")[0] < 1e-4
    assert scores(tail, "rank", "ensemble", NONE)[0] == pytest.approx(1.0, abs=1e-2)


def test_odd_one_out_options_are_the_pairs_without_each_item():
    proj = [np.array([[[0.0]]]), np.array([[[1.0]]]), np.array([[[3.0]]])]  # items at 0, 1, 3 on a line
    np.testing.assert_allclose(at.option_distances("odd", proj), [[[4.0, 9.0, 1.0]]])  # (b,c), (a,c), (a,b)
    np.testing.assert_allclose(at.option_distances("rank", proj), [[[1.0, 9.0]]])


def test_relevance_weight_discounts_tuples_whose_distances_are_all_tiny():
    d = np.array([[[1.0, 1.0, 1.0], [1e-4, 1e-4, 1e-4]] + [[1.0, 1.1, 0.9]] * 8])
    got = at.tuple_scores(d, "closest", "uncertainty", LOGISTIC, 0.1)
    assert got[0] == pytest.approx(math.log2(3) * 3 / 3.3, rel=0.02)  # t = 3 against 0.1 × the median 3
    assert got[1] < 0.01 * got[0]


# ---------------------------------------------------------------- the strategy


@pytest.mark.parametrize("kind, k", [("closest", 4), ("rank", 3), ("odd", None)])
def test_the_strategy_picks_higher_scoring_tuples_than_random(kind, k):
    p = 20
    u = np.random.default_rng(3).standard_normal((p, 4))
    design = DesignConfig(name=kind, k=k)
    cfg = ActiveConfig(strategy="uncertainty", random_share=0.0, pool=10, noise=LOGISTIC, relevance=0.0)
    st = make_strategy(p, cfg, design)
    prop = st.propose(100, u, np.random.default_rng(4), start=7)
    q = prop.queries
    assert q.kind == kind and len(q) == 100 and np.array_equal(q.seq, np.arange(7, 107))
    assert q.k == (k or 3) and not prop.holdout.any()
    fresh = st.sample(np.random.default_rng(5), 5000)
    picked = st.score_items(at.query_items(q), u, np.random.default_rng(6))
    np.testing.assert_allclose(picked, prop.score, rtol=1e-5)  # the scores it chose by
    base = st.score_items(fresh, u, np.random.default_rng(6))
    assert np.median(picked) > np.quantile(base, 0.8), (np.median(picked), np.quantile(base, [0.5, 0.8]))


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "ensemble"])
def test_proposals_have_the_designs_shape_share_and_determinism(strategy):
    p = 16
    u = np.random.default_rng(0).standard_normal((p, 3))
    design = DesignConfig(name="rank", k=5, mu=0.8, s=2)
    mask = np.zeros(40, bool)
    mask[[1, 20]] = True

    def propose(seed):
        st = make_strategy(p, ActiveConfig(strategy=strategy, pool=4), design)
        return st.propose(40, u, np.random.default_rng(seed), random_mask=mask)

    prop = propose(1)
    assert all(x.p == p and len(x) == 40 and x.s == 2 for x in prop.queries.cands) and len(prop.queries.cands) == 5
    assert np.array_equal(prop.holdout, mask if strategy != "random" else np.ones(40, bool))
    again = propose(1).queries
    for x, y in zip(at.query_items(prop.queries), at.query_items(again)):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.values, y.values)
    cold = make_strategy(p, ActiveConfig(strategy=strategy, random_share=0.0), design).propose(8, None)
    assert cold.holdout.all() and np.isnan(cold.score).all()  # nothing learnt yet: every query is random


def test_coverage_counts_every_activation_of_a_tuple():
    p = 6
    st = make_strategy(p, ActiveConfig(strategy="random"), DesignConfig(name="closest", k=2))
    st.observe(Queries("closest", np.array([0]), one_hot(p, [[(0, 1.0)]]),
                       cands=(one_hot(p, [[(1, 1.0), (2, 0.5)]]), one_hot(p, [[(1, 1.0)]]))))
    np.testing.assert_array_equal(st.coverage_, [1, 2, 1, 0, 0, 0])
    with pytest.raises(ConfigError, match="'triplet'"):
        st.observe(Queries("triplet", np.array([0]), *[one_hot(p, [[(0, 1.0)]])] * 3))


def test_strategies_refuse_a_design_of_another_kind():
    with pytest.raises(ConfigError, match="'rank'"):
        ActiveStrategy(8, ActiveConfig(), DesignConfig(name="rank"))
    with pytest.raises(ConfigError, match="'triplet'"):
        at.TupleStrategy(8, ActiveConfig(), DesignConfig(name="triplet"))
    with pytest.raises(ConfigError, match="rank_outcome='last'"):
        ActiveConfig(rank_outcome="last")
    with pytest.raises(ConfigError, match="tie_band=1.5"):
        NoiseModel(tie_band=1.5)


def test_readouts_name_the_first_place():
    p = 4
    q = Queries("rank", np.arange(2), one_hot(p, [[(0, 1.0)], [(0, 1.0)]]),
                cands=(one_hot(p, [[(1, 1.0)], [(0, 0.9)]]), one_hot(p, [[(0, 0.8)], [(2, 1.0)]])))
    np.testing.assert_array_equal(at.predicted_first(q, np.eye(p)), [1, 0])
    codes = ranking_code(np.array([[1, 0], [1, 0]]))
    np.testing.assert_array_equal(at.answered_first(q, codes), [1, 1])


# ---------------------------------------------------------------- runs


def tuple_run(kind, budget=96, **kw):
    return RunConfig(target="synthetic:p=6,rank=2", design=DesignConfig(name=kind, k=3 if kind != "odd" else None),
                     budget=budget, chunk=32, rfm_mse=False, oracle=OracleConfig(noise="logistic", temperature=0.1),
                     learner_config=LearnerConfig(final_steps=300, polish=False, threads=1),
                     active=ActiveConfig(strategy="ensemble", noise=LOGISTIC), **kw)


@pytest.fixture()
def store(tmp_path):
    with Store(tmp_path / "runs.db") as s:
        yield s


@pytest.mark.parametrize("kind", ["closest", "rank", "odd"])
def test_an_active_tuple_run_learns_and_stores_what_it_chose(store, kind):
    result = run_loop(tuple_run(kind), store, run_id=kind)
    assert result.answers == 96 and result.extra["active"]["chunks"] == 3
    assert result.pcc > 0.85  # measured 0.93–0.97 (p = 6, rank 2, 96 answers)
    assert result.extra["holdout_kind"] == "prequential" and result.extra["holdout_n"] > 0
    q = store.load_queries(kind)
    assert q.kind == kind and len(q) == 96 and np.array_equal(q.seq, np.arange(96))


class Killed(Exception):
    """Stands in for a killed process: raised from the progress callback mid-run."""


def test_a_killed_active_tuple_run_resumes_without_losing_or_repeating_answers(store):
    cfg = tuple_run("rank", budget=128)

    def die(event):
        if event.fit is None and event.answers >= 64:
            raise Killed

    with pytest.raises(Killed):
        run_loop(cfg, store, run_id="killed", progress=die)
    before = store.load_queries("killed")
    assert len(before) == 64
    result = run_loop(cfg, store, run_id="killed")
    after = store.load_queries("killed")
    for x, y in zip(at.query_items(before), at.query_items(after.select(np.arange(64)))):
        np.testing.assert_array_equal(x.indices, y.indices)  # the stored chunks, cands blobs included, read back
        np.testing.assert_array_equal(x.values, y.values)
    rows = store.db.execute("SELECT seq, COUNT(*) FROM answers WHERE run_id = 'killed' GROUP BY seq").fetchall()
    assert len(rows) == 128 and {n for _, n in rows} == {1}  # every position answered exactly once
    assert result.answers == 128


def test_active_runs_refuse_designs_fixed_in_advance(store):
    cfg = RunConfig(target="synthetic:p=6,rank=2", design=DesignConfig(name="sparse"), budget=10,
                    active=ActiveConfig())
    with pytest.raises(ConfigError, match="triplet, closest, rank or odd"):
        run_loop(cfg, store)
