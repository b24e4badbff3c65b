"""An activation as a person or an LLM sees it: its features, weights and descriptions.

One rendering serves the prompt templates and the Streamlit form, so an LLM and
a person answer the same question. A feature without a description gets a
clear placeholder. Descriptions are data, not instructions: they are quoted
and length-capped, and the prompt tells the model so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sparse import SparseBatch

PLACEHOLDER = "(no description available for feature {index})"
MAX_DESCRIPTION = 160  # characters kept of one description


@dataclass(frozen=True)
class Feature:
    index: int
    weight: float
    description: str


def features(batch: SparseBatch, row: int, descriptions: tuple[str, ...] | None = None,
             top: int = 12) -> list[Feature]:
    """The nonzero features of activation ``row``, strongest first (at most ``top``)."""
    idx, val = batch.indices[row], batch.values[row]
    order = [i for i in np.argsort(-np.abs(val), kind="stable") if val[i] != 0][:top]
    out = []
    for i in order:
        index = int(idx[i])
        text = descriptions[index] if descriptions is not None and descriptions[index] else ""
        text = " ".join(str(text).split())[:MAX_DESCRIPTION] or PLACEHOLDER.format(index=index)
        out.append(Feature(index, float(val[i]), text))
    return out


def as_text(feats: list[Feature]) -> str:
    """Plain text, one feature a line: ``- feature 12 (weight 0.83): "description"``."""
    if not feats:
        return "- (no active features)"
    return "\n".join(f'- feature {f.index} (weight {f.weight:.2f}): "{f.description}"' for f in feats)


def triplet_text(a: list[Feature], b: list[Feature], c: list[Feature]) -> dict[str, str]:
    """The three named blocks a triplet prompt or form shows: reference, first, second."""
    return {"reference": as_text(a), "first": as_text(b), "second": as_text(c)}
