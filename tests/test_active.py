import numpy as np
import pytest
import torch

from fbloop import metrics, targets
from fbloop.agents import OracleAgent, OracleConfig
from fbloop.agents.oracle import triplet_margins
from fbloop.errors import ConfigError, ShapeError
from fbloop.learners import GradientLearner, LearnerConfig
from fbloop.queries import active
from fbloop.queries.active import ActiveConfig, ActiveStrategy, NoiseModel
from fbloop.queries.designs import DesignConfig, sample_sparse
from fbloop.sparse import SparseBatch

from conftest import one_hot


@pytest.fixture
def hand_built():
    """Three triplets under Φ = I (p = 4): a tie (ρ = 0), a clear +1 and a clear −1."""
    p = 4
    a = one_hot(p, [[(0, 1.0)], [(0, 1.0)], [(0, 1.0)]])
    b = one_hot(p, [[(1, 1.0)], [(0, 0.9)], [(3, 1.0)]])
    c = one_hot(p, [[(2, 1.0)], [(3, 1.0)], [(0, 0.9)]])
    return a, b, c, np.eye(p)


def test_relative_margins_by_hand_and_the_oracles_sign(hand_built):
    a, b, c, u = hand_built
    rho = active.relative_margins(a, b, c, u)
    # d_ab, d_ac: (2, 2), (0.01, 2), (2, 0.01)
    np.testing.assert_allclose(rho, [0.0, 1.99 / 2.01, -1.99 / 2.01])
    delta, _ = triplet_margins(a, b, c, u)
    assert np.array_equal(np.sign(rho), np.sign(delta))  # + means "a closer to b", as the oracle answers
    stacked = active.relative_margins(a, b, c, np.stack([u, 2 * u]))
    assert stacked.shape == (2, 3)
    np.testing.assert_allclose(stacked[1], rho)  # scale-free
    with pytest.raises(ShapeError, match="factors"):
        active.relative_margins(a, b, c, np.eye(5))


@pytest.mark.parametrize("noise", [NoiseModel("logistic", temperature=0.05), NoiseModel("none"),
                                   NoiseModel("flip", flip=0.1)])
def test_zero_margin_scores_highest_under_uncertainty(hand_built, noise):
    a, b, c, u = hand_built
    s = active.uncertainty_scores(a, b, c, u, noise)
    assert s.shape == (3,) and np.argmax(s) == 0
    assert s[0] == pytest.approx(1.0)  # a coin flip: one bit
    assert s[1] == pytest.approx(s[2]) and s[1] < 1.0


def test_uncertainty_ranks_by_margin_relative_to_the_temperature():
    rho = np.array([0.0, 0.01, 0.05, 0.2, -0.01])
    hot, cold = NoiseModel("logistic", temperature=0.2), NoiseModel("logistic", temperature=0.02)
    h_hot = active.binary_entropy(active.answer_probability(rho, hot))
    h_cold = active.binary_entropy(active.answer_probability(rho, cold))
    assert list(np.argsort(-h_hot, kind="stable")) == [0, 1, 4, 2, 3]
    assert np.all(h_hot[1:] > h_cold[1:])  # the same margin is less certain under hotter noise
    assert active.answer_probability(np.array([0.3]), NoiseModel("flip", flip=0.1))[0] == pytest.approx(0.9)


def test_ensemble_gain_is_disagreement_not_noise(hand_built):
    a, b, c, u = hand_built
    same = active.ensemble_scores(a, b, c, np.stack([u, u, u]), NoiseModel("logistic", temperature=0.05))
    np.testing.assert_allclose(same, 0.0, atol=1e-12)  # even the tie: its entropy is noise, not disagreement
    # A second factor that maps e3 onto e0 flips triplets 1 and 2 (d(e0, e3) = 0) and keeps the tie a tie.
    v = np.eye(4)
    v[3] = v[0]
    gain = active.ensemble_scores(a, b, c, np.stack([u, v]), NoiseModel("none"))
    assert gain[1] > 0.99 and gain[2] > 0.99  # a 50/50 vote between two confident members: one bit
    assert gain[0] < 1e-9  # both members call the tie a coin flip: nothing to learn about which is right


