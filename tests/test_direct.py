import numpy as np
import pytest

from fbloop import metrics, targets
from fbloop.agents import OracleAgent
from fbloop.errors import ConfigError, ShapeError
from fbloop.learners.direct import DirectLearner
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig
from fbloop.records import Queries
from fbloop.sparse import SparseBatch
from fbloop.store import Store


def answered(target, name, n=None, seed=0):
    d = make_design(DesignConfig(name=name), target, seed)
    q = d.queries(0, n or d.total)
    return d, q, OracleAgent(d.design_factor(target.factor), d.anchor()).answer(q).value


@pytest.mark.parametrize("p, r", [(12, 3), (30, 30), (50, 7)])
@pytest.mark.parametrize("name", ["constructive", "eigen"])
def test_solves_the_design_exactly(p, r, name):
    target = targets.synthetic(targets.SyntheticConfig(p=p, rank=r, seed=p + r))
    d, q, c = answered(target, name)
    learner = DirectLearner(p)
    for lo in range(0, len(c), 37):  # arrival in chunks changes nothing
        learner.add_pairs(q.a[lo:lo + 37], c[lo:lo + 37])
    u = d.native_factor(learner.factor())
    assert metrics.pcc_factored(u, target.factor) > 1 - 1e-10
    assert learner.undetermined == 0 and learner.last_loss < 1e-8
    # Scale: the anchor has Φ̂-norm 1, as the gradient learner pins it.
    y = d.to_native(d.anchor()).to_dense()[0]
    assert y @ u @ u.T @ y == pytest.approx(1.0, rel=1e-8)


def test_any_order_and_repeats_and_nonunit_values():
    target = targets.synthetic(targets.SyntheticConfig(p=9, rank=4, seed=1))
    rng = np.random.default_rng(0)
    i, j = np.triu_indices(9, 1)
    idx = np.concatenate([np.stack([np.arange(9), np.zeros(9, int)], 1), np.stack([j, i], 1)])  # (j, i) order
    val = np.concatenate([np.stack([rng.uniform(0.2, 2, 9), np.zeros(9)], 1), rng.uniform(0.2, 2, (len(i), 2))])
    u = SparseBatch(np.concatenate([idx, idx]), np.concatenate([val, val]), 9)  # every question twice
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), 9)
    c = OracleAgent(target.factor, anchor).answer(Queries("pair", np.arange(len(u)), u)).value
    perm = rng.permutation(len(c))
    learner = DirectLearner(9)
    learner.add_pairs(u[perm], c[perm])
    np.testing.assert_allclose(learner.phi(), target.phi() / target.phi()[0, 0], atol=1e-10)


def test_missing_entries_are_counted():
    target = targets.synthetic(targets.SyntheticConfig(p=8, rank=3, seed=2))
    d, q, c = answered(target, "constructive")
    learner = DirectLearner(8)
    learner.add_pairs(q.a[:-3], c[:-3])  # the last three off-diagonal entries never asked
    learner.factor()
    assert learner.undetermined == 3


def test_bad_input_is_refused():
    learner = DirectLearner(5)
    three = SparseBatch(np.array([[0, 1, 2]]), np.ones((1, 3)), 5)
    with pytest.raises(ConfigError, match="1 or 2 nonzeros"):
        learner.add_pairs(three, np.array([1.0]))
    one = SparseBatch(np.array([[0]]), np.ones((1, 1)), 5)
    with pytest.raises(ShapeError, match="Expect 1 scales"):
        learner.add_pairs(one, np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match="p ≤"):
        DirectLearner(100_000)


def test_loop_picks_direct_and_reports_it(tmp_path):
    cfg = RunConfig(target="synthetic:p=60,rank=6,seed=3", design=DesignConfig(name="eigen"), learner="auto")
    with Store(tmp_path / "d.db") as store:
        result = run_loop(cfg, store)
        assert result.learner == "direct" and result.pcc > 1 - 1e-9
        assert result.answers == result.bound == 6 * 7 // 2 + 54
        # The stored factor is in feature coordinates.
        target = targets.load_target(cfg.target)
        assert metrics.pcc_factored(store.load_factor(result.run_id), target.factor) > 1 - 1e-9


def test_direct_refuses_other_designs(tmp_path):
    cfg = RunConfig(target="synthetic:p=60,rank=6", design=DesignConfig(name="sparse"), learner="direct")
    with Store(tmp_path / "d.db") as store, pytest.raises(ConfigError, match="direct learner"):
        run_loop(cfg, store)


@pytest.mark.slow
def test_chessgpt_shape_constructive_end_to_end(tmp_path):
    # The paper's Figure 3 sparse-constructive run (8,390,656 pairs, PCC 0.9773 there): queries, oracle,
    # SQLite on disk and the direct learner. ~4 min and ~2.3 GB of database on 2 CPU cores.
    cfg = RunConfig(target="chessgpt", design=DesignConfig(name="constructive"), learner="auto", rfm_mse=False)
    with Store(tmp_path / "chess.db") as store:
        result = run_loop(cfg, store)
        assert result.learner == "direct" and result.answers == 8_390_656
        assert result.pcc >= 0.999
        assert store.count_answers(result.run_id) == 8_390_656
