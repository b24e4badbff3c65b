"""A hostile OpenAI-compatible endpoint: fbloop's oracle behind it, most replies broken on purpose.

Every chat request is answered truthfully by :class:`fbloop.agents.server.OracleModel` first; then the
request's *class* decides what is actually sent. Classes come round in a fixed, shuffled cycle of
:data:`CYCLE` slots indexed by the request's arrival number, so any ``len(CYCLE)`` requests meet
every class once and 60 % of requests misbehave:

- ``ok`` kinds: the verdict, readable in an unusual but valid way (pretty-printed, content parts,
  batch entries reordered, junk token counts) — it must be stored with the value it meant;
- ``invalid`` kinds: a reply that is not the asked shape, or no reply at all in a 200 body (prose,
  fences, extra keys, ``"FIRST"``, ``"both"``, numbers, truncated / empty / null / object content,
  a refusal, 1 MB, no or empty ``choices``, HTML, ``[]``, a JSON content type over a non-JSON body,
  ids numbered from 0, the Authorization header echoed back) — it must be stored invalid with its raw text;
- ``transient`` kinds: 429 with ``Retry-After``, 500, 503 echoing the Authorization header, a
  connection cut mid-body — retried;
- ``fatal``: a 400 echoing the Authorization header — not retried, the answers invalid.

Every response carries ``x-request-id: hreq-N`` (and error bodies the text ``req-N``), so a test
can tie each stored answer back to the request it came from in :attr:`Hostile.log`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

from fbloop.agents.server import OracleModel, ServerConfig, _uvicorn

OK = ("ok", "ok-pretty", "ok-parts", "ok-reordered", "ok-badusage")
INVALID = ("prose", "fenced", "extra-keys", "upper", "both", "number", "truncated", "empty", "null", "refusal",
           "huge", "no-choices", "empty-choices", "html-body", "array-body", "bad-json-body", "content-object",
           "zero-ids", "key-echo")
TRANSIENT = ("429", "500", "503-key-echo", "cut")
FATAL = ("400-key-echo",)
KIND = {**{c: "ok" for c in OK}, **{c: "invalid" for c in INVALID}, **{c: "transient" for c in TRANSIENT},
        **{c: "fatal" for c in FATAL}}
# 24 misbehaving slots and 16 well-behaved ones: 60 % of requests misbehave
CYCLE = list(INVALID + TRANSIENT + FATAL) + list(OK) * 3 + ["ok"]
random.Random(17).shuffle(CYCLE)
HUGE = 1_000_000  # characters of the 1 MB reply


@dataclass(frozen=True)
class HostileConfig:
    target: str = "synthetic:p=8,rank=3"
    model: str = "fbloop-oracle"
    retry_after: str = "0.05"  # the 429's Retry-After header
    only: tuple[str, ...] | None = None  # serve these classes in turn instead of CYCLE


class Hostile:
    """The ASGI app; :attr:`log` holds one dict per chat request (``n``, ``cls``, ``tokens``, ``t``)."""

    def __init__(self, config: HostileConfig, target=None):
        self.config = config
        self.oracle = OracleModel(ServerConfig(target=config.target, model=config.model), target)
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.cycle = list(config.only) if config.only else CYCLE

    @property
    def kinds(self) -> Counter:
        return Counter(KIND[e["cls"]] for e in self.log)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        auth = headers.get("authorization", "")
        if scope["path"].endswith("/models"):
            return await _send(send, 200, json.dumps({"object": "list", "data": [
                {"id": self.config.model, "object": "model"}]}).encode(), "application/json", {})
        with self.lock:
            n = len(self.log)
            cls = self.cycle[n % len(self.cycle)]
            entry = {"n": n, "cls": cls, "tokens": None, "t": time.monotonic()}
            self.log.append(entry)
        rid = {"x-request-id": f"hreq-{n}"}
        try:
            req = json.loads(body)
        except ValueError:
            req = {}
        status, out, _ = self.oracle.reply(req if isinstance(req, dict) else {})
        if status != 200:  # not an fbloop prompt: the oracle's own error
            entry["cls"] = "oracle-error"
            return await _send(send, status, json.dumps(out).encode(), "application/json", rid)
        content = out["choices"][0]["message"]["content"]
        obj = json.loads(content)
        batched = "answers" in obj
        entry["tokens"] = ({a["id"]: a["answer"] for a in obj["answers"]} if batched else {1: obj["answer"]})
        entry["batch"] = batched
        return await self._misbehave(send, cls, n, out, obj, batched, auth, rid)

    async def _misbehave(self, send, cls, n, out, obj, batched, auth, rid):
        js = "application/json"
        msg = out["choices"][0]["message"]

        def reply(content=None, **change) -> bytes:
            o = json.loads(json.dumps(out))
            if content is not None:
                o["choices"][0]["message"]["content"] = content
            o.update(change)
            return json.dumps(o).encode()

        def error(status: int, text: str, extra: dict | None = None, ctype: str = js) -> tuple:
            body = (json.dumps({"error": {"message": text, "type": "hostile", "code": None}})
                    if ctype == js else text)
            return _send(send, status, body.encode(), ctype, {**rid, **(extra or {})})

        def tokens(fn) -> str:
            o = json.loads(json.dumps(obj))
            if batched:
                for a in o["answers"]:
                    a["answer"] = fn(a["answer"])
            else:
                o["answer"] = fn(o["answer"])
            return json.dumps(o)

        text = msg["content"]
        bodies = {
            "ok": lambda: reply(),
            "ok-pretty": lambda: reply("\n  " + json.dumps(obj, indent=2) + "\n"),
            "ok-parts": lambda: reply([{"type": "text", "text": text[:5]}, {"type": "text", "text": text[5:]}]),
            "ok-reordered": lambda: reply(json.dumps({"answers": obj["answers"][::-1]}) if batched else text),
            "ok-badusage": lambda: reply(usage={"prompt_tokens": "lots", "completion_tokens": None,
                                                "total_tokens": {"x": 1}}),
            "prose": lambda: reply(f"Sure! Here is my answer: {text}"),
            "fenced": lambda: reply(f"```json\n{text}\n```"),
            "extra-keys": lambda: reply(json.dumps({**obj, "why": "because"})),
            "upper": lambda: reply(tokens(str.upper)),
            "both": lambda: reply(tokens(lambda t: "both")),
            "number": lambda: reply(tokens(lambda t: {"first": 1, "second": 2, "equal": 0}[t])),
            "truncated": lambda: reply(text[: len(text) // 2]),
            "empty": lambda: reply(""),
            "null": lambda: json.dumps({**json.loads(reply()), "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": "length"}]}).encode(),
            "refusal": lambda: json.dumps({**json.loads(reply()), "choices": [
                {"index": 0, "message": {"role": "assistant", "content": None,
                                         "refusal": f"I can't compare these (req-{n})."},
                 "finish_reason": "stop"}]}).encode(),
            "huge": lambda: reply("x" * HUGE + text),
            "no-choices": lambda: json.dumps({k: v for k, v in json.loads(reply()).items()
                                              if k != "choices"}).encode(),
            "empty-choices": lambda: reply(choices=[]),
            "content-object": lambda: reply(obj),
            "zero-ids": lambda: reply(json.dumps({"answers": [{"id": a["id"] - 1, "answer": a["answer"]}
                                                              for a in obj["answers"]]}) if batched
                                      else json.dumps({**obj, "id": 0})),
            "key-echo": lambda: reply(f"Your request with header Authorization: {auth} was received."),
        }
        if cls in bodies:
            return await _send(send, 200, bodies[cls](), js, rid)
        if cls == "html-body":
            return await _send(send, 200, f"<html><body>req-{n}: upstream busy</body></html>".encode(),
                               "text/html", rid)
        if cls == "array-body":
            return await _send(send, 200, b"[]", js, rid)
        if cls == "bad-json-body":
            return await _send(send, 200, f"{{'answer': first, req-{n}".encode(), js, rid)
        if cls == "429":
            return await error(429, f"rate limited (req-{n})", {"retry-after": self.config.retry_after})
        if cls == "500":
            return await error(500, f"simulated failure (req-{n})")
        if cls == "503-key-echo":
            return await error(503, f"upstream rejected Authorization: {auth} (req-{n})", ctype="text/plain")
        if cls == "400-key-echo":
            return await error(400, f"bad request with Authorization: {auth} (req-{n})")
        if cls == "cut":  # promise a body, send half, drop the connection
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4000"),
                                    *[(k.encode(), v.encode()) for k, v in rid.items()]]})
            await send({"type": "http.response.body", "body": reply()[:40], "more_body": True})
            raise ConnectionAbortedError(f"hostile server cut request {n}")
        raise AssertionError(f"unknown class {cls!r}")


async def _send(send, status: int, body: bytes, ctype: str, headers: dict):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
                            *[(k.encode(), v.encode()) for k, v in headers.items()]]})
    await send({"type": "http.response.body", "body": body})


class Running:
    """A hostile server on a background thread: ``url`` (with ``/v1``), ``app`` (its log)."""

    def __init__(self, config: HostileConfig = HostileConfig(), target=None):
        self.app = Hostile(config, target)
        self.server = _uvicorn(self.app, 0)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the hostile server did not start"
            time.sleep(0.01)
        import logging

        # uvicorn logs each cut connection's exception with a traceback: expected here, so hushed
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        self.url = f"http://127.0.0.1:{self.server.servers[0].sockets[0].getsockname()[1]}/v1"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
