import numpy as np
import pytest
import torch

from fbloop import metrics, targets
from fbloop.agents import OracleAgent
from fbloop.designs import DesignConfig, make_design
from fbloop.errors import ConfigError, NonFiniteError, ShapeError
from fbloop.learner import GradientLearner, LearnerConfig
from fbloop.sparse import SparseBatch


def pairs(target, name, n=None, seed=0, **kw):
    d = make_design(DesignConfig(name=name, **kw), target, seed)
    q = d.queries(0, n or d.count)
    return d, q, OracleAgent(target.factor, d.anchor()).answer(q).value


@pytest.fixture(scope="module")
def target():
    return targets.synthetic(targets.SyntheticConfig(p=12, rank=3, seed=4))


def test_phi_hat_is_psd_and_steps_reduce_loss(target):
    d, q, c = pairs(target, "gaussian")
    learner = GradientLearner(target.p, LearnerConfig(seed=1), d.anchor())
    learner.add_pairs(q.a, c)
    first = learner.step(1)
    last = learner.step(200)
    assert last < first / 10
    lam = np.linalg.eigvalsh(learner.phi())
    assert lam.min() > -1e-10 * lam.max()


def test_a_step_touches_only_the_rows_it_sees(target):
    # A batch of activations on coordinates {2, 5} plus the anchor e_0: no other row of U moves.
    d = make_design(DesignConfig(name="sparse"), target, 0)
    u = SparseBatch(np.array([[2, 5], [5, 2]]), np.array([[1.0, 0.5], [0.3, 1.0]]), target.p)
    learner = GradientLearner(target.p, LearnerConfig(seed=0), d.anchor())
    before = learner.factor()
    learner.add_pairs(u, np.array([1.3, 0.8]))
    learner.step(5)
    moved = np.flatnonzero(np.any(learner.factor() != before, axis=1))
    assert set(moved) == {0, 2, 5}


@pytest.mark.parametrize("name", ["constructive", "gaussian", "eigen"])
def test_recovers_at_the_bound(target, name):
    d, q, c = pairs(target, name, seed=2)
    learner = GradientLearner(target.p, LearnerConfig(seed=2), d.anchor())
    learner.add_pairs(q.a, c)
    learner.finish()
    assert metrics.pcc_factored(learner.factor(), target.factor) >= 0.9999


def test_pair_losses_agree(target):
    d, q, c = pairs(target, "constructive")
    for form in ("paper", "root"):
        learner = GradientLearner(target.p, LearnerConfig(seed=0, pair_loss=form), d.anchor())
        learner.add_pairs(q.a, c)
        learner.finish()
        assert metrics.pcc_factored(learner.factor(), target.factor) >= 0.9999, form


def test_scale_is_pinned_by_the_anchor(target):
    d, q, c = pairs(target, "constructive")
    learner = GradientLearner(target.p, LearnerConfig(seed=0), d.anchor())
    learner.add_pairs(q.a, c)
    learner.finish()
    y = d.anchor().to_dense()[0]
    assert y @ learner.phi() @ y == pytest.approx(1.0, abs=1e-4)


def test_triplets_learn_the_metric(target):
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), target, 0)
    q = d.queries(0, 1500)
    t = OracleAgent(target.factor, d.anchor()).answer(q).value
    learner = GradientLearner(target.p, LearnerConfig(seed=0, lr=0.02, batch_size=512), None)
    learner.add_triplets(q.a, q.b, q.c, t)
    start = metrics.pcc_factored(learner.factor(), target.factor)
    learner.step(1500)
    end = metrics.pcc_factored(learner.factor(), target.factor)
    assert end > 0.95 and end > start
    held = d.queries(5000, 5500)
    truth = OracleAgent(target.factor, d.anchor()).answer(held).value
    assert metrics.triplet_agreement(learner.predict_triplets(held.a, held.b, held.c, band=0), truth) > 0.9


def test_input_errors(target):
    d = make_design(DesignConfig(name="gaussian"), target, 0)
    learner = GradientLearner(target.p, LearnerConfig(), d.anchor())
    q = d.queries(0, 4)
    with pytest.raises(ShapeError):
        learner.add_pairs(q.a, np.ones(3))
    with pytest.raises(NonFiniteError):
        learner.add_pairs(q.a, np.array([1.0, np.nan, 1.0, 1.0]))
    with pytest.raises(ConfigError, match="anchor"):
        GradientLearner(target.p, LearnerConfig(), None).add_pairs(q.a, np.ones(4))
    with pytest.raises(ConfigError, match=r"\{-1, 0, 1\}"):
        learner.add_triplets(q.a, q.a, q.a, np.array([2.0, 1, 1, 1]))


@pytest.mark.parametrize("kwargs", [{"rank": 0}, {"lr": 0}, {"pair_loss": "l1"}, {"dtype": "half"},
                                    {"threads": 0}, {"final_steps": -1}])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        LearnerConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_cuda_request_without_cuda():
    with pytest.raises(ConfigError, match="cuda"):
        LearnerConfig(device="cuda")
