"""Active querying for ternary triplets: ask what the learner is least sure about
(tuple questions: :mod:`fbloop.queries.active_tuples`, on the same strategy).

A fixed design (:class:`fbloop.queries.designs.TripletDesign`) asks uniformly random
triplets ``(a, b, c)``. Once ``Φ̂`` is roughly right most of them are *obvious*
— the current ``Φ̂`` already predicts their answer — and an answer that could be
predicted teaches little. An :class:`ActiveStrategy` instead draws a pool of
candidates from the triplet design's own distribution (``pool`` candidates per
query asked), scores them in vectorised blocks under the current factor ``U``
(``Φ̂ = U Uᵀ``) and asks the top-scoring ones.

Scores (larger = ask first), all on the learner's scale-free margin
``ρ = (d_ac − d_ab) / (d_ac + d_ab) ∈ [−1, 1]`` with ``d_xy = (x − y)ᵀ Φ̂ (x − y)``:

- ``random``: none; the candidates are the queries (the uniform design, for comparison).
- ``uncertainty``: the entropy (bits) of the predicted answer under the noise model
  (:class:`NoiseModel`): ``P(+1) = σ(ρ / T)`` for logistic noise with temperature
  ``T``. The entropy falls with ``|ρ|`` under every noise model, so the top-k are the
  candidates of smallest ``|ρ̂|``; the temperature sets the scale of the reported score.
- ``ensemble``: the expected information gain (BALD, ``H[E_m P_m] − E_m H[P_m]``)
  over ``m`` perturbed copies of ``U``: disagreement between plausible ``Φ̂`` that
  the answer noise does not explain (a triplet every copy calls a coin flip scores 0;
  one they split on with confidence scores up to 1 bit). With noise-free answers it
  is the entropy of the copies' vote, i.e. the variance of the predicted sign. Copy
  ``m`` is ``U + E_m`` with Gaussian row noise of standard deviation
  ``perturb · ‖U_j‖ / √k`` (floored at ``ROW_FLOOR`` of the mean row norm), times
  ``sqrt((n̄ + 1)/(n_j + 1))`` where ``n_j`` counts the queries so far touching
  coordinate ``j``: on sparse activations an entry of ``Φ̂`` is only as certain as
  its coordinates have been probed. Row-relative noise keeps null rows (features
  ``Φ*`` does not use) near null; uniform noise made every triplet on them look
  maximally disputed, and on the RFM target (rank 3 of 10) that cost ~18× the answers
  to PCC 0.99 (median of 4 seeds: ~8,900 against ~480, logistic T = 0.05).
  Perturbed factors instead of bootstrap learners: ``m`` scoring passes, not ``m`` fits.

Both scores are multiplied by a relevance weight ``t / (t + relevance · median t)``,
``t = d_ab + d_ac`` under ``Φ̂`` (:func:`relevance_weights`): a triplet whose
distances are all tiny next to the pool's only constrains tiny entries of ``Φ̂`` (on a
low-rank target, its null coordinates), though its scale-free margin looks as
uncertain as any. Measured on the RFM target: answers to PCC 0.99 fell from ~1300 to
~650 (uncertainty, logistic T = 0.05, 2 seeds); on p = 32 (flips) it changed nothing.

Choices
- **Hold-out.** A share ``random_share`` (default 0.1) of every batch is uniformly
  random, flagged in :attr:`Proposal.holdout`: an unbiased sample for agreement
  readouts (the chosen queries are hard by construction, so agreement on them says
  nothing about ``Φ̂`` overall; score them *before* learning from them), and a guard
  against a wrong ``Φ̂`` that keeps choosing queries which cannot correct it. The
  count per call is ``floor(share·n + u)``, ``u ~ U(0, 1)``: exact in expectation
  however small the batches.
- **Cold start.** With no factor yet (``factor=None``) every query is random.
- **Noise model.** Tell the strategy the agent's noise where it is known (a simulated
  oracle); for ``none``/``flip`` the predicted answer steps over ``|ρ| ≲ 0.02``, as sharp
  as the learner's default loss (κ = 50), not a hard step: a hard step makes every
  confident candidate tie and the ranking random.
- **Cheap scoring.** ``U`` is compressed to its top ``score_rank`` singular directions
  (exact when ``rank U ≤ score_rank``; an ``r × r`` eigh, not a ``p × r`` SVD), and
  candidates are scored in float32 blocks of ``block`` rows, projecting ``a``, ``b``,
  ``c`` once per factor, ``O(s·k)`` per activation: about 2 µs per candidate for
  ``uncertainty`` and 10 µs for an 8-copy ``ensemble`` at p = 512, k = 64 (one core).
  Candidates come from :func:`sample_sparse_fast` (the design's law, ~50× faster at
  p = 512 than :func:`fbloop.queries.designs.sample_sparse`, whose exact draws are part of
  the run format and cannot change).
- **Pool.** 10 candidates per query: 20 and 100 asked no fewer answers (p = 32); at p = 128 under
  10 % flips 5 and 20 asked more (2 seeds: ``uncertainty`` 17,850 and 17,288 answers to PCC 0.9
  against 16,626 with 10).
- **Query synthesis (measured, not kept).** Moving each candidate onto ``Φ̂``'s boundary (``c``'s or
  ``b``'s values times ``t ∈ [1/4, 4]``, supports kept, so that ``d̂_ab = d̂_ac``) and ranking the moved
  pool by the ensemble's BALD needed more answers than ``ensemble`` to reach PCC 0.9 in 8 of 9
  settings of ``bench_active`` (RFM, p = 32, p = 128; 5 seeds; at p = 128 9,934 / 55,060 / 20,821
  answers against 9,338 / 47,764 / 16,586 under T = 0.05 / T = 0.2 / 10 % flips, the flips with a
  learner not yet told the flip rate). It led only at
  PCC 0.99 under logistic noise on p = 32 (3.08× and 2.25× of random against 2.68× and 1.97×; at
  p = 128, T = 0.05: 3.15× against 3.10×) and at 0.9 on RFM at T = 0.2 (1.83× against 1.62×).
  The boundary of ``Φ̂`` is not where answers teach most:
  in a scratch run that knows ``Φ*`` (p = 32, 2 seeds), picking the pool's candidates nearest the *true*
  boundary gave 1.10× of random at PCC 0.9 (T = 0.05) and 0.72× (T = 0.2); picking those ``Φ̂`` gets
  most wrong, 2.73× and 3.58×. No score computed from ``Φ̂`` alone (perturbed copies, bootstrap refits,
  an isotropic posterior on ``Φ``) ranked candidates by that error with a Spearman ρ above 0.28
  (p = 32, fits at PCC 0.5–0.7).
- **Batch mode.** One call selects ``n`` queries under one ``Φ̂`` (the top ``n`` of
  ``pool·n`` candidates). Sparse candidates rarely share supports, so the batch is
  diverse without an explicit diversity term; callers should still call often
  (a loop chunk, or rounds growing geometrically).

A caller (the loop, a benchmark) asks for queries, gets answers, feeds the
learner and calls again with the new ``U``::

    strategy = ActiveStrategy(p, ActiveConfig(strategy="ensemble"))
    q = strategy.next_queries(64, learner.factor(), rng, start=n_asked)  # Queries, kind "triplet"

``benchmarks/bench_active.py`` measures the answers each strategy needs to reach PCC
0.9 and 0.99 against the uniform design.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ConfigError, ShapeError
from ..records import Queries
from ..sparse import SparseBatch
from .designs import DesignConfig, sample_sparse

StrategyName = Literal["random", "uncertainty", "ensemble"]
STRATEGIES: tuple[str, ...] = ("random", "uncertainty", "ensemble")
NOISES: tuple[str, ...] = ("none", "logistic", "flip")
STEP_T = 0.02  # "none"/"flip": P(+1) steps over |ρ| ≲ STEP_T (the learner's default sharpness κ = 50 = 1/STEP_T)
ROW_FLOOR = 0.1  # perturbations: a row's noise is relative to its own norm, floored at this share of the mean


@dataclass(frozen=True)
class NoiseModel:
    """How the scores assume answers are noised (match the agent's where it is known).

    ``logistic``: ``P(+1) = σ(ρ / temperature)``; ``flip``: the noise-free answer is
    flipped with probability ``flip``; ``none``: the step ``σ(ρ / 0.02)``, as sharp as the
    learner's own loss (κ = 50) — a hard step would make every confident candidate tie.
    Tuple questions read the same fields over ``k`` options (:mod:`fbloop.queries.active_tuples`),
    and ``tie_band`` (closest of ``k``) makes "no clear winner" an outcome of its own.
    """

    kind: Literal["none", "logistic", "flip"] = "logistic"
    temperature: float = 0.05  # logistic: relative-margin temperature
    flip: float = 0.1  # flip: probability of the opposite answer
    # closest of k: the oracle's tie band ("no clear winner"), an outcome of its own; None (0) keeps older configs equal
    tie_band: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in NOISES:
            raise ConfigError(f"Unknown noise model {self.kind!r}; expect one of {list(NOISES)}.")
        if not self.temperature > 0:
            raise ConfigError(f"Expect a noise temperature > 0, got temperature={self.temperature}.")
        if not 0.0 <= self.flip < 0.5:
            raise ConfigError(f"Expect a flip probability in [0, 0.5), got flip={self.flip}.")
        if self.tie_band is not None and not 0.0 <= self.tie_band < 1.0:
            raise ConfigError(f"Expect a tie band in [0, 1), got tie_band={self.tie_band}.")


@dataclass(frozen=True)
class ActiveConfig:
    strategy: StrategyName = "ensemble"  # bench_active: best at PCC 0.9 in 8 of 11 settings, within 6 % in 3
    pool: int = 10  # candidates scored per query asked (the pool is pool × n)
    random_share: float = 0.1  # uniformly random queries mixed into every batch: the unbiased hold-out
    noise: NoiseModel = field(default_factory=NoiseModel)  # answer noise the scores assume
    ensemble: int = 8  # perturbed factors for the "ensemble" score
    perturb: float = 0.1  # their relative row noise
    relevance: float = 0.1  # down-weight candidates whose Φ̂-distances are below this share of the pool's median
    score_rank: int = 64  # U is compressed to this many singular directions for scoring
    block: int = 16384  # candidates scored per vectorised block (bounds memory)
    seed: int = 0  # the strategy's own generator, used when a call passes no rng
    # rank designs: score the whole ranking ("full", the default; None keeps older configs equal) or its first place
    rank_outcome: Literal["full", "first"] | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"Unknown active strategy {self.strategy!r}; expect one of {list(STRATEGIES)}.")
        if isinstance(self.noise, dict):  # from a stored run's JSON
            object.__setattr__(self, "noise", NoiseModel(**self.noise))
        if not isinstance(self.noise, NoiseModel):
            raise ConfigError(f"Expect noise to be a NoiseModel, got {self.noise!r}.")
        if self.pool < 1:
            raise ConfigError(f"Expect pool ≥ 1 candidates per query, got pool={self.pool}.")
        if not 0.0 <= self.random_share <= 1.0:
            raise ConfigError(f"Expect random_share in [0, 1], got random_share={self.random_share}.")
        if self.ensemble < 2:
            raise ConfigError(f"Expect an ensemble of ≥ 2 perturbed factors, got ensemble={self.ensemble}.")
        if not self.relevance >= 0:
            raise ConfigError(f"Expect relevance ≥ 0 (0 turns it off), got relevance={self.relevance}.")
        if not self.perturb > 0:
            raise ConfigError(f"Expect perturb > 0, got perturb={self.perturb}.")
        if self.rank_outcome not in (None, "full", "first"):
            raise ConfigError(f"Expect rank_outcome 'full' or 'first', got rank_outcome={self.rank_outcome!r}.")
        for name in ("score_rank", "block"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expect {name} ≥ 1, got {name}={getattr(self, name)}.")


@dataclass(frozen=True)
class Proposal:
    """A batch of queries with, per row, whether it is a random hold-out query and its score."""

    queries: Queries
    holdout: np.ndarray  # (n,) bool: drawn uniformly at random (unbiased), not chosen by score
    score: np.ndarray  # (n,) float: the strategy's score (NaN for hold-out rows and cold starts)


# ---------------------------------------------------------------- candidates


def sample_sparse_fast(rng: np.random.Generator, n: int, p: int, mu: float, s: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fbloop.queries.designs.sample_sparse`'s distribution, by rejection for every ``p > 64``.

    The design's sampler argsorts an ``(n, p)`` array up to ``p = 512`` (its query
    sequence is part of the run format, so it cannot change); candidates need no
    reproducible positions, and at ``p = 512`` this is ~50× faster. Same law: the
    count ``k`` from the same truncated binomial, ``s`` distinct uniform indices in
    random order (i.i.d. draws conditioned on being distinct), values ``U(0, 1]``,
    unused slots index 0 value 0.
    """
    # Up to p = 64 rejection would redraw too often; the argsort is cheap there.
    return sample_sparse(rng, n, p, mu, s, argsort_max_p=64)


def sample_triplets(rng: np.random.Generator, n: int, p: int, design: DesignConfig
                    ) -> tuple[SparseBatch, SparseBatch, SparseBatch]:
    """``n`` random triplets from the triplet design's distribution (sparse or Gaussian)."""
    if design.dist == "gaussian":
        x = rng.standard_normal((3, n, p))  # (3, n, p)
        return tuple(SparseBatch.from_dense(x[k]) for k in range(3))  # type: ignore[return-value]
    return tuple(SparseBatch(*sample_sparse_fast(rng, n, p, design.mu, design.s), p)  # type: ignore[return-value]
                 for _ in range(3))


# ---------------------------------------------------------------- scores (pure)


def compress_factor(factor: np.ndarray, k: int) -> np.ndarray:
    """``U_k`` (p, ≤ k) with ``U_k U_kᵀ`` the best rank-``k`` approximation of ``U Uᵀ``.

    Directions with a negligible share (< 1e-10) of ``Φ̂``'s trace are dropped too.
    """
    u = np.asarray(factor, dtype=np.float64)
    if u.ndim != 2:
        raise ShapeError(f"Expect a factor of shape (p, r), got {u.shape}.")
    if u.shape[1] <= min(k, 8):  # already tiny: nothing to gain
        return u
    # U = Q S Wᵀ ⇒ UᵀU = W S² Wᵀ and U W = Q S: an r × r eigh instead of a p × r SVD.
    energy, w = np.linalg.eigh(u.T @ u)  # ascending, (r,), (r, r)
    energy, w = energy[::-1], w[:, ::-1]
    keep = max(1, min(k, int(np.sum(energy > 1e-10 * max(energy.sum(), 1e-300)))))
    return u @ w[:, :keep]  # (p, keep)


def project(x: SparseBatch, factors: np.ndarray) -> np.ndarray:
    """``Uᵀx`` for a stack of factors ``(m, p, k)``: shape ``(m, n, k)``, in the factors' dtype."""
    val = x.values.astype(factors.dtype, copy=False)
    # One factor at a time: a 3-d einsum per factor beats one 4-d gather of all m.
    return np.stack([np.einsum("ns,nsk->nk", val, f[x.indices]) for f in factors])


def relative_margins(a: SparseBatch, b: SparseBatch, c: SparseBatch, factors: np.ndarray,
                     dtype: type = np.float64) -> np.ndarray:
    """``ρ = (d_ac − d_ab)/(d_ac + d_ab)`` under each factor.

    ``factors`` is one ``U`` (p, k) → returns ``(n,)``, or a stack (m, p, k) → ``(m, n)``.
    ``ρ > 0``: ``a`` is closer to ``b`` (the answer ``+1``). ``ρ = 0`` where both distances
    vanish. ``dtype=np.float32`` halves the memory traffic of large scoring batches.
    """
    f = np.asarray(factors, dtype=dtype)
    single = f.ndim == 2
    f = f[None] if single else f
    if f.ndim != 3 or f.shape[1] != a.p or not (a.p == b.p == c.p) or not (len(a) == len(b) == len(c)):
        raise ShapeError(f"Expect triplets in R^p and factors (p, k) or (m, p, k), got p={a.p}, "
                         f"{len(a)}/{len(b)}/{len(c)} rows and factors {np.shape(factors)}.")
    d_ab, d_ac = _distances(a, b, c, f)
    tot = d_ab + d_ac
    rho = np.divide(d_ac - d_ab, tot, out=np.zeros_like(tot), where=tot > 0)
    return rho[0] if single else rho


def _distances(a: SparseBatch, b: SparseBatch, c: SparseBatch, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(d_ab, d_ac)`` under each factor of the stack ``f`` (m, p, k): two ``(m, n)`` arrays."""
    pa = project(a, f)  # (m, n, k)
    ab = pa - project(b, f)
    ac = pa - project(c, f)
    return np.einsum("mnk,mnk->mn", ab, ab), np.einsum("mnk,mnk->mn", ac, ac)


def answer_probability(rho: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """``P(answer = +1)`` for margins ``ρ`` under a noise model (same shape as ``rho``)."""
    rho = np.asarray(rho, dtype=np.float64)
    if noise.kind == "logistic":
        return _sigmoid(rho / noise.temperature)
    step = _sigmoid(rho / STEP_T)  # noise-free answers: a step, softened to the learner's own sharpness
    if noise.kind == "flip":
        return noise.flip + (1 - 2 * noise.flip) * step
    return step


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free σ


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """Entropy in bits of a ±1 answer with ``P(+1) = prob``; 0 at 0 and 1."""
    q = np.clip(np.asarray(prob, dtype=np.float64), 1e-15, 1 - 1e-15)
    return -(q * np.log2(q) + (1 - q) * np.log2(1 - q))


def uncertainty_scores(a: SparseBatch, b: SparseBatch, c: SparseBatch, factor: np.ndarray,
                       noise: NoiseModel = NoiseModel(), dtype: type = np.float64) -> np.ndarray:
    """Entropy (bits) of the predicted answer under ``Φ̂ = U Uᵀ``: ``(n,)``, maximal (1) at ``ρ = 0``."""
    return binary_entropy(answer_probability(relative_margins(a, b, c, factor, dtype), noise))


def perturbed_factors(factor: np.ndarray, m: int, rel: float, rng: np.random.Generator,
                      coverage: np.ndarray | None = None) -> np.ndarray:
    """``m`` copies of ``U`` (p, k) with Gaussian row noise: ``(m, p, k)``.

    Row ``j`` gets noise of standard deviation ``rel · sqrt((‖U_j‖² + ROW_FLOOR · mean_i ‖U_i‖²) / k)``
    — relative to its own norm, so a null row stays near null — times
    ``sqrt((n̄ + 1)/(n_j + 1))`` when ``coverage`` (``n_j``, shape ``(p,)``) is given.
    """
    u = np.asarray(factor, dtype=np.float64)
    p, k = u.shape
    row2 = np.sum(u * u, axis=1)  # (p,) squared row norms
    sd = rel * np.sqrt((row2 + ROW_FLOOR * row2.mean()) / k)  # (p,)
    if coverage is not None:
        cov = np.asarray(coverage, dtype=np.float64)
        if cov.shape != (p,):
            raise ShapeError(f"Expect coverage of shape ({p},), got {cov.shape}.")
        sd = sd * np.sqrt((cov.mean() + 1) / (cov + 1))
    return u[None] + rng.standard_normal((m, p, k)) * sd[None, :, None]


def information_gain(prob: np.ndarray) -> np.ndarray:
    """BALD from per-member answer probabilities ``prob`` (m, n): ``H[mean_m P_m] − mean_m H[P_m]``, (n,)."""
    return np.maximum(binary_entropy(prob.mean(axis=0)) - binary_entropy(prob).mean(axis=0), 0.0)


def ensemble_scores(a: SparseBatch, b: SparseBatch, c: SparseBatch, factors: np.ndarray,
                    noise: NoiseModel = NoiseModel(), dtype: type = np.float64) -> np.ndarray:
    """Expected information gain (bits) of each triplet's answer about which factor is right.

    BALD over the stack ``factors`` (m, p, k): ``H[mean_m P_m] − mean_m H[P_m]``, shape ``(n,)``.
    0 when every factor predicts the same answer distribution.
    """
    return information_gain(answer_probability(relative_margins(a, b, c, factors, dtype), noise))


def relevance_weights(total: np.ndarray, floor: float) -> np.ndarray:
    """``w = t / (t + floor·median(t))`` for the candidates' ``t = d_ab + d_ac`` under ``Φ̂``: ``(n,)``.

    A triplet whose distances are all tiny next to the pool's constrains only entries of ``Φ̂``
    that are tiny (on a low-rank target: its near-null coordinates), yet its scale-free margin
    looks as uncertain as any. ``w ≈ 1`` unless ``t`` is below a ``floor`` share of the median.
    """
    t = np.asarray(total, dtype=np.float64)
    ref = floor * float(np.median(t)) if len(t) else 0.0
    return t / (t + ref) if ref > 0 else np.ones_like(t)


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the ``k`` largest scores, ties broken at random, best first: ``(k,)``."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0 <= k <= len(scores):
        raise ShapeError(f"Expect 0 ≤ k ≤ {len(scores)} candidates, got k={k}.")
    order = np.lexsort((rng.random(len(scores)), -scores))  # primary: score descending
    return order[:k]


# ---------------------------------------------------------------- the strategy


class ActiveStrategy:
    """Chooses the next triplet queries from the learner's current factor.

    ``design`` gives the candidate distribution (``mu``, ``s``, ``dist`` of the
    triplet design). ``coverage_`` (p,) counts, per coordinate, the queries this
    strategy has emitted (plus any passed to :meth:`observe`) that touch it.

    A query kind is four hooks: :meth:`sample` (candidates from the design's law, as a tuple
    of activation batches), :meth:`_block_scores` (one block of them under a stack of factors),
    :meth:`_block_rows` (the block's size) and :meth:`build` (the batches as :class:`Queries`);
    :class:`fbloop.queries.active_tuples.TupleStrategy` gives closest, rank and odd-one-out
    questions, and :func:`fbloop.queries.sources.make_strategy` picks the class for a design.
    """

    kinds: tuple[str, ...] = ("triplet",)

    def __init__(self, p: int, config: ActiveConfig = ActiveConfig(),
                 design: DesignConfig = DesignConfig(name="triplet")):
        if p < 2:
            raise ConfigError(f"Expect p ≥ 2, got p={p}.")
        if design.name not in self.kinds:
            raise ConfigError(f"{type(self).__name__} chooses {' / '.join(self.kinds)} queries, got design "
                              f"{design.name!r} (fbloop.queries.sources.make_strategy picks the strategy).")
        self.p = p
        self.config = config
        self.design = design
        self.rng = np.random.default_rng(config.seed)
        self.coverage_ = np.zeros(p)  # (p,) queries touching each coordinate

    # ------------------------------------------------------------ the query kind's hooks

    def sample(self, rng: np.random.Generator, n: int) -> tuple[SparseBatch, ...]:
        """``n`` random candidates from the design's law: ``(a, b, c)``."""
        return sample_triplets(rng, n, self.p, self.design)

    def build(self, seq: np.ndarray, items: tuple[SparseBatch, ...]) -> Queries:
        return Queries("triplet", seq, *items)

    def _block_rows(self) -> int:
        return self.config.block

    def _block_scores(self, items: tuple[SparseBatch, ...], stack: np.ndarray) -> np.ndarray:
        """Scores of one block of triplets under ``stack`` (1 + m, p, k): ``U`` first, then its copies."""
        cfg = self.config
        d_ab, d_ac = (d.astype(np.float64) for d in _distances(*items, stack))  # (m+1, n)
        tot = d_ab + d_ac
        rho = np.divide(d_ac - d_ab, tot, out=np.zeros_like(tot), where=tot > 0)
        prob = answer_probability(rho, cfg.noise)
        entropy = binary_entropy(prob[0])  # (n,) the uncertainty score under U itself
        if cfg.strategy == "uncertainty":
            out = entropy
        else:  # ties in BALD (common with noise-free answers: 50/50 votes) go to the smaller |ρ̂|
            out = information_gain(prob[1:]) + 1e-6 * entropy
        if cfg.relevance:
            out = out * relevance_weights(tot[0], cfg.relevance)
        return out

    # ------------------------------------------------------------ shared by every kind

    def observe(self, queries: Queries) -> None:
        """Count queries asked elsewhere (replayed on resume) towards coverage."""
        if queries.kind not in self.kinds:
            raise ConfigError(f"{type(self).__name__} chooses {' / '.join(self.kinds)} queries, got queries of "
                              f"kind {queries.kind!r}.")
        for x in (queries.a, queries.b, queries.c, *(queries.cands or ())):
            if x is None:
                continue
            if x.p != self.p:
                raise ShapeError(f"Expect queries in R^{self.p}, got R^{x.p}.")
            np.add.at(self.coverage_, x.indices[x.values != 0], 1.0)

    def factors(self, factor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The stack the scores read, float32 ``(1 + m, p, k)``: ``U`` compressed, then (``ensemble``)
        its ``m`` perturbed copies."""
        cfg = self.config
        u = compress_factor(factor, cfg.score_rank)  # (p, k)
        if u.shape[0] != self.p:
            raise ShapeError(f"Expect a factor with {self.p} rows, got {np.shape(factor)}.")
        stack = u[None]  # (1, p, k); the ensemble adds m perturbed copies after U itself
        if cfg.strategy == "ensemble":
            stack = np.concatenate([stack, perturbed_factors(u, cfg.ensemble, cfg.perturb, rng, self.coverage_)])
        return stack.astype(np.float32)  # scores only rank candidates: float32 halves the memory traffic

    def score_items(self, items: tuple[SparseBatch, ...], factor: np.ndarray, rng: np.random.Generator
                    ) -> np.ndarray:
        """The configured strategy's score for each candidate: ``(n,)``, in blocks of :meth:`_block_rows`."""
        n = len(items[0])
        if self.config.strategy == "random":
            return np.zeros(n)
        stack = self.factors(factor, rng)
        out = np.empty(n)
        rows = self._block_rows()
        for lo in range(0, n, rows):
            sl = slice(lo, lo + rows)
            out[sl] = self._block_scores(tuple(x[sl] for x in items), stack)
        return out

    def scores(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, factor: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
        """The score of each triplet candidate ``(a, b, c)``: ``(n,)`` (:meth:`score_items`)."""
        return self.score_items((a, b, c), factor, rng)

    def propose(self, n: int, factor: np.ndarray | None, rng: np.random.Generator | None = None,
                start: int = 0, random_mask: np.ndarray | None = None) -> Proposal:
        """``n`` queries at positions ``start:start+n`` with their hold-out flags and scores.

        ``random_mask`` (n,) bool, when given, says which positions get the uniformly
        random hold-out queries (the loop passes a pure function of the position, so a
        resumed run agrees on them); otherwise the first ``floor(random_share·n + u)`` do.
        """
        if n < 0:
            raise ConfigError(f"Expect n ≥ 0 queries, got n={n}.")
        cfg = self.config
        rng = self.rng if rng is None else rng
        adaptive = cfg.strategy != "random" and factor is not None
        if random_mask is not None:
            random_mask = np.asarray(random_mask, dtype=bool)
            if random_mask.shape != (n,):
                raise ShapeError(f"Expect a random mask of shape ({n},), got {random_mask.shape}.")
            holdout = random_mask.copy() if adaptive else np.ones(n, dtype=bool)
        else:
            n_rand = n if not adaptive else min(n, int(np.floor(cfg.random_share * n + rng.random())))
            holdout = np.arange(n) < n_rand
        n_rand = int(holdout.sum())
        n_pick = n - n_rand
        parts = [self.sample(rng, n_rand)]
        order = np.concatenate([np.flatnonzero(holdout), np.flatnonzero(~holdout)])  # batch row of each part row
        score = np.full(n, np.nan)
        if n_pick:
            cand = self.sample(rng, cfg.pool * n_pick)
            s = self.score_items(cand, np.asarray(factor), rng)
            best = top_k(s, n_pick, rng)
            parts.append(tuple(x[best] for x in cand))
            score[order[n_rand:]] = s[best]
        inv = np.argsort(order, kind="stable")  # part rows back into batch order
        items = tuple(SparseBatch.concat([part[j] for part in parts])[inv] for j in range(len(parts[0])))
        queries = self.build(np.arange(start, start + n, dtype=np.int64), items)
        self.observe(queries)
        return Proposal(queries, holdout, score)

    def next_queries(self, n: int, factor: np.ndarray | None, rng: np.random.Generator | None = None,
                     start: int = 0) -> Queries:
        """The next ``n`` queries (``seq = start, start+1, …``)."""
        return self.propose(n, factor, rng, start).queries
