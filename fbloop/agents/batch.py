"""The LLM agent through a Batch API or an offline engine: a *deferred* answerer.

Each chunk the loop asks becomes OpenAI batch input lines::

    {"custom_id": "fbloop:RUN:SEQ:ORDER:ATTEMPT", "method": "POST", "url": "/v1/chat/completions",
     "body": {...}}

where ``body`` is exactly what the synchronous agent (:class:`fbloop.agents.llm.LLMAgent`) would send
for that request — the same prompt, model, temperature and structured-output field (an engine field
such as vLLM's ``structured_outputs`` sits in the body, where the client's ``extra_body`` would put
it). ``SEQ`` is the position (``S1+S2+…`` for a request of ``batch_size`` questions), ``ORDER`` ``ab``
or ``ba`` (the order swap: a tuple question's candidates reversed), ``ATTEMPT`` the attempt its answers
are stored under. Triplets and tuple questions (closest of ``k``, rank ``k``, odd one out) alike: the
agent is the synchronous one for the run's design (:func:`batch_llm`).

Two modes (:class:`BatchConfig`):

- ``batch`` (a provider's Batch API, through the official ``openai`` client): the lines are written to
  files of at most ``max_requests`` lines and ``max_bytes`` bytes, uploaded with
  ``files.create(purpose="batch")`` and started with ``batches.create(..., completion_window="24h")``.
  What a batch asks is stored before anything is uploaded, its input file id as soon as the upload
  returns and its batch id as soon as the batch exists (:mod:`fbloop.store.batches`), so a killed
  process re-attaches: a batch whose upload was stored but whose id was not is looked up among the
  provider's batches by its input file before any new one is created. :meth:`BatchAgent.collect` polls
  the open batches, backing off (``poll_s`` × ``backoff`` per quiet poll, up to ``poll_max_s``); a
  finished batch's output and error files are streamed line by line into the store. Failed, expired and
  cancelled requests (and requests with no result line) are stored as ``invalid`` answers with the
  error, and asked again at the next attempt, up to the LLM's ``max_attempts``.
- ``offline``: the lines are only recorded; ``fbloop batch export`` writes them for an engine
  (``vllm run-batch``) and ``fbloop batch ingest`` stores the engine's output.

Every result line goes through the synchronous agent's strict parser; each answer keeps its raw
text, tokens, the batch id and its ``custom_id``. A line whose ``custom_id`` names no asked request
is reported, never stored; a line ingested twice stores nothing new (the answers' unique key).
Memory stays bounded: files are written and read line by line, a block of lines at a time. The usual
result line (a completed request with plain-text content) is decoded into typed fields by
:mod:`fbloop.agents.fastlines`; any other goes to the general JSON reader here, which decides what it is.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import ConfigError
from ..records import Queries
from ..store import Store
from ..store.batches import TERMINAL, ask_key
from .fastlines import id_pattern, read_usual
from .llm import LLMAgent, LLMConfig, _Request
from .transport import ModeState, Reply, read_completion_obj
from .tuple_llm import TupleLLMAgent

URL = "/v1/chat/completions"
ORDERS = ("ab", "ba")
BLOCK = 4096  # result lines parsed and stored per transaction
QUERY_BLOCK = 8192  # stored queries read back at once when a file is written again


@dataclass(frozen=True)
class BatchConfig:
    """How the LLM agent asks in batches (``--llm-mode batch`` / ``offline``)."""

    mode: Literal["batch", "offline"] = "batch"  # a provider's Batch API, or files for an offline engine
    discount: float = 0.5  # the batch price's discount on the synchronous price (OpenAI, Anthropic: 50 %)
    completion_window: str = "24h"  # the only window OpenAI offers
    max_requests: int = 50_000  # lines per input file (OpenAI's limit)
    max_bytes: int = 200_000_000  # bytes per input file (OpenAI's 200 MB)
    chunk: int = 50_000  # queries per chunk the loop asks (the run's --chunk when it gives none)
    poll_s: float = 5.0  # the first wait between polls of the open batches
    poll_max_s: float = 300.0  # the longest wait between polls
    backoff: float = 1.5  # each poll that finds nothing new waits this much longer

    def __post_init__(self) -> None:
        if self.mode not in ("batch", "offline"):
            raise ConfigError(f"Expect a batch mode 'batch' or 'offline', got {self.mode!r}.")
        if not 0.0 <= self.discount < 1.0:
            raise ConfigError(f"Expect a batch discount in [0, 1), got {self.discount}.")
        if self.completion_window != "24h":
            raise ConfigError(f"Expect completion_window '24h' (the only one OpenAI offers), got "
                              f"{self.completion_window!r}.")
        for name in ("max_requests", "max_bytes", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expect {name} ≥ 1, got {getattr(self, name)}.")
        if self.poll_s <= 0 or self.poll_max_s < self.poll_s or self.backoff < 1.0:
            raise ConfigError(f"Expect 0 < poll_s ≤ poll_max_s and backoff ≥ 1, got poll_s={self.poll_s}, "
                              f"poll_max_s={self.poll_max_s}, backoff={self.backoff}.")


@dataclass
class IngestReport:
    """What ingesting result lines did."""

    lines: int = 0
    stored: int = 0  # new answers
    repeated: int = 0  # answers stored before (a file ingested twice)
    failed: int = 0  # lines with an error (HTTP error, expired, cancelled): stored invalid, asked again
    unmatched: int = 0  # lines whose custom_id names no request this run asked: reported, not stored
    unreadable: int = 0  # lines that are not JSON objects with a custom_id
    examples: list[str] = field(default_factory=list)  # a few unmatched or unreadable lines, cut short
    retry: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, order, attempt) that failed

    def note(self, what: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(what[:200])

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("lines", "stored", "repeated", "failed", "unmatched", "unreadable")}
        out["examples"] = list(self.examples)
        return out


# ---------------------------------------------------------------- custom ids


def custom_id(run_id: str, seqs: list[int], order: int, attempt: int) -> str:
    """``fbloop:RUN:S1+S2:ORDER:ATTEMPT``: the run, the positions, the candidate order, the attempt."""
    return f"fbloop:{run_id}:{'+'.join(str(s) for s in seqs)}:{ORDERS[order]}:{attempt}"


def _canonical(text: str) -> bool:
    """A non-negative integer written as :func:`custom_id` writes it: ASCII digits, no leading zero."""
    return text.isascii() and text.isdigit() and (len(text) == 1 or text[0] != "0")


def parse_custom_id(cid: object, run_id: str) -> tuple[list[int], int, int] | None:
    """``(seqs, order, attempt)`` of a custom id of run ``run_id``, else ``None``: only the canonical
    spelling :func:`custom_id` writes (numbers in ASCII digits without leading zeros)."""
    if not isinstance(cid, str):
        return None
    prefix = f"fbloop:{run_id}:"
    if not cid.startswith(prefix):
        return None
    parts = cid[len(prefix):].split(":")  # a run id may hold colons; the three fields after it cannot
    if len(parts) != 3 or parts[1] not in ORDERS or not _canonical(parts[2]):
        return None
    seqs = parts[0].split("+")
    for s in seqs:
        if not _canonical(s):
            return None
    return [int(s) for s in seqs], (0 if parts[1] == "ab" else 1), int(parts[2])


def plan(seq: np.ndarray, order: np.ndarray, attempt: np.ndarray, k: int, first: int = 0) -> np.ndarray:
    """The asks of a chunk, ``(n, 4)`` int64 ``(seq, order, attempt, request)``: requests of up to ``k``
    positions sharing an order and an attempt, numbered from ``first``, in request order."""
    rows = []
    r = first
    for o in (0, 1):
        for a in np.unique(attempt[order == o]):
            pick = np.asarray(seq[(order == o) & (attempt == a)], np.int64)
            n = len(pick)
            rows.append(np.column_stack([pick, np.full(n, o), np.full(n, a), r + np.arange(n) // k]))
            r += -(-n // k)
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 4), np.int64)


def requests_of(asks: np.ndarray) -> Iterator[np.ndarray]:
    """The asks of each request, in order (``asks`` sorted by request)."""
    if len(asks) == 0:
        return
    cuts = np.flatnonzero(np.diff(asks[:, 3])) + 1
    yield from np.split(asks, cuts)


# ---------------------------------------------------------------- writing lines


class LineWriter:
    """Batch input lines for one LLM agent: the synchronous agent's request bodies, one per request."""

    def __init__(self, llm: LLMAgent, run_id: str):
        self.llm, self.run_id = llm, run_id

    def body(self, prompt: str, mode: str, n: int) -> dict:
        kwargs = self.llm._kwargs(prompt, mode, n)
        extra = kwargs.pop("extra_body", None) or {}  # the client merges extra_body into the JSON body
        return {**kwargs, **extra}

    def lines(self, queries: Queries, asks: np.ndarray, mode: str) -> Iterator[bytes]:
        """One line per request of ``asks`` (sorted by request); ``queries`` hold every position asked."""
        where = {int(s): i for i, s in enumerate(queries.seq)}
        texts = self.llm._texts(queries)
        for req in requests_of(asks):
            seqs = [int(s) for s in req[:, 0]]
            order, attempt = int(req[0, 1]), int(req[0, 2])
            (r,) = self.llm._requests([texts[where[s]] for s in seqs], ORDERS[order])
            line = {"custom_id": custom_id(self.run_id, seqs, order, attempt), "method": "POST", "url": URL,
                    "body": self.body(r.prompt, mode, len(seqs))}
            yield (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def split_files(lines: Iterable[bytes], asks: np.ndarray, folder: str, max_requests: int,
                max_bytes: int) -> list[dict]:
    """Write ``lines`` (one per request of ``asks``) into files of at most ``max_requests`` lines and
    ``max_bytes`` bytes: ``[{"path", "asks", "requests", "bytes"}]``."""
    out: list[dict] = []
    reqs = list(requests_of(asks))
    fh, size, first = None, 0, 0
    for i, line in enumerate(lines):
        if len(line) > max_bytes:
            raise ConfigError(f"One batch request is {len(line)} bytes, more than a file's {max_bytes}.")
        if fh is not None and (i - first >= max_requests or size + len(line) > max_bytes):
            fh.close()
            out[-1].update(asks=np.concatenate(reqs[first:i]), requests=i - first, bytes=size)
            fh = None
        if fh is None:
            path = os.path.join(folder, f"batch-{len(out):04d}.jsonl")
            fh, size, first = open(path, "wb"), 0, i
            out.append({"path": path})
        fh.write(line)
        size += len(line)
    if fh is not None:
        fh.close()
        out[-1].update(asks=np.concatenate(reqs[first:]), requests=len(reqs) - first, bytes=size)
    return out


# ---------------------------------------------------------------- reading results


_DECODER = json.JSONDecoder()


def read_line(raw: str | bytes) -> object:
    """A result line's JSON value, exactly as ``json.loads(raw)`` reads it (and raising what it raises).

    The usual line — a UTF-8 object — is decoded and scanned without ``json.loads``'s per-call
    encoding detection and whitespace matching (a third of reading a line); anything else goes to
    ``json.loads`` itself."""
    if isinstance(raw, bytes):
        if raw[:1] != b"{" or raw[1:2] == b"\x00":  # json.loads would detect UTF-16 or UTF-32 here
            return json.loads(raw)
        text = raw.decode("utf-8", "surrogatepass")  # json.loads's own decoding of UTF-8
    else:
        text = raw
        if text[:1] != "{":
            return json.loads(raw)
    obj, end = _DECODER.raw_decode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):  # JSON's whitespace only after the value
        return json.loads(raw)  # raises json.loads's own error ("Extra data")
    return obj


