"""The incremental gradient learner, :class:`GradientLearner` (the package docstring says how it
works, :mod:`fbloop.learners.losses` what it fits)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, NonFiniteError, ShapeError
from ..records import TUPLE_KINDS, Queries, ranking_from_code
from ..sparse import SparseBatch, difference
from .columns import _Columns
from .config import LearnerConfig
from .losses import _pair_quads, _pair_residual, _triplet_loss, _tuple_loss
from .optim import _LazyAdam
from .rank import factor_rank, gap_candidates, psd_dof

DENSE_TRIPLETS_MAX = 1 << 24  # stored triplets × p up to which full-batch losses use dense rows
FULL_BLOCK = 1 << 16  # triplets per block of a full-batch loss and gradient: memory of a block, whatever is stored
DENSE_BLOCK_MAX = 1 << 21  # a block's triplets × p up to which it becomes dense rows when the whole is not
MAX_SOURCES = 1 << 16  # triplet source ids name agents: their ε live in a tensor indexed by id
ARRIVAL_REPLAY = 10  # draws per new answer while answers stream in (large problems)
KAPPA_MIN = 1.0  # a learnt κ stays at or above this (T = 1: answers that barely follow the distances)
KAPPA_START = 10.0  # learn_sharpness: each source's κ until its own is fitted
KAPPA_GRID = 48  # κ candidates, log-spaced from KAPPA_MIN to the config's sharpness (~9 % apart at 50)
KAPPA_SAMPLE = 8192  # answers of each kind the final fit's κ is fitted on (a uniform sample beyond)
KAPPA_MIN_ANSWERS = 64  # a source's scored answers before its κ is fitted
KAPPA_HALF_LIFE = 2048  # the streaming κ: answers after which a scored answer's weight has halved


class GradientLearner:
    """``Φ̂ = U Uᵀ`` fitted to equality pairs and/or ternary triplets as they arrive."""

    def __init__(self, p: int, config: LearnerConfig = LearnerConfig(), anchor: SparseBatch | None = None):
        if p < 2:
            raise ConfigError(f"Expect p ≥ 2, got p={p}.")
        self.p = p
        self.config = config
        self.rank = factor_rank(p, config.rank)
        dtype = config.dtype if config.dtype != "auto" else ("float64" if p <= 2048 else "float32")
        self.dtype = getattr(torch, dtype)
        self.device = torch.device(config.device)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        elif self.device.type == "cpu" and p * self.rank <= 1 << 16:
            # Tiny tensors: thread hand-offs cost more than the arithmetic (5–20× here).
            torch.set_num_threads(1)
        self.gen = torch.Generator(device="cpu").manual_seed(config.seed)
        if anchor is not None and (len(anchor) != 1 or anchor.p != p):
            raise ShapeError(f"Expect a single anchor row in R^{p}, got {len(anchor)} rows in R^{anchor.p}.")
        self.anchor = anchor
        scale = 1.0
        if anchor is not None:
            scale = 1.0 / max(float(np.linalg.norm(anchor.values)), 1e-12)
        self.U = self._initial_u(p, scale)  # (p, r)
        self.opt = _LazyAdam((p, self.rank), config.lr, self.device, self.dtype)
        i32, fl = torch.int32, self.dtype
        held = dict(max_rows=config.max_rows, seed=config.seed)
        self._pairs = _Columns((i32, fl, fl), self.device, **held)  # idx (n, s), val (n, s), c (n,)
        self._trips = _Columns((i32, fl, i32, fl, fl, i32), self.device, **held)  # a−b, a−c as idx/val; t; source
        # Tuple answers (closest, rank, odd), one store per option count k: option diffs idx/val (n, k, s),
        # the observation (n, k) (a choice in column 0, or a ranking), mode (n,) 0 choice / 1 ranking, source.
        self._tuples: dict[int, _Columns] = {}
        self._held = held
        self._noise = torch.zeros(1, dtype=self.dtype, device=self.device)  # (sources,) ε per source id
        self._noisy = False  # some source has ε > 0 (a flag, so a step need not read the device)
        # learn_sharpness: every answer is fitted at its source's κ (KAPPA_START until fitted); else at the
        # config's sharpness
        self._learnt = config.learn_sharpness
        self._kappa_start = min(KAPPA_START, config.sharpness) if self._learnt else config.sharpness
        self._kappa = torch.full((1,), self._kappa_start, dtype=self.dtype, device=self.device)  # (sources,) κ
        self._fitted = torch.zeros(1, dtype=torch.bool, device=self.device)  # (sources,) κ fitted to its answers
        # the κ candidates: KAPPA_GRID log-spaced values in [KAPPA_MIN, sharpness]
        lo = math.log10(min(KAPPA_MIN, config.sharpness))
        self._kappa_grid = torch.logspace(lo, math.log10(config.sharpness), KAPPA_GRID, dtype=self.dtype,
                                          device=self.device)
        self._kappa_values = self._kappa_grid.tolist()
        # the streaming κ's evidence: each source's decayed sum of new answers' losses over the κ grid, and
        # how many answers it scored
        self._pre_nll = torch.zeros(1, KAPPA_GRID, dtype=self.dtype, device=self.device)
        self._pre_n = torch.zeros(1, dtype=self.dtype, device=self.device)
        if anchor is not None:
            self._anchor_idx = torch.as_tensor(anchor.indices[0], device=self.device)  # (s_a,) int64
            self._anchor_val = torch.as_tensor(anchor.values[0], device=self.device, dtype=self.dtype)
        self._dense: tuple[torch.Tensor, ...] | None = None  # see _dense_triplets
        self.batch_size = config.batch_size  # minibatch size now (the large final fit raises it)
        self.steps = 0
        self.last_loss = float("nan")

    # ------------------------------------------------------------ data

    @property
    def n_pairs(self) -> int:
        return len(self._pairs)

    @property
    def n_triplets(self) -> int:
        return len(self._trips)

    @property
    def n_given(self) -> int:
        """Answers of every kind given to the learner (more than it holds once ``max_rows`` is reached)."""
        return self._pairs.seen + self._trips.seen + sum(c.seen for c in self._tuples.values())

    def add_pairs(self, u: SparseBatch, c: np.ndarray) -> None:
        """Equality pairs: ``uᵀΦu = c·yᵀΦy`` for each row of ``u``."""
        c = np.asarray(c, dtype=np.float64)
        if u.p != self.p or len(u) != len(c):
            raise ShapeError(f"Expect {len(u)} scales for activations in R^{self.p}, got {len(c)} in R^{u.p}.")
        if not np.all(np.isfinite(c)):
            raise NonFiniteError("Pair scales hold NaN or Inf.")
        if self.anchor is None:
            raise ConfigError("Pairs need an anchor: construct the learner with anchor=...")
        if len(c):
            self._pairs.append(u.indices, u.values, c)

    def add_triplets(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, t: np.ndarray,
                     source: int | np.ndarray = 0) -> None:
        """Ternary answers ``t`` (+1: a closer to b, −1: closer to c, 0: tie).

        ``source`` names who answered — one id ≥ 0 for the chunk, or one per triplet — so that
        :meth:`set_source_noise` can tell the loss how often each source flips its answers.
        """
        t = np.asarray(t, dtype=np.float64)
        if not (len(a) == len(b) == len(c) == len(t)) or {a.p, b.p, c.p} != {self.p}:
            raise ShapeError(f"Expect triplets and answers of one length in R^{self.p}.")
        if not np.all(np.isin(t, (-1.0, 0.0, 1.0))):
            raise ConfigError(f"Expect triplet answers in {{-1, 0, 1}}, got {np.unique(t)[:5]}.")
        src = np.asarray(source)
        if src.ndim == 0:
            src = np.full(len(t), src)
        if src.shape != t.shape:
            raise ShapeError(f"Expect one source or {len(t)} (one per triplet), got shape {src.shape}.")
        if src.dtype.kind not in "iu" or (len(src) and not 0 <= src.min() <= src.max() < MAX_SOURCES):
            raise ConfigError(f"Expect integer source ids in [0, {MAX_SOURCES}), got {np.unique(src)[:5]} "
                              f"({src.dtype}).")
        if len(t):
            self._grow_sources(int(src.max()) + 1)
            ab, ac = difference(a, b), difference(a, c)
            self._score_new("triplet", (ab, ac), t, None, src)
            self._trips.append(ab.indices, ab.values, ac.indices, ac.values, t, src)

    INIT_BLOCK_ABOVE = 1 << 26  # p·r above which U is drawn a block of rows at a time

    def _initial_u(self, p: int, scale: float) -> torch.Tensor:
        """``U``'s start, ``N(0, scale²/r)`` entries drawn in float64. Above :data:`INIT_BLOCK_ABOVE`
        entries the draw goes a block of 65,536 rows at a time, so no ``p × r`` float64 temporary is
        made (1 GiB at p = 262,144, r = 512; the same law, another stream of draws)."""
        r = self.rank
        if p * r <= self.INIT_BLOCK_ABOVE:
            u0 = torch.randn(p, r, generator=self.gen, dtype=torch.float64).mul_(scale).div_(np.sqrt(r))
            return u0.to(self.device, self.dtype)
        u = torch.empty(p, r, dtype=self.dtype, device=self.device)
        for lo in range(0, p, 65_536):
            rows = min(65_536, p - lo)
            block = torch.randn(rows, r, generator=self.gen, dtype=torch.float64).mul_(scale).div_(np.sqrt(r))
            u[lo:lo + rows] = block.to(self.device, self.dtype)
        return u

    @property
    def n_tuples(self) -> int:
        return sum(len(c) for c in self._tuples.values())

    def add_tuples(self, queries: Queries, value: np.ndarray, source: int | np.ndarray = 0) -> None:
        """Answers to closest-of-k, rank-k or odd-one-out ``queries`` (values as :mod:`fbloop.records`
        stores them), fitted by :func:`fbloop.learners.losses._tuple_loss`; ``source`` as for triplets."""
        value = np.asarray(value, dtype=np.float64)
        if queries.kind not in TUPLE_KINDS:
            raise ConfigError(f"Expect {list(TUPLE_KINDS)} queries, got {queries.kind!r}.")
        if len(queries) != len(value) or queries.a.p != self.p:
            raise ShapeError(f"Expect {len(queries)} answers to queries in R^{self.p}, got {len(value)} "
                             f"in R^{queries.a.p}.")
        src = self._source_ids(source, len(value))
        if not len(value):
            return
        k = queries.k
        if queries.kind == "odd":
            a, b, c = queries.a, queries.b, queries.c
            diffs = [difference(b, c), difference(a, c), difference(a, b)]
        else:
            diffs = [difference(queries.a, x) for x in queries.cands]
        obs = np.zeros((len(value), k), np.int64)
        if queries.kind == "rank":
            obs[:] = ranking_from_code(value, k)
        else:
            lo = 0 if queries.kind == "closest" else 1  # 0: no clear winner (closest only)
            if not np.isin(value, np.arange(lo, k + 1)).all():
                raise ConfigError(f"Expect {queries.kind} answers in {lo}…{k}, got {np.unique(value)[:5]}.")
            obs[:, 0] = value.astype(np.int64) - 1  # −1: no clear winner
        s = max(x.indices.shape[1] for x in diffs)
        pad = lambda arr: np.pad(arr, ((0, 0), (0, s - arr.shape[1])))  # noqa: E731
        idx = np.stack([pad(x.indices) for x in diffs], axis=1)  # (n, k, s)
        val = np.stack([pad(x.values) for x in diffs], axis=1)
        mode = np.full(len(value), int(queries.kind == "rank"))
        self._grow_sources(int(src.max()) + 1)
        i32 = torch.int32
        cols = self._tuples.setdefault(k, _Columns((i32, self.dtype, i32, i32, i32), self.device,
                                                                **self._held))
        self._score_new("tuple", (idx, val), obs, mode, src)
        cols.append(idx, val, obs, mode, src)

    def _source_ids(self, source: int | np.ndarray, n: int) -> np.ndarray:
        src = np.asarray(source)
        if src.ndim == 0:
            src = np.full(n, src)
        if src.shape != (n,):
            raise ShapeError(f"Expect one source or {n} (one per answer), got shape {src.shape}.")
        if src.dtype.kind not in "iu" or (n and not 0 <= src.min() <= src.max() < MAX_SOURCES):
            raise ConfigError(f"Expect integer source ids in [0, {MAX_SOURCES}), got {np.unique(src)[:5]} "
                              f"({src.dtype}).")
        return src

    def _tuple_terms(self, W: torch.Tensor, picked: list[tuple], invs: list[torch.Tensor], kappa: float | None,
                     noise: bool = True) -> torch.Tensor:
        """Mean tuple loss over ``picked`` (per k: val, obs, mode, src) with each one's gathered ``invs``."""
        losses = []
        for (val, obs, mode, src), inv in zip(picked, invs):
            n, k, s = val.shape
            d = _pair_quads(W, inv.reshape(n * k, s), val.reshape(n * k, s)).reshape(n, k)  # (n, k)
            eps = self._eps(src) if noise else None
            losses.append(_tuple_loss(d, obs, mode, self._sharp(src, kappa), self.config.tie_band, eps))
        return torch.cat(losses).mean()

    def set_source_noise(self, eps: dict[int, float]) -> None:
        """Each source's flip rate ``ε`` ∈ [0, 0.5) (``{source_id: ε}``; sources not named keep theirs, 0
        unless set): its ±1 answers are then fitted with the flip-robust loss (fbloop.learners.losses)."""
        for k, e in eps.items():
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < MAX_SOURCES:
                raise ConfigError(f"Expect integer source ids in [0, {MAX_SOURCES}), got {k!r}.")
            if not (isinstance(e, (int, float, np.integer, np.floating)) and 0 <= e < 0.5):
                raise ConfigError(f"Expect a flip rate ε in [0, 0.5) for source {k}, got {e!r}.")
        if eps:
            self._grow_sources(max(int(k) for k in eps) + 1)
        for k, e in eps.items():
            self._noise[int(k)] = float(e)
        self._noisy = bool((self._noise > 0).any())

    @property
    def source_noise(self) -> dict[int, float]:
        """``{source_id: ε}`` for every source seen or set (0 where none was set)."""
        return {k: float(e) for k, e in enumerate(self._noise.tolist())}

    def _grow_sources(self, n: int) -> None:
        if n > len(self._noise):
            grow = n - len(self._noise)
            self._noise = torch.cat([self._noise, self._noise.new_zeros(grow)])
            self._kappa = torch.cat([self._kappa, self._kappa.new_full((grow,), self._kappa_start)])
            self._fitted = torch.cat([self._fitted, self._fitted.new_zeros(grow)])

    def _eps(self, src: torch.Tensor) -> torch.Tensor | None:
        """Per-triplet ``ε`` for source ids ``src``; None while every source is taken as exact, so
        the loss is the plain logistic one."""
        return self._noise[src] if self._noisy else None

    # ------------------------------------------------------------ each source's sharpness

    def _sharp(self, src: torch.Tensor, kappa: float | None = None) -> float | torch.Tensor:
        """The κ each answer of sources ``src`` is fitted at: ``kappa`` (a sharper polish's) or the config's
        sharpness while no source's κ is learnt; else each source's learnt κ — a source at the cap (its
        answers look exact) takes ``kappa`` where one is given."""
        cap = self.config.sharpness
        base = cap if kappa is None else kappa
        if not self._learnt:
            return base
        k = self._kappa[src]
        return k if kappa is None else torch.where(k >= cap, k.new_tensor(base), k)

    @property
    def source_sharpness(self) -> dict[int, float]:
        """``{source_id: κ}`` for every source whose κ was fitted (:meth:`fit_sharpness`)."""
        return {k: float(v) for k, (v, f) in enumerate(zip(self._kappa.tolist(), self._fitted.tolist())) if f}

    def fit_sharpness(self, final: bool = False) -> dict[int, float]:
        """Each source's κ (``learn_sharpness``), from :data:`KAPPA_GRID` log-spaced values in
        ``[KAPPA_MIN, sharpness]``; returns the fitted ones.

        - While answers stream in (``final=False``): the κ at which the current ``Φ̂`` best predicted the
          source's new answers — each answer is scored over the grid as it is added, before any step
          learns it (prequential), the scores decaying with a half-life of :data:`KAPPA_HALF_LIFE`
          answers. From :data:`KAPPA_MIN_ANSWERS` scored answers on; until then :data:`KAPPA_START`.
          Scored before it is learnt, an answer cannot flatter ``Φ̂``: a source's κ stays low while
          ``Φ̂`` is poor and rises as it improves, up to about ``1/T`` for answers at temperature ``T``.
        - For the final fit (``final=True``): the maximum-likelihood κ of a sample of each source's
          answers (up to :data:`KAPPA_SAMPLE` of each kind) under the fitted ``Φ̂`` — with every answer in,
          the fit no longer improves much on what it was fitted to. A source whose answers ``Φ̂``
          separates perfectly (exact ones) reaches the cap, where the final fit has always fitted them.
        """
        if not self.config.learn_sharpness:
            return {}
        nll, count = self._sample_nll() if final else (self._pre_nll, self._pre_n)
        fit = count >= KAPPA_MIN_ANSWERS
        if bool(fit.any()):
            n = len(fit)
            self._kappa[:n] = torch.where(fit, self._kappa_grid[nll.argmin(dim=1)], self._kappa[:n])
            self._fitted[:n] |= fit
        return self.source_sharpness

    def _sample_nll(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each source's summed loss over the κ grid on a sample of its held answers, and their count."""
        nll = torch.zeros(len(self._noise), KAPPA_GRID, dtype=self.dtype, device=self.device)
        count = torch.zeros(len(self._noise), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            for losses, src in self._sample_losses():
                self._add_over_grid(nll, count, losses, src)
        return nll, count

    def _score_new(self, kind: str, rows: tuple, obs: np.ndarray, mode: np.ndarray | None, src: np.ndarray) -> None:
        """The streaming κ's evidence (:meth:`fit_sharpness`): new answers' losses over the κ grid under the
        current ``U``, before any step learns them, added to their sources' decayed sums. Not before the
        first step (a resumed run's replayed answers meet an untrained ``U``)."""
        if not self.config.learn_sharpness or self.steps == 0:
            return
        dev, dt = self.device, self.dtype

        def quads(idx: np.ndarray, val: np.ndarray) -> torch.Tensor:
            return _pair_quads(self.U, torch.as_tensor(idx, device=dev), torch.as_tensor(val, dtype=dt, device=dev))

        s_ = torch.as_tensor(src, device=dev).long()
        with torch.no_grad():
            if kind == "triplet":
                d_ab, d_ac = quads(rows[0].indices, rows[0].values), quads(rows[1].indices, rows[1].values)
                losses = self._triplet_losses(d_ab, d_ac, torch.as_tensor(obs, dtype=dt, device=dev), s_)
            else:
                idx, val = rows
                n, k, s = idx.shape
                d = quads(idx.reshape(n * k, s), val.reshape(n * k, s)).reshape(n, k)
                losses = self._tuple_losses(d, torch.as_tensor(obs, device=dev), torch.as_tensor(mode, device=dev), s_)
            grow = len(self._noise) - len(self._pre_n)
            if grow > 0:
                self._pre_nll = torch.cat([self._pre_nll, self._pre_nll.new_zeros(grow, KAPPA_GRID)])
                self._pre_n = torch.cat([self._pre_n, self._pre_n.new_zeros(grow)])
            self._pre_nll *= 0.5 ** (len(src) / KAPPA_HALF_LIFE)
            self._add_over_grid(self._pre_nll, self._pre_n, losses, s_)

    def _add_over_grid(self, nll: torch.Tensor, count: torch.Tensor, losses: Callable[[float], torch.Tensor],
                       src: torch.Tensor) -> None:
        """Add each answer's loss at every κ of the grid to its source's row of ``nll``, and one to ``count``."""
        for g, kap in enumerate(self._kappa_values):
            nll[:, g].index_add_(0, src, losses(kap))
        count.index_add_(0, src, torch.ones(len(src), dtype=self.dtype, device=self.device))

    def _triplet_losses(self, d_ab: torch.Tensor, d_ac: torch.Tensor, t: torch.Tensor, src: torch.Tensor
                        ) -> Callable[[float], torch.Tensor]:
        """``κ ↦`` each triplet's loss at sharpness κ (its source's flip rate included)."""
        eps, band = self._eps(src), self.config.tie_band
        return lambda kap: _triplet_loss(d_ab, d_ac, t, kap, band, eps)

    def _tuple_losses(self, d: torch.Tensor, obs: torch.Tensor, mode: torch.Tensor, src: torch.Tensor
                      ) -> Callable[[float], torch.Tensor]:
        """``κ ↦`` each tuple answer's loss at sharpness κ (its source's flip rate included)."""
        eps, band = self._eps(src), self.config.tie_band
        return lambda kap: _tuple_loss(d, obs, mode, kap, band, eps)

    def _sample_losses(self) -> Iterator[tuple[Callable[[float], torch.Tensor], torch.Tensor]]:
        """Per kind of answer held: ``(κ ↦ per-answer losses, sources)`` on a sample of its answers."""
        def pick(n: int) -> torch.Tensor | None:
            return None if n <= KAPPA_SAMPLE else torch.randint(0, n, (KAPPA_SAMPLE,), generator=self.gen
                                                                 ).to(self.device)

        if self._trips:
            i_ab, v_ab, i_ac, v_ac, t, src = self._trips.take(pick(len(self._trips)))
            src = src.long()
            yield self._triplet_losses(_pair_quads(self.U, i_ab, v_ab), _pair_quads(self.U, i_ac, v_ac), t, src), src
        for cols in self._tuples.values():
            idx, val, obs, mode, src = cols.take(pick(len(cols)))
            n, k, s = val.shape
            d = _pair_quads(self.U, idx.reshape(n * k, s), val.reshape(n * k, s)).reshape(n, k)
            src = src.long()
            yield self._tuple_losses(d, obs, mode, src), src

    # ------------------------------------------------------------ optimisation

    def _batch(self, n: int) -> torch.Tensor | None:
        if n <= self.batch_size:
            return None  # full batch
        return torch.randint(0, n, (self.batch_size,), generator=self.gen).to(self.device)

    def _loss_rows(self, pick_pairs: bool, pick_trips: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss over one minibatch, as a function of the gathered rows it touches."""
        groups: list[torch.Tensor] = []  # index arrays to gather, in order
        pairs = trips = None
        if pick_pairs:
            idx, val, c = self._pairs.take(self._batch(len(self._pairs)))
            a_idx, a_val = self._anchor_idx[None], self._anchor_val[None]
            pairs = (val, c, a_val)
            groups += [idx, a_idx]
        if pick_trips:
            i_ab, v_ab, i_ac, v_ac, t, src = self._trips.take(self._batch(len(self._trips)))
            trips = (v_ab, v_ac, t, self._eps(src), self._sharp(src))
            groups += [i_ab, i_ac]
        picked = []
        for cols in self._tuples.values():
            idx, val, obs, mode, src = cols.take(self._batch(len(cols)))
            picked.append((val, obs, mode, src))
            groups.append(idx)
        flat = torch.cat([g.reshape(-1) for g in groups])
        rows, inv_flat = torch.unique(flat, return_inverse=True)
        invs, start = [], 0
        for g in groups:
            invs.append(inv_flat[start:start + g.numel()].reshape(g.shape))
            start += g.numel()
        W = self.U[rows].clone().requires_grad_(True)  # (R, r) the only rows this step touches
        loss = W.new_zeros(())
        k = 0
        if pairs is not None:
            val, c, a_val = pairs
            q = _pair_quads(W, invs[0], val)
            qa = _pair_quads(W, invs[1], a_val)
            loss = loss + _pair_residual(q, c, self.config.pair_loss).mean() + ((qa - 1.0) ** 2).sum()
            k = 2
        if trips is not None:
            v_ab, v_ac, t, eps, kap = trips
            d_ab = _pair_quads(W, invs[k], v_ab)
            d_ac = _pair_quads(W, invs[k + 1], v_ac)
            loss = loss + _triplet_loss(d_ab, d_ac, t, kap, self.config.tie_band, eps).mean()
            k += 2
        if picked:
            loss = loss + self._tuple_terms(W, picked, invs[k:], None)
        if self.config.weight_decay and pairs is not None:
            loss = loss + self.config.weight_decay * (W * W).sum() * (len(rows) / self.p)
        return loss, W, rows

    def _pair_grad(self, want_loss: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One minibatch of pairs without autograd: ``(rows, grad, loss)``.

        The same loss as :meth:`_loss_rows` on pairs alone; ``rows`` (R,) are the
        sorted unique rows the batch and the anchor touch, ``grad`` (R, r) its
        gradient there. ``loss`` (a 0-d tensor) only when ``want_loss``.
        """
        cfg = self.config
        idx, val, c = self._pairs.take(self._batch(len(self._pairs)))  # (B, s) int64, (B, s), (B,)
        n, s = idx.shape
        a_idx, a_val = self._anchor_idx, self._anchor_val  # (s_a,)
        # The anchor rides along as bag n. Rows shorter than the wider of the two are padded with
        # their own first index at value 0, so padding touches no row the autograd path would not.
        w = max(s, len(a_idx))
        if s < w:
            idx, val = torch.cat([idx, idx[:, :1].expand(n, w - s)], 1), F.pad(val, (0, w - s))
        a_idx = torch.cat([a_idx, a_idx[:1].expand(w - len(a_idx))])
        idx = torch.cat([idx, a_idx.unsqueeze(0)])  # (B+1, w)
        val = torch.cat([val, F.pad(a_val, (0, w - len(a_val))).unsqueeze(0)])  # (B+1, w)
        proj = F.embedding_bag(idx, self.U, per_sample_weights=val, mode="sum")  # (B+1, r): Uᵀu_i, Uᵀy
        norm = torch.linalg.vector_norm(proj, dim=1)  # (B+1,); 5× faster than (proj * proj).sum(1) here
        q, qa = norm[:n] * norm[:n], norm[n] * norm[n]
        if cfg.pair_loss == "paper":  # ℓ = (q − c)², ℓ' = 2(q − c)
            res = q - c
            dq = 2 * res
        else:  # ℓ = (√q − √c)², ℓ' = 1 − √c/√q
            root = torch.sqrt(q + 1e-30)
            res = root - torch.sqrt(c)
            dq = res / root
        loss = (res @ res) / n + (qa - 1) ** 2 if want_loss else None
        # ∂loss/∂proj_i = 2ℓ'(q_i)·proj_i / B for the pairs, 4(qa − 1)·Uᵀy for the anchor term.
        g_proj = proj.mul_(torch.cat([dq * (2.0 / n), (4 * (qa - 1)).reshape(1)]).unsqueeze(1))  # (B+1, r)
        # ∂loss/∂U[j] = Σ over slots (i, k) with idx_ik = j of val_ik·g_proj_i: sort the slots by row,
        # then one embedding_bag sums each row's bag — 2–3× faster here than index_add_ of the
        # per-slot products, and without their (B·s, r) temporary.
        flat, order = idx.view(-1).sort()  # ((B+1)·w,)
        rows, counts = torch.unique_consecutive(flat, return_counts=True)  # (R,) sorted
        grad = F.embedding_bag(order // w, g_proj, counts.cumsum(0).sub_(counts),
                               per_sample_weights=val.view(-1)[order], mode="sum")  # (R, r)
        if cfg.weight_decay:
            u_rows = self.U.index_select(0, rows)  # (R, r)
            k = cfg.weight_decay * len(rows) / self.p
            grad.add_(u_rows, alpha=2 * k)
            if want_loss:
                loss = loss + k * torch.linalg.vector_norm(u_rows) ** 2
        return rows, grad, loss

    def arrival_steps(self, new: int) -> int:
        """Steps to take after ``new`` answers arrive: ``steps_per_chunk`` while a step sees every
        stored answer, else enough for each new answer to be drawn ~``ARRIVAL_REPLAY`` times
        (capped at ``steps_per_chunk``) — so learning while answers stream in costs O(answers),
        not O(chunks · batch), and the final fit does the rest."""
        cfg = self.config
        if max(self.n_pairs, self.n_triplets, self.n_tuples) <= cfg.batch_size:
            return cfg.steps_per_chunk
        return min(cfg.steps_per_chunk, max(1, math.ceil(ARRIVAL_REPLAY * new / cfg.batch_size)))

    def step(self, n_steps: int = 1) -> float:
        """``n_steps`` Adam steps on minibatches of everything stored; returns the last loss."""
        has_p, has_t = bool(self._pairs), bool(self._trips)
        has_k = bool(self._tuples)
        if not (has_p or has_t or has_k):
            return float("nan")
        clip = self.config.clip
        on_cpu = self.device.type == "cpu"  # on a GPU, check for a non-finite gradient once per call
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for i in range(n_steps):
            last = i == n_steps - 1
            if has_t or has_k:
                loss, W, rows = self._loss_rows(has_p, has_t)
                (grad,) = torch.autograd.grad(loss, W)
            else:
                rows, grad, loss = self._pair_grad(want_loss=last)
            norm = grad.norm()
            if on_cpu:
                norm = float(norm)
                if not np.isfinite(norm):
                    raise NonFiniteError(f"Learner gradient became {norm} at step {self.steps}; lower lr.")
                if clip and norm > clip:
                    grad.mul_(clip / norm)
            else:
                bad |= ~torch.isfinite(norm)
                if clip:
                    grad.mul_(torch.clamp(clip / norm, max=1.0))
            with torch.no_grad():
                self.opt.step(self.U, rows, grad)
            self.steps += 1
            if last:
                self.last_loss = float(loss.detach())
        if bool(bad):
            raise NonFiniteError(f"Learner gradient became non-finite before step {self.steps}; lower lr.")
        return self.last_loss

    def finish(self, tol: float = 1e-16, progress: Callable[[int, int, float], None] | None = None,
               stage: Callable[[str], None] | None = None) -> float:
        """Fit to convergence on all stored answers; returns the final loss.

        Small problems: up to ``final_steps`` Adam steps, stopping once the loss no
        longer falls, then a full-batch L-BFGS polish. Large ones (millions of
        answers, where a minibatch loss is too noisy to stop on): ``final_epochs``
        passes over the stored answers (at least ``final_steps`` steps) with the
        learning rate decaying on a cosine from ``lr`` to ``lr · final_lr_ratio``
        and minibatches of ``final_batch`` (at least ``batch_size``) —
        the decay removes the noise floor a constant Adam step leaves (on a
        p = 1024, rank-128, 250k-pair sparse problem: PCC 0.9916 plateau at a
        constant lr = 3e-3). ``progress(done, total, loss)`` is called every block
        of steps; ``stage(name)`` as each uncounted stage begins (the L-BFGS polish,
        the rank choice), so that a display can say what the fit is doing.
        """
        stage = stage or (lambda name: None)
        cfg = self.config
        if self._small():
            best = float("inf")
            for start in range(0, cfg.final_steps, 100):
                loss = self.step(min(100, cfg.final_steps - start))
                if progress:
                    progress(min(start + 100, cfg.final_steps), cfg.final_steps, loss)
                if loss < tol or loss > best * (1 - 1e-4):
                    break  # converged, or no longer improving
                best = loss
            if cfg.polish:
                stage("L-BFGS polish")
                adam_u = self.U
                self._polish()
                if self._noisy:
                    # The flip-robust loss is flat wherever |κρ| is large, so a polish from Adam's U
                    # can stop in a basin that a fit taking every source as exact avoids: polish
                    # Adam's U that way first too, then flip-robust, and keep the lower flip-robust
                    # loss. (p = 32, rank 8 fixed, 5,000 answers from one source flipping 30%: PCC
                    # 0.601 from Adam's U directly, 0.791 by way of the exact-source fit; 0.704 with
                    # ε = 0.)
                    direct = (self.U, self.last_loss)
                    self.U = adam_u
                    self._polish(noise=False)
                    self._polish()
                    if direct[1] < self.last_loss:
                        self.U, self.last_loss = direct
            if cfg.polish and (self._trips or self._tuples) and not self._pairs:
                stage("rank choice" if cfg.rank is None and self.rank > 1 else "sharpened polish")
                self._refine_triplets()
            return self.last_loss
        n = max(self.n_pairs, self.n_triplets, self.n_tuples)
        self.batch_size = max(cfg.batch_size, cfg.final_batch)
        total = max(cfg.final_steps, math.ceil(cfg.final_epochs * n / self.batch_size))
        block = max(100, total // 200)
        lo = cfg.lr * cfg.final_lr_ratio
        try:
            for done in range(0, total, block):
                self.opt.lr = lo + 0.5 * (cfg.lr - lo) * (1 + math.cos(math.pi * done / total))
                loss = self.step(min(block, total - done))
                if progress:
                    progress(min(done + block, total), total, loss)
                if loss < tol:
                    break
        finally:
            self.opt.lr, self.batch_size = cfg.lr, cfg.batch_size
        return self.last_loss

    def _small(self) -> bool:
        n = self.n_pairs + self.n_triplets + sum(len(c) * k for k, c in self._tuples.items())
        return n * self.rank <= 1e7 and self.p * self.rank <= 4e6

    def _dense_triplets(self) -> tuple[torch.Tensor, ...] | None:
        """Every stored triplet as dense rows ``(a−b, a−c, t, source)``: ``(n, p)``, ``(n, p)``, ``(n,)``,
        ``(n,)``, when that is small (cached).

        Full-batch losses then cost two matmuls instead of gathering ``(n, s, r)``
        rows of ``U`` — 10–20× faster for Gaussian triplets at p = 32.
        """
        n = len(self._trips)
        if n * self.p > DENSE_TRIPLETS_MAX:
            return None
        if self._dense is None or self._dense[0].shape[0] != n:
            i_ab, v_ab, i_ac, v_ac, t, src = self._trips.view()
            x_ab = self.U.new_zeros(n, self.p).scatter_add_(1, i_ab, v_ab)  # (n, p); padding adds 0 at index 0
            x_ac = self.U.new_zeros(n, self.p).scatter_add_(1, i_ac, v_ac)  # (n, p)
            self._dense = (x_ab, x_ac, t, src)
        return self._dense

    def _refine_triplets(self) -> None:
        """After the polish, on triplets alone: choose the rank by AIC among cuts at ``Φ̂``'s eigenvalue gaps,
        fitted at ``final_sharpness``.

        With ``rank=None`` the learner starts at full rank ``R = min(p, 512)``, which
        fits noise-free answers with a spread of small eigenvalues. Each candidate
        rank ``k`` — the cuts at the (up to 4) largest eigenvalue ratios
        ``λ_k/λ_k+1 ≥ rank_gap`` among eigenvalues above 1% of the largest, and ``R``
        itself — is fitted by L-BFGS at ``κ = final_sharpness`` from ``U``'s top-``k``
        eigenvectors, and scored ``n·loss_k + dof_k`` (AIC: the mean loss is the
        negative log-likelihood per answer of a logistic answer model with
        temperature ``1/κ``, flipped at the sources' ``ε`` where set;
        ``dof_k = p·k − k(k−1)/2``). The lowest score wins; a
        candidate whose ``dof_k`` alone exceeds the best score is not fitted.

        Measured on noise-free Gaussian triplets at the default settings, seeds 0–5,
        rank found and PCC before (cut at the single largest gap ratio ≥ 3, else kept
        full rank) → after (AIC):

        - p = 32, rank 8, 5,000 answers: seed 5 kept rank 32 (the target's 8th
          eigenvalue is 0.106 of its first; the fit's ratio there was 2.4), PCC
          0.99553 → rank 8, 0.99817; seeds 0–4 rank 8 before and after (0.99797,
          0.99807, 0.99796, 0.99826, 0.99811).
        - p = 10, rank 4, 1,000 answers: seed 2 cut at rank 6 (a larger ratio among
          the tail eigenvalues, 5.9 against 4.9), PCC 0.99820 → rank 4, 0.99927;
          seeds 0, 1, 3, 4, 5 rank 4 before and after (0.99839, 0.99856, 0.99943,
          0.99913, 0.99763).

        AIC's margins there: ``n·loss`` falls by 2.5–206 per added degree of freedom
        from rank ``r − 1`` to the true ``r`` (2.5: p = 32's seed 5 and its weak
        eigenvalue) and by 0.07–0.27 per degree from ``r`` to ``r + 1``; the penalty
        is 1 per degree. The extra fits cost ~0.5 s of CPU per p = 32 fit (the whole
        fit: 10–30 s, mostly Adam).

        Seeds that still miss PCC 0.998 (p = 10 seed 5, by 0.00037; p = 32 seeds 0
        and 2, by 0.00003 and 0.00004) do so at the true rank, where the fit is
        converged (more L-BFGS iterations change nothing) and unique (8 random
        restarts at p = 10 reach one loss). Tried there, none raising every seed:
        other final ``κ`` (30–1000: 100 is best or within 0.00005 of the best on 10
        of the 12), averaging the fits over ``κ``, margins normalised by
        ``‖Φ̂‖_F·‖A_i‖_F`` (p = 10 seed 5 → 0.99796, but p = 32 seed 4 0.99811 →
        0.99796) or by ``tr Φ̂``, a probit or exponential loss, a log-barrier
        (analytic-centre) finish (−0.0004 to −0.0009), and the posterior mean under
        a Gaussian-``U`` prior from hit-and-run and MALA samples (−0.001 to −0.0012).
        """
        cfg = self.config
        if cfg.rank is None and self.rank > 1:
            u = self.U.detach().to("cpu", torch.float64).numpy()
            lam, w = np.linalg.eigh(u.T @ u)  # Φ̂'s nonzero eigenvalues, ascending
            lam, w = lam[::-1], w[:, ::-1]
            n, best = len(self._trips) + self.n_tuples, None
            for k in gap_candidates(lam, cfg.rank_gap) + [self.rank]:
                if best is not None and psd_dof(self.p, k) >= best[0]:
                    break  # a larger rank cannot score lower: its penalty alone is higher
                top = torch.as_tensor(np.ascontiguousarray(w[:, :k]), dtype=self.dtype, device=self.device)
                U, loss = self._lbfgs(self.U @ top, cfg.final_sharpness)  # (p, k)
                if not np.isfinite(loss):
                    continue
                score = n * loss + psd_dof(self.p, k)
                if best is None or score < best[0]:
                    best = (score, k, U, loss)
            if best is not None:
                _, k, self.U, self.last_loss = best
                if k != self.rank:
                    self.rank = k
                    self.opt = _LazyAdam((self.p, k), cfg.lr, self.device, self.dtype)
                return
        self._polish(kappa=cfg.final_sharpness)

    def _full_loss(self, U: torch.Tensor, kappa: float | None = None, noise: bool = True,
                   triplets: bool = True) -> torch.Tensor:
        """Every stored answer's loss at ``U``; ``noise=False`` fits triplets as if every source were exact,
        ``triplets=False`` leaves them out. With more than :data:`FULL_BLOCK` triplets, take gradients
        through :meth:`_loss_backward` (here every block's graph would be kept until the backward pass)."""
        loss = U.new_zeros(())
        if self._pairs:
            idx, val, c = self._pairs.view()
            a_idx, a_val = self._anchor_idx[None], self._anchor_val[None]
            q = _pair_quads(U, idx, val)
            qa = _pair_quads(U, a_idx, a_val)
            # No λ here: the polish fits the answers themselves.
            loss = loss + _pair_residual(q, c, self.config.pair_loss).mean() + ((qa - 1.0) ** 2).sum()
        if self._trips and triplets:
            loss = loss + self._triplet_mean(U, kappa, noise)
        if self._tuples:
            views = [cols.view() for cols in self._tuples.values()]
            loss = loss + self._tuple_terms(U, [v[1:] for v in views], [v[0] for v in views], kappa, noise)
        return loss

    def _polish(self, max_iter: int = 300, kappa: float | None = None, noise: bool = True) -> None:
        """Full-batch L-BFGS from the Adam solution (pairs: drives residuals to ~0).

        ``kappa`` replaces the triplet loss's sharpness, ``noise=False`` drops the
        sources' flip rates; the result is then kept when it lowers that loss from
        where the polish started.
        """
        if kappa is not None or self._noisy:
            with torch.no_grad():
                self.last_loss = float(self._full_loss(self.U, kappa, noise))
        U, loss = self._lbfgs(self.U, kappa, max_iter, noise)
        if np.isfinite(loss) and loss <= self.last_loss:
            self.U = U
            self.last_loss = loss

    def _lbfgs(self, U0: torch.Tensor, kappa: float | None, max_iter: int = 300, noise: bool = True
               ) -> tuple[torch.Tensor, float]:
        """Full-batch L-BFGS on :meth:`_full_loss` from ``U0`` (not modified): ``(U, loss)``."""
        U = U0.detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([U], lr=1.0, max_iter=max_iter, tolerance_grad=1e-14,
                                tolerance_change=1e-20, history_size=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            return self._loss_backward(U, kappa, noise)

        opt.step(closure)
        with torch.no_grad():
            return U.detach(), float(self._full_loss(U, kappa, noise))

    def _triplet_blocks(self) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor]]:
        """The stored triplets, :data:`FULL_BLOCK` at a time: ``(rows, t, source)`` where ``rows`` is
        ``(x_ab, x_ac)``, dense ``(B, p)`` (the cached :meth:`_dense_triplets`, else built for the block
        when ``B·p ≤`` :data:`DENSE_BLOCK_MAX`), or ``(i_ab, v_ab, i_ac, v_ac)``, sparse ``(B, s)``."""
        dense = self._dense_triplets()
        n = len(self._trips)
        for lo in range(0, n, FULL_BLOCK):
            hi = min(lo + FULL_BLOCK, n)
            if dense is not None:
                x_ab, x_ac, t, src = (x[lo:hi] for x in dense)
                yield (x_ab, x_ac), t, src
                continue
            i_ab, v_ab, i_ac, v_ac, t, src = self._trips.rows(lo, hi)
            if (hi - lo) * self.p <= DENSE_BLOCK_MAX:
                x_ab = v_ab.new_zeros(hi - lo, self.p).scatter_add_(1, i_ab, v_ab)  # (B, p)
                x_ac = v_ac.new_zeros(hi - lo, self.p).scatter_add_(1, i_ac, v_ac)
                yield (x_ab, x_ac), t, src
            else:
                yield (i_ab, v_ab, i_ac, v_ac), t, src

    def _block_losses(self, U: torch.Tensor, rows: tuple[torch.Tensor, ...], t: torch.Tensor, src: torch.Tensor,
                      kappa: float | None, noise: bool) -> torch.Tensor:
        """Per-triplet losses ``(B,)`` of one block of :meth:`_triplet_blocks` at ``U``."""
        if len(rows) == 2:
            d_ab = (rows[0] @ U).square().sum(1)  # (B,)
            d_ac = (rows[1] @ U).square().sum(1)
        else:
            d_ab = _pair_quads(U, rows[0], rows[1])
            d_ac = _pair_quads(U, rows[2], rows[3])
        eps = self._eps(src) if noise else None
        return _triplet_loss(d_ab, d_ac, t, self._sharp(src, kappa), self.config.tie_band, eps)

    def _triplet_mean(self, U: torch.Tensor, kappa: float | None, noise: bool, backward: bool = False
                      ) -> torch.Tensor:
        """The stored triplets' mean loss at ``U`` (0-d), summed a block at a time; ``backward``: each
        block's share of the gradient is added to ``U.grad`` as it is computed and the result is
        detached, so only one block's graph is ever held."""
        n = len(self._trips)
        if n <= FULL_BLOCK:  # one block: the mean as it always was computed
            ((rows, t, src),) = self._triplet_blocks()
            loss = self._block_losses(U, rows, t, src, kappa, noise).mean()
            if backward:
                loss.backward()
            return loss.detach() if backward else loss
        total = U.new_zeros(())
        for rows, t, src in self._triplet_blocks():
            part = self._block_losses(U, rows, t, src, kappa, noise).sum() / n
            if backward:
                part.backward()
                part = part.detach()
            total = total + part
        return total

    def _loss_backward(self, U: torch.Tensor, kappa: float | None, noise: bool) -> torch.Tensor:
        """:meth:`_full_loss` at ``U`` (detached) with its gradient added to ``U.grad``, the triplets
        taken :data:`FULL_BLOCK` at a time: a full-batch step's memory is one block's, however many
        answers are stored (1M triplets at p = 32, rank 8: +0.6 GiB for one pass in one piece)."""
        if len(self._trips) <= FULL_BLOCK:
            loss = self._full_loss(U, kappa, noise)
            loss.backward()
            return loss.detach()
        rest = self._full_loss(U, kappa, noise, triplets=False)  # pairs, tuples: in one piece
        if rest.requires_grad:
            rest.backward()
        return rest.detach() + self._triplet_mean(U, kappa, noise, backward=True)

    # ------------------------------------------------------------ readout

    def factor(self) -> np.ndarray:
        """``U`` as a float64 numpy array of its own, shape ``(p, r)`` (one copy: a float32 ``U`` is
        copied by the conversion itself)."""
        u = self.U.detach().to("cpu", torch.float64)
        return u.numpy().copy() if u.data_ptr() == self.U.data_ptr() else u.numpy()

    def view(self) -> np.ndarray:
        """``U`` itself for a readout taken between steps, in its own dtype: no copy on the CPU (a
        float32 ``U`` at p = 262,144, r = 512 is read in place instead of copied to 1 GiB of float64).
        Not to be kept: the next step changes it."""
        u = self.U.detach()
        return u.numpy() if u.device.type == "cpu" else u.to("cpu").numpy()

    def phi(self) -> np.ndarray:
        """Dense ``Φ̂ = U Uᵀ`` (``p × p``); only for moderate ``p``."""
        u = self.factor()
        return u @ u.T

    def predict_triplets(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, band: float | None = None
                         ) -> np.ndarray:
        """The learner's own ternary answers (+1/−1/0) for triplets."""
        from ..sparse import quad_form

        u = self.factor()
        d_ab = quad_form(difference(a, b), u)
        d_ac = quad_form(difference(a, c), u)
        rho = (d_ac - d_ab) / np.maximum(d_ac + d_ab, 1e-300)
        band = self.config.tie_band if band is None else band
        return np.where(np.abs(rho) <= band / 2, 0.0, np.sign(rho))
