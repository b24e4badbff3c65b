"""The LLM agent: triplet questions to any OpenAI-compatible chat endpoint.

Each triplet ``(a, b, c)`` is rendered with :mod:`fbloop.render` (the same text
the human form shows) into the ``prompts/`` templates and sent through the
official ``openai`` client. Only the structured reply counts (:mod:`fbloop.agents.replies` reads it):

- one triplet per request: ``{"answer": "first" | "second" | "equal"}``;
- ``k`` triplets per request: ``{"answers": [{"id": 1, "answer": ...}, ...]}``.

``"first"`` is ``+1`` (the reference ``a`` is closer to the first candidate),
``"second"`` is ``−1``, ``"equal"`` is ``0``. Parsing is strict: leading or
trailing whitespace is the only slack; prose around the JSON, code fences,
extra or duplicate keys, a missing or unknown id, or any other token make that
answer ``invalid``, stored with the raw reply text — never an exception that
loses the batch; so is anything the server sends that is no reply at all (see
:mod:`fbloop.agents.transport`). The reply's shape is asked for in the
structured-output mode the server understands (:mod:`fbloop.agents.structured`),
but the reply is parsed as if it had not been. Feature
descriptions are untrusted text: they only ever reach the prompt, and nothing
in them can change how the reply is read.

Choices (see also :class:`LLMConfig`):

- **Order swap** (``order_swap``): every triplet is also asked with its two
  candidates swapped, in separate requests. The swapped answers are stored under
  their own agent name ``llm:<model>#swap`` (the store keys answers by
  ``(run, seq, agent, attempt)``; ``attempt`` stays free for re-asks) with
  ``meta["order"] == "ba"``. Every stored ``value`` is in the stored query's
  orientation (``+1`` = closer to ``b``), so a swapped reply ``"first"`` is stored
  as ``−1``; ``raw`` keeps the reply as given. Both answers feed the learner, which
  averages a position bias out; the rate at which the two orders disagree is the
  *position-bias rate* reported per run.
- **Batches** of ``batch_size`` triplets per request, numbered ``1..k`` inside
  the request. With ``batch_size == 1`` the single-answer template is used.
- **Structured output** (``structured``): ``auto`` probes the server before the run
  (:meth:`LLMAgent.check`): one small fbloop prompt in each mode of
  :data:`fbloop.agents.structured.PROBE_ORDER` until a reply parses; ``prompt``
  (no field) when none does. Each answer's ``meta["structured"]`` is the mode it
  was asked in, and the run's summary holds the probe's log.
- **Retries**: 429, 408, 409, 5xx, connection errors and timeouts are retried with
  exponential backoff (``backoff_s · 2^i``, capped, with jitter, or the server's
  ``Retry-After`` up to ``retry_after_max_s``) up to ``max_attempts`` tries; after
  the last, every answer of the request is ``invalid`` with the error text as
  ``raw``. Other 4xx are not retried. An error naming the structured-output field
  re-sends the request in the next mode.
- **What is kept**: the API key is removed from every stored text; a raw reply
  keeps its first ``raw_cap`` characters, with its full length in
  ``meta["raw_chars"]``.
- **Cache**: a reply whose every answer parsed is stored in the run database
  (``llm_cache``), keyed by ``sha256(base URL, model, temperature, template
  hash, rendered prompt)`` — the endpoint and temperature are in the key so
  that one model name served by two servers never shares replies; an identical
  request later (a resumed run, a rerun) reads it instead of paying again.
  Invalid replies and failed requests are never cached (and a cached reply that
  does not parse is never served). At ``temperature > 0`` the cache keeps the
  first sample. A resumed run asks again every query whose only answers are
  ``invalid``, stored under ``attempt`` + 1 beside them (:func:`fbloop.loop.run_loop`).
- **Usage**: each answer's ``meta`` carries its request's tokens; only the first
  answer of a request (``batch_index`` 0) counts them in
  :meth:`LLMAgent.run_summary`, and cached replies cost nothing. Cost is tokens
  times the configured price per 1k tokens (default 0).
- **Pre-flight** (:meth:`LLMAgent.check`): a missing key (the environment
  variable named by ``api_key_env`` — the key itself is never stored or logged),
  an unreachable endpoint, a rejected key, or a model the endpoint does not serve
  raise one :class:`EndpointError` naming the URL before any query is spent.
- Requests run on ``asyncio`` with a semaphore of ``concurrency``. Called from a
  thread with a running event loop (a notebook), the requests run on a worker
  thread and cache writes wait until the chunk is done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .. import prompts, render
from ..errors import ConfigError
from ..records import Answers, Queries, from_reversed
from ..sparse import SparseBatch
from .base import ImmediateAgent, Ledger
from .reliability import flip_rate_from_swaps
from .replies import TOKENS, parse_batch, parse_single
from .structured import CHOICES, PROBE_ORDER, request_fields
from .transport import ModeState, Policy, Reply, Scrubber, describe, send

REASON_CAP = 300  # characters of a reason (meta["error"]) kept


class EndpointError(ConfigError):
    """The LLM endpoint is unreachable, its key is missing or rejected, or it lacks the model."""


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = "http://127.0.0.1:8011/v1"  # any OpenAI-compatible endpoint; `fbloop serve-oracle`'s default
    model: str = "fbloop-oracle"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    template: str = "triplet"  # one triplet per request
    batch_template: str = "triplet_batch"  # k triplets per request ...
    item_template: str = "triplet_item"  # ... each rendered with this one
    system_template: str = "system"
    batch_size: int = 1  # triplets per request
    concurrency: int = 4  # requests in flight at once
    order_swap: bool = False  # also ask every triplet with its candidates swapped
    max_attempts: int = 4  # tries per request (first + retries)
    backoff_s: float = 0.5  # wait before the first retry; doubles each time
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 30.0  # the longest Retry-After honoured; a server asking for more waits this long
    timeout_s: float = 60.0  # per request
    temperature: float | None = 0.0  # None → not sent (some reasoning models refuse the parameter)
    max_tokens: int | None = None  # completion cap; None → the server's default
    structured: str = "auto"  # structured-output mode (fbloop.agents.structured); auto: probe the server
    raw_cap: int = 16_384  # characters of a raw reply kept (a batch's reply is kept once per answer)
    cache: bool = True  # reuse understood replies stored in the run database
    top_features: int = 12  # features shown per activation (strongest first)
    cost_prompt_1k: float = 0.0  # price per 1000 prompt tokens
    cost_completion_1k: float = 0.0  # price per 1000 completion tokens

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"Expect an http(s) base URL like http://127.0.0.1:8011/v1, got {self.base_url!r}.")
        if not self.model:
            raise ConfigError("Expect a model name, got an empty string.")
        if not self.api_key_env or not self.api_key_env.replace("_", "").isalnum():
            raise ConfigError(f"Expect the name of an environment variable, got api_key_env={self.api_key_env!r}.")
        if self.structured not in CHOICES:
            raise ConfigError(f"Expect structured in {list(CHOICES)}, got {self.structured!r}.")
        for name in ("batch_size", "concurrency", "max_attempts", "top_features", "raw_cap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expect {name} ≥ 1, got {getattr(self, name)}.")
        for name in ("backoff_s", "backoff_max_s", "retry_after_max_s", "cost_prompt_1k", "cost_completion_1k",
                     "temperature"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"Expect {name} ≥ 0, got {getattr(self, name)}.")
        if not self.timeout_s > 0:
            raise ConfigError(f"Expect timeout_s > 0, got {self.timeout_s}.")

    @classmethod
    def from_dict(cls, data: dict) -> LLMConfig:
        """A stored config, also one from before ``structured`` (its ``json_schema`` flag)."""
        data = dict(data)
        if "json_schema" in data:
            data.setdefault("structured", "json_schema" if data.pop("json_schema") else "prompt")
        return cls(**data)


# ---------------------------------------------------------------- requests


@dataclass
class _Request:
    rows: list[int]  # positions within the chunk's queries
    order: str  # "ab": candidates as stored; "ba": swapped
    prompt: str
    key: str  # cache key


@dataclass
class Usage:
    """What this agent object has spent so far (all runs it answered for)."""

    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    failed_requests: int = 0  # gave up after max_attempts or a non-retryable error
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ok: int = 0
    invalid: int = 0
    swap_pairs: int = 0  # triplets answered ok in both orders
    swap_disagreements: int = 0

    def cost(self, config: LLMConfig) -> float:
        return (self.prompt_tokens * config.cost_prompt_1k + self.completion_tokens * config.cost_completion_1k) / 1000

    def to_dict(self, config: LLMConfig) -> dict:
        out = asdict(self)
        out["cost"] = self.cost(config)
        out["position_bias_rate"] = self.swap_disagreements / self.swap_pairs if self.swap_pairs else None
        return out


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class LLMAgent(ImmediateAgent):
    """Answers triplet queries by asking an OpenAI-compatible chat model.

    ``descriptions`` (one per feature, or ``None``) label the features in the prompt;
    ``cache`` is a :class:`fbloop.store.Store` (or ``None`` for no cache).
    """

    kinds: tuple[str, ...] = ("triplet",)  # the query kinds it asks (fbloop.agents.tuple_llm: the others)

    def __init__(self, config: LLMConfig = LLMConfig(), descriptions: tuple[str, ...] | None = None,
                 cache=None, prompt_dir=None):
        self.config = config
        self.descriptions = descriptions
        self.cache = cache if config.cache else None
        self.name = f"llm:{config.model}"
        self.swap_name = f"{self.name}#swap"
        self.system = prompts.load(config.system_template, prompt_dir)
        self.single = prompts.load(config.template, prompt_dir)
        self.batch = prompts.load(config.batch_template, prompt_dir)
        self.item = prompts.load(config.item_template, prompt_dir)
        self.batched = config.batch_size > 1
        if self.batched:
            self.template_name = self.batch.name
            self.template_hash = prompts.combined_hash(self.system, self.batch, self.item)
        else:
            self.template_name = self.single.name
            self.template_hash = prompts.combined_hash(self.system, self.single)
        self.system_text = self.system.render()
        self.usage = Usage()
        # "auto" stays unresolved until the probe (check(), or the first answer) picks a mode
        self.modes: ModeState | None = None if config.structured == "auto" else ModeState(config.structured)
        self.probe_log: list[dict] = []
        self._stored_swaps: dict | None = None

    # ------------------------------------------------------------ pre-flight

    def api_key(self) -> str:
        key = os.environ.get(self.config.api_key_env, "")
        if not key:
            raise EndpointError(f"The environment variable {self.config.api_key_env} holding the API key for "
                                f"{self.config.base_url} is not set (any non-empty string for a local server; "
                                "--api-key-env names another variable).")
        return key

    def _scrubber(self) -> Scrubber:
        return Scrubber([self.api_key()], self.config.raw_cap)

    def _policy(self) -> Policy:
        cfg = self.config
        return Policy(cfg.max_attempts, cfg.backoff_s, cfg.backoff_max_s, cfg.retry_after_max_s)

    def check(self) -> None:
        """Fail before any query is spent: key missing or rejected, endpoint unreachable, model not served.

        Then, with ``structured="auto"``, probe which structured-output mode the server takes.
        """
        import openai

        cfg = self.config
        scrub = self._scrubber()
        client = openai.OpenAI(base_url=cfg.base_url, api_key=self.api_key(), max_retries=0,
                               timeout=min(cfg.timeout_s, 10.0))
        models: list = []
        try:
            models = [m.id for m in client.models.list().data]
        except openai.NotFoundError:
            pass  # no /models route: the server answered, which is what we needed to know
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise EndpointError(f"The LLM endpoint {cfg.base_url} rejected the key in ${cfg.api_key_env} "
                                f"({describe(exc, scrub)}).") from None
        except openai.APIStatusError as exc:
            raise EndpointError(f"The LLM endpoint {cfg.base_url} answered {describe(exc, scrub)} "
                                "to GET /models.") from None
        except openai.APIConnectionError as exc:
            raise EndpointError(f"Cannot reach the LLM endpoint {cfg.base_url}: {describe(exc, scrub)}. "
                                "Is the server running? (`fbloop serve-oracle` starts a local one.)") from None
        except Exception as exc:  # a /models body the client cannot read: the server is there, go on
            models = []
            self.probe_log.append({"models": describe(exc, scrub, REASON_CAP)})
        finally:
            client.close()
        if models and cfg.model not in models:
            raise EndpointError(f"The LLM endpoint {cfg.base_url} serves no model {cfg.model!r}; "
                                f"it serves {[scrub(str(m), 200) for m in models[:10]]}.")
        self.probe()

    def probe(self) -> str:
        """The structured-output mode to ask in: ``config.structured``, or with ``auto`` the first mode
        of :data:`PROBE_ORDER` whose reply to a small fbloop prompt parsed (``prompt`` if none did).
        Each try is logged in :attr:`probe_log` (``{"mode", "outcome"}``)."""
        if self.modes is None:
            self.modes = ModeState(self._run(self._probe_modes()))
        return self.modes.current

    def _probe_prompt(self) -> tuple[str, list[int]]:
        # The smallest real question: feature 0 against feature 1, in the run's own templates, so that
        # the probe also shows whether the prompt is understood (fbloop's serve-oracle parses it back).
        p = max(2, len(self.descriptions) if self.descriptions else 2)
        one = lambda i, w: SparseBatch(np.array([[i]]), np.array([[w]]), p)  # noqa: E731
        q = Queries("triplet", np.array([0]), one(0, 1.0), one(0, 0.9), one(1, 1.0))
        blocks = self._texts(q) * (2 if self.batched else 1)
        return self._prompt(blocks), ([1, 2] if self.batched else [])

    async def _probe_modes(self) -> str:
        import openai

        cfg = self.config
        prompt, ids = self._probe_prompt()
        client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=self.api_key(), max_retries=0,
                                    timeout=cfg.timeout_s)
        scrub = self._scrubber()
        try:
            for mode in PROBE_ORDER[:-1]:
                rep = await send(client, lambda m: self._kwargs(prompt, m, len(ids) or 1), self._policy(), scrub,
                                 self.usage, ModeState(mode), probing=True)
                why = rep.text if rep.failed else rep.unreadable
                if why is None:
                    why = self._reply_error(rep.text, ids)
                self.probe_log.append({"mode": mode, "outcome": "ok" if why is None else scrub(why, REASON_CAP)})
                if why is None:
                    return mode
        finally:
            await client.close()
        self.probe_log.append({"mode": "prompt", "outcome": "the last resort: no mode's reply parsed"})
        return "prompt"

    def _reply_error(self, text: str, ids: list[int]) -> str | None:
        """Why a probe's reply does not parse, or ``None`` when it does."""
        return parse_batch(text, ids)[1][1] if self.batched else parse_single(text)[1]

    def _run(self, coro):
        """Run a coroutine, also from a thread whose event loop is running (a notebook)."""
        if not _loop_running():
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    # ------------------------------------------------------------ the agent protocol

    def answer(self, queries: Queries) -> Answers:
        """Answers in the stored order only (the order swap, when on, goes through :meth:`answer_sets`)."""
        return self._answer(queries, ("ab",))[0]

    def answer_sets(self, queries: Queries) -> list[Answers]:
        """``[answers]``, or ``[answers, swapped answers]`` with ``order_swap``; asked concurrently."""
        return self._answer(queries, ("ab", "ba") if self.config.order_swap else ("ab",))

    # ------------------------------------------------------------ the agent protocol

    def start(self, ledger: Ledger, resumed: bool) -> None:
        super().start(ledger, resumed)
        # Asking both orders: the pairs stored before this process, on top of which its own tally counts.
        self._stored_swaps = (ledger.store.agreement(ledger.run_id, self.name, self.swap_name)
                              if self.config.order_swap else None)

    def sources(self) -> list[str]:
        return [self.name] + ([self.swap_name] if self.config.order_swap else [])

    def noise(self) -> dict[str, float]:
        """With the order swap: one flip rate for both orders, from how often they disagree."""
        if self._stored_swaps is None:
            return {}
        u, s = self.usage, self._stored_swaps
        eps = self._swap_flip_rate(s["both"] + u.swap_pairs, s["agree"] + u.swap_pairs - u.swap_disagreements)
        return {} if eps is None else {name: eps for name in self.sources()}

    def summary(self, final: bool = False) -> dict:
        """At the end of a run: requests, tokens, cost, structured-output mode, position bias."""
        return {"llm": self.run_summary(self._ledger().store, self._ledger().run_id)} if final else {}

    def run_summary(self, store, run_id: str) -> dict:
        """Requests, tokens, cost and (with the order swap) the position-bias rate of a run, from the store."""
        names = [self.name, self.swap_name]
        use = store.request_usage(run_id, names)
        cfg = self.config
        use["cost"] = (use["prompt_tokens"] * cfg.cost_prompt_1k
                       + use["completion_tokens"] * cfg.cost_completion_1k) / 1000
        if cfg.order_swap:
            ag = store.agreement(run_id, self.name, self.swap_name)
            use["swap_pairs"] = ag["both"]
            use["position_bias_rate"] = (ag["both"] - ag["agree"]) / ag["both"] if ag["both"] else None
        modes = self.modes
        use["structured"] = modes.current if modes is not None else None
        use["structured_refused"] = list(modes.refusals) if modes is not None else []
        use["structured_probe"] = list(self.probe_log)
        return {"model": cfg.model, "template": self.template_name, **use}

    # ------------------------------------------------------------ building requests

    def _texts(self, queries: Queries) -> list[dict[str, str]]:
        top, desc = self.config.top_features, self.descriptions
        return [render.triplet_text(render.features(queries.a, i, desc, top), render.features(queries.b, i, desc, top),
                                    render.features(queries.c, i, desc, top)) for i in range(len(queries))]

    def _prompt(self, blocks: list[dict[str, str]]) -> str:
        if not self.batched:
            (b,) = blocks
            return self.single.render(reference=b["reference"], first=b["first"], second=b["second"])
        items = [self.item.render(id=k + 1, reference=b["reference"], first=b["first"], second=b["second"]).strip()
                 for k, b in enumerate(blocks)]
        return self.batch.render(count=len(blocks), comparisons="\n\n".join(items))

    def _key(self, prompt: str) -> str:
        # The endpoint and temperature join (model, template hash, prompt): one model name on two servers
        # (a local stand-in for another target, vLLM vs Ollama) must not share replies.
        cfg = self.config
        temp = None if cfg.temperature is None else float(cfg.temperature)
        parts = [cfg.base_url.rstrip("/"), cfg.model, repr(temp), self.template_hash, prompt]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @staticmethod
    def _shown(text: dict[str, str], order: str) -> dict[str, str]:
        """A question's template variables in ``order``: as stored (``ab``), or its candidates swapped."""
        if order == "ab":
            return text
        return {"reference": text["reference"], "first": text["second"], "second": text["first"]}

    def _requests(self, texts: list[dict[str, str]], order: str) -> list[_Request]:
        out = []
        k = self.config.batch_size
        for lo in range(0, len(texts), k):
            rows = list(range(lo, min(lo + k, len(texts))))
            prompt = self._prompt([self._shown(texts[r], order) for r in rows])
            out.append(_Request(rows, order, prompt, self._key(prompt)))
        return out

    # ------------------------------------------------------------ asking

    def _answer(self, queries: Queries, orders: tuple[str, ...]) -> list[Answers]:
        if queries.kind not in self.kinds:
            raise ConfigError("The llm agent answers triplet queries only; pair designs need the bisection route "
                              "(triplets (0, u, t·y) over t), not a direct question. Use --design triplet.")
        self.probe()  # "auto" not yet resolved (an agent used without check()): probe now
        texts = self._texts(queries)
        requests = [r for order in orders for r in self._requests(texts, order)]
        hits = {}
        if self.cache is not None:
            for r in requests:
                got = self.cache.cache_get(r.key)
                # Only understood replies are cached; one that does not parse (a cache written by another
                # version, say) is asked again rather than served.
                if got is not None and self._understood(r, Reply(got["reply"])):
                    hits[r.key] = got
        # Inside a running event loop (a notebook) the requests run on a worker thread, so the cache
        # (the store's connection belongs to this thread) is written after the chunk instead of at once.
        pending: list[tuple[_Request, Reply]] = []
        put = pending.append if _loop_running() else self._put
        replies = self._run(self._gather(requests, hits, put))
        for item in pending:
            self._put(item)
        return self._collect(queries.seq, orders, requests, replies)

    def _put(self, item: tuple[_Request, Reply]) -> None:
        req, rep = item
        if self.cache is None:
            return
        meta = {"prompt_tokens": rep.prompt_tokens, "completion_tokens": rep.completion_tokens,
                "latency_s": rep.latency_s, "request_id": rep.request_id, "response_id": rep.response_id,
                "served_model": rep.served_model, "structured": rep.mode}
        self.cache.cache_put(req.key, model=self.config.model, template_hash=self.template_hash,
                             prompt=req.prompt, reply=rep.text, meta=meta)

    def _understood(self, req: _Request, rep: Reply) -> bool:
        if rep.failed or rep.unreadable:
            return False
        return all(value is not None for value, _ in self._parse(req, rep).values())

    def _from_reversed(self, value: np.ndarray) -> np.ndarray:
        """Answers to the swapped questions in the stored order (a triplet's: the sign flipped)."""
        return from_reversed("triplet", value, 2)

    def _swap_flip_rate(self, both: int, agree: int) -> float | None:
        """The flip rate behind ``agree`` of ``both`` questions answered alike in both orders."""
        return flip_rate_from_swaps(both, agree)

    def _parse(self, req: _Request, rep: Reply) -> dict[int, tuple[float | None, str | None]]:
        """Each answer of a readable reply, by its place in the request: ``(value, None)`` in the order
        asked, or ``(None, reason)``."""
        if not self.batched:
            token, why = parse_single(rep.text)
            return {0: (None if token is None else TOKENS[token], why)}
        by_id = parse_batch(rep.text, list(range(1, len(req.rows) + 1)))
        return {k: (None if by_id[k + 1][0] is None else TOKENS[by_id[k + 1][0]], by_id[k + 1][1])
                for k in range(len(req.rows))}

    async def _gather(self, requests: list[_Request], hits: dict, put) -> list[Reply]:
        import openai

        cfg = self.config
        client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=self.api_key(), max_retries=0,
                                    timeout=cfg.timeout_s)
        sem = asyncio.Semaphore(cfg.concurrency)
        scrub, policy = self._scrubber(), self._policy()

        async def one(req: _Request) -> Reply:
            if req.key in hits:
                got = hits[req.key]
                self.usage.cache_hits += 1
                m = got["meta"]
                return Reply(got["reply"], cached=True, prompt_tokens=m.get("prompt_tokens", 0),
                             completion_tokens=m.get("completion_tokens", 0), request_id=m.get("request_id"),
                             response_id=m.get("response_id"), served_model=m.get("served_model"),
                             mode=m.get("structured"), raw_chars=len(got["reply"]))
            async with sem:
                rep = await send(client, lambda mode: self._kwargs(req.prompt, mode, len(req.rows)), policy, scrub,
                                 self.usage, self.modes)
            if self._understood(req, rep):
                put((req, rep))  # at once: a process killed later in this chunk keeps what it paid for
            return rep

        try:
            return list(await asyncio.gather(*(one(r) for r in requests)))
        finally:
            await client.close()

    def _kwargs(self, prompt: str, mode: str, n: int = 1) -> dict:
        cfg = self.config
        kwargs: dict = {"model": cfg.model, "messages": [{"role": "system", "content": self.system_text},
                                                         {"role": "user", "content": prompt}]}
        if cfg.temperature is not None:
            kwargs["temperature"] = cfg.temperature
        if cfg.max_tokens is not None:
            kwargs["max_tokens"] = cfg.max_tokens
        return {**kwargs, **self._fields(mode, n)}

    def _fields(self, mode: str, n: int) -> dict:
        """The request fields asking for the reply's shape in structured-output ``mode``."""
        return request_fields(mode, self.batched, n)

    # ------------------------------------------------------------ answers

    def _collect(self, seq: np.ndarray, orders: tuple[str, ...], requests: list[_Request],
                 replies: list[Reply]) -> list[Answers]:
        """One :class:`Answers` per order for positions ``seq``, from each request's reply (its ``rows``
        index ``seq``); also reads a batch job's result lines (:mod:`fbloop.agents.batch`)."""
        n = len(seq)
        # Plain lists, made arrays once at the end (a million batch answers go through here)
        sets = {o: ([math.nan] * n, ["invalid"] * n, [None] * n, [None] * n) for o in orders}
        scrub = self._scrubber()
        template, template_hash, model = self.template_name, self.template_hash, self.config.model
        ok = invalid = 0
        for req, rep in zip(requests, replies):
            value, status, raw, meta = sets[req.order]
            if rep.failed or rep.unreadable:
                parsed = {k: (None, rep.text if rep.failed else rep.unreadable) for k in range(len(req.rows))}
            else:
                parsed = self._parse(req, rep)
            kept = scrub(rep.text)  # the key removed, the first raw_cap characters
            latency, size, chars = round(rep.latency_s, 6), len(req.rows), rep.raw_chars or len(rep.text)
            cut = len(kept) < len(rep.text)
            for k, row in enumerate(req.rows):
                got, why = parsed[k]
                m = {"template": template, "template_hash": template_hash, "model": model,
                     "served_model": rep.served_model, "prompt_tokens": rep.prompt_tokens,
                     "completion_tokens": rep.completion_tokens, "latency_s": latency,
                     "order": req.order, "request_id": rep.request_id, "response_id": rep.response_id,
                     "batch_index": k, "batch_size": size, "cached": rep.cached, "attempts": rep.attempts,
                     "structured": rep.mode, "raw_chars": chars}
                if cut:
                    m["raw_truncated"] = True
                if got is None:
                    m["error"] = scrub(why, REASON_CAP)
                    invalid += 1
                else:
                    value[row] = got
                    status[row] = "ok"
                    ok += 1
                raw[row] = kept
                meta[row] = m
        self.usage.ok += ok
        self.usage.invalid += invalid
        out = []
        for o in orders:
            value, status, raw, meta = sets[o]
            value = np.array(value, np.float64)
            if o == "ba":  # values are stored in the query's orientation
                value = self._from_reversed(value)
            out.append(Answers(self.name if o == "ab" else self.swap_name, np.array(seq, np.int64),
                               value, np.array(status, dtype=str), raw, meta))
        if len(out) == 2:
            both = out[0].ok & out[1].ok
            self.usage.swap_pairs += int(both.sum())
            self.usage.swap_disagreements += int((out[0].value[both] != out[1].value[both]).sum())
        return out