@pytest.mark.parametrize("strategy", ["random", "uncertainty", "ensemble"])
def test_shapes_positions_and_determinism(strategy):
    p = 40
    u = np.random.default_rng(0).standard_normal((p, 6))
    design = DesignConfig(name="triplet", mu=0.9, s=3)

    def propose(seed):
        st = ActiveStrategy(p, ActiveConfig(strategy=strategy, pool=8), design)
        return st.propose(50, u, np.random.default_rng(seed), start=1000)

    prop = propose(1)
    q = prop.queries
    assert q.kind == "triplet" and len(q) == 50
    np.testing.assert_array_equal(q.seq, np.arange(1000, 1050))
    for x in (q.a, q.b, q.c):
        assert x.p == p and len(x) == 50 and x.s == 3 and np.all(x.nnz() >= 1)
    assert prop.holdout.shape == prop.score.shape == (50,)
    again = propose(1).queries
    for x, y in ((q.a, again.a), (q.b, again.b), (q.c, again.c)):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.values, y.values)
    assert not np.array_equal(propose(2).queries.a.values, q.a.values)
    assert len(ActiveStrategy(p, ActiveConfig(strategy=strategy)).next_queries(0, u)) == 0


def test_random_share_is_honoured_and_flagged():
    p = 30
    u = np.random.default_rng(0).standard_normal((p, 5))
    st = ActiveStrategy(p, ActiveConfig(strategy="uncertainty", random_share=0.25, pool=4))
    prop = st.propose(400, u, np.random.default_rng(0))
    assert prop.holdout.sum() == 100  # floor(0.25·400 + u) is exact here
    assert np.all(np.isnan(prop.score[prop.holdout])) and np.all(np.isfinite(prop.score[~prop.holdout]))
    # Small batches: the share holds in expectation.
    rng = np.random.default_rng(1)
    counts = [st.propose(7, u, rng).holdout.sum() for _ in range(150)]
    assert set(counts) <= {1, 2} and np.mean(counts) == pytest.approx(0.25 * 7, abs=0.15)
    assert ActiveStrategy(p, ActiveConfig(random_share=1.0)).propose(20, u).holdout.all()
    assert not ActiveStrategy(p, ActiveConfig(random_share=0.0)).propose(20, u).holdout.any()
    cold = ActiveStrategy(p, ActiveConfig(random_share=0.0)).propose(20, None)  # no factor yet: all random
    assert cold.holdout.all()


def test_selected_queries_are_the_pools_most_uncertain():
    p = 30
    u = np.random.default_rng(3).standard_normal((p, 5))
    st = ActiveStrategy(p, ActiveConfig(strategy="uncertainty", random_share=0.0, pool=10))
    q = st.next_queries(200, u, np.random.default_rng(4))
    picked = np.abs(active.relative_margins(q.a, q.b, q.c, u))
    a, b, c = active.sample_triplets(np.random.default_rng(5), 20000, p, DesignConfig(name="triplet"))
    fresh = np.abs(active.relative_margins(a, b, c, u))
    # The top tenth of a pool sits in the bottom ~tenth of |ρ| (a little above: each pool is finite).
    assert np.quantile(picked, 0.9) < np.quantile(fresh, 0.15)
    assert np.median(picked) < np.quantile(fresh, 0.06)


def test_compress_factor_keeps_phi_when_the_rank_fits():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 20))  # (50, 20) of rank 4
    uk = active.compress_factor(u, 8)
    assert uk.shape == (50, 4)
    np.testing.assert_allclose(uk @ uk.T, u @ u.T, atol=1e-9)
    top2 = active.compress_factor(u, 2)
    assert top2.shape == (50, 2)


def test_fast_sampler_has_the_designs_law():
    rng = np.random.default_rng(0)
    n, p, mu, s = 20000, 300, 0.995, 3
    i1, v1 = sample_sparse(rng, n, p, mu, s)
    i2, v2 = active.sample_sparse_fast(rng, n, p, mu, s)
    assert i2.shape == v2.shape == (n, s)
    nnz1, nnz2 = np.count_nonzero(v1, 1), np.count_nonzero(v2, 1)
    for k in range(1, s + 1):
        assert np.mean(nnz2 == k) == pytest.approx(np.mean(nnz1 == k), abs=0.015)
    assert np.all(i2[v2 == 0] == 0) and np.all((v2 > 0) == (np.arange(s) < nnz2[:, None]))
    full = i2[nnz2 == s]
    assert np.all(np.sort(full, 1)[:, 1:] != np.sort(full, 1)[:, :-1])  # distinct indices
    hist = np.bincount(i2[v2 > 0], minlength=p)
    assert hist.min() > 0.6 * hist.mean() and hist.max() < 1.4 * hist.mean()


