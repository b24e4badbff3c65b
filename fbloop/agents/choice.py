"""Answers to tuple questions (closest of ``k``, rank ``k``, odd one out) from a known ``Φ*``: pure
functions of the distances and of uniforms the caller draws (:class:`fbloop.agents.OracleAgent`).

Each question offers ``k`` options with distances ``d_1…d_k`` under ``Φ*`` (closest / rank: the
reference to each candidate; odd one out: option ``i`` is the pair of items *without* ``i``, so the
odd item is the one left out of the closest pair). The noise models generalise the triplet's
(:mod:`fbloop.agents.oracle`), scale-free:

- ``logistic``: a Plackett–Luce ranking with utilities ``−d_i / (T · 2·mean(d))``, drawn by the
  Gumbel trick (sort ``utility + Gumbel``); "closest" is its first place, so
  ``P(closest = i) = softmax(−d / (T · 2·mean d))_i`` — for ``k = 2`` exactly the triplet's
  ``σ((d_c − d_b) / (T·(d_b + d_c)))``;
- ``flip``: with probability ``flip`` the answer is replaced — closest / odd: by a uniformly random
  *other* option (a "no clear winner" by a uniformly random option); rank: by a uniformly random
  ranking (all ``k!`` alike);
- ``tie_band`` (closest only): "no clear winner" (0) when the two smallest distances differ by at
  most ``tie_band · (d_(1) + d_(2)) / 2``, the triplet's band.
"""

from __future__ import annotations

import numpy as np

from ..records import Queries, ranking_code
from ..sparse import difference, quad_form


def option_distances(queries: Queries, factor: np.ndarray) -> np.ndarray:
    """Each option's distance under ``Φ* = V Vᵀ``: ``(n, k)`` (see the module docstring)."""
    if queries.kind == "odd":
        a, b, c = queries.a, queries.b, queries.c
        pairs = [(b, c), (a, c), (a, b)]  # option i: the pair without item i
        return np.stack([quad_form(difference(x, y), factor) for x, y in pairs], axis=1)
    return np.stack([quad_form(difference(queries.a, c), factor) for c in queries.cands], axis=1)


def utilities(d: np.ndarray, temperature: float) -> np.ndarray:
    """Plackett–Luce utilities ``−d / (T · 2·mean(d))`` per row, ``(n, k)``; 0 where every ``d`` is 0."""
    scale = 2 * d.mean(axis=1, keepdims=True)
    return -d / (temperature * np.where(scale > 0, scale, 1.0))


def rankings(d: np.ndarray, noise: str, temperature: float, u: np.ndarray) -> np.ndarray:
    """Options ordered closest first, ``(n, k)``: by distance, or (``noise="logistic"``) a Plackett–Luce
    draw from the ``k`` uniforms per row in ``u`` (``(n, k)``)."""
    if noise != "logistic":
        return np.argsort(d, axis=1, kind="stable")
    gumbel = -np.log(-np.log(np.clip(u, 1e-300, 1 - 1e-16)))
    return np.argsort(-(utilities(d, temperature) + gumbel), axis=1, kind="stable")


def no_clear_winner(d: np.ndarray, band: float) -> np.ndarray:
    """Rows whose two smallest distances lie within the tie band: ``(n,)`` bool."""
    if band <= 0 or d.shape[1] < 2:
        return np.zeros(len(d), dtype=bool)
    two = np.sort(d, axis=1)[:, :2]
    return two[:, 1] - two[:, 0] <= band * (two[:, 0] + two[:, 1]) / 2


def answer_values(queries: Queries, d: np.ndarray, noise: str, temperature: float, flip: float, tie_band: float,
                  u: np.ndarray) -> np.ndarray:
    """The stored answer values (:mod:`fbloop.records`) for options at distances ``d`` (``(n, k)``).

    ``u`` holds ``2k + 2`` uniforms per row (``(n, 2k + 2)``, a pure function of the query's position):
    ``k`` for the Plackett–Luce draw, two for the flip (whether, which option) and ``k`` for a random ranking.
    """
    n, k = d.shape
    order = rankings(d, noise, temperature, u[:, :k])  # (n, k)
    flipped = (u[:, k] < flip) if noise == "flip" else np.zeros(n, dtype=bool)
    if queries.kind == "rank":
        random_order = np.argsort(u[:, k + 2:2 * k + 2], axis=1)
        order = np.where(flipped[:, None], random_order, order)
        return ranking_code(order)
    chosen = order[:, 0]
    tie = no_clear_winner(d, tie_band) if queries.kind == "closest" else np.zeros(n, dtype=bool)
    pick = np.minimum((u[:, k + 1] * (k - 1)).astype(np.int64), k - 2)  # 0…k−2: one of the other options
    other = np.where(pick >= chosen, pick + 1, pick)
    anyone = np.minimum((u[:, k + 1] * k).astype(np.int64), k - 1)
    value = np.where(tie, 0, chosen + 1)
    value = np.where(flipped & ~tie, other + 1, value)
    value = np.where(flipped & tie, anyone + 1, value)
    return value.astype(np.float64)
