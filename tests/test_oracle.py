import numpy as np
import pytest

from fbloop import targets
from fbloop.agents import OracleAgent, OracleConfig
from fbloop.errors import ConfigError, NonPSDError
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.sparse import SparseBatch


@pytest.fixture(scope="module")
def target():
    return targets.synthetic(targets.SyntheticConfig(p=10, rank=3, seed=2))


def test_pair_scales_are_exact(target):
    d = make_design(DesignConfig(name="gaussian"), target, 0)
    q = d.queries(0, 20)
    c = OracleAgent(target.factor, d.anchor()).answer(q).value
    u, y, phi = q.a.to_dense(), d.anchor().to_dense()[0], target.phi()
    np.testing.assert_allclose(c, np.einsum("np,pq,nq->n", u, phi, u) / (y @ phi @ y), rtol=1e-10)


def test_triplet_answers_follow_distances(target):
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), target, 0)
    q = d.queries(0, 500)
    t = OracleAgent(target.factor, d.anchor()).answer(q).value
    phi = target.phi()
    a, b, c = (x.to_dense() for x in (q.a, q.b, q.c))
    dab = np.einsum("np,pq,nq->n", a - b, phi, a - b)
    dac = np.einsum("np,pq,nq->n", a - c, phi, a - c)
    np.testing.assert_array_equal(t, np.where(dab < dac, 1.0, -1.0))


def test_noise_rates_and_determinism(target):
    d = make_design(DesignConfig(name="triplet", dist="gaussian"), target, 0)
    q = d.queries(0, 4000)
    exact = OracleAgent(target.factor, d.anchor()).answer(q).value
    flip = OracleAgent(target.factor, d.anchor(), OracleConfig(noise="flip", flip=0.1, seed=3))
    noisy = flip.answer(q).value
    assert 0.08 < np.mean(noisy != exact) < 0.12
    again = flip.answer(q.select(np.arange(1000, 1500))).value  # answers do not depend on chunking
    np.testing.assert_array_equal(again, noisy[1000:1500])
    warm = OracleAgent(target.factor, d.anchor(), OracleConfig(noise="logistic", temperature=0.05)).answer(q).value
    hot = OracleAgent(target.factor, d.anchor(), OracleConfig(noise="logistic", temperature=0.5)).answer(q).value
    assert np.mean(warm != exact) < np.mean(hot != exact) < 0.5
    tie = OracleAgent(target.factor, d.anchor(), OracleConfig(tie_band=0.3)).answer(q).value
    assert 0.05 < np.mean(tie == 0) < 0.6 and np.all(tie[tie != 0] == exact[tie != 0])


def test_zero_norm_anchor_is_refused():
    t = targets.from_phi(np.diag([0.0, 1.0, 1.0]))
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), 3)
    q = make_design(DesignConfig(name="gaussian"), t, 0).queries(0, 3)
    with pytest.raises(NonPSDError, match="anchor"):
        OracleAgent(t.factor, anchor).answer(q)


@pytest.mark.parametrize("kwargs", [{"noise": "gauss"}, {"temperature": 0}, {"flip": 0.7}, {"tie_band": 1.0}])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        OracleConfig(**kwargs)
