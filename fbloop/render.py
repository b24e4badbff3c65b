"""An activation as a person or an LLM sees it: its features, weights and descriptions.

One rendering serves the prompt templates and the Streamlit form, so an LLM and
a person answer the same question. A feature without a description gets a
clear placeholder. Descriptions are data, not instructions: they are quoted
(``\\`` and ``"`` escaped, so a description cannot end its own quotation)
and length-capped, and the prompt tells the model so.

Weights are shown to three decimals, and to three significant digits below
0.1 (never in scientific notation): readable in the form, and fine enough that
an LLM judging the prompt's numbers rarely meets a tie the rounding made (at
two decimals a noise-free oracle reading the prompt disagreed with the direct
oracle on about 1 in 300 Gaussian triplets). :func:`shown` is the value a
reader of the text gets back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sparse import SparseBatch

PLACEHOLDER = "(no description available for feature {index})"
MAX_DESCRIPTION = 160  # characters kept of one description
DECIMALS = 3  # weights: this many decimals, or this many significant digits when smaller than 0.1


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


def weight_text(weight: float) -> str:
    """A weight as shown: ``0.834``, ``-1.207``, ``0.0412``, ``0.000317`` (no exponent)."""
    if weight == 0 or abs(weight) >= 0.1:
        return f"{weight:.{DECIMALS}f}"
    return np.format_float_positional(weight, precision=DECIMALS, unique=False, fractional=False, trim="k")


def shown(weight: float) -> float:
    """The weight a reader of the rendered text sees (what the local oracle server judges)."""
    return float(weight_text(weight))


def quoted(text: str) -> str:
    """A description in double quotes, with ``\\`` and ``"`` escaped: it cannot close its own quoting."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def as_text(feats: list[Feature]) -> str:
    """Plain text, one feature a line: ``- feature 12 (weight 0.834): "description"``.

    The description is :func:`quoted` (backslash escapes), in the prompt and the form alike.
    """
    if not feats:
        return "- (no active features)"
    return "\n".join(f"- feature {f.index} (weight {weight_text(f.weight)}): {quoted(f.description)}"
                     for f in feats)


def triplet_text(a: list[Feature], b: list[Feature], c: list[Feature]) -> dict[str, str]:
    """The three named blocks a triplet prompt or form shows: reference, first, second."""
    return {"reference": as_text(a), "first": as_text(b), "second": as_text(c)}
