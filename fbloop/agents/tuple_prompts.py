"""Tuple questions as prompts and replies: closest of ``k``, rank ``k``, odd one out.

Prompts (templates ``prompts/closest.txt``, ``rank.txt``, ``odd.txt``) show activations as
:func:`fbloop.render.as_text` writes them, each block under a marker line: ``Reference:`` then
``Candidate 1:`` … ``Candidate k:`` (closest, rank), or ``Item 1:`` … ``Item 3:`` (odd one out).
The reply must be exactly one JSON object:

| kind | reply | stored value (:mod:`fbloop.records`) |
|---|---|---|
| closest | ``{"closest": j}`` with ``j`` in 1…k, or ``{"closest": "none"}`` | ``j``, or 0 (no clear winner) |
| rank | ``{"ranking": [j_1, …, j_k]}``, a permutation of 1…k, closest first | its Lehmer code |
| odd | ``{"odd": i}`` with ``i`` in 1…3 | ``i`` |

Parsing is as strict as the triplet's (:mod:`fbloop.agents.replies`): whitespace around the JSON is
the only slack; another key, a duplicate key, a number out of range, a boolean for a number, or a
ranking that drops, repeats or adds a candidate makes the answer ``invalid`` with the reason.

:func:`read_prompt` reads such a prompt back into activations (``fbloop serve-oracle`` answers it
from ``Φ*``): the markers and the feature lines, and which kind it is from the reply key the prompt
names (``"closest"``, ``"ranking"``, ``"odd"`` — quoted, which an escaped description cannot forge).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from .. import render
from ..records import Queries, ranking_code, ranking_from_code
from .replies import _load_json, _short

TEMPLATES = {"closest": "closest", "rank": "rank", "odd": "odd"}  # the kind's template in prompts/
KEYS = {"closest": "closest", "rank": "ranking", "odd": "odd"}  # the reply's one key
NONE = "none"  # closest: no clear winner

_MARK = re.compile(r"^(Candidate|Item) (\d+):$")
_FEATURE = re.compile(r'^- feature (\d+) \(weight (-?\d+(?:\.\d+)?)\): ".*"$')
_EMPTY = "- (no active features)"


# ---------------------------------------------------------------- prompts


def blocks(queries: Queries, row: int, descriptions: tuple[str, ...] | None, top: int) -> dict[str, str]:
    """The template variables of question ``row``: ``reference``, ``candidates``, ``count`` (closest,
    rank) or ``items`` (odd)."""
    text = lambda b: render.as_text(render.features(b, row, descriptions, top))  # noqa: E731
    if queries.kind == "odd":
        items = [queries.a, queries.b, queries.c]
        return {"items": "\n\n".join(f"Item {i + 1}:\n{text(b)}" for i, b in enumerate(items))}
    cands = "\n\n".join(f"Candidate {j + 1}:\n{text(b)}" for j, b in enumerate(queries.cands))
    return {"reference": text(queries.a), "candidates": cands, "count": str(queries.k)}


# ---------------------------------------------------------------- replies


def _number(value: object, k: int) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= k
    return value if ok else None


def parse(kind: str, text: str, k: int) -> tuple[float | None, str | None]:
    """``(stored value, None)`` for a reply in exactly the kind's shape, else ``(None, reason)``."""
    obj, err = _load_json(text)
    if err:
        return None, err
    key = KEYS[kind]
    if not isinstance(obj, dict) or set(obj) != {key}:
        got = _short(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        return None, f"expect exactly the key {key!r}, got {got}"
    got = obj[key]
    if kind == "rank":
        if not isinstance(got, list) or any(_number(j, k) is None for j in got) or sorted(got) != list(range(1, k + 1)):
            return None, f"ranking {_short(got)} is not the candidates 1…{k}, each once"
        return float(ranking_code(np.array([got]) - 1)[0]), None
    if kind == "closest" and got == NONE:
        return 0.0, None
    if _number(got, k) is None:
        extra = f' or "{NONE}"' if kind == "closest" else ""
        return None, f"unknown answer {_short(got)}; expect a number 1…{k}{extra}"
    return float(got), None


def reply(kind: str, value: float, k: int) -> str:
    """The reply that stores ``value`` (what a perfect model answers; :func:`parse` reads it back)."""
    if kind == "rank":
        got: object = (ranking_from_code(np.array([value]), k)[0] + 1).tolist()
    elif kind == "closest" and value == 0:
        got = NONE
    else:
        got = int(value)
    return json.dumps({KEYS[kind]: got})


def schema(kind: str, k: int, full: bool = True) -> dict:
    """The reply's JSON schema; ``full`` also fixes a ranking's length (OpenAI's strict mode refuses
    ``minItems``/``maxItems``, so its plain shape leaves them out; the parser checks anyway)."""
    ids = {"type": "integer", "enum": list(range(1, k + 1))}
    if kind == "rank":
        prop: dict = {"type": "array", "items": ids}
        if full:
            prop.update(minItems=k, maxItems=k)
    elif kind == "closest":
        prop = {"anyOf": [ids, {"type": "string", "enum": [NONE]}]}
    else:
        prop = ids
    return {"type": "object", "properties": {KEYS[kind]: prop}, "required": [KEYS[kind]],
            "additionalProperties": False}


def shapes(kind: str, k: int) -> tuple[str, dict, dict]:
    """``(name, plain schema, full schema)`` for :func:`fbloop.agents.structured.request_fields`."""
    return f"{kind}_answer", schema(kind, k, full=False), schema(kind, k)


# ---------------------------------------------------------------- reading a prompt back


@dataclass(frozen=True)
class Question:
    kind: str  # closest, rank or odd
    text: str  # the question's marker and feature lines, as rendered
    reference: list[tuple[int, float]] | None  # None for odd one out
    options: list[list[tuple[int, float]]]  # the candidates, or the three items


def read_prompt(text: str) -> Question | None:
    """The tuple question a prompt asks, or ``None`` when it holds none (numbered blocks 1…k in order)."""
    blocks_: dict[str, list[tuple[int, float]]] = {}
    order: list[str] = []
    section: str | None = None
    kept: list[str] = []
    loose: list[str] = []  # lines outside the blocks: the question and the reply format
    for line in text.splitlines():
        line = line.rstrip()
        mark = _MARK.match(line)
        if line == "Reference:" or mark:
            section = "reference" if line == "Reference:" else f"{mark.group(1)} {int(mark.group(2))}"
            if section in blocks_:
                return None  # a block twice: not a prompt fbloop wrote
            blocks_[section] = []
            order.append(section)
            kept.append(line)
        elif section is not None and (m := _FEATURE.match(line)):
            blocks_[section].append((int(m.group(1)), float(m.group(2))))
            kept.append(line)
        elif section is not None and line == _EMPTY:
            kept.append(line)
        else:
            section = None
            loose.append(line)
    said = "\n".join(loose)
    kinds = [kind for kind, key in KEYS.items() if f'"{key}"' in said]
    items = [s for s in order if s.startswith("Item ")]
    cands = [s for s in order if s.startswith("Candidate ")]
    if len(kinds) != 1:
        return None
    kind = kinds[0]
    if kind == "odd" and items == ["Item 1", "Item 2", "Item 3"] and not cands and "reference" not in blocks_:
        return Question("odd", "\n".join(kept), None, [blocks_[s] for s in items])
    if (kind in ("closest", "rank") and "reference" in blocks_ and not items and len(cands) >= 2
            and cands == [f"Candidate {j}" for j in range(1, len(cands) + 1)]):
        return Question(kind, "\n".join(kept), blocks_["reference"], [blocks_[s] for s in cands])
    return None
