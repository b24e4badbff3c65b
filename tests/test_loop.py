"""End to end: target → design → oracle → SQLite → learner, at the information bound."""

import numpy as np
import pytest

from fbloop import metrics, seeding, targets
from fbloop.agents import OracleAgent
from fbloop.errors import ConfigError
from fbloop.learners import GradientLearner, LearnerConfig
from fbloop.learners.exact import constraint_matrix, unvech, vech
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.catalogue import make_design
from fbloop.queries.designs import DesignConfig, n_params
from fbloop.store import Store

from conftest import crash_on_record

DESIGNS = ("eigen", "constructive", "gaussian")
SEEDS = range(10)
SYNTHETIC = ["synthetic:p=10,rank=4", "synthetic:p=20,rank=5", "synthetic:p=40,rank=6", "synthetic:p=40,rank=40"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with Store(tmp_path_factory.mktemp("loop") / "runs.db") as s:
        yield s


def spec_for(spec: str, seed: int) -> str:
    return spec if spec.startswith("rfm") else f"{spec},seed={seed}"


def run_at_bound(store, spec, design, seed, learner, mse=False):
    cfg = RunConfig(target=spec, design=DesignConfig(name=design), learner=learner,
                    learner_config=LearnerConfig(seed=seed), seed=seed, rfm_mse=mse)
    result = run_loop(cfg, store)
    assert result.answers == result.bound == result.budget
    return result


# p = 40 on every seed takes 35–70 s a design (cvxpy): in the slow run; p ≤ 20 and the RFM stay in the default one.
BIG = pytest.mark.slow
EXACT_SPECS = ["rfm", *SYNTHETIC[:2], *(pytest.param(s, marks=BIG) for s in SYNTHETIC[2:])]


@pytest.mark.parametrize("spec", EXACT_SPECS)
@pytest.mark.parametrize("design", DESIGNS)
def test_exact_learner_reaches_the_bound_on_every_seed(store, spec, design):
    pccs = [run_at_bound(store, spec_for(spec, s), design, s, "exact").pcc for s in SEEDS]
    assert min(pccs) >= 0.9999, pccs


@pytest.mark.parametrize("spec", ["rfm", pytest.param("synthetic:p=10,rank=4", marks=BIG)])
@pytest.mark.parametrize("design", DESIGNS)
def test_gradient_learner_reaches_the_bound_on_every_seed(store, spec, design):
    pccs = [run_at_bound(store, spec_for(spec, s), design, s, "gradient").pcc for s in SEEDS]
    assert min(pccs) >= 0.9999, pccs


# Full rank at p = 40: Φ* = DᵀD has condition numbers 2.6e3–9.1e5 (seeds 0–9), and Adam then L-BFGS stop at
# PCC 0.99 (eigen 0.9917, gaussian 0.9905 at worst) with the loss near 1e-7, at every commit tried back to
# the first; 3,000 L-BFGS iterations instead of 300 reach 0.9991–0.9994 (eigen, seeds 0–1). The exact
# learner reaches the bound on the same targets (test_exact_learner_reaches_the_bound_on_every_seed).
ILL_CONDITIONED = {("synthetic:p=40,rank=40", "eigen"), ("synthetic:p=40,rank=40", "gaussian")}


@pytest.mark.slow
@pytest.mark.parametrize("spec", SYNTHETIC[1:])
@pytest.mark.parametrize("design", DESIGNS)
def test_gradient_learner_reaches_the_bound_up_to_p40(request, store, spec, design):
    if (spec, design) in ILL_CONDITIONED:  # strict: once the learner reaches it, this mark must go
        request.applymarker(pytest.mark.xfail(strict=True, reason="the gradient fit of an ill-conditioned "
                                              "full-rank Φ* stops near PCC 0.99 (see ILL_CONDITIONED)"))
    pccs = [run_at_bound(store, spec_for(spec, s), design, s, "gradient").pcc for s in SEEDS]
    assert min(pccs) >= 0.9999, pccs


@pytest.mark.parametrize("p", [6, 10])
def test_below_the_bound_the_gaussian_design_leaves_phi_undetermined(p):
    """With P − 2 Gaussian pairs, two clearly different PSD matrices fit every answer; P − 1 pin Φ down."""
    rng = np.random.default_rng(p)
    w = rng.standard_normal((p, p))
    target = targets.from_phi(np.eye(p) + w @ w.T / p)  # full rank and well conditioned
    design = make_design(DesignConfig(name="gaussian"), target, 0)
    y = design.anchor().to_dense()[0]
    q = design.queries(0, n_params(p) - 2)
    c = OracleAgent(target.factor, design.anchor()).answer(q).value
    A, b = constraint_matrix(q.a, c, design.anchor())  # (n + 1, P): the answers and yᵀΦy = 1
    null = unvech(np.linalg.svd(A)[2][-1], p)  # a symmetric direction no answer sees
    truth = target.phi() / (y @ target.phi() @ y)
    # Largest step along the null direction that keeps Φ PSD: Φ + tN ⪰ 0 ⟺ t ≤ 1/λmax(−L⁻¹NL⁻ᵀ).
    chol = np.linalg.cholesky(truth)
    inv = np.linalg.inv(chol)
    t_max = 1.0 / np.linalg.eigvalsh(-inv @ null @ inv.T)[-1]
    other = truth + 0.9 * t_max * null
    assert np.linalg.eigvalsh(other)[0] > 0  # PSD
    np.testing.assert_allclose(A @ vech(other), b, atol=1e-8)  # fits every answer
    np.testing.assert_allclose(A @ vech(truth), b, atol=1e-8)
    assert metrics.pcc(other, truth) < 0.99  # yet a different feature matrix
    q1 = design.queries(0, n_params(p) - 1)
    c1 = OracleAgent(target.factor, design.anchor()).answer(q1).value
    A1, _ = constraint_matrix(q1.a, c1, design.anchor())
    assert np.linalg.matrix_rank(A1) == n_params(p)  # one more pair pins it down


def test_below_the_bound_pcc_stays_short(store):
    cfg = RunConfig(target="synthetic:p=10,rank=10,seed=1", design=DesignConfig(name="gaussian"),
                    budget=n_params(10) // 2, learner="gradient")
    assert run_loop(cfg, store).pcc < 0.999


def test_snapshots_trace_the_run(store):
    cfg = RunConfig(target="synthetic:p=8,rank=3", design=DesignConfig(name="sparse", mu=0.7), budget=600,
                    chunk=32, snapshot_every=100)
    result = run_loop(cfg, store)
    snaps = store.snapshots(result.run_id)
    assert len(snaps) >= 5 and snaps[-1]["extra"]["final"]
    assert [s["answers"] for s in snaps] == sorted(s["answers"] for s in snaps)
    assert result.pcc > 0.99
    np.testing.assert_allclose(store.load_factor(result.run_id), result.factor)


def test_triplet_run(store):
    cfg = RunConfig(target="synthetic:p=8,rank=3", design=DesignConfig(name="triplet", dist="gaussian"),
                    budget=800, chunk=100)
    result = run_loop(cfg, store)
    assert result.pcc > 0.9 and store.count_answers(result.run_id) == 800


def test_rfm_run_reports_the_papers_mse(store):
    result = run_at_bound(store, "rfm", "eigen", 0, "gradient", mse=True)
    assert result.extra["mse"] == pytest.approx(result.extra["mse_truth"], rel=1e-3)
    assert result.extra["mse"] < result.extra["mse_identity"]


@pytest.mark.parametrize("kwargs, match", [
    ({"budget": 0}, "budget=0"), ({"chunk": 0}, "chunk=0"), ({"learner": "magic"}, "magic"),
    ({"holdout": 1.0}, "holdout=1.0"), ({"holdout": -0.1}, "holdout=-0.1"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kwargs)


def test_budget_beyond_a_finite_design(store):
    cfg = RunConfig(target="synthetic:p=6,rank=2", design=DesignConfig(name="constructive"), budget=22)
    before = len(store.runs())
    with pytest.raises(ConfigError, match="Budget 22 exceeds the 21"):
        run_loop(cfg, store)
    assert len(store.runs()) == before  # nothing half-written


def test_held_out_positions_are_a_pure_function_of_seed_and_position():
    every = seeding.held_out(3, np.arange(20_000), 0.1)
    assert 0.09 < every.mean() < 0.11
    np.testing.assert_array_equal(seeding.held_out(3, np.arange(7_000, 7_100), 0.1), every[7_000:7_100])
    assert (every != seeding.held_out(4, np.arange(20_000), 0.1)).any()
    assert not seeding.held_out(3, np.arange(100), 0.0).any()


HOLDOUT = dict(target="synthetic:p=8,rank=3", design=DesignConfig(name="triplet", dist="gaussian"), budget=640,
               chunk=64, snapshot_every=128, holdout=0.2, rfm_mse=False,
               learner_config=LearnerConfig(final_steps=300, polish=False))


def learned_rows(monkeypatch) -> list[int]:
    """Rows every GradientLearner is given from here on, one count per add_triplets call."""
    calls: list[int] = []
    real = GradientLearner.add_triplets

    def spy(self, a, b, c, t, source=0):
        calls.append(len(t))
        return real(self, a, b, c, t, source=source)

    monkeypatch.setattr(GradientLearner, "add_triplets", spy)
    return calls


def test_held_out_triplets_are_stored_scored_and_never_learned(store, monkeypatch):
    held = seeding.held_out(0, np.arange(640), 0.2)
    calls = learned_rows(monkeypatch)
    result = run_loop(RunConfig(**HOLDOUT), store, run_id="held")
    assert store.count_answers("held") == 640  # asked and stored like the others
    assert sum(calls) == 640 - held.sum()  # but never learned from
    snaps = store.snapshots("held")
    curve = [s["extra"]["holdout_agreement"] for s in snaps if "holdout_agreement" in s["extra"]]
    assert len(curve) >= 5 and snaps[-1]["extra"]["holdout_n"] == held.sum()
    assert curve[-1] > 0.9 and curve[-1] == result.extra["holdout_agreement"]
    assert result.pcc > 0.95


def test_a_resumed_run_keeps_its_held_out_set_and_never_learns_it(store, monkeypatch):
    held = seeding.held_out(0, np.arange(640), 0.2)
    real_record = crash_on_record(monkeypatch, store, 4)
    with pytest.raises(KeyboardInterrupt):
        run_loop(RunConfig(**HOLDOUT), store, run_id="held-resumed")
    assert store.count_answers("held-resumed") == 192
    monkeypatch.setattr(store, "record", real_record)
    calls = learned_rows(monkeypatch)
    result = run_loop(RunConfig(**HOLDOUT), store, run_id="held-resumed")  # replays 192, asks 448
    assert sum(calls) == 640 - held.sum()
    assert store.snapshots("held-resumed")[-1]["extra"]["holdout_n"] == held.sum()
    whole = run_loop(RunConfig(**HOLDOUT), store, run_id="held-whole")
    assert result.extra["holdout_agreement"] == pytest.approx(whole.extra["holdout_agreement"], abs=0.03)


@pytest.mark.parametrize("kind,k", [("closest", 4), ("rank", 4), ("odd", None)])
def test_held_out_tuple_answers_are_stored_scored_by_their_first_place_and_never_learned(store, kind, k):
    held = seeding.held_out(0, np.arange(320), 0.2)
    cfg = RunConfig(**{**HOLDOUT, "design": DesignConfig(name=kind, k=k, dist="gaussian"), "budget": 320})
    result = run_loop(cfg, store, run_id=f"held-{kind}")
    assert store.count_answers(f"held-{kind}") == 320
    assert result.extra["learned"] == 320 - held.sum()  # the held-out ones never reach the learner
    assert result.extra["holdout_n"] == held.sum()
    assert result.extra["holdout_agreement"] > 0.8  # chance: 1/4 (closest, rank), 1/3 (odd)


def test_holdout_needs_a_triplet_or_tuple_design(store):
    cfg = RunConfig(target="synthetic:p=6,rank=2", design=DesignConfig(name="gaussian"), holdout=0.1)
    with pytest.raises(ConfigError, match="held-out share scores triplet and tuple answers"):
        run_loop(cfg, store)


def test_stop_at_ends_the_run_once_a_snapshot_reaches_it(store):
    cfg = RunConfig(target="synthetic:p=8,rank=2", design=DesignConfig(name="triplet"), budget=4000, chunk=64,
                    snapshot_every=64, stop_at=0.8, rfm_mse=False)
    result = run_loop(cfg, store)
    reached = [n for n, pcc in result.history if pcc is not None and pcc >= 0.8]
    assert reached and result.answers == reached[0] < 4000  # stopped at the first snapshot at or above
    with pytest.raises(ConfigError, match="stop_at"):
        RunConfig(stop_at=1.5)


def test_a_new_run_never_takes_an_existing_runs_id(store, monkeypatch):
    from fbloop.loop import session as loop_session  # open_session looks new_run_id up in its own module

    cfg = RunConfig(target="synthetic:p=6,rank=2", budget=30, rfm_mse=False)
    ids = iter(["taken", "taken", "free"])
    monkeypatch.setattr(loop_session, "new_run_id", lambda config: next(ids))
    first = run_loop(cfg, store)
    second = run_loop(cfg, store)  # the generator repeats "taken" (as a 4-hex suffix can within one second)
    assert (first.run_id, second.run_id) == ("taken", "free")
    assert store.count_answers("taken") == store.count_answers("free") == 30
