"""Active querying for tuple questions: closest of ``k``, rank ``k`` and odd one out.

:class:`TupleStrategy` is :class:`fbloop.queries.active.ActiveStrategy` for the tuple designs
(:mod:`fbloop.queries.tuples`): the same pool of candidates (``pool`` per query asked, drawn from the
design's own law by :func:`fbloop.queries.active.sample_sparse_fast`; the fixed design's exact,
position-keyed draws are untouched), the same perturbed copies of ``U`` for ``ensemble``, relevance
weights, random share and cold start; only the predicted answer differs. A question offers ``k``
options with distances ``d_1…d_k`` under ``Φ̂`` (closest / rank: the reference to each candidate; odd
one out: option ``i`` is the pair *without* item ``i``, :func:`option_distances`), and the answer is
predicted under the oracle's own noise model (:mod:`fbloop.agents.choice`) with utilities
``−d_i / (T · 2·mean d)``, the learner's logits at ``κ = 1/T``:

- **closest**, **odd**: ``P(i) = softmax(utilities)_i``; under ``flip`` noise
  ``ε/(k−1) + (1 − εk/(k−1))·P(i)`` (a flip picks another option); with a tie band
  (``NoiseModel.tie_band``, closest only) "no clear winner" is an outcome of its own, likely when the
  two nearest distances lie within the band (``σ((band/2 − ρ₂)/T_step)``, ``ρ₂`` their relative gap;
  the flip of a tie is left out).
- **rank**: Plackett–Luce. The exact entropy of a ranking sums over ``k!`` orders (40,320 at
  ``k = 8``, per candidate); the score instead uses the chain rule ``H(π) = Σ_j H(π_j | π_<j)``
  evaluated along ``Φ̂``'s own order (the predicted ranking): stage ``j`` is the softmax over the
  options not among ``Φ̂``'s ``j`` nearest — ``k − 1`` softmaxes, ``O(k²)`` a candidate. It is exact
  for ``k = 2``, and for ``k`` equidistant options it is ``log2 k!`` (every prefix is alike); it
  weighs a ranking whose first place is sure but whose tail is open, which the first place alone
  (``rank_outcome="first"``) calls certain. Under ``flip`` noise each stage mixes in a uniform
  choice with weight ``ε`` (exact for the first place).

Scores (larger = ask first), each summed over the stages (one for closest and odd):

- ``uncertainty``: the entropy (bits) of the predicted outcome under ``U``: ``log2 k`` (closest,
  odd) or ``log2 k!`` (rank) at most, for options at equal distances.
- ``ensemble``: BALD over ``k`` outcomes, ``H[E_m P_m] − E_m H[P_m]`` over the ``m`` perturbed
  copies of ``U`` (:func:`fbloop.queries.active.perturbed_factors`): 0 when every copy predicts the
  same distribution, up to ``log2 k`` a stage when confident copies split evenly; ties are broken by
  ``1e-6 ×`` the uncertainty score, as for triplets. For rankings every copy is read along ``U``'s
  order (the chain rule's prefix is not re-weighted by the copies: an approximation).
- both times the relevance weight ``t / (t + relevance · median t)`` on ``t = Σ_i d_i`` under ``U``:
  a tuple whose distances are all tiny constrains only tiny entries of ``Φ̂``.

Blocks of ``block · 3 / (k + 1)`` candidates (float32 projections) keep the memory of a triplet block.

What was measured and chosen (``benchmarks/bench_active_tuples.py``, ``results/active_tuples.json``):
answers to a live PCC of 0.9 on ``synthetic:p=32,rank=8``, sparse activations, the oracle with
Plackett–Luce noise at ``T = 0.1``, a snapshot and a chunk every 16 answers, seeds 0 and 1, on 2 CPU
cores shared with other work. ``random`` is the design's law through the active loop (the control: an
active run's learner takes 100 steps a chunk, a fixed design's 20; the fixed design needed about as many).

==========  ============  ============  ============  ============  ==================
kind        fixed         random        uncertainty   ensemble      ensemble vs random
==========  ============  ============  ============  ============  ==================
rank 4      592, 608      576, 672      688, 608      416, 464      1.42× fewer
closest 4   1840, 1792    1872, 1328    1232, 1424    1072, 992     1.53× fewer
==========  ============  ============  ============  ============  ==================

(ratios of geometric means over the seeds.) ``ensemble`` is the default and the one to use:
``uncertainty`` saved 1.19× on closest and nothing on rankings (0.96×) — the entropy of a predicted
answer counts the oracle's own noise, so it asks tuples whose options are nearly equidistant, which the
answer cannot resolve either; BALD counts only what the copies of ``Φ̂`` disagree on. The whole ranking
beats its first place as the rank score: ``rank_outcome="first"`` needed 528, 528 (ensemble, 1.18×
fewer than random) and 752, 640 (uncertainty). Two seeds only, one target: the spread between seeds
(random closest of 4: 1,872 and 1,328) is as large as some of the gaps.
"""

