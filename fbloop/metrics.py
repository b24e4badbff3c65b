"""Scale-free readouts of a learned feature matrix.

PCC is the Pearson correlation of all ``p²`` entries of ``Φ̂`` and ``Φ*``.
For large ``p`` the matrices are never formed: with ``Φ̂ = U Uᵀ`` and
``Φ* = V Vᵀ`` every sum PCC needs is a small product of the factors.
"""

from __future__ import annotations

import numpy as np

from .errors import ShapeError


def pcc(phi_hat: np.ndarray, phi_star: np.ndarray) -> float:
    """Pearson correlation of the flattened matrices (all entries)."""
    a = np.asarray(phi_hat, dtype=np.float64).ravel()
    b = np.asarray(phi_star, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ShapeError(f"Expect matrices of one shape, got {np.shape(phi_hat)} and {np.shape(phi_star)}.")
    a = a - a.mean()
    b = b - b.mean()
    den = np.sqrt((a @ a) * (b @ b))
    return float(a @ b / den) if den > 0 else 0.0


BLOCK = 65_536  # rows per block when factors are large: temporaries stay O(BLOCK·(r+k)), in float64


def pcc_factored(u: np.ndarray, v: np.ndarray, ones: np.ndarray | None = None) -> float:
    """PCC of ``U Uᵀ`` and ``V Vᵀ`` from the factors, in ``O(p·(r+k)·max(r,k))``.

    ``u`` is ``(p, r)``, ``v`` is ``(p, k)``. Uses
    ``Σ(UUᵀ)_ij = ‖Uᵀ1‖²``, ``‖UUᵀ‖_F² = ‖UᵀU‖_F²``, ``⟨UUᵀ, VVᵀ⟩ = ‖UᵀV‖_F²``.
    ``ones`` replaces the all-ones vector: for factors in an orthonormal basis ``B``, pass ``Bᵀ1``
    and the PCC is that of ``B UUᵀ Bᵀ`` and ``B VVᵀ Bᵀ`` (every other sum is invariant). Above
    :data:`BLOCK` rows (or with ``ones``) the sums run over row blocks, each taken to float64, so a
    float32 factor is never copied whole.
    """
    u, v = np.asarray(u), np.asarray(v)
    if u.ndim != 2 or v.ndim != 2 or u.shape[0] != v.shape[0]:
        raise ShapeError(f"Expect factors (p, r) and (p, k), got {u.shape} and {v.shape}.")
    n = u.shape[0] ** 2
    if ones is None and u.shape[0] <= BLOCK:
        u = np.asarray(u, dtype=np.float64)
        v = np.asarray(v, dtype=np.float64)
        su = float(np.sum(u.sum(axis=0) ** 2))
        sv = float(np.sum(v.sum(axis=0) ** 2))
        uu = float(np.sum((u.T @ u) ** 2))
        vv = float(np.sum((v.T @ v) ** 2))
        uv = float(np.sum((u.T @ v) ** 2))
    else:
        su, sv, uu, vv, uv = _blocked_sums(u, v, ones)
    cov = uv - su * sv / n
    var_u = uu - su * su / n
    var_v = vv - sv * sv / n
    den = np.sqrt(max(var_u, 0.0) * max(var_v, 0.0))
    return cov / den if den > 0 else 0.0


def _blocked_sums(u: np.ndarray, v: np.ndarray, ones: np.ndarray | None) -> tuple[float, ...]:
    """``pcc_factored``'s five sums over row blocks (``ones`` weighting the two totals)."""
    p, r, k = u.shape[0], u.shape[1], v.shape[1]
    if ones is not None and np.shape(ones) != (p,):
        raise ShapeError(f"Expect ones of shape ({p},), got {np.shape(ones)}.")
    tu, tv = np.zeros(r), np.zeros(k)
    gu, gv, guv = np.zeros((r, r)), np.zeros((k, k)), np.zeros((r, k))
    for lo in range(0, p, BLOCK):
        ub = np.asarray(u[lo:lo + BLOCK], dtype=np.float64)
        vb = np.asarray(v[lo:lo + BLOCK], dtype=np.float64)
        w = None if ones is None else np.asarray(ones[lo:lo + BLOCK], dtype=np.float64)
        tu += ub.sum(axis=0) if w is None else w @ ub
        tv += vb.sum(axis=0) if w is None else w @ vb
        gu += ub.T @ ub
        gv += vb.T @ vb
        guv += ub.T @ vb
    return (float(tu @ tu), float(tv @ tv), float(np.sum(gu ** 2)), float(np.sum(gv ** 2)),
            float(np.sum(guv ** 2)))


def relative_error(phi_hat: np.ndarray, phi_star: np.ndarray) -> float:
    """``‖λΦ̂ − Φ*‖_F / ‖Φ*‖_F`` at the least-squares scale ``λ`` (scale-free)."""
    a = np.asarray(phi_hat, dtype=np.float64)
    b = np.asarray(phi_star, dtype=np.float64)
    aa = float(np.sum(a * a))
    lam = float(np.sum(a * b)) / aa if aa > 0 else 0.0
    return float(np.linalg.norm(lam * a - b) / np.linalg.norm(b))


def triplet_agreement(predicted: np.ndarray, answers: np.ndarray) -> float:
    """Share of ternary answers (+1/−1/0) that a model predicts exactly."""
    predicted = np.asarray(predicted)
    answers = np.asarray(answers)
    if predicted.shape != answers.shape:
        raise ShapeError(f"Expect equal shapes, got {predicted.shape} and {answers.shape}.")
    return float(np.mean(predicted == answers)) if answers.size else float("nan")
