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

Several questions per request (``batch_size`` > 1; ``prompts/<kind>_batch.txt``, each question under
``### Question N`` from ``prompts/tuple_item.txt``) are answered ``{"answers": [{"id": 1, "closest": 2},
…]}``: the ids exactly the asked ones, each once, or every answer of the reply is invalid (as for
triplet batches); an entry with other keys or a bad value is invalid alone.

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
BATCH_TEMPLATES = {kind: f"{kind}_batch" for kind in TEMPLATES}  # several questions per request ...
ITEM_TEMPLATE = "tuple_item"  # ... each under "### Question N"
KEYS = {"closest": "closest", "rank": "ranking", "odd": "odd"}  # the reply's one key
NONE = "none"  # closest: no clear winner

_HEADER = re.compile(r"^### Question (\d+)$")
_MARK = re.compile(r"^(Candidate|Item) (\d+):$")
_FEATURE = re.compile(r'^- feature (\d+) \(weight (-?\d+(?:\.\d+)?)\): ".*"$')
_EMPTY = "- (no active features)"


# ---------------------------------------------------------------- prompts


def blocks(queries: Queries, row: int, descriptions: tuple[str, ...] | None, top: int,
           reverse: bool = False) -> dict[str, str]:
    """The template variables of question ``row``: ``reference``, ``candidates``, ``count`` (closest,
    rank) or ``items`` (odd); with ``reverse`` the candidates (items) shown last first, numbered as shown
    (the order swap; :func:`fbloop.records.from_reversed` maps its answers back)."""
    text = lambda b: render.as_text(render.features(b, row, descriptions, top))  # noqa: E731
    step = -1 if reverse else 1
    if queries.kind == "odd":
        items = [queries.a, queries.b, queries.c][::step]
        return {"items": "\n\n".join(f"Item {i + 1}:\n{text(b)}" for i, b in enumerate(items))}
    cands = "\n\n".join(f"Candidate {j + 1}:\n{text(b)}" for j, b in enumerate(queries.cands[::step]))
    return {"reference": text(queries.a), "candidates": cands, "count": str(queries.k)}


def question_text(block: dict[str, str]) -> str:
    """One question's activations as a batch item shows them (the single template's blocks)."""
    if "items" in block:
        return block["items"]
    return f"Reference:\n{block['reference']}\n\n{block['candidates']}"


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


def parse_batch(kind: str, text: str, k: int, ids: list[int]) -> dict[int, tuple[float | None, str | None]]:
    """For each asked id: ``(value, None)`` or ``(None, reason)`` (the module docstring's rules)."""
    obj, err = _load_json(text)
    if err is None and (not isinstance(obj, dict) or set(obj) != {"answers"} or not isinstance(obj["answers"], list)):
        err = 'expect exactly {"answers": [...]}'
    if err is None:
        got = [e.get("id") if isinstance(e, dict) else None for e in obj["answers"]]
        if any(not isinstance(i, int) or isinstance(i, bool) for i in got) or sorted(got) != sorted(ids):
            err = f"ids {_short(got)} are not the asked {sorted(ids)}, each once"
    if err:
        return {i: (None, err) for i in ids}
    key, out = KEYS[kind], {}
    for entry in obj["answers"]:
        if set(entry) != {"id", key}:
            out[entry["id"]] = (None, f"expect keys id and {key}, got {_short(sorted(entry))}")
        else:
            out[entry["id"]] = parse(kind, json.dumps({key: entry[key]}), k)
    return out


def reply(kind: str, value: float, k: int) -> str:
    """The reply that stores ``value`` (what a perfect model answers; :func:`parse` reads it back)."""
    if kind == "rank":
        got: object = (ranking_from_code(np.array([value]), k)[0] + 1).tolist()
    elif kind == "closest" and value == 0:
        got = NONE
    else:
        got = int(value)
    return json.dumps({KEYS[kind]: got})


def batch_reply(kind: str, values: list[float], k: int, ids: list[int]) -> str:
    """The reply to a batch (:func:`parse_batch` reads it back)."""
    return json.dumps({"answers": [{"id": i, **json.loads(reply(kind, v, k))} for i, v in zip(ids, values)]})


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