from __future__ import annotations

import numpy as np

from ..records import TUPLE_KINDS, Queries, ranking_from_code
from ..sparse import SparseBatch
from .active import STEP_T, ActiveStrategy, NoiseModel, project, relevance_weights, sample_sparse_fast
from .tuples import candidates

# ---------------------------------------------------------------- candidates


def activations_per_query(design) -> int:
    """Activations one question of a tuple design holds: the reference and ``k`` candidates, or 3 (odd)."""
    return 3 if design.name == "odd" else candidates(design) + 1


def sample_tuples(rng: np.random.Generator, n: int, p: int, design) -> tuple[SparseBatch, ...]:
    """``n`` random tuples from the design's law: ``(a, c_1…c_k)`` (closest, rank) or ``(a, b, c)`` (odd)."""
    m = activations_per_query(design)
    if design.dist == "gaussian":
        x = rng.standard_normal((m, n, p))  # (m, n, p)
        return tuple(SparseBatch.from_dense(x[j]) for j in range(m))
    return tuple(SparseBatch(*sample_sparse_fast(rng, n, p, design.mu, design.s), p) for _ in range(m))


def tuple_queries(kind: str, seq: np.ndarray, items: tuple[SparseBatch, ...]) -> Queries:
    """Activation batches as the queries of ``kind`` (:func:`sample_tuples`' order)."""
    if kind == "odd":
        return Queries("odd", seq, *items)
    return Queries(kind, seq, items[0], cands=tuple(items[1:]))  # type: ignore[arg-type]


def query_items(queries: Queries) -> tuple[SparseBatch, ...]:
    """A tuple chunk's activation batches, :func:`sample_tuples`' order."""
    if queries.kind == "odd":
        return (queries.a, queries.b, queries.c)  # type: ignore[return-value]
    return (queries.a, *(queries.cands or ()))


# ---------------------------------------------------------------- the predicted outcome (pure)


def option_distances(kind: str, proj: list[np.ndarray]) -> np.ndarray:
    """Each option's distance from projected activations ``proj`` (``Uᵀx`` per item, ``(m, n, r)`` each,
    :func:`sample_tuples`' order): ``(m, n, k)``. Odd one out: option ``i`` is the pair without item ``i``."""
    if kind == "odd":
        a, b, c = proj
        pairs = [(b, c), (a, c), (a, b)]
    else:
        pairs = [(proj[0], x) for x in proj[1:]]
    return np.stack([np.einsum("mnr,mnr->mn", x - y, x - y) for x, y in pairs], axis=-1)


def utilities(d: np.ndarray, temperature: float) -> np.ndarray:
    """Plackett–Luce utilities ``−d / (T · 2·mean d)`` over the last axis; 0 where every ``d`` is 0."""
    scale = 2 * d.mean(axis=-1, keepdims=True)
    return -d / (temperature * np.where(scale > 0, scale, 1.0))


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; ``−inf`` entries (options already ranked) get 0."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def temperature(noise: NoiseModel) -> float:
    """The utilities' temperature: the oracle's under ``logistic`` noise, else the learner's step (κ = 50)."""
    return noise.temperature if noise.kind == "logistic" else STEP_T


