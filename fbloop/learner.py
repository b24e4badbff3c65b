"""The incremental gradient learner (the paper's Algorithm 3) on ``Φ̂ = U Uᵀ``.

Answers arrive in chunks (:meth:`GradientLearner.add_pairs` /
:meth:`add_triplets`); after each chunk the learner takes a few Adam steps on
minibatches drawn from everything seen so far, and :meth:`finish` fits to
convergence at the end.

Each step touches only the rows of ``U`` at the batch's nonzero coordinates:
the loss is built on the gathered rows (a leaf tensor of shape ``(rows, r)``)
and a *row-lazy* Adam updates only those rows' moments, each row with its own
step count. A pair therefore costs ``O(s·r)``, not ``O(p·r)``.

Losses
- equality pairs ``(u, c)`` against the anchor ``y``, ``q_i = ‖Uᵀu_i‖²``:
  ``mean_i ℓ(q_i, c_i) + (‖Uᵀy‖² − 1)² + λ‖U_rows‖²`` where ``ℓ`` is the paper's
  ``(q − c)²`` (``pair_loss="paper"``) or, by default, the root residual
  ``(√q − √c)²`` (``pair_loss="root"``). The two share their minimisers; the root
  form stays quadratic at ``c = 0`` (for a PSD ``Φ``, ``uᵀΦu = 0`` ⟺ ``Uᵀu = 0``),
  where the paper's quartic ``q²`` makes the eigendecomposition design's null
  pairs converge sublinearly.
  The anchor term fixes the scale at ``yᵀΦ̂y = 1`` — the exact form of the
  paper's "reset ``U[0,0] = 1``" (with ``y = e_0`` it pins ``Φ̂_00 = 1``), which
  also stops the collapse to ``U = 0``. ``λ = 1e-4`` as in the paper, applied to
  the rows a step touches.
- ternary triplets ``(a, b, c) → t ∈ {+1, −1, 0}``: with the scale-free margin
  ``ρ = (d_ac − d_ab) / (d_ac + d_ab)``, a logistic loss ``softplus(−κ t ρ)`` for
  ``t = ±1`` and a two-sided band loss keeping ``|ρ| ≤ band`` for ties.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .errors import ConfigError, NonFiniteError, ShapeError
from .sparse import SparseBatch, difference


@dataclass(frozen=True)
class LearnerConfig:
    rank: int | None = None  # columns of U; None → min(p, 512)
    lr: float = 0.01  # Adam learning rate
    batch_size: int = 1024  # pairs per step (all of them when fewer are stored)
    steps_per_chunk: int = 20  # Adam steps after each chunk of answers
    final_steps: int = 5000  # Adam steps at the end (stops early once converged)
    polish: bool = True  # full-batch L-BFGS at the end when the problem is small
    weight_decay: float = 1e-4  # λ of Algorithm 3
    clip: float = 10.0  # gradient-norm clip per step
    sharpness: float = 50.0  # κ of the triplet logistic loss
    tie_band: float = 0.02  # |ρ| allowed for a tie answer
    pair_loss: Literal["root", "paper"] = "root"  # residual form, see the module docstring
    threads: int | None = None  # torch CPU threads; None → 1 for small problems, else torch's default
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float64"] = "auto"  # auto: float64 up to p = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"Expect rank ≥ 1, got rank={self.rank}.")
        for name in ("lr", "batch_size", "sharpness"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expect {name} > 0, got {getattr(self, name)}.")
        for name in ("steps_per_chunk", "final_steps", "weight_decay", "clip", "tie_band"):
            if getattr(self, name) < 0:
                raise ConfigError(f"Expect {name} ≥ 0, got {getattr(self, name)}.")
        if self.pair_loss not in ("root", "paper"):
            raise ConfigError(f"Expect pair_loss 'root' or 'paper', got {self.pair_loss!r}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"Expect threads ≥ 1, got {self.threads}.")
        if self.dtype not in ("auto", "float32", "float64"):
            raise ConfigError(f"Expect dtype auto, float32 or float64, got {self.dtype!r}.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"Device {self.device!r} requested but torch sees no CUDA device.")


class _LazyAdam:
    """Adam whose moments and step counts advance only for the rows a step touches."""

    def __init__(self, shape: tuple[int, int], lr: float, device: torch.device, dtype: torch.dtype,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.t = torch.zeros(shape[0], device=device, dtype=dtype)

    def step(self, param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        b1, b2 = self.betas
        self.t[rows] += 1
        t = self.t[rows].unsqueeze(1)  # (R, 1)
        m = self.m[rows].mul_(b1).add_(grad, alpha=1 - b1)
        v = self.v[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        self.m[rows], self.v[rows] = m, v
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        param[rows] -= self.lr * m_hat / (v_hat.sqrt() + self.eps)


def _pair_residual(q: torch.Tensor, c: torch.Tensor, form: str) -> torch.Tensor:
    """Per-pair loss ``ℓ(q, c)``: ``(q − c)²`` or ``(√q − √c)²``."""
    if form == "paper":
        return (q - c) ** 2
    return (torch.sqrt(q + 1e-30) - torch.sqrt(c)) ** 2


def _pair_quads(rows_u: torch.Tensor, inv: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """``‖Uᵀa‖²`` per activation from gathered rows: ``inv``/``val`` are ``(n, s)``."""
    proj = torch.einsum("ns,nsr->nr", val, rows_u[inv])  # (n, r)
    return (proj * proj).sum(dim=1)


class GradientLearner:
    """``Φ̂ = U Uᵀ`` fitted to equality pairs and/or ternary triplets as they arrive."""

    def __init__(self, p: int, config: LearnerConfig = LearnerConfig(), anchor: SparseBatch | None = None):
        if p < 2:
            raise ConfigError(f"Expect p ≥ 2, got p={p}.")
        self.p = p
        self.config = config
        self.rank = min(config.rank or 512, p)
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
        u0 = torch.randn(p, self.rank, generator=self.gen, dtype=torch.float64) * scale / np.sqrt(self.rank)
        self.U = u0.to(self.device, self.dtype)  # (p, r)
        self.opt = _LazyAdam((p, self.rank), config.lr, self.device, self.dtype)
        self._pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._trips: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._cache: dict[str, tuple[torch.Tensor, ...]] = {}
        self.steps = 0
        self.last_loss = float("nan")

    # ------------------------------------------------------------ data

    @property
    def n_pairs(self) -> int:
        return sum(len(c) for _, _, c in self._pairs)

    @property
    def n_triplets(self) -> int:
        return sum(len(t[-1]) for t in self._trips)

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
            self._pairs.append((u.indices, u.values, c))
            self._cache.pop("pairs", None)

    def add_triplets(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, t: np.ndarray) -> None:
        """Ternary answers ``t`` (+1: a closer to b, −1: closer to c, 0: tie)."""
        t = np.asarray(t, dtype=np.float64)
        if not (len(a) == len(b) == len(c) == len(t)) or {a.p, b.p, c.p} != {self.p}:
            raise ShapeError(f"Expect triplets and answers of one length in R^{self.p}.")
        if not np.all(np.isin(t, (-1.0, 0.0, 1.0))):
            raise ConfigError(f"Expect triplet answers in {{-1, 0, 1}}, got {np.unique(t)[:5]}.")
        if len(t):
            ab, ac = difference(a, b), difference(a, c)
            self._trips.append((ab.indices, ab.values, ac.indices, ac.values, t))
            self._cache.pop("trips", None)

    def _tensors(self, key: str) -> tuple[torch.Tensor, ...]:
        if key not in self._cache:
            parts = self._pairs if key == "pairs" else self._trips
            cols = []
            for col in zip(*parts):
                width = max(x.shape[1] for x in col) if col[0].ndim == 2 else None
                if width is not None:
                    col = [np.pad(x, ((0, 0), (0, width - x.shape[1]))) for x in col]
                arr = np.concatenate(col)
                cols.append(torch.as_tensor(arr, device=self.device,
                                            dtype=torch.int64 if arr.dtype.kind == "i" else self.dtype))
            self._cache[key] = tuple(cols)
        return self._cache[key]

    # ------------------------------------------------------------ optimisation

    def _batch(self, n: int) -> torch.Tensor | None:
        if n <= self.config.batch_size:
            return None  # full batch
        return torch.randint(0, n, (self.config.batch_size,), generator=self.gen).to(self.device)

    def _loss_rows(self, pick_pairs: bool, pick_trips: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss over one minibatch, as a function of the gathered rows it touches."""
        groups: list[torch.Tensor] = []  # index arrays to gather, in order
        pairs = trips = None
        if pick_pairs:
            idx, val, c = self._tensors("pairs")
            sel = self._batch(len(c))
            if sel is not None:
                idx, val, c = idx[sel], val[sel], c[sel]
            a_idx = torch.as_tensor(self.anchor.indices, device=self.device)
            a_val = torch.as_tensor(self.anchor.values, device=self.device, dtype=self.dtype)
            pairs = (val, c, a_val)
            groups += [idx, a_idx]
        if pick_trips:
            i_ab, v_ab, i_ac, v_ac, t = self._tensors("trips")
            sel = self._batch(len(t))
            if sel is not None:
                i_ab, v_ab, i_ac, v_ac, t = i_ab[sel], v_ab[sel], i_ac[sel], v_ac[sel], t[sel]
            trips = (v_ab, v_ac, t)
            groups += [i_ab, i_ac]
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
            v_ab, v_ac, t = trips
            d_ab = _pair_quads(W, invs[k], v_ab)
            d_ac = _pair_quads(W, invs[k + 1], v_ac)
            rho = (d_ac - d_ab) / (d_ac + d_ab + 1e-30)
            kappa, band = self.config.sharpness, self.config.tie_band
            sp = torch.nn.functional.softplus
            lt = torch.where(t != 0, sp(-kappa * t * rho),
                             sp(kappa * (rho - band)) + sp(-kappa * (rho + band)))
            loss = loss + lt.mean()
        if self.config.weight_decay and pairs is not None:
            loss = loss + self.config.weight_decay * (W * W).sum() * (len(rows) / self.p)
        return loss, W, rows

    def step(self, n_steps: int = 1) -> float:
        """``n_steps`` Adam steps on minibatches of everything stored; returns the last loss."""
        has_p, has_t = bool(self._pairs), bool(self._trips)
        if not (has_p or has_t):
            return float("nan")
        for _ in range(n_steps):
            loss, W, rows = self._loss_rows(has_p, has_t)
            (grad,) = torch.autograd.grad(loss, W)
            norm = float(grad.norm())
            if not np.isfinite(norm):
                raise NonFiniteError(f"Learner gradient became {norm} at step {self.steps}; lower lr.")
            if self.config.clip and norm > self.config.clip:
                grad = grad * (self.config.clip / norm)
            with torch.no_grad():
                self.opt.step(self.U, rows, grad)
            self.steps += 1
            self.last_loss = float(loss.detach())
        return self.last_loss

    def finish(self, tol: float = 1e-16) -> float:
        """Fit to convergence on all stored answers; returns the final loss."""
        cfg = self.config
        best = float("inf")
        for start in range(0, cfg.final_steps, 100):
            loss = self.step(min(100, cfg.final_steps - start))
            if loss < tol or loss > best * (1 - 1e-4):
                break  # converged, or no longer improving
            best = loss
        if cfg.polish and self._small():
            self._polish()
        return self.last_loss

    def _small(self) -> bool:
        n = self.n_pairs + self.n_triplets
        return n * self.rank <= 5e7 and self.p * self.rank <= 4e6

    def _full_loss(self, U: torch.Tensor) -> torch.Tensor:
        loss = U.new_zeros(())
        if self._pairs:
            idx, val, c = self._tensors("pairs")
            a_idx = torch.as_tensor(self.anchor.indices, device=self.device)
            a_val = torch.as_tensor(self.anchor.values, device=self.device, dtype=self.dtype)
            q = _pair_quads(U, idx, val)
            qa = _pair_quads(U, a_idx, a_val)
            # No λ here: the polish fits the answers themselves.
            loss = loss + _pair_residual(q, c, self.config.pair_loss).mean() + ((qa - 1.0) ** 2).sum()
        if self._trips:
            i_ab, v_ab, i_ac, v_ac, t = self._tensors("trips")
            d_ab = _pair_quads(U, i_ab, v_ab)
            d_ac = _pair_quads(U, i_ac, v_ac)
            rho = (d_ac - d_ab) / (d_ac + d_ab + 1e-30)
            kappa, band = self.config.sharpness, self.config.tie_band
            sp = torch.nn.functional.softplus
            lt = torch.where(t != 0, sp(-kappa * t * rho), sp(kappa * (rho - band)) + sp(-kappa * (rho + band)))
            loss = loss + lt.mean()
        return loss

    def _polish(self, max_iter: int = 300) -> None:
        """Full-batch L-BFGS from the Adam solution (pairs: drives residuals to ~0)."""
        U = self.U.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([U], lr=1.0, max_iter=max_iter, tolerance_grad=1e-14,
                                tolerance_change=1e-20, history_size=50, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = self._full_loss(U)
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            loss = float(self._full_loss(U))
        if np.isfinite(loss) and loss <= self.last_loss:
            self.U = U.detach()
            self.last_loss = loss

    # ------------------------------------------------------------ readout

    def factor(self) -> np.ndarray:
        """``U`` as a float64 numpy array, shape ``(p, r)``."""
        return self.U.detach().to("cpu", torch.float64).numpy().copy()

    def phi(self) -> np.ndarray:
        """Dense ``Φ̂ = U Uᵀ`` (``p × p``); only for moderate ``p``."""
        u = self.factor()
        return u @ u.T

    def predict_triplets(self, a: SparseBatch, b: SparseBatch, c: SparseBatch, band: float | None = None
                         ) -> np.ndarray:
        """The learner's own ternary answers (+1/−1/0) for triplets."""
        from .sparse import quad_form

        u = self.factor()
        d_ab = quad_form(difference(a, b), u)
        d_ac = quad_form(difference(a, c), u)
        rho = (d_ac - d_ab) / np.maximum(d_ac + d_ab, 1e-300)
        band = self.config.tie_band if band is None else band
        return np.where(np.abs(rho) <= band / 2, 0.0, np.sign(rho))