def batch_schema(kind: str, k: int, n: int | None = None) -> dict:
    """A batch reply's schema; ``n`` fixes the answers' count and ids (as for triplet batches)."""
    item = schema(kind, k, full=n is not None)
    ids: dict = {"type": "integer"} if n is None else {"type": "integer", "enum": list(range(1, n + 1))}
    item["properties"] = {"id": ids, **item["properties"]}
    item["required"] = ["id", KEYS[kind]]
    array: dict = {"type": "array", "items": item}
    if n is not None:
        array.update(minItems=n, maxItems=n)
    return {"type": "object", "properties": {"answers": array}, "required": ["answers"],
            "additionalProperties": False}


def shapes(kind: str, k: int, n: int | None = None) -> tuple[str, dict, dict]:
    """``(name, plain schema, full schema)`` for :func:`fbloop.agents.structured.request_fields`; ``n``:
    a batch of ``n`` questions."""
    if n is None:
        return f"{kind}_answer", schema(kind, k, full=False), schema(kind, k)
    return f"{kind}_answers", batch_schema(kind, k), batch_schema(kind, k, n)


# ---------------------------------------------------------------- reading a prompt back


@dataclass(frozen=True)
class Question:
    kind: str  # closest, rank or odd
    id: int | None  # the batch id, None for a one-question prompt
    text: str  # the question's marker and feature lines, as rendered
    reference: list[tuple[int, float]] | None  # None for odd one out
    options: list[list[tuple[int, float]]]  # the candidates, or the three items


def read_prompt(text: str) -> Question | None:
    """The tuple question a one-question prompt asks, or ``None`` when it holds none (or a batch)."""
    got = read_questions(text)
    return got[0] if len(got) == 1 and got[0].id is None else None


def read_questions(text: str) -> list[Question]:
    """The tuple questions a prompt asks, in order; ``[]`` unless it is exactly fbloop's tuple prompt:
    one question, or a batch under ``### Question 1``, ``### Question 2``, … ."""
    lines = [line.rstrip() for line in text.splitlines()]
    heads = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not heads:
        parts: list[tuple[int | None, list[str]]] = [(None, lines)]
    else:
        parts = [(int(_HEADER.match(lines[i]).group(1)), lines[i + 1:j])
                 for i, j in zip(heads, heads[1:] + [len(lines)])]
        if [qid for qid, _ in parts] != list(range(1, len(parts) + 1)):
            return []
    read = [_read_part(part) for _, part in parts]
    said = "\n".join(lines[:heads[0]] if heads else []) + "\n" + "\n".join(x for r in read for x in r[2])
    kinds = [kind for kind, key in KEYS.items() if f'"{key}"' in said]
    if len(kinds) != 1:
        return []
    out = []
    for (qid, _), (found, kept, _) in zip(parts, read):
        q = _question(kinds[0], qid, found, kept)
        if q is None:
            return []
        out.append(q)
    return out


def _read_part(lines: list[str]) -> tuple[dict[str, list[tuple[int, float]]] | None, list[str], list[str]]:
    """One question's lines: ``(blocks by marker or None, the blocks' lines, the other lines)``."""
    found: dict[str, list[tuple[int, float]]] = {}
    section: str | None = None
    kept: list[str] = []
    loose: list[str] = []  # the question and the reply format
    for line in lines:
        mark = _MARK.match(line)
        if line == "Reference:" or mark:
            section = "reference" if line == "Reference:" else f"{mark.group(1)} {int(mark.group(2))}"
            if section in found:
                return None, kept, loose  # a block twice: not a prompt fbloop wrote
            found[section] = []
            kept.append(line)
        elif section is not None and (m := _FEATURE.match(line)):
            found[section].append((int(m.group(1)), float(m.group(2))))
            kept.append(line)
        elif section is not None and line == _EMPTY:
            kept.append(line)
        else:
            section = None
            loose.append(line)
    return found, kept, loose


def _question(kind: str, qid: int | None, found: dict | None, kept: list[str]) -> Question | None:
    """The question of ``kind`` its blocks make, or ``None`` when they do not fit the kind."""
    if found is None:
        return None
    order = list(found)
    items = [s for s in order if s.startswith("Item ")]
    cands = [s for s in order if s.startswith("Candidate ")]
    text = "\n".join(kept)
    if kind == "odd" and items == ["Item 1", "Item 2", "Item 3"] and not cands and "reference" not in found:
        return Question("odd", qid, text, None, [found[s] for s in items])
    if (kind in ("closest", "rank") and "reference" in found and not items and len(cands) >= 2
            and cands == [f"Candidate {j}" for j in range(1, len(cands) + 1)]):
        return Question(kind, qid, text, found["reference"], [found[s] for s in cands])
    return None