def choice_probabilities(d: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """``P(option i is the answer)`` for distances ``d`` (..., k): the softmax of the utilities, and
    under ``flip`` noise ``ε/(k−1) + (1 − εk/(k−1))·P`` (a flipped answer is another option)."""
    prob = softmax(utilities(d, temperature(noise)))
    if noise.kind != "flip":
        return prob
    k = d.shape[-1]
    return noise.flip / (k - 1) + (1 - noise.flip * k / (k - 1)) * prob


def with_no_clear_winner(prob: np.ndarray, d: np.ndarray, band: float) -> np.ndarray:
    """Closest with a tie band: ``(..., k + 1)``, outcome 0 "no clear winner" first, likely when the two
    nearest distances lie within the band (their ``ρ₂ = (d_(2) − d_(1))/(d_(1) + d_(2)) ≤ band/2``,
    the oracle's rule, softened over ``STEP_T``)."""
    two = np.sort(d, axis=-1)[..., :2]
    tot = two[..., 0] + two[..., 1]
    rho2 = np.divide(two[..., 1] - two[..., 0], tot, out=np.zeros_like(tot), where=tot > 0)
    tie = 0.5 * (1.0 + np.tanh(0.5 * (band / 2 - rho2) / STEP_T))[..., None]  # σ, overflow-free
    return np.concatenate([tie, (1 - tie) * prob], axis=-1)


def ranking_stages(d: np.ndarray, order: np.ndarray, noise: NoiseModel, stages: int) -> np.ndarray:
    """Plackett–Luce's choice at each of the first ``stages`` places along ``order``: ``(stages, ..., k)``.

    ``d`` (m, n, k) distances under each factor; ``order`` (n, k) the options closest first under ``U``.
    Stage ``j`` is the softmax of the utilities over the options not among ``order[:, :j]`` (under
    ``flip`` noise mixed with a uniform choice among them, weight ``ε``).
    """
    util = utilities(d, temperature(noise))  # (m, n, k)
    n, k = order.shape
    taken = np.zeros((n, k), dtype=bool)
    out = []
    for j in range(stages):
        prob = softmax(np.where(taken, -np.inf, util))  # (m, n, k)
        if noise.kind == "flip":
            prob = (1 - noise.flip) * prob + noise.flip * ~taken / (k - j)
        out.append(prob)
        taken[np.arange(n), order[:, j]] = True
    return np.stack(out)


def outcome_probabilities(d: np.ndarray, kind: str, noise: NoiseModel, rank_outcome: str | None = None
                          ) -> np.ndarray:
    """The predicted answer's distribution for each factor, as stages: ``(S, m, n, K)``.

    Closest and odd: one stage over the ``k`` options (``k + 1`` with a tie band, closest). Rank: the
    ``k − 1`` stages of :func:`ranking_stages` along ``U``'s order (``d[0]``'s), or the first place
    only (``rank_outcome="first"``).
    """
    if kind == "rank":
        order = np.argsort(d[0], axis=-1, kind="stable")  # (n, k) closest first under U
        stages = 1 if rank_outcome == "first" else d.shape[-1] - 1
        return ranking_stages(d, order, noise, stages)
    prob = choice_probabilities(d, noise)
    if kind == "closest" and noise.tie_band:
        prob = with_no_clear_winner(prob, d, noise.tie_band)
    return prob[None]


def entropy_bits(prob: np.ndarray) -> np.ndarray:
    """Entropy (bits) of distributions over the last axis; ``0 log 0 = 0``."""
    q = np.clip(prob, 0.0, 1.0)
    return -np.sum(np.where(q > 0, q * np.log2(np.where(q > 0, q, 1.0)), 0.0), axis=-1)


def outcome_entropy(prob: np.ndarray) -> np.ndarray:
    """The predicted answer's entropy (bits), summed over stages: ``prob`` (S, n, K) → ``(n,)``."""
    return entropy_bits(prob).sum(axis=0)


def information_gain(prob: np.ndarray) -> np.ndarray:
    """BALD over ``k`` outcomes, summed over stages: ``prob`` (S, m, n, K) → ``Σ_S H[E_m P_m] − E_m H[P_m]``, (n,)."""
    gain = entropy_bits(prob.mean(axis=1)) - entropy_bits(prob).mean(axis=1)  # (S, n)
    return np.maximum(gain, 0.0).sum(axis=0)


def tuple_scores(d: np.ndarray, kind: str, strategy: str, noise: NoiseModel, relevance: float,
                 rank_outcome: str | None = None) -> np.ndarray:
    """Scores from the options' distances ``d`` (1 + m, n, k): ``U`` first, then its perturbed copies. ``(n,)``."""
    prob = outcome_probabilities(np.asarray(d, dtype=np.float64), kind, noise, rank_outcome)
    entropy = outcome_entropy(prob[:, 0])
    out = entropy if strategy == "uncertainty" else information_gain(prob[:, 1:]) + 1e-6 * entropy
    if relevance:
        out = out * relevance_weights(d[0].sum(axis=-1), relevance)
    return out


def first_place_entropy(queries: Queries, factor: np.ndarray, noise: NoiseModel = NoiseModel()) -> np.ndarray:
    """How unsure ``Φ̂ = U Uᵀ`` is of each question's first place (nearest candidate, odd item): the
    entropy in bits of :func:`outcome_probabilities`' first stage under ``noise``, ``(n,)``. An agent
    pool routes the least sure to its most reliable member by it."""
    u = np.asarray(factor, dtype=np.float64)[None]
    d = option_distances(queries.kind, [project(x, u) for x in query_items(queries)])  # (1, n, k)
    return outcome_entropy(outcome_probabilities(d, queries.kind, noise, rank_outcome="first")[:, 0])


# ---------------------------------------------------------------- readouts


def predicted_first(queries: Queries, factor: np.ndarray) -> np.ndarray:
    """The option ``Φ̂ = U Uᵀ`` puts first (nearest candidate; the odd item): ``(n,)`` 0-based."""
    u = np.asarray(factor, dtype=np.float64)[None]
    d = option_distances(queries.kind, [project(x, u) for x in query_items(queries)])[0]  # (n, k)
    return np.argmin(d, axis=1)


def answered_first(queries: Queries, value: np.ndarray) -> np.ndarray:
    """The option an answer puts first, 0-based (``−1``: no clear winner): ``(n,)`` int64."""
    value = np.asarray(value, dtype=np.float64)
    if queries.kind == "rank":
        return ranking_from_code(value, queries.k)[:, 0]
    return value.astype(np.int64) - 1


# ---------------------------------------------------------------- the strategy


class TupleStrategy(ActiveStrategy):
    """Chooses the next closest-of-k, rank-k or odd-one-out questions from the learner's current factor."""

    kinds = TUPLE_KINDS

    def sample(self, rng: np.random.Generator, n: int) -> tuple[SparseBatch, ...]:
        return sample_tuples(rng, n, self.p, self.design)

    def build(self, seq: np.ndarray, items: tuple[SparseBatch, ...]) -> Queries:
        return tuple_queries(self.design.name, seq, items)

    def _block_rows(self) -> int:
        return max(1, self.config.block * 3 // activations_per_query(self.design))

    def _block_scores(self, items: tuple[SparseBatch, ...], stack: np.ndarray) -> np.ndarray:
        cfg = self.config
        d = option_distances(self.design.name, [project(x, stack) for x in items])  # (1 + m, n, k) float32
        return tuple_scores(d, self.design.name, cfg.strategy, cfg.noise, cfg.relevance, cfg.rank_outcome)
