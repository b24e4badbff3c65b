"""The sparse autoencoder: its config, the trained result, and training.

The SAE trains on normalised activations ``x_n = (x − μ)·s`` with ``s`` chosen so
that ``E‖x_n‖² = d``; decoder rows (the atoms) are renormalised to unit norm after
every step, and the encoder reads ``x_n − b_dec``. The saved SAE reads raw activations:
the normalisation folds exactly into ``b_enc`` and ``b_dec`` (:meth:`SAEResult.saelens_weights`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ...errors import ConfigError, ShapeError


# ---------------------------------------------------------------- the SAE


@dataclass(frozen=True)
class SAEConfig:
    """A sparse autoencoder ``d → n_features`` and how to train it."""

    n_features: int = 1024  # p, the dictionary size
    architecture: Literal["topk", "relu"] = "topk"
    k: int = 32  # topk: active features per token
    l1: float = 1.0  # relu: λ in ‖x − x̂‖² + λ‖f‖₁ (on normalised activations, E‖x‖² = d)
    lr: float = 3e-3  # Adam
    steps: int = 1000  # Adam steps (384 → 1024, k = 32, 45k MiniLM tokens: held-out FVE 0.84)
    batch: int = 1024  # tokens per step
    aux_coef: float = 1 / 32  # topk: AuxK loss weight (Gao et al. 2024), revives dead features; 0 = off
    dead_steps: int = 200  # topk: a feature silent this many steps counts as dead for AuxK
    val_frac: float = 0.1  # the last tokens, held out for the FVE readout
    threads: int | None = None  # torch CPU threads while training; None → 1 for small SAEs, else torch's
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ("topk", "relu"):
            raise ConfigError(f"Unknown architecture {self.architecture!r}; expect 'topk' or 'relu'.")
        if self.n_features < 2:
            raise ConfigError(f"Expect n_features ≥ 2, got n_features={self.n_features}.")
        if self.architecture == "topk" and not 1 <= self.k <= self.n_features:
            raise ConfigError(f"Expect 1 ≤ k ≤ n_features = {self.n_features}, got k={self.k}.")
        for name in ("lr", "steps", "batch", "dead_steps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expect {name} > 0, got {name}={getattr(self, name)}.")
        for name in ("l1", "aux_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"Expect {name} ≥ 0, got {name}={getattr(self, name)}.")
        if not 0.0 < self.val_frac < 1.0:
            raise ConfigError(f"Expect val_frac in (0, 1), got val_frac={self.val_frac}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"Expect threads ≥ 1, got threads={self.threads}.")


@dataclass(frozen=True, eq=False)
class SAEResult:
    """A trained SAE. Weights act on normalised activations ``x_n = (x − mean)·scale``."""

    W_enc: np.ndarray  # (d, p)
    b_enc: np.ndarray  # (p,)
    W_dec: np.ndarray  # (p, d), unit-norm rows: the atoms
    b_dec: np.ndarray  # (d,)
    mean: np.ndarray  # (d,)
    scale: float
    config: SAEConfig
    fve: float  # fraction of variance explained on the held-out tokens
    n_dead: int  # features that never fire on the training tokens
    history: list[dict]  # {"step", "mse", "fve", "dead"} during training (fve on the batch)
    train_s: float

    @property
    def d(self) -> int:
        return self.W_dec.shape[1]

    @property
    def p(self) -> int:
        return self.W_dec.shape[0]

    def encode(self, x: np.ndarray, batch: int = 8192) -> np.ndarray:
        """Codes ``(n, p)`` of raw activations ``x`` ``(n, d)``, in the normalised space's units."""
        return np.concatenate([_encode(_tensors(self), torch.from_numpy(_norm(self, x[i:i + batch])),
                                       self.config).numpy() for i in range(0, len(x), batch)])

    def decode(self, f: np.ndarray) -> np.ndarray:
        """Raw-space reconstruction ``(n, d)`` of codes ``f`` ``(n, p)``."""
        return (f @ self.W_dec + self.b_dec) / self.scale + self.mean

    def saelens_weights(self) -> dict[str, np.ndarray]:
        """The same SAE on raw activations, decoder rows still unit norm; its codes are ``encode(x) / scale``.

        Exact because TopK and ReLU commute with a positive scale:
        ``f/s = act((x − μ − b_dec/s) W_enc + b_enc/s)`` and ``x̂ = (f/s) W_dec + μ + b_dec/s``.
        """
        return {"W_enc": self.W_enc, "b_enc": (self.b_enc / self.scale).astype(np.float32),
                "W_dec": self.W_dec, "b_dec": (self.mean + self.b_dec / self.scale).astype(np.float32)}


def _norm(res: SAEResult, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, dtype=np.float32) - res.mean) * res.scale).astype(np.float32)


