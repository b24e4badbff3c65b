"""Designs of questions with more than two candidates: closest of ``k``, rank ``k``, odd one out.

One reference read once against ``k`` candidates tells up to ``log2 k`` bits (which is closest) or
``log2 k!`` (their order), where a triplet tells at most ``log2 3`` — the lever of large similarity
studies (ranking "2 of 8", InfoTuple's tuples, the THINGS odd-one-out task).

| design  | query | answer (:mod:`fbloop.records`) |
|---------|-------|--------------------------------|
| closest | a reference ``a`` and ``k`` candidates | the closest candidate ``1…k``, or 0: no clear winner |
| rank    | a reference ``a`` and ``k`` candidates | the candidates ordered closest first |
| odd     | three items ``a, b, c`` | the item ``1…3`` farthest from the other two (they are the closest pair) |

Activations are drawn like the triplet design's (``dist``: sparse with ``mu``, ``s``, or dense Gaussian),
``k + 1`` (or 3) independent ones per query; query ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import numpy as np

from .. import seeding
from ..records import Queries, shown_per_question
from ..sparse import SparseBatch
from .designs import DEFAULT_K, Design, sample_sparse


def candidates(config) -> int:
    """The ``k`` of a closest / rank design config (:data:`DEFAULT_K` when left open)."""
    return config.k if config.k is not None else DEFAULT_K


def sample_activations(rng: np.random.Generator, n: int, m: int, p: int, config) -> list[tuple[np.ndarray, ...]]:
    """``m`` independent batches of ``n`` activations from the design's distribution: ``(idx, val)`` each."""
    if config.dist == "gaussian":
        x = rng.standard_normal((m, n, p))
        idx = np.broadcast_to(np.arange(p), (n, p))
        return [(idx, x[j]) for j in range(m)]
    return [sample_sparse(rng, n, p, config.mu, config.s) for _ in range(m)]


class TupleDesign(Design):
    """Random tuples: a reference and ``k`` candidates (closest, rank), or three items (odd)."""

    def __init__(self, config, target, seed: int):
        super().__init__(config, target, seed)
        self.kind = config.name  # "closest", "rank" or "odd"
        self.k = 3 if self.kind == "odd" else candidates(config)

    @property
    def shown(self) -> int:
        """Activations one question shows: the reference and ``k`` candidates, or three items."""
        return shown_per_question(self.kind, self.k)

    def _queries(self, start: int, stop: int) -> Queries:
        p, m = self.p, self.k + (self.kind != "odd")  # activations per query

        def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
            return tuple(arr for part in sample_activations(rng, n, m, p, self.config) for arr in part)

        arrays = seeding.draw(self.seed, "design", start, stop, sample)
        acts = [SparseBatch(np.ascontiguousarray(arrays[2 * j]), arrays[2 * j + 1], p) for j in range(m)]
        seq = np.arange(start, stop)
        if self.kind == "odd":
            return Queries("odd", seq, *acts)
        return Queries(self.kind, seq, acts[0], cands=tuple(acts[1:]))  # type: ignore[arg-type]


CLASSES: dict[str, type[Design]] = {"closest": TupleDesign, "rank": TupleDesign, "odd": TupleDesign}
