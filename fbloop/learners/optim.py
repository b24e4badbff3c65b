"""The row-lazy Adam: moments and step counts advance only for the rows of ``U`` a step touches."""

from __future__ import annotations

import math

import torch


class _LazyAdam:
    """Adam whose moments and step counts advance only for the rows a step touches."""

    def __init__(self, shape: tuple[int, int], lr: float, device: torch.device, dtype: torch.dtype,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-12):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.t = torch.zeros(shape[0], device=device, dtype=dtype)

    def step(self, param: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """``rows`` (R,) unique int64, ``grad`` (R, r): ``param[rows]`` takes one Adam step."""
        b1, b2 = self.betas
        t = self.t.index_select(0, rows).add_(1)  # (R,)
        self.t.index_copy_(0, rows, t)
        # 1 − β^t as −expm1(t·ln β): torch.pow(scalar, tensor) is ~10× slower on CPU here.
        bc1 = torch.expm1(t * math.log(b1)).neg_()
        bc2 = torch.expm1(t * math.log(b2)).neg_().sqrt_()
        m = self.m.index_select(0, rows).lerp_(grad, 1 - b1)  # (R, r)
        self.m.index_copy_(0, rows, m)
        v = self.v.index_select(0, rows).mul_(b2).addcmul_(grad, grad, value=1 - b2)  # (R, r)
        self.v.index_copy_(0, rows, v)
        # lr·m̂/(√v̂ + ε) = (lr·√bc2/bc1)·m/(√v + ε·√bc2): one per-row scale instead of two divisions.
        den = v.sqrt_().add_((self.eps * bc2).unsqueeze(1))
        param.index_add_(0, rows, m.div_(den).mul_((-self.lr * bc2 / bc1).unsqueeze(1)))
