"""The factor's rank: the columns ``U`` starts with, and the candidates and degrees of freedom the
triplet fit's rank choice weighs (``GradientLearner._refine_triplets``)."""

from __future__ import annotations

import numpy as np


def gap_candidates(eigenvalues: np.ndarray, min_gap: float, floor: float = 1e-2, most: int = 4) -> list[int]:
    """Ranks ``k`` (ascending) at the ``most`` largest ratios ``λ_k / λ_k+1 ≥ min_gap`` of descending
    ``eigenvalues``, over the ``k`` whose ``λ_k`` is above ``floor`` × the largest."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if len(lam) < 2 or not lam[0] > 0:
        return []
    m = min(int(np.sum(lam > floor * lam[0])), len(lam) - 1)  # candidate ranks 1..m
    ratio = lam[:m] / np.maximum(lam[1:m + 1], 1e-300 * lam[0])
    top = np.argsort(-ratio, kind="stable")[:most]
    return sorted(int(k) + 1 for k in top if ratio[k] >= min_gap)


def psd_dof(p: int, k: int) -> int:
    """Dimension of the rank-``k`` PSD ``p × p`` matrices: ``p·k − k(k−1)/2``."""
    return p * k - k * (k - 1) // 2


DEFAULT_RANK = 512  # columns of U when the config leaves rank unset


def factor_rank(p: int, rank: int | None) -> int:
    """The columns of ``U`` a learner of ``LearnerConfig(rank=rank)`` starts with at this ``p``."""
    return min(rank or DEFAULT_RANK, p)
