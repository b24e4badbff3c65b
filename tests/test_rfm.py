"""Tests for fbloop.targets.rfm: the RFM that supplies the ground-truth Φ*."""

from __future__ import annotations

import numpy as np
import pytest

from fbloop.errors import ConfigError, NonFiniteError, NonPSDError, ShapeError
from fbloop.metrics import pcc
from fbloop.targets import rfm

SMALL = rfm.RFMConfig(n_train=1000, n_test=300)


@pytest.fixture(scope="module")
def small1() -> rfm.RFMResult:
    return rfm.fit_rfm(SMALL)


@pytest.fixture(scope="module")
def small2() -> rfm.RFMResult:
    return rfm.fit_rfm(rfm.RFMConfig(figure=2, n_train=1000, n_test=300))


# --- config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("figure", 3),
        ("figure", 0),
        ("figure", True),
        ("n_train", 0),
        ("n_test", -1),
        ("n_train", 10.5),
        ("dim", 5),
        ("std", 0.0),
        ("std", float("nan")),
        ("bandwidth", -1.0),
        ("bandwidth", float("inf")),
        ("ridge", 0.0),
        ("ridge", "1e-3"),
        ("iters", 0),
        ("seed", -2),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        rfm.RFMConfig(**{field: value})
    assert repr(value) in str(info.value)


def test_config_defaults_match_paper() -> None:
    cfg = rfm.RFMConfig()
    assert (cfg.n_train, cfg.dim, cfg.std, cfg.bandwidth, cfg.ridge, cfg.iters) == (
        4000,
        10,
        0.5,
        10.0,
        1e-3,
        5,
    )
    assert hash(cfg) == hash(rfm.RFMConfig())


# --- data and kernel --------------------------------------------------------


def test_target_functions() -> None:
    x = np.zeros((2, 10))
    x[:, [0, 1, 3]] = [2.0, 3.0, 5.0]
    x[:, 5] = [1.0, -1.0]
    np.testing.assert_array_equal(rfm.target_function(x, 1), [6.0, 0.0])
    np.testing.assert_array_equal(rfm.target_function(x, 2), [30.0, 0.0])
    with pytest.raises(ShapeError):
        rfm.target_function(np.zeros((3, 5)), 1)
    with pytest.raises(ConfigError):
        rfm.target_function(x, 3)


def test_make_data_shapes_and_determinism() -> None:
    cfg = rfm.RFMConfig(n_train=50, n_test=20, seed=3)
    a = rfm.make_data(cfg)
    b = rfm.make_data(cfg)
    assert [t.shape for t in a] == [(50, 10), (50,), (20, 10), (20,)]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = rfm.make_data(rfm.RFMConfig(n_train=50, n_test=20, seed=4))
    assert not np.array_equal(a[0], c[0])
    big = rfm.make_data(rfm.RFMConfig(n_train=4000, n_test=4000, seed=0))[0]
    assert abs(big.std() - 0.5) < 0.01


def test_laplace_kernel_matches_definition() -> None:
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    a = rng.normal(size=(4, 2))
    M = a @ a.T  # rank-2 PSD
    diff = x[:, None, :] - z[None, :, :]
    want = np.exp(-np.sqrt(np.einsum("ijk,kl,ijl->ij", diff, M, diff)) / 3.0)
    np.testing.assert_allclose(rfm.laplace_kernel(x, z, M, 3.0), want, rtol=1e-12, atol=1e-12)
    K = rfm.laplace_kernel(x, x, M, 3.0)
    np.testing.assert_array_equal(np.diag(K), 1.0)
    with pytest.raises(ShapeError):
        rfm.laplace_kernel(x, z, np.eye(3), 3.0)


def test_fit_alpha_solves_ridge_system() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(60, 10)), rng.normal(size=60)
    M = np.diag(rng.uniform(0.1, 2.0, size=10))
    alpha = rfm.fit_alpha(x, y, M, 10.0, 1e-3)
    K = rfm.laplace_kernel(x, x, M, 10.0)
    np.testing.assert_allclose((K + 1e-3 * np.eye(60)) @ alpha, y, atol=1e-8)


# --- AGOP -------------------------------------------------------------------


def _f(point: np.ndarray, centers: np.ndarray, alpha: np.ndarray, M: np.ndarray, L: float) -> float:
    """f(point) from the definition, with distances from explicit differences.

    (The Gram identity used by the module loses digits for points 1e-5 apart,
    which would swamp a finite difference taken next to a training point.)
    """
    diff = point[None, :] - centers
    dist = np.sqrt(np.maximum(np.einsum("jk,kl,jl->j", diff, M, diff), 0.0))
    return float(np.exp(-dist / L) @ alpha)


def _fd_grad(point, centers, alpha, M, L, h=1e-5) -> np.ndarray:
    g = np.empty_like(point)
    for k in range(point.size):
        e = np.zeros_like(point)
        e[k] = h
        g[k] = (_f(point + e, centers, alpha, M, L) - _f(point - e, centers, alpha, M, L)) / (2 * h)
    return g