def _line_reply(rec: dict) -> Reply:
    """A result line as the synchronous agent's :class:`Reply`: the completion, or why there is none."""
    resp, err = rec.get("response"), rec.get("error")
    if isinstance(resp, dict) and resp.get("status_code") == 200:
        content, why, kept, fields = read_completion_obj(resp.get("body"))
        return Reply(content if content is not None else kept, unreadable=why, prompt_tokens=fields["prompt_tokens"],
                     completion_tokens=fields["completion_tokens"], attempts=1,
                     request_id=resp.get("request_id") if isinstance(resp.get("request_id"), str) else None,
                     response_id=fields["response_id"], served_model=fields["served_model"], raw_chars=len(kept))
    if isinstance(err, dict) and err:
        why = f"{err.get('code')}: {err.get('message')}"
    elif isinstance(resp, dict):
        body = resp.get("body")
        msg = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) \
            else json.dumps(body)[:300]
        why = f"HTTP {resp.get('status_code')}: {msg}"
    else:
        why = "the line has neither a response nor an error"
    text = f"error: batch request failed ({why})"
    return Reply(text, failed=True, attempts=1, raw_chars=len(text))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a block of lines is read and stored.

    A block's objects (lines, replies, metas, rows) hold no reference cycles and are freed by reference
    counting when the block ends; with the collector on, they are scanned again at each of its passes
    while they live, which was a third of ingest time. The collector is turned back on (if it was on)
    after the block, so a process's other threads go without it for one block at most."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines (``\\n``-ended, the last one maybe not) of a byte stream read in chunks: a downloaded result
    file, without decoding each line to text first (the JSON reader takes the bytes)."""
    head: list[bytes] = []  # the start of a line that has not ended yet (a long one: several chunks)
    for chunk in chunks:
        if b"\n" not in chunk:
            head.append(chunk)
            continue
        lines = chunk.split(b"\n")
        if head:
            lines[0] = b"".join(head) + lines[0]
        head = [lines.pop()]
        yield from lines
    last = b"".join(head)
    if last:
        yield last


class Ingester:
    """Stores result lines of one run: matched against what its batches asked, parsed by the LLM agent."""

    def __init__(self, llm: LLMAgent, store: Store, run_id: str):
        self.llm, self.store, self.run_id = llm, store, run_id
        self.asked = store.asked_keys(run_id)  # sorted
        self.ids = id_pattern(run_id)  # the canonical custom id of one position, for the fast reader

    def _known(self, keys: np.ndarray) -> np.ndarray:
        """Which ``keys`` a batch of the run asked (vectorised over a block of lines)."""
        if len(self.asked) == 0:
            return np.zeros(len(keys), bool)
        i = np.searchsorted(self.asked, keys)
        return (i < len(self.asked)) & (self.asked[np.minimum(i, len(self.asked) - 1)] == keys)

    def ingest(self, lines: Iterable[str | bytes], batch: dict | None = None) -> IngestReport:
        """Store every result line (``batch``: the row they come from, for the batch id and latency)."""
        report = IngestReport()
        block: list = []
        for raw in lines:
            if not raw or not raw.strip():
                continue
            block.append(raw)
            if len(block) >= BLOCK:
                with gc_paused():
                    self._block(block, batch, report)
                block = []
        if block:
            with gc_paused():
                self._block(block, batch, report)
        return report

    def _block(self, block: list, batch: dict | None, report: IngestReport) -> None:
        groups: dict[tuple[int, int], list] = {}
        # (custom id, seqs, order, attempt, reply): a usual line read fast, with its reply; others read
        # by json and matched first, their reply built once they are known to be asked
        items: list[tuple] = []
        seq, att, order, line_of = [], [], [], []
        usual, ids = read_usual, self.ids
        for raw in block:  # read each line and its custom id; match them all at once
            report.lines += 1
            fast = usual(raw, ids)
            if fast is not None:
                s, o, a, reply, cid = fast
                seq.append(s)
                att.append(a)
                order.append(o)
                line_of.append(len(items))
                items.append((cid, [s], o, a, reply))
                continue
            try:
                rec = read_line(raw)
            except (ValueError, RecursionError):
                report.unreadable += 1
                report.note(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))
                continue
            parsed = parse_custom_id(rec.get("custom_id") if isinstance(rec, dict) else None, self.run_id)
            if parsed is None:
                report.unmatched += 1
                report.note(str(rec.get("custom_id") if isinstance(rec, dict) else rec))
                continue
            for s in parsed[0]:
                seq.append(s)
                att.append(parsed[2])
                order.append(parsed[1])
                line_of.append(len(items))
            items.append((rec["custom_id"], parsed[0], parsed[1], parsed[2], rec))
        known = np.ones(len(items), bool)
        if items:
            miss = ~self._known(ask_key(np.array(seq), np.array(att), np.array(order)))
            known[np.array(line_of)[miss]] = False  # a request is matched only if each position it names is
        for (cid, seqs, order_, attempt, got), ok in zip(items, known):
            if not ok:
                report.unmatched += 1
                report.note(str(cid))
                continue
            reply = got if isinstance(got, Reply) else _line_reply(got)
            if reply.failed:
                report.failed += 1
                report.retry += [(s, order_, attempt) for s in seqs]
            groups.setdefault((order_, attempt), []).append((seqs, reply, cid))
        sets = [self._answers(o, attempt, group, batch) for (o, attempt), group in groups.items()]
        new = self.store.store_answer_sets(self.run_id, sets)
        report.stored += new
        report.repeated += sum(len(a) for a, _ in sets) - new

    def _answers(self, order: int, attempt: int, items: list, batch: dict | None):
        seq, requests, replies, ids = [], [], [], []
        name = ORDERS[order]
        for seqs, reply, cid in items:
            n = len(seq)
            requests.append(_Request([n] if len(seqs) == 1 else list(range(n, n + len(seqs))), name, "", ""))
            seq.extend(seqs)
            replies.append(reply)
            ids.extend([cid] * len(seqs))
        (answers,) = self.llm._collect(np.array(seq, np.int64), (ORDERS[order],), requests, replies)
        took = None
        if batch is not None and batch.get("finished_at") and batch.get("submitted_at"):
            took = round(batch["finished_at"] - batch["submitted_at"], 3)
        batch_id, mode = (batch or {}).get("batch_id"), (batch or {}).get("mode")
        for m, cid in zip(answers.meta, ids):
            m["custom_id"], m["batch_id"], m["latency_s"] = cid, batch_id, took
            if mode:
                m["structured"] = mode
        return answers, attempt


# ---------------------------------------------------------------- the agent


class _OfflineKey:
    """Offline (files for an engine) an LLM agent needs no key."""

    offline = False

    def api_key(self) -> str:
        if self.offline:
            return os.environ.get(self.config.api_key_env, "")  # type: ignore[attr-defined]
        return super().api_key()  # type: ignore[misc]


class BatchLLM(_OfflineKey, LLMAgent):
    """The LLM agent as a batch job's request writer and reply parser (triplets); offline it needs no key."""


