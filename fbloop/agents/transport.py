"""One chat request to an OpenAI-compatible endpoint, whatever the endpoint sends back.

The official ``openai`` client sends the request (``with_raw_response``), but the reply is read
here from the HTTP body's text, so that no body can raise: not a non-JSON body, a ``[]`` body, a
JSON content type over a non-JSON body, a ``content`` that is an object, nor token counts that are
not numbers. What cannot be read becomes a :class:`Reply` with ``unreadable`` set (the reason) and
the raw text kept; the agent stores it as an invalid answer.

- **Retries**: 429, 408, 409, 5xx, connection errors (cut connections included) and timeouts are
  retried up to ``max_attempts`` tries, waiting ``backoff_s · 2^i`` (capped at ``backoff_max_s``,
  with jitter) or the server's ``Retry-After`` / ``retry-after-ms`` if longer, capped at
  ``retry_after_max_s`` (a server asking for an hour would otherwise stall the run; past the cap
  the request is tried anyway and retried as usual). Other 4xx are not retried.
- **Refused structured output**: an error that names the structured-output field (see
  :func:`fbloop.agents.structured.refuses_field`) re-sends the request in the next mode, without
  counting an attempt — also for requests already in flight when the first refusal came back.
- **Secrets**: the API key is removed from every text kept (replies, error bodies, reasons), so
  an endpoint that echoes the ``Authorization`` header cannot get it stored or printed.
- **Size**: a reply is parsed whole, but only its first ``raw_cap`` characters are kept, with its
  full length beside them (``raw_chars``).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import time
from dataclasses import dataclass

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
REDACTED = "[api key removed]"
MIN_SECRET = 8  # shorter "keys" (`local`, `any`) are placeholders for local servers, not secrets


@dataclass
class Reply:
    """What came back for one request: the reply's text, or why there is none."""

    text: str  # the content to parse; the kept raw text when unreadable or failed
    failed: bool = False  # no reply came back (after retries); text is the error
    unreadable: str | None = None  # a reply came back but holds no content to parse: why
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    request_id: str | None = None
    response_id: str | None = None
    served_model: str | None = None
    mode: str | None = None  # the structured-output mode it was asked in
    raw_chars: int = 0  # the full length of the raw text before it was capped


class Scrubber:
    """Removes the key from texts and caps their length."""

    def __init__(self, secrets: list[str], cap: int):
        self.secrets = [s for s in secrets if s and len(s) >= MIN_SECRET]
        self.cap = cap

    def __call__(self, text: str, cap: int | None = None) -> str:
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        limit = self.cap if cap is None else cap
        return text if len(text) <= limit else text[:limit]


