"""Exact learner from equality pairs with scale (``fbloop.learners.exact``)."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest

from fbloop.errors import ConfigError, NonFiniteError, ShapeError
from fbloop.learners.exact import ExactConfig, InconsistentAnswersError, SolverError, constraint_matrix, fit_exact, solution_spread, unvech, vech
from fbloop.metrics import pcc
from fbloop.sparse import SparseBatch

# ----------------------------------------------------------------- helpers


def phi_star(p: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """Random ``Φ* = V Vᵀ`` of shape ``(p, p)`` and rank ``r``."""
    v = rng.standard_normal((p, r))
    return v @ v.T


def answers(phi: np.ndarray, u: SparseBatch, anchor: SparseBatch) -> np.ndarray:
    """Scales ``c_i = u_iᵀ Φ u_i / yᵀ Φ y``, shape ``(n,)``."""
    du, dy = u.to_dense(), anchor.to_dense()[0]
    return np.einsum("ni,ij,nj->n", du, phi, du) / (dy @ phi @ dy)


def dense(x: np.ndarray) -> SparseBatch:
    return SparseBatch.from_dense(x)


def sparse_design(p: int) -> tuple[SparseBatch, SparseBatch]:
    """``e_i`` (i < p) and ``e_i + e_j`` (i < j) with two slots, anchor ``e_0``."""
    pairs = [(i, 0, 1.0, 0.0) for i in range(p)]
    pairs += [(i, j, 1.0, 1.0) for i in range(p) for j in range(i + 1, p)]
    arr = np.array(pairs)
    u = SparseBatch(arr[:, :2].astype(np.int64), arr[:, 2:], p)
    return u, SparseBatch(np.array([[0]]), np.array([[1.0]]), p)


def gaussian_design(
    p: int, n: int, rng: np.random.Generator
) -> tuple[SparseBatch, SparseBatch]:
    """``n`` Gaussian activations and a Gaussian anchor."""
    return dense(rng.standard_normal((n, p))), dense(rng.standard_normal((1, p)))


def eigen_design(
    p: int, r: int, rng: np.random.Generator
) -> tuple[np.ndarray, SparseBatch, SparseBatch]:
    """The paper's eigendecomposition design for a random rank-``r`` ``Φ*``.

    Returns ``Φ*``, the ``r(r+1)/2 + p − r`` activations ``v_i``, ``v_i + v_j``
    (i < j < r) and null eigenvectors ``v_k`` (k ≥ r), and the anchor
    ``y = Σ_{i<r} v_i``.
    """
    basis, _ = np.linalg.qr(rng.standard_normal((p, p)))
    lam = rng.uniform(0.5, 2.0, r)
    phi = (basis[:, :r] * lam) @ basis[:, :r].T
    v = basis.T  # rows are eigenvectors
    rows = [v[i] for i in range(r)]
    rows += [v[i] + v[j] for i in range(r) for j in range(i + 1, r)]
    rows += [v[k] for k in range(r, p)]
    return phi, dense(np.array(rows)), dense(v[:r].sum(axis=0, keepdims=True))


def n_unknowns(p: int) -> int:
    return p * (p + 1) // 2


# ----------------------------------------------------------------- vech & constraints


def test_vech_roundtrip_and_constraint_rows() -> None:
    rng = np.random.default_rng(0)
    p = 5
    phi = phi_star(p, p, rng)
    assert vech(phi).shape == (n_unknowns(p),)
    np.testing.assert_array_equal(unvech(vech(phi), p), phi)
    # duplicate indices add up: slot (2, 2) with values (1, 1) is 2·e_2
    u = SparseBatch(np.array([[2, 2], [0, 3]]), np.array([[1.0, 1.0], [0.5, -2.0]]), p)
    anchor = dense(rng.standard_normal((1, p)))
    c = np.array([0.3, 1.7])
    a, b = constraint_matrix(u, c, anchor)
    assert a.shape == (3, n_unknowns(p)) and b.shape == (3,)
    rows = np.concatenate([u.to_dense(), anchor.to_dense()])
    np.testing.assert_allclose(a @ vech(phi), np.einsum("ni,ij,nj->n", rows, phi, rows))
    np.testing.assert_array_equal(b, [0.3, 1.7, 1.0])


def test_vech_rejects_bad_shapes() -> None:
    with pytest.raises(ShapeError, match=r"\(3, 4\)"):
        vech(np.zeros((3, 4)))
    with pytest.raises(ShapeError, match="p=3"):
        unvech(np.zeros(5), 3)


# ----------------------------------------------------------------- designs


@pytest.mark.parametrize("p", [6, 10, 20])
@pytest.mark.parametrize("full_rank", [False, True])
def test_sparse_design_linear(p: int, full_rank: bool) -> None:
    rng = np.random.default_rng(10 + p)
    phi = phi_star(p, p if full_rank else 2, rng)
    u, anchor = sparse_design(p)
    assert len(u) == n_unknowns(p)
    res = fit_exact(u, answers(phi, u, anchor), anchor)
    assert res.method == "linear" and res.determined and res.null_dim == 0
    assert pcc(res.phi, phi) >= 0.9999
    assert res.residual < 1e-8
    assert res.phi[0, 0] == pytest.approx(1.0)  # yᵀΦy = 1 with y = e_0


@pytest.mark.parametrize("p", [6, 10, 20])
@pytest.mark.parametrize("full_rank", [False, True])
def test_gaussian_design_determined(p: int, full_rank: bool) -> None:
    rng = np.random.default_rng(20 + p)
    phi = phi_star(p, p if full_rank else 2, rng)
    u, anchor = gaussian_design(p, n_unknowns(p) - 1, rng)
    c = answers(phi, u, anchor)
    res = fit_exact(u, c, anchor)
    assert res.method == "linear" and res.determined
    assert pcc(res.phi, phi) >= 0.9999
    y = anchor.to_dense()[0]
    assert y @ res.phi @ y == pytest.approx(1.0)
    assert np.linalg.eigvalsh(res.phi)[0] >= -1e-10
    if p <= 10:
        assert solution_spread(u, c, anchor, rng=rng) < 1e-5


@pytest.mark.parametrize("p", [6, 10, 20])
def test_gaussian_design_underdetermined(p: int) -> None:
    rng = np.random.default_rng(30 + p)
    phi = phi_star(p, p, rng)
    u, anchor = gaussian_design(p, n_unknowns(p) - 2, rng)
    c = answers(phi, u, anchor)
    res = fit_exact(u, c, anchor)
    assert res.method == "sdp" and not res.determined
    assert res.residual < 1e-7 * max(1.0, c.max())
    assert np.linalg.eigvalsh(res.phi)[0] >= -1e-10
    if p <= 10:
        assert solution_spread(u, c, anchor, rng=rng) > 1e-3


@pytest.mark.parametrize(("p", "r"), [(6, 2), (10, 2), (10, 5), (20, 2)])
def test_eigen_design_needs_facial_reduction(p: int, r: int) -> None:
    rng = np.random.default_rng(40 + p + r)
    phi, u, anchor = eigen_design(p, r, rng)
    assert len(u) == r * (r + 1) // 2 + p - r
    c = answers(phi, u, anchor)  # null eigenvectors give c ≈ 1e-17, not exactly 0
    res = fit_exact(u, c, anchor)
    assert res.method == "linear" and res.determined
    assert res.null_dim == p - r
    assert pcc(res.phi, phi) >= 0.9999
    # the plain linear system (no facial reduction) leaves Φ undetermined
    a, b = constraint_matrix(u, c, anchor)
    assert np.linalg.matrix_rank(a) < n_unknowns(p)
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    assert pcc(unvech(x, p), phi) < 0.999


def test_eigen_design_with_exact_zeros() -> None:
    rng = np.random.default_rng(7)
    phi, u, anchor = eigen_design(8, 3, rng)
    c = answers(phi, u, anchor)
    c[-5:] = 0.0
    res = fit_exact(u, c, anchor)
    assert res.null_dim == 5 and pcc(res.phi, phi) >= 0.9999


# ----------------------------------------------------------------- SDP route


def test_sdp_agrees_with_linear_when_determined() -> None:
    rng = np.random.default_rng(50)
    p = 6
    phi = phi_star(p, p, rng)
    u, anchor = gaussian_design(p, n_unknowns(p) - 1, rng)
    c = answers(phi, u, anchor)
    lin = fit_exact(u, c, anchor, ExactConfig(method="linear"))
    sdp = fit_exact(u, c, anchor, ExactConfig(method="sdp"))
    assert lin.method == "linear" and sdp.method == "sdp" and sdp.determined
    np.testing.assert_allclose(sdp.phi, lin.phi, atol=1e-8)


def min_trace_reference(u: SparseBatch, c: np.ndarray, anchor: SparseBatch) -> float:
    """Independent primal SDP: ``min trace Φ`` over PSD Φ meeting the answers."""
    p = u.p
    phi = cp.Variable((p, p), PSD=True)
    rows = u.to_dense()
    y = anchor.to_dense()[0]
    cons = [cp.sum(cp.multiply(np.outer(r, r), phi)) == ci for r, ci in zip(rows, c)]
    cons.append(cp.sum(cp.multiply(np.outer(y, y), phi)) == 1.0)
    problem = cp.Problem(cp.Minimize(cp.trace(phi)), cons)
    problem.solve(solver="SCS", eps_abs=1e-10, eps_rel=1e-10, max_iters=100_000)
    assert problem.status == cp.OPTIMAL
    return float(problem.value)


@pytest.mark.parametrize("solver", ["CLARABEL", "SCS"])
@pytest.mark.parametrize("p", [6, 8])  # null-space form at p = 6, primal form at p = 8
def test_sdp_low_rank_recovery(solver: str, p: int) -> None:
    """Min trace recovers a rank-1 Φ* from 2p < P answers (the PhaseLift regime)."""
    rng = np.random.default_rng(60 + p)
    phi = phi_star(p, 1, rng)
    u, anchor = gaussian_design(p, 2 * p, rng)
    c = answers(phi, u, anchor)
    res = fit_exact(u, c, anchor, ExactConfig(solver=solver))
    assert res.method == "sdp" and not res.determined
    assert res.residual < 1e-6 * max(1.0, c.max())  # c reaches ~700 for some anchors
    assert pcc(res.phi, phi) >= 0.9999
    assert np.trace(res.phi) == pytest.approx(min_trace_reference(u, c, anchor), rel=1e-5)


def test_linear_route_on_underdetermined_system_is_not_determined() -> None:
    rng = np.random.default_rng(55)
    p = 6
    phi = phi_star(p, p, rng)
    u, anchor = gaussian_design(p, n_unknowns(p) - 3, rng)
    res = fit_exact(u, answers(phi, u, anchor), anchor, ExactConfig(method="linear"))
    assert res.method == "linear" and not res.determined
    assert np.linalg.eigvalsh(res.phi)[0] >= -1e-10


def test_no_answers_gives_min_trace_anchor_matrix() -> None:
    p = 4
    y = np.array([[1.0, 2.0, 0.0, -1.0]])
    empty = SparseBatch(np.zeros((0, 1), dtype=np.int64), np.zeros((0, 1)), p)
    res = fit_exact(empty, np.zeros(0), dense(y))
    np.testing.assert_allclose(res.phi, y.T @ y / np.sum(y**2) ** 2, atol=1e-7)
    assert res.residual == 0.0


def test_inaccurate_point_must_be_feasible() -> None:
    from fbloop.learners.exact import _affine_solutions, _check_inaccurate, _reduce

    rng = np.random.default_rng(5)
    u, anchor = gaussian_design(3, 3, rng)
    aff = _affine_solutions(_reduce(u.to_dense(), np.ones(3), anchor.to_dense()[0], 1e-9), 1e-9)
    with pytest.raises(SolverError, match="optimal_inaccurate"):
        _check_inaccurate(-np.eye(3), aff, "CLARABEL", "optimal_inaccurate")


def test_spread_of_unbounded_feasible_set_is_one() -> None:
    # Φ00 = 1 and Φ11 = 2 leave Φ22, Φ33 free to grow without bound.
    p = 4
    u = SparseBatch(np.array([[1]]), np.array([[1.0]]), p)
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), p)
    spread = solution_spread(u, np.array([2.0]), anchor, rng=np.random.default_rng(0))
    assert spread == 1.0


def test_sdp_infeasible_raises_solver_error() -> None:
    # Φ00 = 1, Φ11 = 1, Φ01 = 1.5 admits no PSD completion whatever Φ22, Φ02, Φ12.
    p = 3
    u = SparseBatch(np.array([[1, 0], [0, 1]]), np.array([[1.0, 0.0], [1.0, 1.0]]), p)
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), p)
    with pytest.raises(SolverError, match="infeasible"):
        fit_exact(u, np.array([1.0, 5.0]), anchor)


def test_anchor_in_forced_null_space_raises() -> None:
    p = 4
    u = SparseBatch(np.array([[0], [1]]), np.array([[2.0], [1.0]]), p)
    anchor = SparseBatch(np.array([[0]]), np.array([[1.0]]), p)
    with pytest.raises(InconsistentAnswersError, match="null space"):
        fit_exact(u, np.array([0.0, 1.0]), anchor)


# ----------------------------------------------------------------- invariance


def test_scale_invariance() -> None:
    rng = np.random.default_rng(70)
    p = 10
    phi = phi_star(p, 3, rng)
    u, anchor = gaussian_design(p, n_unknowns(p) - 1, rng)
    one = fit_exact(u, answers(phi, u, anchor), anchor)
    five = fit_exact(u, answers(5.0 * phi, u, anchor), anchor)
    np.testing.assert_allclose(five.phi, one.phi, atol=1e-9)


# ----------------------------------------------------------------- bad input


def _small_problem() -> tuple[SparseBatch, np.ndarray, SparseBatch]:
    rng = np.random.default_rng(80)
    u, anchor = gaussian_design(3, 5, rng)
    return u, answers(phi_star(3, 3, rng), u, anchor), anchor


def test_nan_scale_rejected() -> None:
    u, c, anchor = _small_problem()
    c[2] = np.nan
    with pytest.raises(NonFiniteError, match=r"c\[2\]"):
        fit_exact(u, c, anchor)


def test_negative_scale_rejected() -> None:
    u, c, anchor = _small_problem()
    c[1] = -0.5
    with pytest.raises(ConfigError, match=r"c\[1\] = -0.5"):
        fit_exact(u, c, anchor)


def test_length_mismatch_rejected() -> None:
    u, c, anchor = _small_problem()
    with pytest.raises(ShapeError, match=r"\(5,\)"):
        fit_exact(u, c[:4], anchor)


def test_anchor_shape_rejected() -> None:
    u, c, anchor = _small_problem()
    two = SparseBatch.concat([anchor, anchor])
    with pytest.raises(ShapeError, match="2 rows"):
        fit_exact(u, c, two)
    with pytest.raises(ShapeError, match="4"):
        fit_exact(u, c, dense(np.ones((1, 4))))
    with pytest.raises(ConfigError, match="nonzero anchor"):
        fit_exact(u, c, dense(np.zeros((1, 3))))


def test_p_above_max_p_rejected() -> None:
    u, c, anchor = _small_problem()
    with pytest.raises(ConfigError, match="p = 3"):
        fit_exact(u, c, anchor, ExactConfig(max_p=2))
    with pytest.raises(ConfigError, match="p = 3"):
        solution_spread(u, c, anchor, rng=np.random.default_rng(0), config=ExactConfig(max_p=2))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"method": "lsq"}, "lsq"),
        ({"solver": "MOSEK"}, "MOSEK"),
        ({"rank_tol": 0.0}, "0.0"),
        ({"rank_tol": float("nan")}, "nan"),
        ({"max_p": 0}, "0"),
    ],
)
def test_config_validation(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        ExactConfig(**kwargs)  # type: ignore[arg-type]
