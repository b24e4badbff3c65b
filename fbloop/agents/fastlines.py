"""Batch result lines read fast: the usual line, decoded straight into typed fields.

A million-line result file is almost all one shape: a completed request (``status_code`` 200) whose
reply's first choice holds plain text, with token counts in ``usage``. :func:`read_usual` decodes such a
line with ``msgspec`` into exactly the fields the general reader (:func:`fbloop.agents.batch.read_line`
and ``_line_reply``) would take from it — the custom id's parts and a :class:`~fbloop.agents.transport.Reply`
equal to the one it builds — without building a dict for every object in the line. Any line that is
not of that shape, or that the general reader might read differently, gives ``None`` and goes to the
general reader, which decides what it is (an error line, a refusal, an unreadable line, …):

- JSON ``msgspec`` cannot decode (``NaN``, a lone surrogate escape, trailing text) or a field of another
  type (a float token count, a numeric request id, an empty or non-text content);
- a line nested deeply enough that ``json`` would give up (``RecursionError``) where ``msgspec`` would not;
- a custom id that is not the canonical ``fbloop:RUN:SEQ:ORDER:ATTEMPT`` of one position.

Duplicate keys keep the last value in both readers; fields the general reader does not read are skipped
(but must still be valid JSON). ``tests/test_batch.py`` checks the two readers agree line by line.
"""

from __future__ import annotations

import re

import msgspec

from .transport import Reply

# json gives up (RecursionError) near 1,000 levels deep, which takes ≥ 1,800 characters (each level opens
# and closes); a line that long with more than NESTING brackets goes to the general reader
LONG, NESTING = 1_800, 400


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Message(msgspec.Struct):
    content: str


class _Choice(msgspec.Struct):
    message: _Message


class _Body(msgspec.Struct):
    choices: list[_Choice]
    id: str | None = None
    model: str | None = None
    usage: _Usage | None = None


class _Response(msgspec.Struct):
    status_code: int
    body: _Body
    request_id: str | None = None


class _Line(msgspec.Struct):
    custom_id: str
    response: _Response


_DECODE = msgspec.json.Decoder(_Line).decode
_FAIL = (msgspec.DecodeError, msgspec.ValidationError)


def id_pattern(run_id: str) -> re.Pattern:
    """The canonical custom id of one position of run ``run_id``: ``(seq, order, attempt)`` as groups."""
    return re.compile(rf"fbloop:{re.escape(run_id)}:(0|[1-9][0-9]*):(ab|ba):(0|[1-9][0-9]*)", re.ASCII)


def _text_or_none(value: str | None) -> str | None:
    return value[:200] if value else None


def read_usual(raw: str | bytes, ids: re.Pattern) -> tuple[int, int, int, Reply, str] | None:
    """``(seq, order, attempt, reply, custom_id)`` of a usual result line (``ids``: :func:`id_pattern` of the
    run), or ``None``: let the general reader have it."""
    if len(raw) >= LONG:
        if isinstance(raw, bytes):
            if raw.count(b"[") + raw.count(b"{") > NESTING:
                return None
        elif raw.count("[") + raw.count("{") > NESTING:
            return None
    try:
        line = _DECODE(raw)
    except _FAIL:
        return None
    resp = line.response
    if resp.status_code != 200 or not resp.body.choices:
        return None
    content = resp.body.choices[0].message.content
    if not content:
        return None
    got = ids.fullmatch(line.custom_id)
    if got is None:
        return None
    body, usage = resp.body, resp.body.usage
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    reply = Reply(content, prompt_tokens=prompt if prompt >= 0 else 0,
                  completion_tokens=completion if completion >= 0 else 0, attempts=1, request_id=resp.request_id,
                  response_id=_text_or_none(body.id), served_model=_text_or_none(body.model), raw_chars=len(content))
    return int(got[1]), (0 if got[2] == "ab" else 1), int(got[3]), reply, line.custom_id