def _count(value: object) -> int:
    """A token count as given, or 0 when it is not a non-negative whole number."""
    if type(value) is int:  # the usual case first (bool is a subclass of int, not int itself)
        return value if value >= 0 else 0
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if value >= 0 else 0
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value == int(value):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _text_or_none(value: object, limit: int = 200) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def read_completion(body: str) -> tuple[str | None, str | None, str, dict]:
    """``(content, why_unreadable, raw, fields)`` from a chat-completions HTTP body.

    ``content`` is the first choice's message text (content parts joined); when there is none,
    ``why_unreadable`` says why and ``raw`` is what to keep (a refusal's text, the content as
    JSON, or the body). ``fields`` holds the ids, model and token counts that could be read.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None, "the HTTP body is not JSON", body, {"prompt_tokens": 0, "completion_tokens": 0,
                                                         "response_id": None, "served_model": None}
    return read_completion_obj(obj, body)


def read_completion_obj(obj: object, body: str | None = None) -> tuple[str | None, str | None, str, dict]:
    """:func:`read_completion` of a body already parsed (a batch result line's ``response.body``);
    ``body``, its text, is what to keep when it has no content (``json.dumps(obj)`` when not given)."""
    if not isinstance(obj, dict):
        fields = {"prompt_tokens": 0, "completion_tokens": 0, "response_id": None, "served_model": None}
        return None, f"the HTTP body is a JSON {type(obj).__name__}, not an object", _kept(obj, body), fields
    usage = obj.get("usage")
    if isinstance(usage, dict):
        prompt, completion = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    else:
        prompt = completion = 0
    fields = {"prompt_tokens": prompt, "completion_tokens": completion,
              "response_id": _text_or_none(obj.get("id")), "served_model": _text_or_none(obj.get("model"))}
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return None, "the reply has no choices", _kept(obj, body), fields
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        return None, "the first choice has no message", _kept(obj, body), fields
    content = message.get("content")
    if isinstance(content, str) and content:
        return content, None, content, fields
    if isinstance(content, list) and content and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        text = "".join(p["text"] for p in content)  # content parts: the text is theirs joined
        return text, None, text, fields
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        return None, "the model refused", refusal, fields
    if content is None or content == "":
        return None, f"the message content is {'empty' if content == '' else 'null'}", _kept(obj, body), fields
    return None, f"the message content is a JSON {type(content).__name__}, not text", json.dumps(content), fields


def _kept(obj: object, body: str | None) -> str:
    """What a body without content keeps: its text, else the parsed body as JSON (built only when kept)."""
    return body if body is not None else json.dumps(obj)


def retry_after(headers) -> float | None:
    """Seconds the server asked to wait (``retry-after-ms``, ``Retry-After`` as seconds or a date)."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None  # unreadable: the backoff alone decides


def _body(exc) -> str:
    try:
        return exc.response.text or ""
    except Exception:  # a body that cannot be decoded is no reason to lose the request
        return ""


def describe(exc: Exception, scrub: Scrubber, limit: int = 500) -> str:
    """An exception as one line for ``raw`` / ``meta.error``: status and the body's start, key removed."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        text = f"HTTP {exc.status_code}: {exc.message}"
        body = _body(exc)
        if body and body not in text:
            text += f" — {body}"
    else:
        cause = exc.__cause__ or exc.__context__
        text = f"{type(exc).__name__}: {exc}" + (f" ({cause})" if cause else "")
    return scrub(" ".join(text.split()), limit)


def retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUS or exc.status_code >= 500
    return isinstance(exc, openai.APIConnectionError)  # includes timeouts and cut connections


@dataclass
class Policy:
    """How hard to try: the agent's config, less everything else."""

    max_attempts: int
    backoff_s: float
    backoff_max_s: float
    retry_after_max_s: float


async def send(client, kwargs_for, policy: Policy, scrub: Scrubber, usage, modes, probing: bool = False) -> Reply:
    """Send one request (``kwargs_for(mode)`` builds it), retrying; never raises for what the server does.

    ``modes`` is the agent's shared :class:`ModeState`: a refusal of the structured-output field
    moves it on and the request is re-sent in the new mode (while ``probing``, the refusal is the
    answer instead: a failed reply). ``usage`` counts requests and retries.
    """
    import openai

    from .structured import refuses_field

    attempts, error = 0, ""
    while attempts < policy.max_attempts:
        attempts += 1
        mode = modes.current
        usage.requests += 1
        t0 = time.perf_counter()
        try:
            raw = await client.chat.completions.with_raw_response.create(**kwargs_for(mode))
            http = raw.http_response
            body = http.text
        except openai.APIStatusError as exc:
            error = describe(exc, scrub)
            if mode != "prompt" and refuses_field(exc.status_code, f"{exc.message} {_body(exc)}"):
                if probing:
                    break
                modes.refused(mode)  # the server does not take this field: the next mode, same attempt
                attempts -= 1
                continue
            if not retryable(exc) or attempts >= policy.max_attempts:
                break
            usage.retries += 1
            wait = min(policy.backoff_s * 2 ** (attempts - 1), policy.backoff_max_s)
            wait *= 0.5 + 0.5 * random.random()  # jitter: no thundering herd
            asked = retry_after(exc.response.headers)
            if asked is not None:
                wait = min(max(wait, asked), policy.retry_after_max_s)
            await asyncio.sleep(wait)
            continue
        except openai.APIConnectionError as exc:
            error = describe(exc, scrub)
            if attempts >= policy.max_attempts:
                break
            usage.retries += 1
            await asyncio.sleep(min(policy.backoff_s * 2 ** (attempts - 1), policy.backoff_max_s)
                                * (0.5 + 0.5 * random.random()))
            continue
        except Exception as exc:  # anything else the client raises is a reply we cannot use, not a crash
            error = describe(exc, scrub)
            break
        latency = time.perf_counter() - t0
        content, why, kept, fields = read_completion(body)
        usage.prompt_tokens += fields["prompt_tokens"]
        usage.completion_tokens += fields["completion_tokens"]
        return Reply(content if content is not None else scrub(kept), unreadable=why,
                     prompt_tokens=fields["prompt_tokens"], completion_tokens=fields["completion_tokens"],
                     latency_s=latency, attempts=attempts, request_id=_text_or_none(http.headers.get("x-request-id")),
                     response_id=fields["response_id"], served_model=fields["served_model"], mode=mode,
                     raw_chars=len(kept))
    usage.failed_requests += 1
    text = f"error: {error} (gave up after {attempts} attempt{'s' * (attempts != 1)})"
    return Reply(text, failed=True, attempts=attempts, mode=modes.current, raw_chars=len(text))


class ModeState:
    """The structured-output mode requests are sent in now; refusals move it along the probe order."""

    def __init__(self, mode: str):
        self.current = mode
        self.refusals: list[str] = []

    def refused(self, mode: str) -> None:
        from .structured import next_mode

        if self.current == mode:  # requests in flight may report the same refusal: move on once
            self.refusals.append(mode)
            self.current = next_mode(mode)