@pytest.mark.parametrize("use_identity", [True, False])
def test_gradient_matches_finite_differences(use_identity: bool) -> None:
    cfg = rfm.RFMConfig(n_train=200, n_test=10, seed=5)
    x, y, x_test, _ = rfm.make_data(cfg)
    rng = np.random.default_rng(7)
    a = rng.normal(size=(10, 6))
    M = np.eye(10) if use_identity else a @ a.T / 6  # rank-6 PSD
    L = 10.0
    alpha = rfm.fit_alpha(x, y, M, L, 1e-3)
    # Training points (where the self-term's gradient is the symmetric
    # derivative, 0, which central differences reproduce) and fresh points.
    points = np.concatenate([x[:3], x_test[:3]])
    grads = rfm.predictor_grads(points, x, alpha, M, L)
    for p, g in zip(points, grads):
        fd = _fd_grad(p, x, alpha, M, L)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    G = rfm.predictor_grads(x, x, alpha, M, L)
    np.testing.assert_allclose(rfm.agop(x, alpha, M, L), G.T @ G / len(x), rtol=1e-12, atol=1e-15)


def test_M_symmetric_psd_and_readonly(small1: rfm.RFMResult, small2: rfm.RFMResult) -> None:
    for res in (small1, small2):
        assert len(res.history) == res.config.iters
        assert res.history[-1] is res.M
        for M in res.history:
            assert M.shape == (10, 10)
            np.testing.assert_array_equal(M, M.T)
            lam = np.linalg.eigvalsh(M)
            assert lam.min() >= -1e-12 * lam.max()
        for arr in (res.M, res.x_train, res.y_train, res.x_test, res.y_test, *res.history):
            assert not arr.flags.writeable


def test_fit_is_deterministic_and_cached(small1: rfm.RFMResult) -> None:
    assert rfm.fit_rfm(SMALL) is small1
    again = rfm.fit_rfm.__wrapped__(SMALL)
    for u, v in zip(again.history, small1.history):
        np.testing.assert_array_equal(u, v)
    other = rfm.fit_rfm.__wrapped__(rfm.RFMConfig(n_train=1000, n_test=300, seed=1))
    assert not np.array_equal(other.M, small1.M)


def test_fig1_M_concentrates_on_relevant_coordinates(small1: rfm.RFMResult) -> None:
    M = small1.M
    relevant = [0, 1, 5]
    assert np.trace(M[np.ix_(relevant, relevant)]) > 0.99 * np.trace(M)
    lam, vec = np.linalg.eigh(M)
    top = vec[:, -3:]  # top-3 eigenvectors live on coordinates 0, 1, 5
    assert np.sum(top[relevant] ** 2) > 3 * 0.99
    assert lam[-4] < 1e-3 * lam[-1]  # numerical rank 3


def test_fig2_M_concentrates_on_relevant_coordinates(small2: rfm.RFMResult) -> None:
    M = small2.M
    relevant = [0, 1, 3, 5]
    assert np.trace(M[np.ix_(relevant, relevant)]) > 0.95 * np.trace(M)
    lam, vec = np.linalg.eigh(M)
    assert np.sum(vec[:, -4:][relevant] ** 2) > 4 * 0.95
    assert lam[-5] < 1e-3 * lam[-1]  # numerical rank 4


# --- MSE readout ------------------------------------------------------------


def test_truth_beats_identity_and_mean(small1: rfm.RFMResult, small2: rfm.RFMResult) -> None:
    for res in (small1, small2):
        b = rfm.baseline_mses(res)
        assert set(b) == {"truth", "identity", "identity_scaled", "mean"}
        assert b["truth"] < b["identity"] < b["mean"]
        assert b["truth"] < b["identity_scaled"]
        assert b["truth"] == rfm.test_mse(res, res.M)


def test_mse_readout_is_scale_invariant(small1: rfm.RFMResult) -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(10, 4))
    for phi in (small1.M, a @ a.T):
        base = rfm.test_mse(small1, phi)
        np.testing.assert_allclose(rfm.test_mse(small1, 7.0 * phi), base, rtol=1e-6)
        np.testing.assert_allclose(rfm.test_mse(small1, phi / 1000.0), base, rtol=1e-6)


def test_mse_readout_validates_phi(small1: rfm.RFMResult) -> None:
    with pytest.raises(ShapeError):
        rfm.test_mse(small1, np.eye(9))
    with pytest.raises(ShapeError):
        rfm.test_mse(small1, np.ones(10))
    bad = np.eye(10)
    bad[2, 3] = np.nan
    with pytest.raises(NonFiniteError):
        rfm.test_mse(small1, bad)
    with pytest.raises(NonPSDError):
        rfm.test_mse(small1, -np.eye(10))
    with pytest.raises(NonPSDError):
        rfm.test_mse(small1, np.zeros((10, 10)))
    skew = np.eye(10)
    skew[0, 1] = 0.5
    with pytest.raises(NonPSDError):
        rfm.test_mse(small1, skew)


