"""The simulated oracle: answers from a known ``Φ* = V Vᵀ``, exactly or with noise.

Pairs get the scale ``c = uᵀΦ*u / yᵀΦ*y``; triplets ``(a, b, c)`` get ``+1`` when
``a`` is closer to ``b`` (``d(a,b) < d(a,c)``), ``−1`` when closer to ``c``, ``0``
inside the tie band. Noise is deterministic given ``(seed, query position)``,
so a resumed run hears the same answers. Closest-of-k, rank-k and odd-one-out questions are answered
by :mod:`fbloop.agents.choice` (a Plackett–Luce / softmax choice model for ``logistic``).

Noise models (all scale-free):
- ``logistic``: ``P(+1) = σ(Δ / (T·(d_ab + d_ac)))`` with ``Δ = d_ac − d_ab``,
  temperature ``T``; pairs get multiplicative noise ``c·exp(T·ε)``, ``ε ~ N(0,1)``;
- ``flip``: each triplet answer is replaced by its opposite with probability ``flip``
  (a tie becomes ±1 at random); pairs are unaffected;
- ``tie_band``: ``|Δ| ≤ tie_band·(d_ab + d_ac)/2`` is answered ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .. import seeding
from ..errors import ConfigError, NonPSDError
from ..records import Answers, Queries
from ..sparse import SparseBatch, difference, quad_form
from ..records import TUPLE_KINDS
from .base import ImmediateAgent
from .choice import answer_values, option_distances


@dataclass(frozen=True)
class OracleConfig:
    noise: Literal["none", "logistic", "flip"] = "none"
    temperature: float = 0.05  # logistic noise temperature (relative)
    flip: float = 0.1  # flip probability
    tie_band: float = 0.0  # relative tie band for triplets
    seed: int = 0

    def __post_init__(self) -> None:
        if self.noise not in ("none", "logistic", "flip"):
            raise ConfigError(f"Unknown oracle noise {self.noise!r}; expect none, logistic or flip.")
        if not self.temperature > 0:
            raise ConfigError(f"Expect temperature > 0, got {self.temperature}.")
        if not 0.0 <= self.flip <= 0.5:
            raise ConfigError(f"Expect flip probability in [0, 0.5], got {self.flip}.")
        if not 0.0 <= self.tie_band < 1.0:
            raise ConfigError(f"Expect tie_band in [0, 1), got {self.tie_band}.")


def pair_scales(u: SparseBatch, anchor: SparseBatch, factor: np.ndarray) -> np.ndarray:
    """Exact ``c = uᵀΦu / yᵀΦy`` for every row of ``u``: shape ``(n,)``."""
    ref = float(quad_form(anchor, factor)[0])
    if not ref > 0:
        raise NonPSDError("The anchor has zero Φ*-norm: every scale would be undefined. "
                          "Choose another anchor or target.")
    return quad_form(u, factor) / ref


def triplet_margins(a: SparseBatch, b: SparseBatch, c: SparseBatch, factor: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(Δ, d_ab + d_ac)`` with ``Δ = d(a,c) − d(a,b)`` under ``Φ* = V Vᵀ``."""
    d_ab = quad_form(difference(a, b), factor)
    d_ac = quad_form(difference(a, c), factor)
    return d_ac - d_ab, d_ab + d_ac


class OracleAgent(ImmediateAgent):
    """Answers from ``Φ*``; ``name`` is stored with every answer."""

    def __init__(self, factor: np.ndarray, anchor: SparseBatch, config: OracleConfig = OracleConfig()):
        self.factor = factor
        self.anchor = anchor
        self.config = config
        self.name = "oracle" if config.noise == "none" else f"oracle-{config.noise}"

    def _uniforms(self, seq: np.ndarray, k: int) -> np.ndarray:
        """``k`` uniforms per query, a pure function of ``(seed, position)``: ``(n, k)``."""
        out = np.empty((len(seq), k))
        blocks = seq // seeding.BLOCK
        for block in np.unique(blocks):
            rows = blocks == block
            table = seeding.block_rng(self.config.seed, "oracle", int(block)).random((seeding.BLOCK, k))
            out[rows] = table[seq[rows] % seeding.BLOCK]
        return out

    def answer(self, queries: Queries) -> Answers:
        cfg = self.config
        if queries.kind in TUPLE_KINDS:
            d = option_distances(queries, self.factor)
            u = self._uniforms(queries.seq, 2 * queries.k + 2)
            value = answer_values(queries, d, cfg.noise, cfg.temperature, cfg.flip, cfg.tie_band, u)
        elif queries.kind == "pair":
            value = pair_scales(queries.a, self.anchor, self.factor)
            if cfg.noise == "logistic":
                from scipy.special import ndtri

                eps = ndtri(np.clip(self._uniforms(queries.seq, 1)[:, 0], 1e-12, 1 - 1e-12))
                value = value * np.exp(cfg.temperature * eps)
        else:
            delta, total = triplet_margins(queries.a, queries.b, queries.c, self.factor)
            scale = np.where(total > 0, total, 1.0)
            rel = delta / scale  # in [−1, 1]
            if cfg.noise == "logistic":
                u = self._uniforms(queries.seq, 1)[:, 0]
                value = np.where(u < 1 / (1 + np.exp(-rel / cfg.temperature)), 1.0, -1.0)
            else:
                value = np.sign(rel)
            value[np.abs(rel) <= cfg.tie_band / 2] = 0.0
            if cfg.noise == "flip":
                u = self._uniforms(queries.seq, 2)
                flipped = u[:, 0] < cfg.flip
                tie = value == 0
                value = np.where(flipped & ~tie, -value, value)
                value = np.where(flipped & tie, np.where(u[:, 1] < 0.5, 1.0, -1.0), value)
        n = len(queries)
        return Answers(self.name, queries.seq.copy(), value.astype(np.float64), np.full(n, "ok"))
