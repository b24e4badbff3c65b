"""Recursive Feature Machine (RFM): the ground-truth feature matrix ``Φ*``.

Kumar, "The Complexity of Learning Sparse Superposed Features with Feedback"
(ICML 2025), Figures 1–2, take as target the feature matrix an RFM learns on
a small synthetic regression task. This module reproduces that target:

* Laplace kernel ``K_M(x, z) = exp(−‖x − z‖_M / L)`` with
  ``‖v‖_M = sqrt(vᵀ M v)``, bandwidth ``L = 10``, ridge ``1e−3``, ``M_0 = I``.
* Each of ``iters = 5`` rounds solves ``(K_M + ridge·I) α = y`` on the
  training set, then sets ``M`` to the AGOP of ``f(x) = Σ_j α_j K_M(x, x_j)``:
  ``M ← (1/n) Σ_i ∇f(x_i) ∇f(x_i)ᵀ``. Unlike ``xrfm`` there is no
  normalisation of ``M`` and no matrix power between rounds.
* Data: ``x ∈ R^10`` with i.i.d. ``N(0, 0.5²)`` coordinates; target
  ``x_0 x_1 · 1(x_5 > 0)`` (Fig. 1) or ``x_0 x_1 x_3 · 1(x_5 > 0)`` (Fig. 2).

All arithmetic is float64 numpy. Kernel matrices are built from the Gram
identity ``‖x − z‖²_M = xᵀMx + zᵀMz − 2 xᵀMz``; the AGOP is evaluated in row
blocks so memory stays at a few ``block × n`` matrices.

The readout :func:`test_mse` scores a (learned) feature matrix by the test MSE
of kernel ridge regression in its norm, after rescaling it to the trace of
``Φ*`` (see its docstring for why).
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Literal

import numpy as np
import scipy.linalg

from .. import cache
from ..errors import ConfigError, NonFiniteError, NonPSDError, ShapeError

#: Relative tolerance below which a squared distance counts as exactly 0
#: (a point against itself); the Gram identity leaves ~1e-16·‖x‖² there.
_COINCIDENT_RTOL = 1e-12
#: Rows of evaluation points per block when forming ``(block, n)`` matrices.
_BLOCK = 2048


@dataclass(frozen=True)
class RFMConfig:
    """Everything that determines an RFM run; hashable, so runs are cached.

    ``dim`` must be at least 6 because the targets read coordinates 0, 1, 3
    and 5.
    """

    figure: Literal[1, 2] = 1  # which target function
    n_train: int = 4000
    n_test: int = 1000
    dim: int = 10
    std: float = 0.5
    bandwidth: float = 10.0
    ridge: float = 1e-3
    iters: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("std", "bandwidth", "ridge"):
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
                if not ok or not math.isfinite(float(value)) or float(value) <= 0:
                    raise ConfigError(f"Expect {f.name} a finite number > 0, got {value!r}.")
            elif isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"Expect {f.name} an integer, got {value!r}.")
        if self.figure not in (1, 2):
            raise ConfigError(f"Expect figure 1 or 2, got {self.figure!r}.")
        if self.n_train < 1:
            raise ConfigError(f"Expect n_train >= 1, got {self.n_train!r}.")
        if self.n_test < 1:
            raise ConfigError(f"Expect n_test >= 1, got {self.n_test!r}.")
        if self.dim < 6:
            raise ConfigError(f"Expect dim >= 6 (the targets read x_5), got {self.dim!r}.")
        if self.iters < 1:
            raise ConfigError(f"Expect iters >= 1, got {self.iters!r}.")
        if self.seed < 0:
            raise ConfigError(f"Expect seed >= 0, got {self.seed!r}.")


@dataclass(frozen=True)
class RFMResult:
    """A finished RFM run; every array is read-only.

    ``M`` is ``(dim, dim)``, the AGOP after the last round, i.e. ``Φ*``.
    ``x_train`` is ``(n_train, dim)``, ``y_train`` ``(n_train,)``, ``x_test``
    ``(n_test, dim)``, ``y_test`` ``(n_test,)``. ``history[t]`` is ``M`` after
    round ``t + 1`` (so ``history[-1] is M``).
    """

    config: RFMConfig
    M: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    history: tuple[np.ndarray, ...]


def target_function(x: np.ndarray, figure: int) -> np.ndarray:
    """The regression target ``f*`` of Figure ``figure``: ``(n, dim) -> (n,)``.

    Fig. 1: ``x_0 x_1 · 1(x_5 > 0)``; Fig. 2: ``x_0 x_1 x_3 · 1(x_5 > 0)``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 6:
        raise ShapeError(f"Expect x of shape (n, dim >= 6), got {x.shape}.")
    gate = (x[:, 5] > 0).astype(np.float64)
    if figure == 1:
        return x[:, 0] * x[:, 1] * gate
    if figure == 2:
        return x[:, 0] * x[:, 1] * x[:, 3] * gate
    raise ConfigError(f"Expect figure 1 or 2, got {figure!r}.")


