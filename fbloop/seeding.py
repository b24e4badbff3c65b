"""Counter-style randomness: draws that depend only on (seed, stream, position).

A query's activation or an oracle's noise must not depend on how a run was
chunked or where it was resumed. Positions are grouped in fixed blocks; each
block gets its own generator seeded by ``(seed, stream, block)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK = 4096  # positions per generator block; part of the run format, never change

STREAMS = {"design": 1, "anchor": 2, "oracle": 3, "coverage": 4, "pivot": 5, "pivot-block": 6, "pivot-holdout": 7}


def block_rng(seed: int, stream: str, block: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], block])


def draw(seed: int, stream: str, start: int, stop: int,
         sample: Callable[[np.random.Generator, int], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Rows ``start:stop`` of an infinite sequence of draws.

    ``sample(rng, n)`` returns a tuple of arrays with ``n`` leading rows; it is
    called once per block with ``n = BLOCK``, so row ``i`` depends only on
    ``(seed, stream, i)``.
    """
    if stop <= start:
        raise ValueError(f"Expect start < stop, got {start}, {stop}.")
    parts: list[tuple[np.ndarray, ...]] = []
    for block in range(start // BLOCK, (stop - 1) // BLOCK + 1):
        lo = max(start - block * BLOCK, 0)
        hi = min(stop - block * BLOCK, BLOCK)
        full = sample(block_rng(seed, stream, block), BLOCK)
        parts.append(tuple(x[lo:hi] for x in full))
    return tuple(np.concatenate(cols) for cols in zip(*parts))


def held_out(seed: int, seq: np.ndarray, share: float) -> np.ndarray:
    """Which positions ``seq`` fall in a run's held-out set: a boolean mask, ``share`` of them on average.

    A pure function of ``(seed, position)`` (a splitmix64 hash), so a resumed run,
    any chunking, and a replay of stored answers all agree on the same set.
    """
    if share <= 0:
        return np.zeros(len(seq), dtype=bool)
    with np.errstate(over="ignore"):
        x = np.asarray(seq, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / 2.0**53 < share