class BatchTupleLLM(_OfflineKey, TupleLLMAgent):
    """The tuple LLM agent (closest, rank, odd) as a batch job's request writer and reply parser."""


def batch_llm(config: LLMConfig, kind: str, k: int | None, descriptions: tuple[str, ...] | None = None
              ) -> BatchLLM | BatchTupleLLM:
    """The batch agent for questions of ``kind`` (``k`` candidates for closest / rank)."""
    if kind == "triplet":
        return BatchLLM(config, descriptions, cache=None)
    if kind in ("closest", "rank", "odd"):
        return BatchTupleLLM(config, kind, k, descriptions, cache=None)
    raise ConfigError(f"Batch mode asks triplets or tuple questions (closest, rank, odd), not {kind}s.")


class BatchAgent:
    """An LLM asked through batch jobs: a deferred agent (see the module docstring).

    ``active``: the run chooses its chunks (an active strategy), so a chunk is asked only once the
    previous one's answers are in (:meth:`ready`); a fixed design's chunks are all submitted at once.
    """

    deferred = True

    def __init__(self, llm: BatchLLM | BatchTupleLLM, config: BatchConfig, store: Store, active: bool = False):
        self.llm, self.config, self.store, self.active = llm, config, store, active
        llm.offline = config.mode == "offline"
        self.name = llm.name
        self.names = [llm.name, llm.swap_name]  # order 0, order 1
        self.orders = (0, 1) if llm.config.order_swap else (0,)
        self.run_id: str | None = None
        self.cursor = -1
        self.next_poll = 0.0  # a resumed run polls at once
        self.interval = config.poll_s
        self._outstanding: tuple[tuple[int, int], int] | None = None
        self._noise: tuple[int, dict] | None = None
        self.reports: list[dict] = []  # one per batch this process stored the results of
        # this process's own work, in seconds, bytes and lines (the run's summary holds them)
        self.work = {"write_s": 0.0, "upload_s": 0.0, "uploaded_bytes": 0, "uploaded_requests": 0, "ingest_s": 0.0,
                     "ingested_lines": 0, "polls": 0}
        if self.llm.modes is None and llm.offline:  # no endpoint to probe: the OpenAI standard, which vLLM takes
            self.llm.modes = ModeState("json_schema")

    # ------------------------------------------------------------ the protocol

    def start(self, ledger, resumed: bool) -> None:
        self.run_id = ledger.run_id
        self.llm.start(ledger, resumed)
        self.cursor = self.store.last_answer_id(self.run_id)
        if self.config.mode == "batch":
            self._resubmit()

    def _run(self) -> str:
        if self.run_id is None:
            raise ConfigError(f"Agent {self.name!r} (batch) is not attached to a run; call start(ledger, resumed).")
        return self.run_id

    def stored(self):
        return self.store.iter_answered(self._run(), upto_id=self.cursor)

    def sources(self) -> list[str]:
        return self.llm.sources()

    def owns(self, agent: str) -> bool:
        return agent in self.sources()

    def asked(self, start: int, stop: int) -> np.ndarray:
        return self.store.stored_positions(self._run(), start, stop)

    def ready(self, chunk: int) -> bool:
        """A fixed design's chunks go out at once; an active run's next chunk once the last one is in."""
        return not self.active or self.outstanding() == 0

    def ask(self, queries: Queries, attempts: dict[int, int] | None = None, factor=None) -> None:
        if len(queries) == 0:
            return
        if queries.kind not in self.llm.kinds:
            raise ConfigError(f"This batch agent asks {self.llm.kinds[0]} questions, got {queries.kind} queries.")
        att = np.array([(attempts or {}).get(int(s), 0) for s in queries.seq], np.int64)
        seq = np.tile(queries.seq, len(self.orders))
        order = np.repeat(np.array(self.orders, np.int64), len(queries))
        self._ask(queries, seq, order, np.tile(att, len(self.orders)))

    def collect(self) -> list:
        """Poll the open batches when due (storing what finished), then return what arrived since the
        last call: from this process, or ingested by another (``fbloop batch ingest``)."""
        if self.config.mode == "batch" and time.monotonic() >= self.next_poll:
            self.poll()
        top = self.store.last_answer_id(self._run())
        if top == self.cursor:
            return []
        got = list(self.store.iter_answered(self._run(), after_id=self.cursor, upto_id=top))
        self.cursor = top
        return got

    def outstanding(self) -> int:
        """Asked answers (positions × orders) with nothing stored yet."""
        run = self._run()
        mark = (self.store.last_answer_id(run), self.store.n_asked(run))
        if self._outstanding is None or self._outstanding[0] != mark:
            self._outstanding = (mark, max(mark[1] - self.store.count_agent_answers(run, self.names), 0))
        return self._outstanding[1]

    def noise(self) -> dict[str, float]:
        """With the order swap: one flip rate for both orders, from how often they disagree (stored)."""
        if not self.llm.config.order_swap:
            return {}
        top = self.store.last_answer_id(self._run())
        if self._noise is None or self._noise[0] != top:
            ag = self.store.agreement(self._run(), *self.names)
            eps = self.llm._swap_flip_rate(ag["both"], ag["agree"])
            self._noise = (top, {} if eps is None else {n: eps for n in self.sources()})
        return self._noise[1]

    def summary(self, final: bool = False) -> dict:
        if not final:
            return {}
        out = batch_summary(self.llm, self.config, self.store, self._run())
        out["batches"]["this_process"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in self.work.items()}
        return {"llm": out}

    def asked_count(self) -> int | None:
        return None

    # ------------------------------------------------------------ asking

    def _ask(self, queries: Queries, seq: np.ndarray, order: np.ndarray, attempt: np.ndarray) -> None:
        """Ask each ``(seq, order, attempt)`` not asked before, in new batches."""
        run = self._run()
        keys = ask_key(seq, attempt, order)
        fresh = ~np.isin(keys, self.store.asked_keys(run))  # never the same request twice
        if not fresh.any():
            return
        seq, order, attempt = seq[fresh], order[fresh], attempt[fresh]
        asks = plan(seq, order, attempt, self.llm.config.batch_size)
        mode = self.llm.probe()
        if self.config.mode == "offline":
            self.store.add_batches(run, self.name, queries, [{"asks": asks, "requests": int(asks[-1, 3]) + 1,
                                                             "mode": mode, "state": "offline"}])
            return
        folder = tempfile.mkdtemp(prefix="fbloop-batch-")
        try:
            t0 = time.perf_counter()
            files = split_files(LineWriter(self.llm, run).lines(queries, asks, mode), asks, folder,
                                self.config.max_requests, self.config.max_bytes)
            rows = [{"asks": f["asks"], "requests": f["requests"], "bytes": f["bytes"], "mode": mode,
                     "state": "preparing"} for f in files]
            keys_ = self.store.add_batches(run, self.name, queries, rows)  # stored before any upload
            t1 = time.perf_counter()
            with self._client() as client:
                for key, f in zip(keys_, files):
                    self._try_submit(client, key, f["path"])
            self.work["write_s"] += t1 - t0
            self.work["upload_s"] += time.perf_counter() - t1
            self.work["uploaded_bytes"] += sum(f["bytes"] for f in files)
            self.work["uploaded_requests"] += sum(f["requests"] for f in files)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _client(self):
        import openai

        cfg = self.llm.config
        return openai.OpenAI(base_url=cfg.base_url, api_key=self.llm.api_key(), max_retries=cfg.max_attempts - 1,
                             timeout=max(cfg.timeout_s, 600.0))

    def _submit(self, client, key: int, path: str, file_id: str | None = None) -> None:
        """Upload a file (unless ``file_id`` is stored: a resumed run) and create its batch, storing each
        id at once. A resumed run first looks for a batch it created but did not live to record."""
        found = None
        if file_id is None:
            with open(path, "rb") as fh:
                file_id = client.files.create(file=(os.path.basename(path), fh), purpose="batch").id
            self.store.update_batch(key, state="uploaded", input_file_id=file_id)
        else:
            found = self._find(client, file_id)
        if found is None:
            found = client.with_options(max_retries=0).batches.create(
                input_file_id=file_id, endpoint=URL, completion_window=self.config.completion_window,
                metadata={"fbloop_run": self._run()[:512], "fbloop_batch": str(key)})
        self.store.update_batch(key, state="submitted", batch_id=found.id, provider_status=found.status,
                                submitted_at=time.time())

    def _try_submit(self, client, key: int, path: str, file_id: str | None = None) -> None:
        """:meth:`_submit`; a provider that is down or overloaded (connection error, 429, 5xx) leaves the
        batch as stored (``preparing`` / ``uploaded``) for the next poll to submit."""
        import openai

        try:
            self._submit(client, key, path, file_id)
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
            self.work["submit_errors"] = self.work.get("submit_errors", 0) + 1
            self.work["last_submit_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"

    def _find(self, client, file_id: str):
        """The provider's batch reading ``file_id``, if one exists (newest first, a few pages)."""
        for n, b in enumerate(client.batches.list(limit=100)):
            if b.input_file_id == file_id:
                return b
            if n >= 1000:
                return None
        return None

    def _resubmit(self) -> None:
        """On start: submit batches a killed process stored but did not submit (written again from the
        stored queries; an uploaded file is not uploaded twice)."""
        pending = self.store.batches(self._run(), ("preparing", "uploaded"))
        if not pending:
            return
        with self._client() as client:
            for b in pending:
                if b["state"] == "uploaded":
                    self._try_submit(client, b["id"], "", b["input_file_id"])
                    continue
                folder = tempfile.mkdtemp(prefix="fbloop-batch-")
                try:
                    path = os.path.join(folder, "batch.jsonl")
                    write_batch(self.llm, self.store, self._run(), self.store.batch_asks(b["id"]), b["mode"], path)
                    self._try_submit(client, b["id"], path)
                finally:
                    shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------ polling and ingesting

    def poll(self) -> None:
        """Submit what an earlier try could not; look at every open batch once; store the results of
        those that ended; back off while quiet."""
        self._resubmit()
        open_ = self.store.batches(self._run(), ("submitted",))
        changed = False
        self.work["polls"] += 1
        if open_:
            with self._client() as client:
                for b in open_:
                    obj = client.batches.retrieve(b["batch_id"])
                    counts = obj.request_counts.model_dump() if obj.request_counts else None
                    if obj.status != b["provider_status"] or counts != b["counts"]:
                        changed = True
                        self.store.update_batch(b["id"], provider_status=obj.status, counts=counts)
                    if obj.status in TERMINAL:
                        self._finish(client, b, obj)
        self.interval = self.config.poll_s if changed else min(self.interval * self.config.backoff,
                                                                self.config.poll_max_s)
        self.next_poll = time.monotonic() + self.interval

    def _finish(self, client, b: dict, obj) -> None:
        """Store an ended batch's output and error lines, settle requests with no line, ask failures again."""
        errors = obj.errors.model_dump() if obj.errors else None
        self.store.update_batch(b["id"], output_file_id=obj.output_file_id, error_file_id=obj.error_file_id,
                                errors=errors, finished_at=time.time())
        b = {**b, "finished_at": time.time(), "batch_id": obj.id}
        t0 = time.perf_counter()
        ing = Ingester(self.llm, self.store, self._run())
        report = IngestReport()
        for file_id in (obj.output_file_id, obj.error_file_id):
            if file_id:
                with client.files.with_streaming_response.content(file_id) as resp:
                    part = ing.ingest(split_lines(resp.iter_bytes(1 << 20)), b)
                _merge(report, part)
        self.work["ingest_s"] += time.perf_counter() - t0
        self.work["ingested_lines"] += report.lines
        why = (f"batch {obj.id} ended {obj.status} with no result for this request"
               + (f" ({json.dumps(errors)[:300]})" if errors else ""))
        _merge(report, settle(self.llm, self.store, self._run(), self.store.batch_asks(b["id"]), why, b))
        self._retry(report.retry)
        self.store.update_batch(b["id"], state="ingested", ingested_at=time.time())
        self.reports.append({"batch_id": obj.id, "status": obj.status, **report.to_dict()})

    def _retry(self, failed: list[tuple[int, int, int]]) -> None:
        """Ask failed requests again at the next attempt, while attempts are left."""
        keep = [(s, o, a + 1) for s, o, a in failed if a + 1 < self.llm.config.max_attempts]
        if not keep:
            return
        arr = np.array(sorted(set(keep)), np.int64)
        queries = self.store.load_queries(self._run(), np.unique(arr[:, 0]))
        self._ask(queries, arr[:, 0], arr[:, 1], arr[:, 2])


def _merge(into: IngestReport, part: IngestReport) -> None:
    for k in ("lines", "stored", "repeated", "failed", "unmatched", "unreadable"):
        setattr(into, k, getattr(into, k) + getattr(part, k))
    into.examples = (into.examples + part.examples)[:5]
    into.retry += part.retry


def settle(llm: LLMAgent, store: Store, run_id: str, asks: np.ndarray, why: str, batch: dict | None) -> IngestReport:
    """Store an ``invalid`` answer (reason ``why``) for each ask of an ended batch that got no result line."""
    names = [llm.name, llm.swap_name]
    if len(asks) == 0:
        return IngestReport()
    done = store.answered_keys(run_id, names, int(asks[:, 0].min()), int(asks[:, 0].max()))
    keys = ask_key(asks[:, 0], asks[:, 2], asks[:, 1])
    missing = asks[~np.isin(keys, done)]
    report = IngestReport()
    if len(missing) == 0:
        return report
    lines = [json.dumps({"custom_id": custom_id(run_id, [int(r[0]) for r in req], int(req[0, 1]), int(req[0, 2])),
                         "response": None, "error": {"code": "no_result", "message": why}})
             for req in requests_of(missing)]
    return Ingester(llm, store, run_id).ingest(lines, batch)


def write_lines(fh, llm: LLMAgent, store: Store, run_id: str, asks: np.ndarray, mode: str) -> tuple[int, int]:
    """Write the lines of ``asks`` (sorted by request) to the open file ``fh`` from the stored queries, a block
    of requests at a time; returns ``(lines, answers asked)``."""
    writer = LineWriter(llm, run_id)
    reqs = list(requests_of(asks))
    n = answers = 0
    for lo in range(0, len(reqs), QUERY_BLOCK):
        part = np.concatenate(reqs[lo:lo + QUERY_BLOCK])
        queries = store.load_queries(run_id, np.unique(part[:, 0]))
        for line in writer.lines(queries, part, mode):
            fh.write(line)
            n += 1
        answers += len(part)
    return n, answers


def write_batch(llm: LLMAgent, store: Store, run_id: str, asks: np.ndarray, mode: str, path: str) -> int:
    """Write the lines of ``asks`` (sorted by request) to ``path``; returns the lines written."""
    with open(path, "wb") as fh:
        return write_lines(fh, llm, store, run_id, asks, mode)[0]


def export_pending(llm: LLMAgent, store: Store, run_id: str, path: str) -> dict:
    """Write every request of the run that has no stored answer yet, in OpenAI's batch input format, to
    ``path`` (an offline engine's input: ``vllm run-batch -i``). Returns ``{"requests", "answers", "bytes"}``."""
    names = [llm.name, llm.swap_name]
    done = store.answered_keys(run_id, names)
    parts = []
    for b in store.batches(run_id):
        asks = store.batch_asks(b["id"])
        keys = ask_key(asks[:, 0], asks[:, 2], asks[:, 1])
        # a request is pending while any position it asks has no answer; it is written whole
        open_req = np.unique(asks[~np.isin(keys, done), 3])
        part = asks[np.isin(asks[:, 3], open_req)]
        if len(part):
            parts.append((b["mode"], part))
    n = answers = 0
    with open(path, "wb") as fh:
        for mode, part in parts:
            lines, asked = write_lines(fh, llm, store, run_id, part, mode)
            n, answers = n + lines, answers + asked
    return {"requests": n, "answers": answers, "bytes": os.path.getsize(path)}


def batch_summary(llm: LLMAgent, config: BatchConfig, store: Store, run_id: str) -> dict:
    """The LLM's summary (requests, tokens, answers) priced at the batch rate, with the batches' counts."""
    out = llm.run_summary(store, run_id)
    full = out["cost"]
    rows = store.batches(run_id)
    status: dict[str, int] = {}
    for b in rows:
        s = b["provider_status"] or b["state"]
        status[s] = status.get(s, 0) + 1
    out.update(mode=config.mode, discount=config.discount, cost=full * (1 - config.discount), cost_sync=full,
               batches={"files": len(rows), "requests": sum(b["requests"] for b in rows),
                        "bytes": sum(b["bytes"] or 0 for b in rows), "status": status,
                        "ids": [b["batch_id"] for b in rows if b["batch_id"]][:20]})
    return out
