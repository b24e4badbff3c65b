"""The LLM agent's replies, read strictly: a verdict counts only in exactly the shape asked for.

- one triplet per request: ``{"answer": "first" | "second" | "equal"}``;
- ``k`` triplets per request: ``{"answers": [{"id": 1, "answer": ...}, ...]}``, ids ``1..k``.

``"first"`` is ``+1`` (the reference is closer to the first candidate), ``"second"`` is ``−1``,
``"equal"`` is ``0``. Leading or trailing whitespace is the only slack: prose around the JSON, code
fences, extra or duplicate keys, a missing, repeated or unknown id, or any other token make that answer
invalid, with the reason returned, never an exception. :func:`response_format` is the JSON schema sent
as a hint where the server accepts one; replies are parsed as if it had not been.
"""

from __future__ import annotations

import json

TOKENS: dict[str, float] = {"first": 1.0, "second": -1.0, "equal": 0.0}


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate key in {keys}")
    return dict(pairs)


def _load_json(text: str) -> tuple[object, str | None]:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates), None
    except (ValueError, TypeError) as exc:
        return None, f"not a JSON object ({exc})"


def _token(value: object) -> str | None:
    return value if isinstance(value, str) and value in TOKENS else None


def parse_single(text: str) -> tuple[str | None, str | None]:
    """``(token, None)`` for exactly ``{"answer": "first"|"second"|"equal"}``, else ``(None, reason)``."""
    obj, err = _load_json(text)
    if err:
        return None, err
    if not isinstance(obj, dict) or set(obj) != {"answer"}:
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        return None, f"expect exactly the key 'answer', got {got}"
    token = _token(obj["answer"])
    if token is None:
        return None, f"unknown answer {obj['answer']!r}; expect one of {list(TOKENS)}"
    return token, None


def parse_batch(text: str, ids: list[int]) -> dict[int, tuple[str | None, str | None]]:
    """For each asked id: ``(token, None)`` or ``(None, reason)``.

    The reply must be exactly ``{"answers": [{"id": int, "answer": token}, ...]}``; an
    id that is missing, repeated, or carries a bad entry is invalid, the others stand.
    """
    obj, err = _load_json(text)
    if err is None and (not isinstance(obj, dict) or set(obj) != {"answers"} or not isinstance(obj["answers"], list)):
        err = "expect exactly {\"answers\": [...]}"
    if err:
        return {i: (None, err) for i in ids}
    found: dict[int, list[tuple[str | None, str | None]]] = {}
    for entry in obj["answers"]:
        if not isinstance(entry, dict) or "id" not in entry:
            continue  # no id to charge it to; every asked id it might have meant stays missing
        k = entry["id"]
        if not isinstance(k, int) or isinstance(k, bool) or k not in ids:
            continue
        if set(entry) != {"id", "answer"}:
            found.setdefault(k, []).append((None, f"expect keys id and answer, got {sorted(entry)}"))
            continue
        token = _token(entry["answer"])
        found.setdefault(k, []).append(
            (token, None) if token else (None, f"unknown answer {entry['answer']!r}; expect one of {list(TOKENS)}"))
    out = {}
    for i in ids:
        got = found.get(i, [])
        out[i] = got[0] if len(got) == 1 else (None, "missing id" if not got else "id answered more than once")
    return out


def response_format(batch: bool) -> dict:
    """The JSON schema sent as ``response_format`` (a hint; replies are parsed strictly regardless)."""
    answer = {"type": "string", "enum": list(TOKENS)}
    if batch:
        item = {"type": "object", "properties": {"id": {"type": "integer"}, "answer": answer},
                "required": ["id", "answer"], "additionalProperties": False}
        schema = {"type": "object", "properties": {"answers": {"type": "array", "items": item}},
                  "required": ["answers"], "additionalProperties": False}
    else:
        schema = {"type": "object", "properties": {"answer": answer}, "required": ["answer"],
                  "additionalProperties": False}
    return {"type": "json_schema",
            "json_schema": {"name": "triplet_answers" if batch else "triplet_answer", "strict": True,
                            "schema": schema}}
