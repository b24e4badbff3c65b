"""A local OpenAI-compatible server that answers fbloop's triplet prompts from a simulated ``Φ*``.

``POST /v1/chat/completions`` reads the last user message, parses fbloop's own
prompt format back into activations (the feature lines that
:func:`fbloop.render.as_text` writes under the ``Reference:``, ``First
candidate:`` and ``Second candidate:`` markers, one block per ``### Comparison
k`` in a batch) and answers with the simulated oracle
(:class:`fbloop.agents.OracleAgent`) in the JSON the prompt asks for. So an
LLM-agent run against it is a genuine round trip through the prompt text: what
the oracle judges is only what the prompt shows — weights as
:func:`fbloop.render.weight_text` writes them (three decimals, three significant
digits below 0.1), at most ``top_features`` features per activation.
``GET /v1/models`` lists the one model it serves. ``/v1/files`` and ``/v1/batches`` are OpenAI's
Files and Batch APIs, answering each line the same way (:mod:`fbloop.agents.batchserver`).

Knobs, all deterministic under ``seed``: ``latency_ms`` per request; oracle
noise (an :class:`fbloop.agents.OracleConfig`); ``first_bias``, the probability
of answering ``"first"`` whatever the question (a position bias); ``malformed``,
the share of replies that break the format (prose around the JSON, an unknown
token, truncated JSON, a missing id); ``error_rate``, the share of requests
answered 429 or 500. Random draws are a pure function of ``(seed, prompt, how
many times this prompt was seen)``, so a retried request can succeed and a
rerun gets the same replies whatever the request order. Oracle noise per
comparison is keyed by a hash of its rendered text in place of a query position.

Tuple questions (closest of ``k``, rank ``k``, odd one out) are read back by
:func:`fbloop.agents.tuple_prompts.read_prompt` and answered the same way, in their own reply shapes;
``first_bias`` answers candidate (item) 1 there, or ranks it first.

Only the prompt's line structure is read: feature descriptions are quoted on a
feature line and cannot hold a newline (the rendering collapses whitespace), so
a description cannot forge a marker, a feature or an answer.

:func:`serve` runs it on a background thread (tests, benchmarks);
``fbloop serve-oracle`` runs it in the foreground. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..records import Queries
from ..sparse import SparseBatch
from ..targets.load import load_target
from ..targets.target import Target
from . import tuple_prompts
from .batchserver import BatchServerConfig, BatchService, routes as batch_routes
from . import tokens
from .oracle import OracleAgent, OracleConfig

HOST = "127.0.0.1"

_HEADER = re.compile(r"^### Comparison (\d+)$")
_FEATURE = re.compile(r'^- feature (\d+) \(weight (-?\d+(?:\.\d+)?)\): ".*"$')
_EMPTY = "- (no active features)"
_SECTIONS = {"Reference:": "reference", "First candidate:": "first", "Second candidate:": "second"}


@dataclass(frozen=True)
class ServerConfig:
    target: str = "rfm"  # target spec the simulated Φ* comes from
    model: str = "fbloop-oracle"  # the model name it answers as
    oracle: OracleConfig = field(default_factory=OracleConfig)  # noise of the simulated answers
    latency_ms: float = 0.0  # added to every chat request
    malformed: float = 0.0  # share of replies that break the answer format
    error_rate: float = 0.0  # share of requests answered 429 or 500
    first_bias: float = 0.0  # probability of answering "first" whatever the question
    api_key: str | None = None  # when set, requests must carry it as a Bearer token
    tokenizer: str = "estimate"  # how `usage` counts tokens (fbloop.agents.tokens.load)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("malformed", "error_rate", "first_bias"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"Expect {name} in [0, 1], got {getattr(self, name)}.")
        if self.latency_ms < 0:
            raise ConfigError(f"Expect latency_ms ≥ 0, got {self.latency_ms}.")
        tokens.check(self.tokenizer)


# ---------------------------------------------------------------- reading the prompt back


@dataclass(frozen=True)
class Comparison:
    id: int | None  # the batch id, None for a single-triplet prompt
    text: str  # the comparison's lines, as rendered
    reference: list[tuple[int, float]]
    first: list[tuple[int, float]]
    second: list[tuple[int, float]]


def parse_prompt(text: str) -> list[Comparison]:
    """The comparisons a prompt asks about, in order; ``[]`` when it holds none."""
    out: list[Comparison] = []
    cur: dict | None = None
    section: str | None = None

    def close() -> None:
        if cur is not None and all(k in cur for k in _SECTIONS.values()):
            out.append(Comparison(cur["id"], "\n".join(cur["lines"]), cur["reference"], cur["first"], cur["second"]))

    for line in text.splitlines():
        line = line.rstrip()
        header = _HEADER.match(line)
        if header or (line == "Reference:" and (cur is None or "reference" in cur)):
            close()  # a new comparison starts
            cur = {"id": int(header.group(1)) if header else None, "lines": []}
            section = None
            if header:
                cur["lines"].append(line)
                continue
        if cur is None:
            continue
        if line in _SECTIONS:
            section = _SECTIONS[line]
            cur[section] = []
            cur["lines"].append(line)
        elif section is not None and (m := _FEATURE.match(line)):
            cur[section].append((int(m.group(1)), float(m.group(2))))
            cur["lines"].append(line)
        elif section is not None and line == _EMPTY:
            cur["lines"].append(line)
        else:
            section = None  # any other line ends the block (blank lines, the question)
    close()
    return out


def _batch(acts: list[list[tuple[int, float]]], p: int) -> SparseBatch:
    s = max(1, max(len(a) for a in acts))
    idx = np.zeros((len(acts), s), np.int64)
    val = np.zeros((len(acts), s))
    for r, act in enumerate(acts):
        for k, (i, v) in enumerate(act):
            if not 0 <= i < p:
                raise ConfigError(f"Feature index {i} is outside the target's p={p}.")
            idx[r, k], val[r, k] = i, v
    return SparseBatch(idx, val, p)


def _unit(*parts: object) -> float:
    """A uniform in [0, 1) that is a pure function of ``parts``."""
    h = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64


# ---------------------------------------------------------------- the simulated model


class OracleModel:
    """Turns a chat request into the reply a perfect (or noisy, biased, sloppy) model would give."""

    def __init__(self, config: ServerConfig, target: Target | None = None):
        self.config = config
        self.target = target or load_target(config.target)
        anchor = SparseBatch(np.zeros((1, 1), np.int64), np.ones((1, 1)), self.target.p)  # triplets ignore it
        self.oracle = OracleAgent(self.target.factor, anchor, config.oracle)
        self.seen: Counter[bytes] = Counter()  # times each prompt (its digest) was asked
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.tokens = tokens.load(config.tokenizer)  # usage's token counts

    def judge(self, comparisons: list[Comparison]) -> list[str]:
        """``"first"``, ``"second"`` or ``"equal"`` for each comparison."""
        p, cfg = self.target.p, self.config
        seq = np.array([int(hashlib.sha256(f"{cfg.seed}\0{c.text}".encode()).hexdigest()[:8], 16) % 2**31
                        for c in comparisons], dtype=np.int64)
        q = Queries("triplet", seq, _batch([c.reference for c in comparisons], p),
                    _batch([c.first for c in comparisons], p), _batch([c.second for c in comparisons], p))
        values = self.oracle.answer(q).value
        out = []
        for c, v in zip(comparisons, values):
            if cfg.first_bias and _unit(cfg.seed, "bias", c.text) < cfg.first_bias:
                out.append("first")
            else:
                out.append("first" if v > 0 else "second" if v < 0 else "equal")
        return out

    def judge_tuples(self, questions: list[tuple_prompts.Question]) -> str:
        """The reply (JSON text) to one tuple question, or a batch of them."""
        if questions[0].id is None:
            return self.judge_tuple(questions[0])
        got = [json.loads(self.judge_tuple(q)) for q in questions]
        return json.dumps({"answers": [{"id": q.id, **g} for q, g in zip(questions, got)]})

    def judge_tuple(self, question: tuple_prompts.Question) -> str:
        """The reply (JSON text) to one tuple question."""
        p, cfg = self.target.p, self.config
        seq = np.array([int(hashlib.sha256(f"{cfg.seed}\0{question.text}".encode()).hexdigest()[:8], 16) % 2**31])
        acts = [_batch([o], p) for o in question.options]
        q = (Queries("odd", seq, *acts) if question.kind == "odd"
             else Queries(question.kind, seq, _batch([question.reference], p), cands=tuple(acts)))  # type: ignore[arg-type]
        value = float(self.oracle.answer(q).value[0])
        if cfg.first_bias and _unit(cfg.seed, "bias", question.text) < cfg.first_bias:
            if question.kind != "rank":
                value = 1.0
            else:  # candidate 1 moved to the front
                from ..records import ranking_code, ranking_from_code

                order = ranking_from_code(np.array([value]), q.k)[0].tolist()
                value = float(ranking_code(np.array([[0] + [j for j in order if j != 0]]))[0])
        return tuple_prompts.reply(question.kind, value, q.k)

    def reply(self, body: dict) -> tuple[int, dict, dict]:
        """``(status, JSON body, headers)`` for one chat-completions request body."""
        cfg = self.config
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return 400, _error("messages must be a non-empty list", "invalid_request_error"), {}
        user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        prompt = _content(user[-1]) if user else ""
        seen = hashlib.blake2b(prompt.encode(), digest_size=16).digest()  # a million prompts: 16 bytes each
        with self.lock:
            nth = self.seen[seen]
            self.seen[seen] += 1
            self.stats["requests"] += 1
        u_err = _unit(cfg.seed, "error", prompt, nth)
        if u_err < cfg.error_rate:
            status = 429 if _unit(cfg.seed, "which", prompt, nth) < 0.5 else 500
            with self.lock:
                self.stats[f"http_{status}"] += 1
            kind = "rate_limit_error" if status == 429 else "server_error"
            return status, _error(f"simulated {status}", kind), {}
        comparisons = parse_prompt(prompt)
        questions = [] if comparisons else tuple_prompts.read_questions(prompt)
        if not comparisons and not questions:
            with self.lock:
                self.stats["http_400"] += 1
            return 400, _error("no fbloop triplet found in the last user message", "invalid_request_error"), {}
        batched = (comparisons or questions)[0].id is not None
        if questions:
            content = self.judge_tuples(questions)
        elif batched:
            answers = self.judge(comparisons)
            content = json.dumps({"answers": [{"id": c.id, "answer": a} for c, a in zip(comparisons, answers)]})
        else:
            content = json.dumps({"answer": self.judge(comparisons)[0]})
        if _unit(cfg.seed, "malformed", prompt, nth) < cfg.malformed:
            content = _break(content, _unit(cfg.seed, "how", prompt, nth), batched)
            with self.lock:
                self.stats["malformed"] += 1
        with self.lock:
            self.stats["ok"] += 1
            self.stats["comparisons"] += len(comparisons) or len(questions)
        prompt_tokens = self.tokens.prompt(messages)
        completion_tokens = self.tokens.completion(content)
        out = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or cfg.model,
            "system_fingerprint": f"fbloop-oracle-{cfg.seed}",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return 200, out, {"x-request-id": f"req_{uuid.uuid4().hex[:24]}"}


def _content(message: dict) -> str:
    c = message.get("content")
    if isinstance(c, list):  # content parts
        return "\n".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c if isinstance(c, str) else ""


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _break(content: str, u: float, batched: bool) -> str:
    """A reply a sloppy model might give instead of ``content``."""
    if u < 0.25:
        return f"Sure! Here is my answer: {content}"
    if u < 0.5:
        out = content.replace('"first"', '"A"').replace('"second"', '"B"').replace('"equal"', '"tie"')
        return out if out != content else content.replace("{", '{"note": "my answer", ', 1)  # a tuple reply
    if u < 0.75:
        return content[: len(content) // 2]
    if batched:
        obj = json.loads(content)
        for item in obj["answers"]:
            item.pop("id")
        return json.dumps(obj)
    return "first"


# ---------------------------------------------------------------- the HTTP app


def make_app(config: ServerConfig, target: Target | None = None, batch: BatchServerConfig | None = None):
    """A Starlette app serving ``config``; ``app.state.model`` holds the counters, ``app.state.batches``
    the Files and Batch APIs (:mod:`fbloop.agents.batchserver`, set up by ``batch``)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    model = OracleModel(config, target)

    def authorized(request: Request) -> bool:
        return config.api_key is None or request.headers.get("authorization") == f"Bearer {config.api_key}"

    async def chat(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse(_error("invalid api key", "invalid_request_error"), status_code=401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(_error("body is not JSON", "invalid_request_error"), status_code=400)
        if config.latency_ms:
            await asyncio.sleep(config.latency_ms / 1000)
        status, out, headers = model.reply(body if isinstance(body, dict) else {})
        return JSONResponse(out, status_code=status, headers=headers)

    async def models(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse(_error("invalid api key", "invalid_request_error"), status_code=401)
        return JSONResponse({"object": "list", "data": [
            {"id": config.model, "object": "model", "created": 0, "owned_by": "fbloop"}]})

    batches = BatchService(batch or BatchServerConfig(), model.reply)
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/v1/models", models, methods=["GET"]), *batch_routes(batches, authorized)])
    app.state.model = model
    app.state.batches = batches
    return app


@dataclass
class Served:
    """A running server: its base URL (with ``/v1``), port and counters."""

    url: str
    port: int
    model: OracleModel
    batches: BatchService | None = None

    @property
    def stats(self) -> Counter[str]:
        return self.model.stats


def _uvicorn(app, port: int):
    import uvicorn

    # A deep listen backlog: many concurrent clients must queue, not be refused.
    cfg = uvicorn.Config(app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off",
                         backlog=4096, timeout_keep_alive=30)
    return uvicorn.Server(cfg)


@contextlib.contextmanager
def serve(config: ServerConfig = ServerConfig(), port: int = 0, target: Target | None = None,
          batch: BatchServerConfig | None = None) -> Iterator[Served]:
    """Run the server on a background thread for the ``with`` block (``port=0``: any free port)."""
    app = make_app(config, target, batch)
    server = _uvicorn(app, port)
    thread = threading.Thread(target=server.run, name="fbloop-oracle-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"The oracle server did not start on {HOST}:{port}.")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(f"http://{HOST}:{bound}/v1", bound, app.state.model, app.state.batches)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_forever(config: ServerConfig, port: int, batch: BatchServerConfig | None = None) -> None:
    """Serve in the foreground until interrupted (``fbloop serve-oracle``)."""
    _uvicorn(make_app(config, batch=batch), port).run()
