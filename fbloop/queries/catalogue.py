"""Every design by name: how many queries each needs (:func:`design_count`, :func:`bound`) and
building one (:func:`make_design`). It sits above both :mod:`.designs` and :mod:`.pivots`, so neither
imports the other."""

from __future__ import annotations

from ..errors import ConfigError
from ..targets.target import Target
from .designs import _CLASSES, DESIGNS, Design, DesignConfig, fixed_count, n_params
from .pivots import PivotDesign, pivot_count
from .tuples import CLASSES as TUPLE_CLASSES


def design_count(name: str, p: int, r: int) -> int | None:
    """Pairs a design needs (and, for the constructive ones, emits) for ``(p, r)``.

    ``None`` for sampling designs without a closed form (sparse, coverage, triplet, closest, rank, odd); the adaptive pivot
    design's count is for its default first block: the block the answers grow to, then ``p − k`` rounds
    of ``r`` pivots (the noise-free count).
    """
    if name == "pivot":
        return pivot_count(p, r)
    if name not in DESIGNS:
        raise ConfigError(f"Unknown design {name!r}; expect one of {list(DESIGNS)}.")
    return fixed_count(name, p, r)


def bound(name: str, p: int, r: int) -> dict:
    """The design's pair count beside the paper's lower bound for a full-rank ``Φ*``."""
    if p < 1 or not 1 <= r <= p:
        raise ConfigError(f"Expect p ≥ 1 and 1 ≤ r ≤ p, got p={p}, r={r}.")
    return {"design": name, "p": p, "r": r, "pairs": design_count(name, p, r),
            "full_rank_lower_bound": n_params(p) - 1}


def make_design(config: DesignConfig, target: Target, seed: int) -> Design:
    """The design ``config`` names, over ``target``, with its query sequence seeded by ``seed``."""
    if config.name == "pivot":
        return PivotDesign(config, target, seed)
    return {**_CLASSES, **TUPLE_CLASSES}[config.name](config, target, seed)
