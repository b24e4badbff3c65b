"""The LLM agent's replies, read strictly: a verdict counts only in exactly the shape asked for.

- one triplet per request: ``{"answer": "first" | "second" | "equal"}``;
- ``k`` triplets per request: ``{"answers": [{"id": 1, "answer": ...}, ...]}``, ids ``1..k``.

``"first"`` is ``+1`` (the reference is closer to the first candidate), ``"second"`` is ``−1``,
``"equal"`` is ``0``. Leading or trailing whitespace is the only slack: prose around the JSON, code
fences, extra or duplicate keys, or any other token make that answer invalid, with the reason
returned, never an exception. In a batch, the ids must be exactly the asked ones, each once: a reply
numbered ``0..k−1``, or one that drops or repeats an id, cannot be matched to the comparisons with
certainty, so every answer of it is invalid. :func:`schema` is the JSON schema sent as a hint where
the server accepts one (:mod:`fbloop.agents.structured`); replies are parsed as if it had not been.
"""

from __future__ import annotations

import functools
import json

TOKENS: dict[str, float] = {"first": 1.0, "second": -1.0, "equal": 0.0}


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key in {_short(keys)}")
    return dict(pairs)


def _load_json(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates), None
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        why = str(exc)
        return None, f"not JSON ({why[:120]}{'…' if len(why) > 120 else ''})"


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a reason must not carry a megabyte reply."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _token(value: object) -> str | None:
    return value if isinstance(value, str) and value in TOKENS else None


def parse_single(text: str) -> tuple[str | None, str | None]:
    """``(token, None)`` for exactly ``{"answer": "first"|"second"|"equal"}``, else ``(None, reason)``.

    Short replies are remembered (a run's replies are a handful of distinct texts: a million batch
    result lines parse each once)."""
    return _parse_short(text) if isinstance(text, str) and len(text) <= SHORT else _parse_single(text)


SHORT = 256  # replies up to this many characters are remembered by parse_single


@functools.lru_cache(maxsize=1024)
def _parse_short(text: str) -> tuple[str | None, str | None]:
    return _parse_single(text)


def _parse_single(text: str) -> tuple[str | None, str | None]:
    obj, err = _load_json(text)
    if err:
        return None, err
    if not isinstance(obj, dict) or set(obj) != {"answer"}:
        got = _short(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        return None, f"expect exactly the key 'answer', got {got}"
    token = _token(obj["answer"])
    if token is None:
        return None, f"unknown answer {_short(obj['answer'])}; expect one of {list(TOKENS)}"
    return token, None


def parse_batch(text: str, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """For each asked id: ``(token, None)`` or ``(None, reason)``.

    The reply must be exactly ``{"answers": [{"id": int, "answer": token}, ...]}`` with the asked
    ids, each once; otherwise every answer is invalid (a reply numbered from 0 would otherwise land
    on the wrong comparisons). With the ids right, an entry with extra keys or an unknown token is
    invalid alone and the others stand.
    """
    obj, err = _load_json(text)
    if err is None and (not isinstance(obj, dict) or set(obj) != {"answers"} or not isinstance(obj["answers"], list)):
        err = "expect exactly {\"answers\": [...]}"
    if err is None:
        got = [e.get("id") if isinstance(e, dict) else None for e in obj["answers"]]
        if any(not isinstance(k, int) or isinstance(k, bool) for k in got) or sorted(got) != sorted(ids):
            shown = [k if isinstance(k, int) and not isinstance(k, bool) else repr(k) for k in got[:20]]
            err = f"ids {shown}{'…' if len(got) > 20 else ''} are not the asked {sorted(ids)}, each once"
    if err:
        return {i: (None, err) for i in ids}
    out: dict[int, tuple[str | None, str | None]] = {}
    for entry in obj["answers"]:
        k = entry["id"]
        if set(entry) != {"id", "answer"}:
            out[k] = (None, f"expect keys id and answer, got {sorted(entry)}")
            continue
        token = _token(entry["answer"])
        out[k] = (token, None) if token else (None, f"unknown answer {_short(entry['answer'])}; "
                                                    f"expect one of {list(TOKENS)}")
    return out


def schema(batch: bool, n: int | None = None) -> dict:
    """The JSON schema of a reply (one triplet, or a batch).

    ``n``: the batch's size, when the engine should be held to it — exactly ``n`` answers with ids
    1…``n``. A grammar-constrained engine (llama.cpp) otherwise lets a small model stop early: at batch 8,
    SmolLM2-135M answered ids [1, 2] to every request (16 of 16 invalid); the parser still checks the ids.
    """
    answer = {"type": "string", "enum": list(TOKENS)}
    if batch:
        ids: dict = {"type": "integer"} if n is None else {"type": "integer", "enum": list(range(1, n + 1))}
        item = {"type": "object", "properties": {"id": ids, "answer": answer},
                "required": ["id", "answer"], "additionalProperties": False}
        array: dict = {"type": "array", "items": item}
        if n is not None:
            array.update(minItems=n, maxItems=n)
        return {"type": "object", "properties": {"answers": array},
                "required": ["answers"], "additionalProperties": False}
    return {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
            "additionalProperties": False}


def response_format(batch: bool) -> dict:
    """OpenAI's strict ``json_schema`` response format (one of :mod:`fbloop.agents.structured`'s modes)."""
    return {"type": "json_schema",
            "json_schema": {"name": "triplet_answers" if batch else "triplet_answer", "strict": True,
                            "schema": schema(batch)}}
