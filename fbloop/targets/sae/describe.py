"""A description per feature of a trained SAE, from the tokens it fires on most."""

from __future__ import annotations

import json

import numpy as np
import torch

from .activations import Activations
from .train import SAEResult, _encode, _norm, _tensors


# ---------------------------------------------------------------- descriptions


def top_activations(result: SAEResult, x: np.ndarray, top: int = 8,
                    batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's ``top`` largest activations over ``x`` ``(n, d)``: values and token indices ``(p, top)``."""
    top = min(top, len(x))
    best_v = torch.full((result.p, top), -torch.inf)
    best_i = torch.zeros((result.p, top), dtype=torch.long)
    w = _tensors(result)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            f = _encode(w, torch.from_numpy(_norm(result, x[start:start + batch])), result.config)  # (B, p)
            idx = torch.arange(start, start + len(f)).expand(result.p, -1)  # (p, B)
            v, j = torch.cat([best_v, f.T], 1).topk(top, dim=1)
            best_i = torch.cat([best_i, idx], 1).gather(1, j)
            best_v = v
    return best_v.numpy(), best_i.numpy()


def describe_features(result: SAEResult, acts: Activations, top: int = 8) -> list[str]:
    """One line per feature from its top-activating tokens, e.g.
    ``'top tokens: "def", "return" — e.g. «… [return] self.value …»'``; ``""`` for a feature
    that never fires on ``acts``.
    """
    values, index = top_activations(result, acts.x, top)
    out = []
    for vals, idx in zip(values, index):
        live = idx[vals > 0]
        if len(live) == 0:
            out.append("")
            continue
        words = list(dict.fromkeys(acts.tokens[i] for i in live))
        quoted = ", ".join(json.dumps(t, ensure_ascii=False) for t in words)
        out.append(f"top tokens: {quoted} — e.g. «… {acts.contexts[live[0]]} …»")
    return out
