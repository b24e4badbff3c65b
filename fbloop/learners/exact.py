"""Exact recovery of a small feature matrix from equality pairs with scale.

Each answer is a sparse activation ``u_i`` and a scale ``c_i ≥ 0`` meaning
``u_iᵀ Φ u_i = c_i · yᵀ Φ y`` for one fixed anchor ``y``. With the scale fixed
by ``yᵀ Φ y = 1`` every answer is a linear equation ``⟨Φ, u_i u_iᵀ⟩ = c_i`` in
the ``P = p(p+1)/2`` upper-triangle entries of the symmetric PSD ``Φ``
(Kumar, ICML 2025, "The Complexity of Learning Sparse Superposed Features with
Feedback").

The learner (:func:`fit_exact`) works in three steps:

1. **Facial reduction.** For PSD ``Φ``, ``uᵀ Φ u = 0`` forces ``Φ u = 0``, so
   every answer with ``c_i ≈ 0`` puts ``u_i`` in ``Φ``'s null space ``N``.
   With ``Q`` an orthonormal basis of ``N^⊥`` (``p × m``) we write
   ``Φ = Q S Qᵀ`` and solve for the ``m × m`` symmetric ``S``. This is what
   makes the paper's eigendecomposition design solvable exactly; without it
   the plain linear system of that design is rank deficient.
2. **Linear route.** If the reduced system has full column rank, solve it by
   least squares, project to PSD and renormalise: ``Φ`` is determined.
3. **SDP route.** Otherwise (or when asked) minimise ``trace Φ`` over PSD
   ``Φ`` meeting the equalities, with cvxpy (Clarabel or SCS). The SDP is
   posed on the least-squares solutions ``vech(S) = x0 + N z`` of the
   reduced system (``N`` an orthonormal null-space basis), either in
   null-space form ``x0 + N z ⪰ 0`` (few free directions) or as a PSD
   variable with orthonormalised equalities (few answers): both are well
   conditioned, unlike the raw quadratic-feature equalities.

Vech coordinates: ``vech(Φ)`` lists ``Φ[np.triu_indices(p)]`` (row-major upper
triangle, diagonal included), so ``⟨Φ, u uᵀ⟩ = a · vech(Φ)`` with
``a_(i,i) = u_i²`` and ``a_(i,j) = 2 u_i u_j`` for ``i < j``.

Only for small ``p`` (a few dozen): the SDP's cost grows like ``p⁴``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import ConfigError, FbloopError, NonFiniteError, ShapeError
from ..sparse import SparseBatch
from .direct import SolvedLearner

_METHODS = ("auto", "linear", "sdp")
_SOLVERS = ("auto", "CLARABEL", "SCS")
_CLARABEL_MAX_P = 20  # "auto" solver: Clarabel up to this p, SCS above
_SCS_OPTIONS = {"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 100_000}
_PSD_TOL = 1e-6  # relative PSD / equality slack accepted from an "optimal_inaccurate" point


class SolverError(FbloopError):
    """The SDP solver failed or reported a status other than optimal.

    Raised with the solver's name and status (``infeasible``,
    ``optimal_inaccurate``, ...); the answers may be inconsistent (noisy) or
    the problem too large for the solver's accuracy.
    """


class InconsistentAnswersError(FbloopError, ValueError):
    """The answers contradict each other, e.g. the anchor lies in the null space
    that the ``c = 0`` answers force, so ``yᵀ Φ y = 1`` cannot hold."""


@dataclass(frozen=True)
class ExactConfig:
    """Settings of :func:`fit_exact`.

    ``rank_tol`` is relative: singular values below ``rank_tol ×`` the largest
    count as zero, and an answer counts as ``c = 0`` when
    ``c ≤ rank_tol · max(1, max c)`` (the anchor itself has ``c = 1``).
    """

    method: Literal["auto", "linear", "sdp"] = "auto"
    solver: Literal["auto", "CLARABEL", "SCS"] = "auto"
    rank_tol: float = 1e-9
    max_p: int = 80

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ConfigError(f"Expect method in {_METHODS}, got {self.method!r}.")
        if self.solver not in _SOLVERS:
            raise ConfigError(f"Expect solver in {_SOLVERS}, got {self.solver!r}.")
        tol = self.rank_tol
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0.0 < tol < 1.0):
            raise ConfigError(f"Expect rank_tol in (0, 1), got {tol!r}.")
        if isinstance(self.max_p, bool) or not isinstance(self.max_p, int) or self.max_p < 1:
            raise ConfigError(f"Expect max_p a positive int, got {self.max_p!r}.")


@dataclass(frozen=True)
class ExactResult:
    """What :func:`fit_exact` learned.

    ``phi`` is ``(p, p)`` symmetric PSD with ``yᵀ Φ y = 1``. ``method`` is the
    route that produced it (``"linear"`` or ``"sdp"``). ``determined`` is True
    when the facially reduced linear system has full column rank, which
    certifies that the answers pin ``Φ`` down uniquely (up to scale); False
    means "not certified" (see :func:`solution_spread` for a witness).
    ``residual`` is ``max_i |⟨Φ, u_i u_iᵀ⟩ − c_i|`` (absolute, so compare it
    with ``max c``; the final PSD projection and renormalisation add about
    solver accuracy × ``max c``). ``null_dim`` is
    ``p − m``: the dimension of the null space forced by the ``c = 0`` answers.
    """

    phi: np.ndarray
    method: str
    determined: bool
    residual: float
    null_dim: int


# ----------------------------------------------------------------- vech helpers


def vech(phi: np.ndarray) -> np.ndarray:
    """Row-major upper triangle of a ``(p, p)`` matrix: shape ``(p(p+1)/2,)``."""
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim != 2 or phi.shape[0] != phi.shape[1]:
        raise ShapeError(f"Expect a square matrix, got shape {phi.shape}.")
    return phi[np.triu_indices(phi.shape[0])].copy()


def unvech(x: np.ndarray, p: int) -> np.ndarray:
    """Symmetric ``(p, p)`` matrix from its vech ``x`` of shape ``(p(p+1)/2,)``."""
    x = np.asarray(x, dtype=np.float64)
    size = p * (p + 1) // 2
    if x.shape != (size,):
        raise ShapeError(f"Expect vech of shape ({size},) for p={p}, got {x.shape}.")
    out = np.zeros((p, p))
    iu, ju = np.triu_indices(p)
    out[iu, ju] = x
    out[ju, iu] = x
    return out


def _quad_coeffs(x: np.ndarray) -> np.ndarray:
    """Rows ``a`` with ``a · vech(Φ) = xᵀ Φ x`` for each row of ``x`` ``(n, m)``.

    Returns ``(n, m(m+1)/2)``: ``x_i²`` on the diagonal, ``2 x_i x_j`` off it.
    """
    m = x.shape[1]
    iu, ju = np.triu_indices(m)
    weight = np.where(iu == ju, 1.0, 2.0)
    return x[:, iu] * x[:, ju] * weight


def constraint_matrix(
    u: SparseBatch, c: np.ndarray, anchor: SparseBatch
) -> tuple[np.ndarray, np.ndarray]:
    """Linear system ``A vech(Φ) = b`` of the answers at scale ``yᵀ Φ y = 1``.

    ``u`` holds ``n`` activations, ``c`` is ``(n,)``, ``anchor`` one row.
    Returns ``A`` of shape ``(n + 1, P)`` and ``b`` of shape ``(n + 1,)``: rows
    ``0..n-1`` are the answers (``b = c``), the last row the anchor (``b = 1``).
    """
    c = _check_inputs(u, c, anchor)
    rows = np.concatenate([u.to_dense(), anchor.to_dense()])  # (n + 1, p)
    return _quad_coeffs(rows), np.append(c, 1.0)


# ----------------------------------------------------------------- validation


def _check_inputs(
    u: SparseBatch, c: np.ndarray, anchor: SparseBatch, rank_tol: float = ExactConfig.rank_tol
) -> np.ndarray:
    """Validate the answers; return ``c`` as float64 ``(n,)``.

    Rounding-level negatives (``c ≥ −rank_tol · max(1, max c)``, e.g. ``−1e-17``
    from a computed null-eigenvector answer) become 0; larger ones raise.
    """
    c = np.asarray(c, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] != len(u):
        raise ShapeError(f"Expect c of shape ({len(u)},) to match u, got {c.shape}.")
    bad = np.flatnonzero(~np.isfinite(c))
    if bad.size:
        raise NonFiniteError(f"Expect finite scales, got c[{bad[0]}] = {c[bad[0]]}.")
    tol = rank_tol * max(1.0, float(c.max())) if c.size else 0.0
    neg = np.flatnonzero(c < -tol)
    if neg.size:
        raise ConfigError(f"Expect scales c ≥ 0, got c[{neg[0]}] = {c[neg[0]]}.")
    c = np.clip(c, 0.0, None)
    if len(anchor) != 1:
        raise ShapeError(f"Expect an anchor with exactly one row, got {len(anchor)} rows.")
    if anchor.p != u.p:
        raise ShapeError(f"Expect anchor and answers of one p, got {anchor.p} and {u.p}.")
    if not np.any(anchor.values):
        raise ConfigError("Expect a nonzero anchor, got all zeros.")
    return c


# ----------------------------------------------------------------- facial reduction


@dataclass(frozen=True)
class _Reduced:
    """The facially reduced problem: ``Φ = Q S Qᵀ`` and ``A vech(S) = b``."""

    q: np.ndarray  # (p, m) orthonormal basis of N^⊥
    a: np.ndarray  # (k, m(m+1)/2): nonzero answers, then the anchor
    b: np.ndarray  # (k,)


def _zero_answers(c: np.ndarray, rank_tol: float) -> np.ndarray:
    """Boolean mask ``(n,)`` of answers with ``c ≈ 0`` (anchor counts as c = 1)."""
    scale = max(1.0, float(c.max())) if c.size else 1.0
    return c <= rank_tol * scale


def _complement_basis(null_rows: np.ndarray, rank_tol: float) -> np.ndarray:
    """Orthonormal basis ``(p, m)`` of the complement of ``span(null_rows)``.

    ``null_rows`` is ``(k, p)``; rows are normalised before the rank decision.
    """
    p = null_rows.shape[1]
    norms = np.linalg.norm(null_rows, axis=1)
    rows = null_rows[norms > 0] / norms[norms > 0, None]
    if rows.shape[0] == 0:
        return np.eye(p)
    _, sing, vt = np.linalg.svd(rows, full_matrices=True)
    rank = int(np.sum(sing > rank_tol * sing[0]))
    return vt[rank:].T


def _reduce(
    dense_u: np.ndarray, c: np.ndarray, dense_y: np.ndarray, rank_tol: float
) -> _Reduced:
    """Facial reduction of the answers ``dense_u`` ``(n, p)`` against ``dense_y`` ``(p,)``."""
    zero = _zero_answers(c, rank_tol)
    q = _complement_basis(dense_u[zero], rank_tol)
    y_red = dense_y @ q
    if q.shape[1] == 0 or np.linalg.norm(y_red) <= math.sqrt(rank_tol) * np.linalg.norm(dense_y):
        raise InconsistentAnswersError(
            f"The anchor lies in the null space forced by the {int(zero.sum())} answers with c = 0, "
            "so yᵀΦy = 1 cannot hold."
        )
    rows = np.concatenate([dense_u[~zero] @ q, y_red[None, :]])  # (k, m)
    return _Reduced(q, _quad_coeffs(rows), np.append(c[~zero], 1.0))


# ----------------------------------------------------------------- linear algebra


@dataclass(frozen=True)
class _Affine:
    """All least-squares solutions ``vech(S) = x0 + null @ z`` of the reduced system.

    ``rows`` ``(rank, M)`` and ``null`` ``(M, d)`` are orthonormal and together
    span ``R^M``; ``rows @ vech(S) = rows @ x0`` is the (well-conditioned)
    least-squares-consistent form of ``A vech(S) = b``.
    """

    x0: np.ndarray  # (M,) minimum-norm least-squares solution
    rows: np.ndarray  # (rank, M) orthonormal basis of the row space
    null: np.ndarray  # (M, d) orthonormal basis of the null space


def _affine_solutions(red: _Reduced, rank_tol: float) -> _Affine:
    """SVD of the reduced system; ranks below ``rank_tol ×`` the top singular value."""
    left, sing, right_t = np.linalg.svd(red.a, full_matrices=True)
    rank = int(np.sum(sing > rank_tol * sing[0])) if sing.size else 0
    coef = (left[:, :rank].T @ red.b) / sing[:rank]
    return _Affine(right_t[:rank].T @ coef, right_t[:rank], right_t[rank:].T)


def _vech_positions(m: int) -> np.ndarray:
    """``(m, m)`` int array: the vech position of entry ``(min(i,j), max(i,j))``."""
    k = np.empty((m, m), dtype=np.int64)
    iu, ju = np.triu_indices(m)
    k[iu, ju] = np.arange(iu.size)
    k[ju, iu] = np.arange(iu.size)
    return k


def _psd_part(s: np.ndarray) -> np.ndarray:
    """Nearest PSD matrix (Frobenius) to the symmetric part of ``s`` ``(m, m)``."""
    sym = 0.5 * (s + s.T)
    w, v = np.linalg.eigh(sym)
    return (v * np.clip(w, 0.0, None)) @ v.T


# ----------------------------------------------------------------- SDP


def _pick_solver(solver: str, p: int) -> str:
    """Resolve ``"auto"``: Clarabel for ``p ≤ 20``, SCS above."""
    if solver != "auto":
        return solver
    return "CLARABEL" if p <= _CLARABEL_MAX_P else "SCS"


def _feasible_set(aff: _Affine, m: int) -> tuple[object, list[object]]:
    """``S`` ``(m, m)`` as a cvxpy expression and the constraints of
    ``{S ⪰ 0, rows @ vech(S) = rows @ x0}``, in the cheaper of two forms.

    With ``d`` free directions and ``rank`` equalities: if ``d ≤ rank``,
    null-space form ``vech(S) = x0 + null @ z ⪰ 0`` (``d`` unknowns, the
    equalities exact by construction); otherwise primal form, a PSD variable
    with the ``rank`` orthonormal equalities. Both are well conditioned.
    """
    import cvxpy as cp

    d, rank = aff.null.shape[1], aff.rows.shape[0]
    if d <= rank:
        pos = _vech_positions(m).ravel()
        z = cp.Variable(d)
        s = cp.reshape(aff.x0[pos] + aff.null[pos] @ z, (m, m), order="C")
        return s, [s >> 0]
    s = cp.Variable((m, m), PSD=True)
    iu, ju = np.triu_indices(m)
    x = cp.vec(s, order="C")[iu * m + ju]
    return s, [aff.rows @ x == aff.rows @ aff.x0]


def _check_inaccurate(s: np.ndarray, aff: _Affine, solver: str, status: str) -> None:
    """Accept an ``optimal_inaccurate`` point ``s`` ``(m, m)`` only if feasible
    within ``_PSD_TOL``: PSD relative to its largest eigenvalue, equalities
    relative to ``max(1, ‖x0‖_∞)``."""
    eig = np.linalg.eigvalsh(0.5 * (s + s.T))
    gap = aff.rows @ (vech(s) - aff.x0)
    eq_err = float(np.max(np.abs(gap))) if gap.size else 0.0
    eq_scale = max(1.0, float(np.max(np.abs(aff.x0))))
    if eig[0] >= -_PSD_TOL * max(float(eig[-1]), 1e-300) and eq_err <= _PSD_TOL * eq_scale:
        return
    raise SolverError(
        f"Solver {solver} reported status {status!r}; its point has smallest eigenvalue "
        f"{eig[0]:.3g} (largest {eig[-1]:.3g}) and equality error {eq_err:.3g}; expect 'optimal'."
    )


def _run(problem: object, solver: str) -> str:
    """Solve a cvxpy problem quietly; return its status (solver crashes raise)."""
    import cvxpy as cp

    options = _SCS_OPTIONS if solver == "SCS" else {}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver, **options)  # type: ignore[attr-defined]
    except cp.error.SolverError as exc:
        raise SolverError(f"Solver {solver} failed: {exc}") from exc
    return str(problem.status)  # type: ignore[attr-defined]


def _solution(s: object, status: str, aff: _Affine, solver: str) -> np.ndarray:
    """``S`` ``(m, m)`` of a solved problem, or raise :class:`SolverError`.

    Interior-point solvers often stop at ``optimal_inaccurate`` on degenerate
    (low-rank) optima; such a point is accepted when it passes
    :func:`_check_inaccurate`. Every other non-optimal status raises.
    """
    import cvxpy as cp

    value = s.value  # type: ignore[attr-defined]
    if status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or value is None:
        raise SolverError(f"Solver {solver} reported status {status!r}, expect 'optimal'.")
    value = np.asarray(value, dtype=np.float64)
    if status == cp.OPTIMAL_INACCURATE:
        _check_inaccurate(value, aff, solver, status)
    return value


def _solve_sdp(aff: _Affine, m: int, solver: str) -> np.ndarray:
    """Minimum-trace PSD ``S`` ``(m, m)`` among the least-squares solutions."""
    if aff.null.shape[1] == 0:  # a single solution: nothing to optimise
        return unvech(aff.x0, m)
    import cvxpy as cp

    s, constraints = _feasible_set(aff, m)
    problem = cp.Problem(cp.Minimize(cp.trace(s)), constraints)
    return _solution(s, _run(problem, solver), aff, solver)


# ----------------------------------------------------------------- learner


def _finish(s: np.ndarray, q: np.ndarray, dense_y: np.ndarray) -> np.ndarray:
    """``Φ = Q S₊ Qᵀ`` ``(p, p)``, renormalised so ``yᵀ Φ y = 1``."""
    phi = q @ _psd_part(s) @ q.T
    phi = 0.5 * (phi + phi.T)
    scale = float(dense_y @ phi @ dense_y)
    if not scale > 0:
        raise InconsistentAnswersError(
            f"The PSD fit gives yᵀΦy = {scale:.3g}; the answers admit no PSD Φ with yᵀΦy > 0."
        )
    return phi / scale


def _residual(phi: np.ndarray, dense_u: np.ndarray, c: np.ndarray) -> float:
    """``max_i |u_iᵀ Φ u_i − c_i|`` (0 for no answers)."""
    if c.size == 0:
        return 0.0
    fitted = np.einsum("ni,ij,nj->n", dense_u, phi, dense_u)
    return float(np.max(np.abs(fitted - c)))


def _prepare(
    u: SparseBatch, c: np.ndarray, anchor: SparseBatch, config: ExactConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Reduced, _Affine]:
    """Validate and reduce: ``(c, dense_u (n, p), dense_y (p,), reduced, affine)``."""
    c = _check_inputs(u, c, anchor, config.rank_tol)
    if u.p > config.max_p:
        raise ConfigError(f"Expect p ≤ max_p = {config.max_p}, got p = {u.p}.")
    dense_u = u.to_dense()
    dense_y = anchor.to_dense()[0]
    red = _reduce(dense_u, c, dense_y, config.rank_tol)
    return c, dense_u, dense_y, red, _affine_solutions(red, config.rank_tol)


def fit_exact(
    u: SparseBatch,
    c: np.ndarray,
    anchor: SparseBatch,
    config: ExactConfig = ExactConfig(),
) -> ExactResult:
    """Recover ``Φ`` ``(p, p)`` from ``n`` answers ``u_iᵀ Φ u_i = c_i · yᵀ Φ y``.

    ``u`` is a batch of ``n`` activations, ``c`` has shape ``(n,)``, ``anchor``
    is a one-row batch ``y``. See the module docstring for the method.

    Both routes work on the least-squares solutions of the reduced system, so
    linearly inconsistent (noisy) answers are fitted in the least-squares sense
    and ``residual`` reports the misfit. ``method="linear"`` on a
    rank-deficient system projects the minimum-norm solution to PSD
    (``determined=False``). ``method="sdp"`` on a determined system has a
    single candidate and returns the linear answer without calling a solver.
    """
    c, dense_u, dense_y, red, aff = _prepare(u, c, anchor, config)
    m = red.q.shape[1]
    determined = aff.null.shape[1] == 0
    use_sdp = config.method == "sdp" or (config.method == "auto" and not determined)
    if use_sdp:
        s = _solve_sdp(aff, m, _pick_solver(config.solver, u.p))
    else:
        s = unvech(aff.x0, m)
    phi = _finish(s, red.q, dense_y)
    return ExactResult(
        phi=phi,
        method="sdp" if use_sdp else "linear",
        determined=determined,
        residual=_residual(phi, dense_u, c),
        null_dim=u.p - m,
    )


# ----------------------------------------------------------------- certificate


def _random_direction(p: int, rng: np.random.Generator) -> np.ndarray:
    """Random symmetric ``W = (G + Gᵀ) / 2`` ``(p, p)`` with ``G`` standard Gaussian.

    A nonzero direction ``D`` within the feasible set has ``⟨D, W⟩ ≠ 0`` with
    probability one. (A PSD ``W`` would keep the spread's denominator away
    from 0 but, being dominated by ``trace Φ``, shrinks the spread about tenfold
    at ``p = 10``.)
    """
    g = rng.standard_normal((p, p))
    return 0.5 * (g + g.T)


def solution_spread(
    u: SparseBatch,
    c: np.ndarray,
    anchor: SparseBatch,
    *,
    rng: np.random.Generator,
    trials: int = 2,
    config: ExactConfig = ExactConfig(),
) -> float:
    """Certificate that the answers leave ``Φ`` undetermined.

    Over ``{Φ PSD, ⟨Φ, u_i u_iᵀ⟩ = c_i, yᵀ Φ y = 1}`` (facially reduced, with
    least-squares equalities as in :func:`fit_exact`) maximise and minimise
    ``⟨Φ, W⟩`` for ``trials`` random symmetric Gaussian ``W``; return the largest
    ``(max − min) / (|max| + |min| + 1e-12)``. Near 0 (solver accuracy) means
    determined, exactly 0 when the linear system alone pins ``Φ`` down;
    clearly positive means two PSD matrices fit the same answers; 1.0 when
    the feasible set is unbounded (too few answers to bound ``Φ``). Uses
    ``config``'s ``rank_tol``, ``max_p`` and ``solver``.
    """
    if trials < 1:
        raise ConfigError(f"Expect trials ≥ 1, got {trials}.")
    _, _, _, red, aff = _prepare(u, c, anchor, config)
    if aff.null.shape[1] == 0:
        return 0.0
    import cvxpy as cp

    m = red.q.shape[1]
    s, constraints = _feasible_set(aff, m)
    solver = _pick_solver(config.solver, u.p)
    weight = cp.Parameter((m, m), symmetric=True)
    objective = cp.sum(cp.multiply(weight, s))
    spread = 0.0
    for _ in range(trials):
        w_red = red.q.T @ _random_direction(u.p, rng) @ red.q
        weight.value = 0.5 * (w_red + w_red.T)
        ends = []
        for sense in (cp.Maximize, cp.Minimize):
            problem = cp.Problem(sense(objective), constraints)
            status = _run(problem, solver)
            if status in (cp.UNBOUNDED, cp.UNBOUNDED_INACCURATE):
                return 1.0  # an unbounded feasible set: the limit of the ratio
            ends.append(float(np.sum(weight.value * _solution(s, status, aff, solver))))
        hi, lo = ends
        spread = max(spread, (hi - lo) / (abs(hi) + abs(lo) + 1e-12))
    return spread


class ExactLearner(SolvedLearner):
    """Adapter giving the batch exact solver the incremental learner's interface."""

    name = "exact"

    def __init__(self, p: int, anchor: SparseBatch):
        self.p, self.anchor = p, anchor
        self._u: list[SparseBatch] = []
        self._c: list[np.ndarray] = []
        self._factor: np.ndarray | None = None
        self.last_loss: float | None = None
        self.method: str | None = None

    def add_pairs(self, u: SparseBatch, c: np.ndarray) -> None:
        self._u.append(u)
        self._c.append(np.asarray(c, dtype=np.float64))
        self._factor = None

    def factor(self) -> np.ndarray:
        if self._factor is None:
            if not self._u:
                return np.zeros((self.p, 1))
            res = fit_exact(SparseBatch.concat(self._u), np.concatenate(self._c), self.anchor)
            lam, vec = np.linalg.eigh(res.phi)
            keep = lam > 1e-12 * max(lam[-1], 1e-300)
            self._factor = vec[:, keep] * np.sqrt(lam[keep]) if keep.any() else np.zeros((self.p, 1))
            self.last_loss, self.method = res.residual, res.method
        return self._factor
