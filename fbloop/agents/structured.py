"""Structured output: how each inference engine is asked for the reply's JSON shape.

The reply is always read by the strict parser (:mod:`fbloop.agents.replies`); a mode only
helps the model produce that shape. Engines spell the request differently:

- ``json_schema``: OpenAI's ``response_format={"type": "json_schema", "json_schema": {..., "strict":
  true}}``. vLLM, Ollama's ``/v1`` (which turns it into its own ``format``), LM Studio and fbloop's
  ``serve-oracle`` take it too.
- ``json_object``: llama.cpp's (``llama-cpp-python``) ``response_format={"type": "json_object",
  "schema": ...}``, compiled into a grammar. That server answers ``json_schema`` with HTTP 500.
- ``vllm``: vLLM's ``structured_outputs={"json": ...}`` request field (vLLM ≥ 0.10).
- ``vllm-guided``: vLLM's older ``guided_json`` field.
- ``ollama``: Ollama's native ``format`` field, holding the schema.
- ``prompt``: nothing but the prompt's own instructions.

:data:`PROBE_ORDER` is the order the pre-flight probe tries them in: the OpenAI standard first
(most servers take it, and a server that rejects an unknown mode says so), then the engine
fields, then the prompt alone, which every server takes. A server that ignores a field it does
not know answers as in ``prompt`` mode; the probe only keeps a mode whose reply parsed.
"""

from __future__ import annotations

from .replies import schema

MODES: tuple[str, ...] = ("json_schema", "json_object", "vllm", "vllm-guided", "ollama", "prompt")
PROBE_ORDER: tuple[str, ...] = MODES
CHOICES: tuple[str, ...] = ("auto", *MODES)

# Words an error names when the server refused the structured-output field rather than the request.
_FIELD_WORDS = ("response_format", "json_schema", "json_object", "guided", "structured_output", "format", "schema")
# llama-cpp-python refuses json_schema with a 500 (a validation error), not a 400.
_REFUSAL_STATUS = {400, 415, 422, 500, 501}


def request_fields(mode: str, batched: bool, n: int | None = None,
                   shapes: tuple[str, dict, dict] | None = None) -> dict:
    """Keyword arguments for ``chat.completions.create`` that ask for the reply's shape in ``mode``.

    ``n``, a batch's size, fixes the answers' count and ids in the engines' own fields (a grammar then
    cannot stop early); OpenAI's strict ``json_schema`` gets the plain shape, since strict mode refuses
    keywords it does not support and the parser checks the ids anyway. ``shapes`` — ``(name, plain schema,
    full schema)`` — asks for another reply shape (a tuple question's, :mod:`fbloop.agents.tuple_prompts`).
    """
    if shapes is None:
        shapes = ("triplet_answers" if batched else "triplet_answer", schema(batched),
                  schema(batched, n if batched else None))
    name, plain, shape = shapes
    if mode == "json_schema":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": name, "strict": True, "schema": plain}}}
    if mode == "json_object":
        return {"response_format": {"type": "json_object", "schema": shape}}
    if mode == "vllm":
        return {"extra_body": {"structured_outputs": {"json": shape}}}
    if mode == "vllm-guided":
        return {"extra_body": {"guided_json": shape}}
    if mode == "ollama":
        return {"extra_body": {"format": shape}}
    if mode == "prompt":
        return {}
    raise ValueError(f"Unknown structured-output mode {mode!r}; expect one of {list(MODES)}.")


def refuses_field(status: int, text: str) -> bool:
    """Whether an HTTP error reads as the server refusing the structured-output field."""
    low = text.lower()
    return status in _REFUSAL_STATUS and any(w in low for w in _FIELD_WORDS)


def next_mode(mode: str) -> str:
    """The mode to fall back to when the server refuses ``mode`` mid-run (``prompt`` is the last)."""
    i = PROBE_ORDER.index(mode)
    return PROBE_ORDER[min(i + 1, len(PROBE_ORDER) - 1)]