def test_coverage_counts_touched_coordinates():
    p = 6
    st = ActiveStrategy(p, ActiveConfig(strategy="random"))
    a = one_hot(p, [[(0, 1.0), (1, 0.5)]])
    b = one_hot(p, [[(1, 1.0)]])
    c = one_hot(p, [[(5, 1.0)]])
    from fbloop.records import Queries

    st.observe(Queries("triplet", np.array([0]), a, b, c))
    np.testing.assert_array_equal(st.coverage_, [1, 2, 0, 0, 0, 1])
    with pytest.raises(ConfigError, match="'pair'"):
        st.observe(Queries("pair", np.array([0]), a))


def test_perturbations_follow_row_norms_and_coverage():
    rng = np.random.default_rng(0)
    u = np.ones((4, 3))
    u[3] = 0.0  # a null row stays nearly null
    stack = active.perturbed_factors(u, 2000, 0.1, rng, coverage=np.array([0.0, 10.0, 10.0, 10.0]))
    sd = (stack - u).std(axis=(0, 2))
    assert stack.shape == (2000, 4, 3)
    assert sd[0] > 2 * sd[1]  # rarely asked about: more uncertain
    assert sd[3] < 0.5 * sd[1]


@pytest.mark.parametrize("kwargs, match", [
    ({"strategy": "greedy"}, "'greedy'"),
    ({"pool": 0}, "pool=0"),
    ({"random_share": 1.5}, "random_share=1.5"),
    ({"random_share": -0.1}, "random_share=-0.1"),
    ({"ensemble": 1}, "ensemble=1"),
    ({"perturb": 0.0}, "perturb=0.0"),
    ({"score_rank": 0}, "score_rank=0"),
    ({"block": 0}, "block=0"),
    ({"noise": "logistic"}, "'logistic'"),
])
def test_bad_configs_name_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ActiveConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "gauss"}, "'gauss'"),
    ({"temperature": 0.0}, "temperature=0.0"),
    ({"flip": 0.5}, "flip=0.5"),
])
def test_bad_noise_models_name_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        NoiseModel(**kwargs)


def test_config_round_trips_through_json():
    import dataclasses
    import json

    cfg = ActiveConfig(strategy="ensemble", noise=NoiseModel("flip", flip=0.2))
    back = ActiveConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg


def test_bad_calls():
    st = ActiveStrategy(10, ActiveConfig())
    with pytest.raises(ConfigError, match="n=-1"):
        st.next_queries(-1, np.eye(10))
    with pytest.raises(ShapeError, match="10 rows"):
        st.next_queries(5, np.eye(12))
    with pytest.raises(ConfigError, match="p=1"):
        ActiveStrategy(1)


# ---------------------------------------------------------------- end to end


def answers_to_reach(strategy: str, seed: int, level: float) -> float:
    """Answers until PCC ≥ level on a tiny target, in rounds growing by √2 (as the benchmark)."""
    t = targets.load_target(f"synthetic:p=10,rank=3,seed={seed}")
    anchor = SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), t.p)
    oracle = OracleAgent(t.factor, anchor, OracleConfig(noise="logistic", temperature=0.05, seed=seed))
    st = ActiveStrategy(t.p, ActiveConfig(strategy=strategy, noise=NoiseModel("logistic", temperature=0.05)),
                        DesignConfig(name="triplet", mu=0.7))
    learner = GradientLearner(t.p, LearnerConfig(rank=6, sharpness=20.0, seed=seed, threads=1))
    rng = np.random.default_rng(seed)
    n, goal, factor = 0, 40, None
    while n < 4000:
        q = st.next_queries(goal - n, factor, rng, start=n)
        learner.add_triplets(q.a, q.b, q.c, oracle.answer(q).value)
        n = goal
        learner.step(60)
        factor = learner.factor()
        if metrics.pcc_factored(factor, t.factor) >= level:
            return n
        goal = int(np.ceil(n * 2**0.5))
    return np.inf


def test_uncertainty_needs_fewer_answers_than_random():
    torch.set_num_threads(1)
    seeds = range(4)  # measured: random 463–655 answers, uncertainty 163–463 (medians 655 and 395)
    rand = [answers_to_reach("random", s, 0.99) for s in seeds]
    unc = [answers_to_reach("uncertainty", s, 0.99) for s in seeds]
    assert np.median(unc) < np.median(rand) and np.mean(np.log(unc)) < np.mean(np.log(rand)), (unc, rand)