# --- cross-check against xrfm -----------------------------------------------


def test_first_agop_matches_xrfm() -> None:
    """xrfm's first AGOP from M_0 = I equals ours up to its max-normalisation.

    xrfm's LaplaceKernel is ``exp(−‖(x − z) A‖₂^exponent / L^exponent)`` with
    ``A = sqrtM``; at ``exponent = 1`` and ``A = I`` this is our kernel at
    ``M = I``. It adds ``reg`` to the diagonal like our ridge, sums (not
    averages) ``∇f ∇fᵀ`` and divides by the max entry. Later rounds are not
    comparable: xrfm hard-codes ``agop_power = 0.5`` and normalises M, which
    changes the effective bandwidth.
    """
    pytest.importorskip("xrfm")
    import torch
    from xrfm.rfm_src.kernels import LaplaceKernel
    from xrfm.rfm_src.recursive_feature_machine import RFM

    for figure in (1, 2):
        cfg = rfm.RFMConfig(figure=figure, n_train=500, n_test=100, seed=1)
        x, y, xv, yv = rfm.make_data(cfg)
        alpha = rfm.fit_alpha(x, y, np.eye(10), cfg.bandwidth, cfg.ridge)
        ours = rfm.agop(x, alpha, np.eye(10), cfg.bandwidth)

        model = RFM(
            kernel="laplace",
            bandwidth=cfg.bandwidth,
            exponent=1.0,
            iters=1,
            agop_power=1.0,
            device="cpu",
            verbose=False,
        )
        assert isinstance(model.kernel_obj, LaplaceKernel)
        Ms = model.fit(
            (torch.from_numpy(x), torch.from_numpy(y)),
            (torch.from_numpy(xv), torch.from_numpy(yv)),
            iters=1,
            reg=cfg.ridge,
            return_Ms=True,
            early_stop_rfm=False,
            return_best_params=False,
            M_batch_size=len(x),
            verbose=False,
        )
        theirs = Ms[0].numpy()
        assert pcc(ours, theirs) > 0.999
        np.testing.assert_allclose(ours / ours.max(), theirs, atol=1e-6)

    # xrfm's kernel with transform A is ours with M = A Aᵀ.
    rng = np.random.default_rng(3)
    A = rng.normal(size=(10, 10))
    xa, za = rng.normal(size=(30, 10)), rng.normal(size=(20, 10))
    k_theirs = LaplaceKernel(bandwidth=10.0, exponent=1.0).get_kernel_matrix(
        torch.from_numpy(xa), torch.from_numpy(za), torch.from_numpy(A)
    )
    ours_k = rfm.laplace_kernel(xa, za, A @ A.T, 10.0)
    np.testing.assert_allclose(ours_k, k_theirs.numpy(), rtol=1e-10)


# --- disk cache ---------------------------------------------------------------


def test_a_fit_is_read_back_from_disk_not_refitted(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FBLOOP_CACHE_DIR", str(tmp_path))
    cfg = rfm.RFMConfig(n_train=200, n_test=50, iters=2, seed=3)
    first = rfm.fit_rfm(cfg)
    base = rfm.baseline_mses(first)
    assert len(list(tmp_path.glob("rfm-*.npz"))) == 1 and len(list(tmp_path.glob("rfm-baselines-*.json"))) == 1
    rfm.fit_rfm.cache_clear()

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted although the fit was cached on disk")

    monkeypatch.setattr(rfm, "fit_alpha", no_fit)
    monkeypatch.setattr(rfm, "_kernel_test_mse", no_fit)
    again = rfm.fit_rfm(cfg)
    np.testing.assert_array_equal(again.M, first.M)
    np.testing.assert_array_equal(again.x_test, first.x_test)
    assert len(again.history) == 2 and not again.M.flags.writeable
    assert rfm.baseline_mses(again) == base
    rfm.fit_rfm.cache_clear()


def test_a_change_to_the_rfm_code_refits(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FBLOOP_CACHE_DIR", str(tmp_path))
    cfg = rfm.RFMConfig(n_train=200, n_test=50, iters=2, seed=4)
    rfm.fit_rfm(cfg)
    rfm.fit_rfm.cache_clear()
    monkeypatch.setattr(rfm.cache, "source_version", lambda *files: "another version")
    calls = []
    real = rfm.fit_alpha
    monkeypatch.setattr(rfm, "fit_alpha", lambda *a, **k: calls.append(1) or real(*a, **k))
    rfm.fit_rfm(cfg)
    assert len(calls) == 2  # both rounds fitted again
    assert len(list(tmp_path.glob("rfm-*.npz"))) == 2
    rfm.fit_rfm.cache_clear()
