import numpy as np
import pytest

from fbloop import targets
from fbloop.agents import OracleAgent, OracleConfig
from fbloop.agents.bisection import SUB_STEPS, BisectionAgent, BisectionConfig, triplets_used
from fbloop.errors import ConfigError
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import Answers
from fbloop.store import Store


@pytest.fixture(scope="module")
def setup():
    t = targets.synthetic(targets.SyntheticConfig(p=8, rank=3, seed=1))
    d = make_design(DesignConfig(name="gaussian"), t, 0)
    q = d.queries(0, 40)
    oracle = OracleAgent(t.factor, d.anchor())
    return t, d, q, oracle


@pytest.mark.parametrize("eps", [1e-2, 1e-4])
def test_scales_within_precision(setup, eps):
    t, d, q, oracle = setup
    exact = oracle.answer(q).value
    got = BisectionAgent(oracle, d.anchor(), BisectionConfig(precision=eps)).answer(q)
    assert np.all(got.ok)
    assert np.max(np.abs(np.log(got.value / exact))) <= eps
    assert triplets_used(got) == sum(len(m["trace"]) for m in got.meta)
    assert 10 <= triplets_used(got) / len(q) <= 60


def test_zero_scale_and_tie():
    t = targets.from_phi(np.diag([1.0, 1.0, 0.0]))
    d = make_design(DesignConfig(name="constructive"), t, 0)
    q = d.queries(0, 3)  # e_0 (c = 1: a tie at t = 1), e_1 (c = 1), e_2 (c = 0)
    oracle = OracleAgent(t.factor, d.anchor(), OracleConfig(tie_band=1e-9))
    got = BisectionAgent(oracle, d.anchor()).answer(q)
    np.testing.assert_allclose(got.value, [1.0, 1.0, 0.0])
    assert got.meta[0]["triplets"] == 1  # the first question was already a tie


class Flaky:
    """Answers every sub-question of even-numbered pairs as invalid."""

    name = "flaky"

    def __init__(self, inner):
        self.inner = inner

    def answer(self, queries):
        a = self.inner.answer(queries)
        status = np.where((queries.seq // SUB_STEPS) % 2 == 0, "invalid", "ok")  # even pairs fail
        return Answers(a.agent, a.seq, np.where(status == "ok", a.value, np.nan), status)


def test_invalid_sub_answers_make_the_pair_invalid(setup):
    _, d, q, oracle = setup
    got = BisectionAgent(Flaky(oracle), d.anchor()).answer(q.select(np.arange(10)))
    assert list(got.status[::2]) == ["invalid"] * 5 and np.all(np.isnan(got.value[::2]))
    assert np.all(got.ok[1::2])


@pytest.mark.slow  # 35–65 s on 2 loaded cores
def test_bisection_run_recovers_the_rfm_target(tmp_path):
    cfg = RunConfig(target="rfm", design=DesignConfig(name="eigen"), bisection=BisectionConfig(precision=1e-3),
                    rfm_mse=False)
    with Store(tmp_path / "b.db") as store:
        result = run_loop(cfg, store)
        assert result.pcc >= 0.999
        assert result.extra["ternary_answers"] == store.sum_meta(result.run_id, "triplets") > result.answers
        assert RunConfig.from_dict(store.get_run(result.run_id)["config"]) == cfg


@pytest.mark.parametrize("kwargs", [{"precision": 0}, {"precision": 1.5}, {"max_steps": 0}, {"max_scale": 1}])
def test_config_errors(kwargs):
    with pytest.raises(ConfigError):
        BisectionConfig(**kwargs)
