"""The gradient learner's settings (:class:`LearnerConfig`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class LearnerConfig:
    rank: int | None = None  # columns of U; None → min(p, 512)
    lr: float = 0.01  # Adam learning rate
    batch_size: int = 1024  # pairs per step (all of them when fewer are stored); the large final fit uses ≥ 4096
    steps_per_chunk: int = 20  # Adam steps after each chunk of answers (at most; see arrival_steps)
    final_steps: int = 5000  # Adam steps at the end (small problems stop early once converged)
    final_epochs: float = 40.0  # large problems: passes over the stored answers at the end, lr decaying (cosine)
    final_lr_ratio: float = 0.01  # large problems: the lr the final decay ends at, relative to lr
    final_batch: int = 4096  # large problems: pairs per step of the final fit (at least batch_size)
    polish: bool = True  # full-batch L-BFGS at the end when the problem is small
    weight_decay: float = 0.0  # λ of Algorithm 3 (the paper's 1e-4 outweighs the data at p in the thousands)
    clip: float = 10.0  # gradient-norm clip per step
    sharpness: float = 50.0  # κ of the triplet logistic loss (and of the tuple losses' logits)
    # Fit each source's κ to its answers (maximum likelihood under the current Φ̂, at most ``sharpness``): a
    # source answering with graded noise (an LLM, people; Plackett–Luce / logistic at a temperature T) is
    # then fitted at its own κ ≈ 1/T instead of as if it were nearly exact. See GradientLearner.fit_sharpness.
    learn_sharpness: bool = False
    tie_band: float = 0.02  # |ρ| allowed for a tie answer
    final_sharpness: float = 100.0  # triplets: κ of a last L-BFGS polish, after the rank choice
    rank_gap: float = 1.5  # triplets with rank=None: eigenvalue ratios of Φ̂ at least this are candidate cuts
    pair_loss: Literal["root", "paper"] = "root"  # residual form, see fbloop.learners.losses
    threads: int | None = None  # torch CPU threads; None → 1 for small problems, else torch's default
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float64"] = "auto"  # auto: float64 up to p = 2048
    seed: int = 0
    # Answers of each kind held for fitting: beyond this many, a uniform sample of all those given (reservoir
    # sampling), so a run's memory stays bounded whatever its size (~160 bytes a triplet at p = 32). Every
    # answer stays stored in SQLite; None holds them all.
    max_rows: int | None = 1_000_000

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"Expect rank ≥ 1, got rank={self.rank}.")
        for name in ("lr", "batch_size", "final_batch", "sharpness", "final_sharpness"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expect {name} > 0, got {getattr(self, name)}.")
        for name in ("steps_per_chunk", "final_steps", "final_epochs", "weight_decay", "clip", "tie_band"):
            if getattr(self, name) < 0:
                raise ConfigError(f"Expect {name} ≥ 0, got {getattr(self, name)}.")
        if not 0 < self.final_lr_ratio <= 1:
            raise ConfigError(f"Expect final_lr_ratio in (0, 1], got {self.final_lr_ratio}.")
        if self.rank_gap < 1:
            raise ConfigError(f"Expect rank_gap ≥ 1 (a ratio of eigenvalues), got {self.rank_gap}.")
        if self.pair_loss not in ("root", "paper"):
            raise ConfigError(f"Expect pair_loss 'root' or 'paper', got {self.pair_loss!r}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigError(f"Expect max_rows ≥ 1 (or None: hold every answer), got {self.max_rows}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"Expect threads ≥ 1, got {self.threads}.")
        if self.dtype not in ("auto", "float32", "float64"):
            raise ConfigError(f"Expect dtype auto, float32 or float64, got {self.dtype!r}.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"Device {self.device!r} requested but torch sees no CUDA device.")