def make_data(config: RFMConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` drawn from ``default_rng(config.seed)``.

    Shapes ``(n_train, dim)``, ``(n_train,)``, ``(n_test, dim)``, ``(n_test,)``;
    coordinates i.i.d. ``N(0, std²)``. The training set is drawn first, so it
    does not depend on ``n_test``.
    """
    rng = np.random.default_rng(config.seed)
    x_train = rng.normal(0.0, config.std, size=(config.n_train, config.dim))
    x_test = rng.normal(0.0, config.std, size=(config.n_test, config.dim))
    return (
        x_train,
        target_function(x_train, config.figure),
        x_test,
        target_function(x_test, config.figure),
    )


def _m_distances(x: np.ndarray, z: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``‖x_i − z_j‖_M`` as ``(n, m)``; (near-)coincident pairs get exactly 0.

    A squared distance at or below ``1e−12·(max xᵀMx + max zᵀMz)`` — the
    round-off level of the Gram identity — is set to 0, so a point against
    itself is at distance 0 exactly.
    """
    xm = x @ M
    zm = z @ M
    qx = np.einsum("ij,ij->i", xm, x)
    qz = np.einsum("ij,ij->i", zm, z)
    d2 = xm @ z.T
    d2 *= -2.0
    d2 += qx[:, None]
    d2 += qz[None, :]
    # Round-off of the Gram identity is ~eps·(qx + qz); below that, call it 0.
    tol = _COINCIDENT_RTOL * (float(qx.max(initial=0.0)) + float(qz.max(initial=0.0)))
    d2[d2 <= tol] = 0.0
    return np.sqrt(d2, out=d2)


def _check_points(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ShapeError(f"Expect {name} of shape (n, dim), got {x.shape}.")
    return x


def _check_matrix(M: np.ndarray, dim: int, name: str = "M") -> np.ndarray:
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (dim, dim):
        raise ShapeError(f"Expect {name} of shape ({dim}, {dim}), got {M.shape}.")
    if not np.all(np.isfinite(M)):
        raise NonFiniteError(f"Expect a finite {name}, got NaN or Inf entries.")
    return M


def laplace_kernel(x: np.ndarray, z: np.ndarray, M: np.ndarray, bandwidth: float) -> np.ndarray:
    """``K[i, j] = exp(−‖x_i − z_j‖_M / bandwidth)``: ``(n, d), (m, d), (d, d) -> (n, m)``.

    ``M`` is taken as given (symmetric PSD is the caller's job); squared
    distances that round below 0 are treated as 0.
    """
    x = _check_points(x, "x")
    z = _check_points(z, "z")
    if x.shape[1] != z.shape[1]:
        raise ShapeError(f"Expect x and z of one dim, got {x.shape} and {z.shape}.")
    M = _check_matrix(M, x.shape[1])
    K = _m_distances(x, z, M)
    K *= -1.0 / bandwidth
    return np.exp(K, out=K)


def fit_alpha(
    x: np.ndarray, y: np.ndarray, M: np.ndarray, bandwidth: float, ridge: float
) -> np.ndarray:
    """Kernel ridge weights ``α = (K_M(x, x) + ridge·I)⁻¹ y``: ``(n, d), (n,) -> (n,)``.

    Solved by a float64 Cholesky (torch). ``K_M`` is PSD for any PSD ``M``
    (the Laplace kernel is positive definite on ``R^k`` and ``‖·‖_M`` is a
    Euclidean norm after the map ``x ↦ M^{1/2} x``), so ``ridge > 0`` makes
    the system PD; should round-off break that, an LDLᵀ solve takes over.
    """
    x = _check_points(x, "x")
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (x.shape[0],):
        raise ShapeError(f"Expect y of shape ({x.shape[0]},), got {y.shape}.")
    import torch  # lazy: keeps `import fbloop.targets.rfm` light

    K = laplace_kernel(x, x, M, bandwidth)
    K[np.diag_indices_from(K)] += ridge
    # torch's (MKL) Cholesky: same float64 LAPACK potrf as scipy's, but its
    # OpenMP threads degrade gracefully on a busy machine where OpenBLAS's
    # spinning threads were seen to run 5-8x slower.
    Kt = torch.from_numpy(K)
    chol, info = torch.linalg.cholesky_ex(Kt)
    if int(info) == 0:
        rhs = torch.from_numpy(np.array(y, dtype=np.float64))[:, None]  # own writable copy
        return torch.cholesky_solve(rhs, chol)[:, 0].numpy()
    # Round-off made K + ridge·I indefinite (tiny ridge): symmetric LDLᵀ solve.
    return scipy.linalg.solve(K, y, assume_a="sym", check_finite=False)


def predictor_grads(
    points: np.ndarray,
    centers: np.ndarray,
    alpha: np.ndarray,
    M: np.ndarray,
    bandwidth: float,
) -> np.ndarray:
    """``∇f`` at ``points`` for ``f(x) = Σ_j α_j K_M(x, c_j)``: ``(m, d) -> (m, d)``.

    ``∇_x K_M(x, c) = −K/L · M(x − c)/‖x − c‖_M``, taken as 0 where
    ``x = c`` (in the M-norm): the symmetric derivative, which is what a
    central finite difference of ``f`` gives at a training point. With
    ``w_ij = α_j K_ij / d_ij`` the gradient is
    ``−(1/L) M [x_i Σ_j w_ij − Σ_j w_ij c_j]``, formed in row blocks.
    """
    points = _check_points(points, "points")
    centers = _check_points(centers, "centers")
    M = _check_matrix(M, points.shape[1])
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.shape != (centers.shape[0],):
        raise ShapeError(f"Expect alpha of shape ({centers.shape[0]},), got {alpha.shape}.")
    out = np.empty_like(points)
    for start in range(0, points.shape[0], _BLOCK):
        xb = points[start : start + _BLOCK]
        d = _m_distances(xb, centers, M)
        zero = d == 0.0
        d[zero] = 1.0  # placeholder; those weights are zeroed below
        w = np.multiply(d, -1.0 / bandwidth)
        np.exp(w, out=w)
        w *= alpha[None, :]
        w /= d
        w[zero] = 0.0
        diff = xb * w.sum(axis=1, keepdims=True) - w @ centers
        out[start : start + _BLOCK] = diff @ M * (-1.0 / bandwidth)  # M symmetric
    return out


def agop(x: np.ndarray, alpha: np.ndarray, M: np.ndarray, bandwidth: float) -> np.ndarray:
    """AGOP ``(1/n) Σ_i ∇f(x_i) ∇f(x_i)ᵀ`` over the training points: ``(n, d) -> (d, d)``.

    ``f(x) = Σ_j α_j K_M(x, x_j)`` with centres the same ``x``; see
    :func:`predictor_grads` for the gradient convention. The result is
    symmetrised exactly.
    """
    x = _check_points(x, "x")
    g = predictor_grads(x, x, alpha, M, bandwidth)
    G = g.T @ g / x.shape[0]
    return (G + G.T) / 2.0


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


def _cache_key(config: RFMConfig, kind: str) -> str:
    """The disk-cache entry of ``config``'s fit: changes with the config and with this module's source."""
    return cache.key(kind, cache.source_version(__file__), asdict(config))


@functools.lru_cache(maxsize=8)
def fit_rfm(config: RFMConfig) -> RFMResult:
    """Run ``config.iters`` RFM rounds from ``M_0 = I``; cached per config, in memory and on disk.

    Each round: ``α = fit_alpha(x, y, M)``, then ``M = agop(x, α, M)``. No
    rescaling of ``M`` between rounds. The cached result's arrays are
    read-only; copy them before editing. The disk cache (:mod:`fbloop.cache`)
    keeps each round's ``M`` under a key that hashes the config and this
    module's source, so any edit here refits; the data are drawn again from the
    seed (cheap) rather than stored.
    """
    x_train, y_train, x_test, y_test = make_data(config)
    name = _cache_key(config, "rfm")
    stored = cache.load_arrays(name)
    if stored is not None and stored.get("history", np.empty(0)).shape == (config.iters, config.dim, config.dim):
        history = [_frozen(m) for m in stored["history"]]
    else:
        M = np.eye(config.dim)
        history = []
        for _ in range(config.iters):
            alpha = fit_alpha(x_train, y_train, M, config.bandwidth, config.ridge)
            M = agop(x_train, alpha, M, config.bandwidth)
            if not np.all(np.isfinite(M)):
                raise NonFiniteError(f"RFM produced a non-finite M at round {len(history) + 1}.")
            history.append(_frozen(M))
        cache.save_arrays(name, {"history": np.stack(history)})
    return RFMResult(
        config=config,
        M=history[-1],
        x_train=_frozen(x_train),
        y_train=_frozen(y_train),
        x_test=_frozen(x_test),
        y_test=_frozen(y_test),
        history=tuple(history),
    )


def _kernel_test_mse(result: RFMResult, M: np.ndarray) -> float:
    """Test MSE of kernel ridge in the ``M``-norm, with ``M`` used as given."""
    cfg = result.config
    alpha = fit_alpha(result.x_train, result.y_train, M, cfg.bandwidth, cfg.ridge)
    pred = laplace_kernel(result.x_test, result.x_train, M, cfg.bandwidth) @ alpha
    return float(np.mean((pred - result.y_test) ** 2))


def test_mse(result: RFMResult, phi: np.ndarray) -> float:
    """Test MSE of the RFM predictor whose kernel uses feature matrix ``phi``.

    ``phi`` is ``(dim, dim)``, symmetric PSD (up to round-off), e.g. ``Φ*`` or a
    learned ``Φ̂``. It is first rescaled to ``trace(result.M)``:
    ``phi ← phi · tr(Φ*) / tr(phi)``. Feedback (triplet / comparison answers)
    determines ``Φ̂`` only up to a positive scale, and the Laplace kernel's
    effective bandwidth depends on that scale, so the readout borrows the
    one scalar the feedback cannot supply — the trace of the true ``M`` — from
    the ground truth. This makes the readout invariant to ``phi → c·phi``
    (``c > 0``). Then kernel ridge ``(K_phi + ridge·I) α = y_train`` is fit
    with the run's bandwidth and ridge, and the mean squared error on the test
    set is returned.

    Raises :class:`ShapeError` for a wrong shape, :class:`NonFiniteError` for
    NaN/Inf, and :class:`NonPSDError` if ``phi`` is not symmetric, has an
    eigenvalue below ``−1e−8·max|λ|``, or has non-positive trace. Eigenvalues
    within that tolerance of 0 are clipped to 0.
    """
    dim = result.config.dim
    phi = _check_matrix(phi, dim, "phi")
    scale = float(np.max(np.abs(phi)))
    if not np.allclose(phi, phi.T, rtol=0.0, atol=1e-10 * scale):
        raise NonPSDError("Expect a symmetric phi, got phi != phiᵀ.")
    phi = (phi + phi.T) / 2.0
    lam, vec = np.linalg.eigh(phi)
    top = float(np.max(np.abs(lam))) if lam.size else 0.0
    if top == 0.0 or lam.sum() <= 0.0:
        raise NonPSDError("Expect phi with positive trace; cannot rescale a zero matrix.")
    if lam.min() < -1e-8 * top:
        raise NonPSDError(
            f"Expect a PSD phi, got smallest eigenvalue {lam.min():.3g} (largest {top:.3g})."
        )
    lam = np.clip(lam, 0.0, None)
    phi = (vec * lam) @ vec.T
    phi *= float(np.trace(result.M)) / float(np.trace(phi))
    return _kernel_test_mse(result, phi)


def baseline_mses(result: RFMResult) -> dict[str, float]:
    """Reference test MSEs for reading :func:`test_mse` values.

    * ``"truth"``: ``test_mse(result, result.M)`` — the RFM's own ``Φ*``.
    * ``"identity"``: plain Laplace kernel, ``M = I`` exactly (not rescaled),
      i.e. the RFM before any feature learning.
    * ``"identity_scaled"``: ``test_mse(result, I)`` — ``I`` rescaled to
      ``tr(Φ*)`` like any ``Φ̂``; the readout of a learner that learned nothing.
    * ``"mean"``: predict the training mean of ``y`` everywhere.

    Cached on disk beside the fit (each costs a kernel solve on the training set).
    """
    name = _cache_key(result.config, "rfm-baselines")
    stored = cache.load_json(name)
    if stored is not None and set(stored) == {"truth", "identity", "identity_scaled", "mean"}:
        return {k: float(v) for k, v in stored.items()}
    dim = result.config.dim
    out = {
        "truth": test_mse(result, result.M),
        "identity": _kernel_test_mse(result, np.eye(dim)),
        "identity_scaled": test_mse(result, np.eye(dim)),
        "mean": float(np.mean((result.y_test - np.mean(result.y_train)) ** 2)),
    }
    cache.save_json(name, out)
    return out