def _tensors(res: SAEResult) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(getattr(res, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}


def _encode(w: dict[str, torch.Tensor], x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # (B, p)
    if cfg.architecture == "relu":
        return torch.relu(pre)
    vals, idx = pre.topk(cfg.k, dim=-1)  # (B, k)
    return torch.zeros_like(pre).scatter_(-1, idx, torch.relu(vals))


@contextmanager
def _threads(n: int | None):
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sae(x: np.ndarray, cfg: SAEConfig, progress: bool = True) -> SAEResult:
    """Train an SAE on activations ``x`` of shape ``(n, d)``; the last ``val_frac`` are held out."""
    # Small SAEs run far slower on several threads (OpenMP spin-waits dominate a 16×32 matmul).
    small = cfg.n_features * x.shape[-1] * min(cfg.batch, len(x)) < 2**22
    with _threads(cfg.threads or (1 if small else None)):
        return _train(x, cfg, progress)


def _train(x: np.ndarray, cfg: SAEConfig, progress: bool) -> SAEResult:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 10:
        raise ShapeError(f"Expect activations of shape (n, d) with n ≥ 10, got {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ShapeError("Activations hold NaN or Inf.")
    n_val = max(1, int(round(cfg.val_frac * len(x))))
    train_np, val_np = x[:-n_val], x[-n_val:]
    d, p = x.shape[1], cfg.n_features
    mean = train_np.mean(0)
    # One scale for all dimensions (atoms keep their directions), so that E‖x_n‖² = d.
    scale = float(np.sqrt(d / np.mean(np.sum((train_np - mean) ** 2, axis=1))))
    train = torch.from_numpy((train_np - mean) * scale)  # (n, d)
    val = torch.from_numpy((val_np - mean) * scale)

    gen = torch.Generator().manual_seed(cfg.seed)
    W_dec = torch.randn(p, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    w = {"W_enc": W_dec.T.clone().requires_grad_(),  # (d, p), tied at init
         "b_enc": torch.zeros(p, requires_grad=True),
         "W_dec": W_dec.requires_grad_(),  # (p, d)
         "b_dec": torch.zeros(d, requires_grad=True)}
    opt = torch.optim.Adam(w.values(), lr=cfg.lr)
    last_fired = torch.zeros(p, dtype=torch.long)
    history: list[dict] = []
    log_every = max(1, cfg.steps // 50)
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"SAE {d}→{p} {cfg.architecture}", disable=not progress)
    for step in bar:
        xb = train[torch.randint(len(train), (min(cfg.batch, len(train)),), generator=gen)]  # (B, d)
        xc = xb - w["b_dec"]
        # Dense on purpose: a gathered (B, k, d) sparse path is ~4× slower on CPU (index_put backward).
        f = _encode(w, xb, cfg)  # (B, p)
        x_hat = f @ w["W_dec"] + w["b_dec"]  # (B, d)
        fired = (f > 0).any(0)
        err = xb - x_hat
        mse = err.pow(2).mean()
        loss = mse
        if cfg.architecture == "relu":
            loss = loss + cfg.l1 * f.sum(-1).mean() / d
        last_fired[fired] = step
        dead = step - last_fired > cfg.dead_steps
        if cfg.architecture == "topk" and cfg.aux_coef > 0 and dead.any():
            # AuxK: the dead features' top activations model the residual. Dense over the dead
            # ones only, which AuxK keeps few.
            pre = xc @ w["W_enc"][:, dead] + w["b_enc"][dead]  # (B, n_dead)
            top, j = pre.topk(min(d // 2, int(dead.sum())), dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, j, torch.relu(top))
            loss = loss + cfg.aux_coef * (f_aux @ w["W_dec"][dead] - err.detach()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            g, W = w["W_dec"].grad, w["W_dec"]
            g -= (g * W).sum(1, keepdim=True) * W  # only directions change; norms are fixed below
        opt.step()
        with torch.no_grad():
            W /= W.norm(dim=1, keepdim=True).clamp_min(1e-8)
        if step % log_every == 0 or step == cfg.steps - 1:
            fve = 1.0 - float(err.detach().pow(2).sum() / (xb - xb.mean(0)).pow(2).sum())
            history.append({"step": step, "mse": float(mse.detach()), "fve": round(fve, 5), "dead": int(dead.sum())})
            bar.set_postfix(fve=f"{fve:.3f}", dead=int(dead.sum()))
    train_s = time.perf_counter() - t0

    res = SAEResult(*(w[k].detach().numpy().copy() for k in ("W_enc", "b_enc", "W_dec", "b_dec")),
                    mean=mean, scale=scale, config=cfg, fve=0.0, n_dead=0, history=history, train_s=train_s)
    with torch.no_grad():
        t = _tensors(res)
        fired = torch.zeros(p, dtype=torch.bool)
        for i in range(0, len(train), 8192):
            fired |= (_encode(t, train[i:i + 8192], cfg) > 0).any(0)
        err = sum(float((v - _encode(t, v, cfg) @ t["W_dec"] - t["b_dec"]).pow(2).sum())
                  for v in val.split(8192))
        fve = 1.0 - err / float((val - val.mean(0)).pow(2).sum())
    return SAEResult(res.W_enc, res.b_enc, res.W_dec, res.b_dec, mean, scale, cfg, fve,
                     int((~fired).sum()), history, train_s)
