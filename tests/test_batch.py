"""LLM batch jobs (fbloop.agents.batch) over HTTP with the real ``openai`` client, against the local
server's Files and Batch APIs (fbloop.agents.batchserver); offline export → engine → ingest; kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import pytest
from pydantic import TypeAdapter

from fbloop.agents.batch import BatchConfig, BatchLLM, Ingester, LineWriter, parse_custom_id, plan
from fbloop.agents.batchserver import BatchServerConfig
from fbloop.agents.llm import LLMAgent, LLMConfig
from fbloop.agents.server import ServerConfig, serve
from fbloop.app import views
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
from fbloop.store import Store
from fbloop.targets.load import load_target

SPEC = "synthetic:p=8,rank=3"
KEY = "test-key"
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": KEY}
# OpenAI's documented batch input line: https://platform.openai.com/docs/guides/batch (the request input object)
LINE_FIELDS = {"custom_id", "method", "url", "body"}
FAST = LearnerConfig(rank=3, final_steps=300, polish=False)


@pytest.fixture(autouse=True)
def key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


@pytest.fixture(scope="module")
def target():
    return load_target(SPEC)


def config(url: str, budget: int = 120, mode: str = "batch", swap: bool = True, k: int = 1, chunk: int = 50,
           attempts: int = 4, **batch) -> RunConfig:
    # a short final fit (rank given, few steps, no polish): these tests check answers, not the learner
    return RunConfig(target=SPEC, design=DesignConfig(name="triplet"), agent="llm", budget=budget, chunk=chunk,
                     rfm_mse=False, seed=2, learner_config=FAST,
                     llm=LLMConfig(base_url=url, order_swap=swap, batch_size=k, cost_prompt_1k=0.002,
                                   cost_completion_1k=0.008, max_attempts=attempts),
                     batch=BatchConfig(mode=mode, poll_s=0.05, poll_max_s=0.2, **batch))


def watch(cfg: RunConfig, store: Store, run_id: str):
    return run_loop(cfg, store, run_id=run_id, watch=threading.Event(), poll_s=0.05)


def rows(store: Store, run_id: str) -> list[dict]:
    return list(store.answer_rows(run_id))


def check_line(line: dict) -> None:
    """A line as OpenAI documents it and vLLM's run-batch reads it: exactly custom_id, method, url, body,
    and a body the openai package's own chat-completions parameter type accepts."""
    assert set(line) == LINE_FIELDS
    assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
    assert isinstance(line["custom_id"], str) and line["custom_id"]
    from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming

    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(line["body"])
    assert [m["role"] for m in line["body"]["messages"]] == ["system", "user"]


# ---------------------------------------------------------------- the request lines


def test_custom_ids_round_trip_and_refuse_other_runs():
    assert parse_custom_id("fbloop:r:un:5:ba:2", "r:un") == ([5], 1, 2)
    assert parse_custom_id("fbloop:R:3+4+9:ab:0", "R") == ([3, 4, 9], 0, 0)
    for bad in ("fbloop:S:3:ab:0", "fbloop:R:3:xy:0", "fbloop:R:x:ab:0", "fbloop:R:3:ab:-1", "R:3:ab:0", None, 7,
                "fbloop:R:3:ab:01", "fbloop:R:03:ab:0", "fbloop:R: 3:ab:0", "fbloop:R:3+:ab:0", "fbloop:R:²:ab:0",
                "fbloop:R:3:ab:²", "fbloop:R:٣:ab:0", "fbloop:R:3:ab:0:1", "fbloop:r:un:5:ba:2"):
        assert parse_custom_id(bad, "R") is None, bad


@pytest.mark.parametrize("raw", [
    b'{"custom_id": "x", "n": [1, 2.5, null, true]}\n', '{"a": "\\u00e9\\ud83d\\ude00"}\r\n', b'{"a": "\xc3\xa9"}  \t',
    b'\xef\xbb\xbf{"bom": 1}', '{"a": 1}'.encode("utf-16-le"), '{"a": 1}'.encode("utf-16"), b'[1, 2]', b' {"a": 1}',
    b'{"a": 1} {"b": 2}', b'{"a": 1}x', b'{"a": 1', b'{"a": "\xff"}', b'{"a": "\xed\xa0\x80"}', b'{}\x00',
    '{"a": 1}\u3000', b'{"a": NaN}', b"", b"{" * 100_000])
def test_result_lines_read_as_json_loads_reads_them(raw):
    """The fast line reader returns what json.loads returns and raises what it raises."""
    from fbloop.agents.batch import read_line

    def outcome(fn):
        try:
            return "ok", fn(raw)
        except (ValueError, RecursionError) as exc:
            return type(exc).__name__, str(exc)

    assert outcome(read_line) == outcome(json.loads)


def _result(cid="fbloop:R:7:ab:0", status=200, content='{"answer": "first"}', usage=None, **body) -> dict:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": usage if usage is not None else {"prompt_tokens": 400, "completion_tokens": 5}, **body}
    return {"id": "batch_req_1", "custom_id": cid, "response": {"status_code": status, "request_id": "req_1",
                                                                 "body": body}, "error": None}


USUAL = [json.dumps(_result()), json.dumps(_result("fbloop:R:0:ba:12", content="prose")),
         json.dumps(_result(usage={"prompt_tokens": -3})), json.dumps(_result(usage={})),
         json.dumps({**_result(), "response": {**_result()["response"], "request_id": None}}),
         json.dumps(_result(id="x" * 500, model="")), json.dumps(_result(content="é" * 3000)),
         '{"custom_id": "fbloop:R:1:ab:0", "custom_id": "fbloop:R:2:ab:0", "response": '
         + json.dumps(_result()["response"]) + "}",  # duplicate keys: the last one, as json reads it
         json.dumps({**_result(), "extra": [[[1, 2.5e300, None]]]}), "  " + json.dumps(_result()) + " \r\n",
         json.dumps({**_result(), "deep": [[[]]] * 200 + [[[[[[[[[[]]]]]]]]]]})]  # short enough: read fast
OTHER = [json.dumps(_result(status=500)), json.dumps(_result(content="")), json.dumps(_result(content=None)),
         json.dumps(_result(content=[{"type": "text", "text": "hi"}])), json.dumps(_result(usage={"prompt_tokens": 4.0})),
         json.dumps(_result(usage={"prompt_tokens": True})), json.dumps(_result(usage={"prompt_tokens": None})),
         json.dumps(_result(id=17)), json.dumps(_result("fbloop:R:3+4:ab:0")), json.dumps(_result("fbloop:R:03:ab:0")),
         json.dumps(_result("fbloop:S:3:ab:0")), json.dumps(_result(choices=[])), json.dumps(_result(status=200.0)),
         json.dumps({**_result(), "response": {**_result()["response"], "request_id": 5}}),
         json.dumps({**_result(), "x": float("nan")}), json.dumps(_result(content="\udc80")),
         json.dumps(_result()) + " x", json.dumps({**_result(), "many": [[[]]] * 300}),  # long and bracketed
         '{"custom_id": "fbloop:R:1:ab:0", "response": ' + "[" * 2000 + "]" * 2000 + "}",
         json.dumps({"custom_id": "fbloop:R:1:ab:0", "error": {"code": "x", "message": "y"}, "response": None})]


@pytest.mark.parametrize("text", USUAL + OTHER)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_the_fast_reader_reads_usual_lines_as_the_general_one_and_leaves_the_rest(text, as_bytes):
    """A usual line read fast gives the same custom id, position, order, attempt and reply as json plus
    the general reader; any other line is left to the general reader (which decides what it is)."""
    from fbloop.agents.batch import _line_reply, read_line
    from fbloop.agents.fastlines import id_pattern, read_usual

    raw = text.encode("utf-8", "surrogatepass") if as_bytes else text
    fast = read_usual(raw, id_pattern("R"))
    if text not in USUAL:
        assert fast is None
        return
    assert fast is not None
    rec = read_line(raw)
    (seqs, order, attempt), reply = parse_custom_id(rec["custom_id"], "R"), _line_reply(rec)
    assert fast == (seqs[0], order, attempt, reply, rec["custom_id"])


def test_ingest_stores_the_same_rows_with_or_without_the_fast_reader(tmp_path, target, monkeypatch):
    """Ingesting a mixed result file (usual lines, errors, refusals, unknown ids, garbage) stores the same
    rows and reports the same counts as the general reader alone."""
    import fbloop.agents.batch as batch

    cfg = config("http://127.0.0.1:9/v1", budget=40, mode="offline", swap=False)
    lines = []
    for s in range(40):
        pick = s % 8
        lines.append(json.dumps(_result(f"fbloop:R:{s}:ab:0", content=['{"answer": "first"}', '{"answer": "second"}',
                                                                        "no", ""][pick % 4],
                                        status=500 if pick == 7 else 200)))
    lines += ["garbage", json.dumps(_result("fbloop:R:999:ab:0")), json.dumps(_result("fbloop:R:3:ab:5"))]
    stored = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(batch, "read_usual", lambda raw, ids: None)
        with Store(tmp_path / f"{fast}.db") as store:
            run_loop(cfg, store, run_id="R")
            llm = BatchLLM(cfg.llm, target.descriptions)
            rep = Ingester(llm, store, "R").ingest([x.encode() for x in lines])
            got = [{k: v for k, v in r.items() if k not in ("created_at", "id")} for r in rows(store, "R")]
            stored.append((rep.to_dict(), sorted(got, key=lambda r: (r["seq"], r["attempt"], r["agent"]))))
    assert stored[0][0]["stored"] == 40 and stored[0][0]["unmatched"] == 2 and stored[0][0]["unreadable"] == 1
    assert stored[0] == stored[1]


def test_plan_groups_requests_by_order_and_attempt():
    seq = np.array([0, 1, 2, 0, 1, 2])
    asks = plan(seq, np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 0, 0, 0]), k=2)
    assert asks.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [2, 0, 1, 1], [0, 1, 0, 2], [1, 1, 0, 2], [2, 1, 0, 3]]


@pytest.mark.parametrize("mode,k", [("json_schema", 1), ("json_schema", 3), ("vllm", 2), ("prompt", 1)])
def test_batch_bodies_are_what_the_synchronous_agent_sends(tmp_path, target, mode, k):
    """The bodies the sync agent's requests carry over HTTP (recorded at the server) are the batch lines'."""
    with serve(ServerConfig(target=SPEC), target=target) as srv:
        sent: list[dict] = []
        reply = srv.model.reply
        srv.model.reply = lambda body: (sent.append(body), reply(body))[1]
        cfg = LLMConfig(base_url=srv.url, batch_size=k, structured=mode, order_swap=True)
        q = load_design_queries(target, 6)
        LLMAgent(cfg, target.descriptions).answer_sets(q)
        llm = BatchLLM(cfg, target.descriptions)
        asks = plan(np.tile(q.seq, 2), np.repeat([0, 1], len(q)), np.zeros(2 * len(q), np.int64), k)
        lines = [json.loads(x) for x in LineWriter(llm, "R").lines(q, asks, mode)]
    for line in lines:
        check_line(line)
    by_prompt = {b["messages"][1]["content"]: b for b in sent}
    assert len(lines) == len(sent) == 2 * -(-len(q) // k)
    for line in lines:
        assert line["body"] == by_prompt[line["body"]["messages"][1]["content"]]
    assert parse_custom_id(lines[0]["custom_id"], "R")[0] == [int(s) for s in q.seq[:k]]


def load_design_queries(target, n: int):
    from fbloop.queries.catalogue import make_design

    return make_design(DesignConfig(name="triplet"), target, 2).queries(0, n)


# ---------------------------------------------------------------- the server's Batch API


def test_server_batch_lifecycle_with_the_real_client(tmp_path, target):
    with serve(ServerConfig(target=SPEC), target=target, batch=BatchServerConfig(delay_s=0.3)) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        q = load_design_queries(target, 5)
        llm = BatchLLM(LLMConfig(base_url=srv.url, structured="json_schema"), target.descriptions)
        path = tmp_path / "in.jsonl"
        path.write_bytes(b"".join(LineWriter(llm, "R").lines(q, plan(q.seq, np.zeros(5, np.int64),
                                                                      np.zeros(5, np.int64), 1), "json_schema")))
        f = client.files.create(file=path.open("rb"), purpose="batch")
        assert f.purpose == "batch" and f.bytes == path.stat().st_size
        b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"k": "v"})
        seen = [b.status]
        while b.status not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
            if b.status != seen[-1]:
                seen.append(b.status)
        assert seen == ["validating", "in_progress", "finalizing", "completed"]
        assert b.request_counts.total == 5 and b.request_counts.completed == 5 and b.error_file_id is None
        assert b.metadata == {"k": "v"} and b.in_progress_at and b.finalizing_at and b.completed_at
        out = [json.loads(x) for x in client.files.content(b.output_file_id).text.splitlines()]
        assert sorted(o["custom_id"] for o in out) == sorted(f"fbloop:R:{s}:ab:0" for s in q.seq)
        assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)
        assert json.loads(out[0]["response"]["body"]["choices"][0]["message"]["content"])["answer"] in (
            "first", "second", "equal")

        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\n'
                       '{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}\n'
                       'not json\n')
        fb = client.batches.create(input_file_id=client.files.create(file=bad.open("rb"), purpose="batch").id,
                                   endpoint="/v1/chat/completions", completion_window="24h")
        while fb.status not in ("failed", "completed"):
            time.sleep(0.05)
            fb = client.batches.retrieve(fb.id)
        assert fb.status == "failed" and fb.failed_at
        assert [(e.code, e.line) for e in fb.errors.data] == [("duplicate_custom_id", 2), ("invalid_json_line", 3)]

        c = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert client.batches.cancel(c.id).status == "cancelling"
        while c.status != "cancelled":
            time.sleep(0.05)
            c = client.batches.retrieve(c.id)
        assert c.cancelled_at and c.output_file_id is None
        errs = [json.loads(x) for x in client.files.content(c.error_file_id).text.splitlines()]
        assert {e["error"]["code"] for e in errs} == {"batch_cancelled"} and len(errs) == 5

        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_nope")
        assert [x.id for x in client.batches.list(limit=1)] == [c.id, fb.id, b.id]  # auto-paged, newest first


# ---------------------------------------------------------------- runs in batch mode


def test_a_batch_run_answers_as_the_synchronous_one(tmp_path, target):
    """Same server, same queries: every stored value is the synchronous run's; each answer keeps its raw
    text, tokens, batch id and custom id; the summary prices tokens at the batch discount."""
    with serve(ServerConfig(target=SPEC), target=target, batch=BatchServerConfig(max_requests=70)) as srv, \
            Store(tmp_path / "r.db") as store:
        cfg = config(srv.url, budget=120, k=2, max_requests=40)
        res = watch(cfg, store, "B")
        sync = run_loop(RunConfig(**{**cfg.__dict__, "batch": None, "chunk": 50}), store, run_id="S")
        got, want = rows(store, "B"), rows(store, "S")
    assert res.answers == sync.answers == 240 and store_status(tmp_path, "B") == "done"
    assert [(r["seq"], r["agent"], r["value"]) for r in got] == [(r["seq"], r["agent"], r["value"]) for r in want]
    meta = [json.loads(r["meta"]) for r in got]
    assert all(m["batch_id"].startswith("batch_") and m["custom_id"].startswith("fbloop:B:") for m in meta)
    assert all(r["raw"].startswith('{"answers"') for r in got)
    u = res.extra["llm"]
    assert u["mode"] == "batch" and u["discount"] == 0.5 and u["requests"] == 120
    assert u["cost"] == pytest.approx(u["cost_sync"] / 2) and u["cost_sync"] == pytest.approx(
        (u["prompt_tokens"] * 0.002 + u["completion_tokens"] * 0.008) / 1000) and u["cost"] > 0
    # chunks of 50, 50, 20 triplets × 2 orders at 2 a request: 50, 50, 20 requests in files of at most 40
    assert u["batches"]["files"] == 5 and u["batches"]["requests"] == 120
    assert u["batches"]["status"] == {"completed": 5}


def store_status(tmp_path: Path, run_id: str) -> str:
    with Store(tmp_path / "r.db") as store:
        return store.get_run(run_id)["status"]


def test_failed_expired_and_missing_requests_are_asked_again(tmp_path, target):
    """Lines answered 429/500 (error file), expired ones and a cancelled batch's: stored invalid with the
    reason, asked again at the next attempt until answered (up to max_attempts: at 4, two of these 100
    positions failed four times); no answer doubled, none lost."""
    with serve(ServerConfig(target=SPEC, error_rate=0.25, seed=4), target=target,
               batch=BatchServerConfig(expire_after=35)) as srv, Store(tmp_path / "r.db") as store:
        res = watch(config(srv.url, budget=100, swap=False, attempts=8), store, "F")
        got = rows(store, "F")
        batches = store.batches("F")
    keys = [(r["seq"], r["agent"], r["attempt"]) for r in got]
    assert len(keys) == len(set(keys))
    final = {}
    for r in got:
        final[r["seq"]] = max(final.get(r["seq"], (-1, "")), (r["attempt"], r["status"]))
    assert sorted(final) == list(range(100)) and res.answers == 100
    assert all(status == "ok" for _, status in final.values())
    why = [json.loads(r["meta"])["error"] for r in got if r["status"] == "invalid"]
    assert any("batch_expired" in w for w in why) and any("HTTP 429" in w or "HTTP 500" in w for w in why)
    assert max(r["attempt"] for r in got) >= 1
    assert {b["provider_status"] for b in batches} >= {"expired"}
    assert all(b["state"] == "ingested" for b in batches)


def test_active_chunks_wait_for_the_previous_batch(tmp_path, target):
    from fbloop.queries.active import ActiveConfig

    with serve(ServerConfig(target=SPEC), target=target, batch=BatchServerConfig(delay_s=0.05)) as srv, \
            Store(tmp_path / "r.db") as store:
        cfg = RunConfig(**{**config(srv.url, budget=150, swap=False, chunk=50).__dict__,
                           "active": ActiveConfig(strategy="uncertainty")})
        res = watch(cfg, store, "A")
        batches = store.batches("A")
    assert res.answers == 150 and len(batches) == 3
    # each chunk was submitted only after the previous batch's answers were in
    for before, after in zip(batches, batches[1:]):
        assert after["submitted_at"] >= before["ingested_at"]
    assert res.extra["active"]["chunks"] >= 2


# ---------------------------------------------------------------- offline engines


def engine(target, requests: Path, results: Path) -> Path:
    """The local server's Batch API standing in for an offline engine: ``requests`` in, ``results`` out."""
    with serve(ServerConfig(target=SPEC), target=target) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        b = client.batches.create(input_file_id=client.files.create(file=requests.open("rb"), purpose="batch").id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
        while b.status != "completed":
            time.sleep(0.05)
            b = client.batches.retrieve(b.id)
        results.write_bytes(client.files.content(b.output_file_id).content)
    return results


def test_export_engine_ingest_round_trip(tmp_path, target):
    """--llm-mode offline records the requests; `fbloop batch export` writes OpenAI batch input lines
    (vllm run-batch's input); the local server's Batch API stands in for the engine; `fbloop batch ingest`
    stores its output once, reports lines of no asked request, and the run then learns and ends done."""
    db = tmp_path / "r.db"
    with Store(db) as store:
        cfg = config("http://127.0.0.1:9/v1", budget=60, mode="offline", k=1)
        first = run_loop(cfg, store, run_id="O")
        assert first.pcc is None and store.get_run("O")["status"] == "waiting"
    out = tmp_path / "requests.jsonl"
    done = cli("batch", "export", "O", "--out", str(out), "--db", str(db), "--json")
    assert done["requests"] == 120 and done["answers"] == 120
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    for line in lines:
        check_line(line)
        assert line["body"]["response_format"]["type"] == "json_schema"
    results = engine(target, out, tmp_path / "results.jsonl")
    with results.open("a") as fh:  # a line from another run and one of a request never asked
        other = json.loads(results.read_text().splitlines()[0])
        fh.write(json.dumps({**other, "custom_id": other["custom_id"].replace("fbloop:O:", "fbloop:X:")}) + "\n")
        fh.write(json.dumps({**other, "custom_id": "fbloop:O:9999:ab:0"}) + "\n")
        fh.write("not json\n")
    once = cli("batch", "ingest", "O", str(results), "--db", str(db), "--json")
    assert (once["lines"], once["stored"], once["unmatched"], once["unreadable"]) == (123, 120, 2, 1)
    again = cli("batch", "ingest", "O", str(results), "--db", str(db), "--json")
    assert (again["stored"], again["repeated"]) == (0, 120)
    assert cli("batch", "export", "O", "--out", str(out), "--db", str(db), "--json")["requests"] == 0
    with Store(db) as store:
        assert store.count_answers("O", None) == 120
        res = run_loop(cfg, store, run_id="O")
        assert res.answers == 120 and res.pcc > 0.5 and store.get_run("O")["status"] == "done"
        assert res.extra["llm"]["mode"] == "offline"
        (stats,) = views.llm_stats(store, "O")  # the dashboard's LLM block: tokens at the batch price
    assert stats["mode"] == "offline" and stats["batches"] == 2 and stats["answers"] == 120
    assert stats["cost"] == pytest.approx(stats["cost_sync"] / 2) and stats["cost"] > 0


def cli(*args: str) -> dict:
    """The ``fbloop`` command, in this process (click's runner): its JSON line."""
    from click.testing import CliRunner

    from fbloop.cli import main

    done = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert done.exit_code == 0, done.output[-2000:]
    return json.loads(done.output.strip().splitlines()[-1])


def test_ingest_matches_attempts_and_orders(tmp_path, target):
    """A line must name an asked (position, order, attempt): the swapped order of a run without the swap,
    or an attempt never asked, is not stored."""
    with Store(tmp_path / "r.db") as store:
        cfg = config("http://127.0.0.1:9/v1", budget=10, mode="offline", swap=False)
        run_loop(cfg, store, run_id="M")
        llm = BatchLLM(cfg.llm, target.descriptions)
        llm.offline = True
        body = {"choices": [{"message": {"content": '{"answer": "first"}'}}], "usage": {"prompt_tokens": 9}}
        line = lambda cid: json.dumps({"custom_id": cid, "response": {"status_code": 200, "body": body}})  # noqa
        rep = Ingester(llm, store, "M").ingest([line("fbloop:M:3:ba:0"), line("fbloop:M:3:ab:1"),
                                                line("fbloop:M:3:ab:0")])
        assert (rep.stored, rep.unmatched) == (1, 2)
        (row,) = [r for r in rows(store, "M")]
        assert row["seq"] == 3 and row["value"] == 1.0 and json.loads(row["meta"])["prompt_tokens"] == 9


# ---------------------------------------------------------------- kill -9 while a batch runs


def scalar(db: Path, sql: str):
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute(sql).fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


@pytest.mark.slow
def test_kill_9_while_a_batch_is_in_progress_then_resume(tmp_path):
    """`fbloop run --llm-mode batch --watch` killed with SIGKILL while its batches run at the server, then
    the same command again: it re-attaches, creates no batch twice, loses and doubles no answer."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "fbloop", "serve-oracle", "--target", SPEC, "--port", str(port),
                               "--batch-delay", "1.5"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=5)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                time.sleep(0.1)
        db = tmp_path / "r.db"
        cmd = [sys.executable, "-m", "fbloop", "run", "--target", SPEC, "--design", "triplet", "--agent", "llm",
               "--rank", "3",
               "--llm-mode", "batch", "--batch-poll", "0.1", "--base-url", url, "--order-swap", "--budget", "300",
               "--chunk", "100", "--seed", "1", "--run-id", "K", "--db", str(db), "--watch", "--poll", "0.1", "--json"]
        proc = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if scalar(db, "SELECT COUNT(*) FROM llm_batches WHERE provider_status = 'in_progress'"):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        before = {b.id for b in client.batches.list()}
        stored_before = scalar(db, "SELECT COUNT(*) FROM answers")
        assert 1 <= len(before) and stored_before < 600
        done = subprocess.run(cmd, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])
        after = {b.id for b in client.batches.list()}
    finally:
        server.terminate()
        server.wait(timeout=30)
    with Store(db) as store:
        local = store.batches("K")
        got = rows(store, "K")
    assert len(after) == len(local) == 3 and before <= after  # one batch per chunk, none created twice
    assert {b["batch_id"] for b in local} == after and all(b["state"] == "ingested" for b in local)
    keys = [(r["seq"], r["agent"], r["attempt"]) for r in got]
    assert len(keys) == len(set(keys)) == 600  # 300 triplets × 2 orders: none lost, none doubled
    assert all(r["status"] == "ok" for r in got)
    assert result["answers"] == 600 and result["learned"] == 600


def test_a_resumed_run_reattaches_and_submits_what_it_stored(tmp_path, target):
    """States a kill can leave: a batch created at the provider whose id was never recorded (state
    ``uploaded``: it is found by its input file, not created again), and asks stored but never uploaded
    (state ``preparing``: written again from the stored queries and submitted)."""
    with serve(ServerConfig(target=SPEC), target=target, batch=BatchServerConfig(delay_s=1.5)) as srv, \
            Store(tmp_path / "r.db") as store:
        client = openai.OpenAI(base_url=srv.url, api_key=KEY, max_retries=0)
        cfg = config(srv.url, budget=60, swap=False, chunk=20)
        # submits three batches and returns: nothing is in yet (each stage lasts 1.5 s: room for a loaded machine)
        first = run_loop(cfg, store, run_id="R")
        assert first.pcc is None and store.get_run("R")["status"] == "waiting"
        one, two, three = store.batches("R")
        client.batches.cancel(three["batch_id"])  # as if it had never been uploaded
        store.db.execute("UPDATE llm_batches SET state = 'uploaded', batch_id = NULL WHERE id = ?", [one["id"]])
        store.db.execute("UPDATE llm_batches SET state = 'preparing', batch_id = NULL, input_file_id = NULL "
                         "WHERE id = ?", [three["id"]])
        res = watch(cfg, store, "R")
        after = store.batches("R")
        provider = {b.id: b for b in client.batches.list()}
    assert res.answers == 60 and all(b["state"] == "ingested" for b in after)
    assert after[0]["batch_id"] == one["batch_id"]  # re-attached, not created again
    assert after[2]["batch_id"] not in (None, three["batch_id"]) and after[2]["input_file_id"] != three["input_file_id"]
    assert len(provider) == 4 and provider[three["batch_id"]].status == "cancelled"


def test_a_provider_outage_at_batch_creation_is_ridden_out(tmp_path, target):
    """``batches.create`` answered 500 twice: the uploaded file's batch is created by a later poll
    (after looking for it among the provider's batches), and nothing is created twice."""
    with serve(ServerConfig(target=SPEC), target=target, batch=BatchServerConfig(create_errors=2)) as srv, \
            Store(tmp_path / "r.db") as store:
        res = watch(config(srv.url, budget=60, swap=False, chunk=20), store, "E")
        local = store.batches("E")
        provider = list(openai.OpenAI(base_url=srv.url, api_key=KEY).batches.list())
    assert res.answers == 60 and len(local) == len(provider) == 3
    assert {b["batch_id"] for b in local} == {b.id for b in provider}
    assert res.extra["llm"]["batches"]["this_process"]["submit_errors"] == 2


@pytest.mark.parametrize("chunks", [[], [b""], [b"a\nb"], [b"a\n", b"b\n"], [b"a", b"b", b"\nc"], [b"\n\n"],
                                    [b"ab", b"", b"c\nd", b"e\n"], [b"x" * 5, b"x" * 5, b"x\n"]])
def test_downloads_are_split_into_lines_across_chunks(chunks):
    from fbloop.agents.batch import split_lines

    data = b"".join(chunks)
    want = data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")
    assert list(split_lines(iter(chunks))) == [w for w in want if data]


@pytest.mark.parametrize("kind, k", [("rank", 4), pytest.param("closest", 4, marks=pytest.mark.slow),  # 8 s each
                                     pytest.param("odd", None, marks=pytest.mark.slow)])
def test_tuple_questions_in_batches_answer_as_the_synchronous_agent(tmp_path, target, kind, k):
    """Closest of k, rank k and odd one out through the Batch API, from a server flipping 30 % of its
    answers: the stored answers are the synchronous run's, the reversed order's under ``#swap`` mapped back
    to the stored order, and the order swap's flip rate is the synchronous tuple agent's (options counted)."""
    from fbloop.agents import OracleConfig

    noisy = ServerConfig(target=SPEC, oracle=OracleConfig(noise="flip", flip=0.3))
    with serve(noisy, target=target) as srv, Store(tmp_path / "r.db") as store:
        base = config(srv.url, budget=60, k=4, max_requests=20)
        cfg = RunConfig(**{**base.__dict__, "design": DesignConfig(name=kind, k=k)})
        res = watch(cfg, store, "B")
        sync = run_loop(RunConfig(**{**cfg.__dict__, "batch": None}), store, run_id="S")
        got, want = rows(store, "B"), rows(store, "S")
        assert store.load_queries("B", [0]).kind == kind
    assert res.answers == sync.answers == 120 and store_status(tmp_path, "B") == "done"
    assert [(r["seq"], r["agent"], r["value"]) for r in got] == [(r["seq"], r["agent"], r["value"]) for r in want]
    (name,) = {r["agent"] for r in got if not r["agent"].endswith("#swap")}
    assert all(r["status"] == "ok" for r in got) and {r["agent"] for r in got} == {name, name + "#swap"}
    # chunks of 50 and 10 questions × 2 orders at 4 a request: 26 and 6 requests, in files of at most 20
    assert res.extra["llm"]["mode"] == "batch" and res.extra["llm"]["batches"]["status"] == {"completed": 3}
    assert res.extra["source_noise"] == sync.extra["source_noise"] and 0.1 < res.extra["source_noise"][name] < 0.45


def test_tuple_batches_export_and_ingest_through_the_cli(tmp_path, target):
    """An offline rank-4 run: `fbloop batch export` writes the tuple prompts, the local Batch API answers
    them, `fbloop batch ingest` stores rankings, and the run learns from them."""
    db = tmp_path / "r.db"
    base = config("http://127.0.0.1:9/v1", budget=40, mode="offline", k=4, swap=False)
    cfg = RunConfig(**{**base.__dict__, "design": DesignConfig(name="rank", k=4)})
    with Store(db) as store:
        assert run_loop(cfg, store, run_id="O").pcc is None
    out = tmp_path / "requests.jsonl"
    assert cli("batch", "export", "O", "--out", str(out), "--db", str(db), "--json")["requests"] == 10
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    for line in lines:
        check_line(line)
    prompt = lines[0]["body"]["messages"][-1]["content"]
    assert "order its 4 candidate activations" in prompt and '"ranking"' in prompt  # rank_batch.txt, 4 a request
    assert lines[0]["custom_id"] == "fbloop:O:0+1+2+3:ab:0"
    results = engine(target, out, tmp_path / "results.jsonl")
    got = cli("batch", "ingest", "O", str(results), "--db", str(db), "--json")
    assert (got["lines"], got["stored"], got["unmatched"]) == (10, 40, 0)
    with Store(db) as store:
        values = [r["value"] for r in store.answer_rows("O")]
        assert len(values) == 40 and all(0 <= v < 24 and v == int(v) for v in values)  # rankings of 4
        res = run_loop(cfg, store, run_id="O")
    assert res.answers == 40 and res.pcc > 0.5


def test_an_offline_run_says_what_to_do_next_before_anything_is_answered(tmp_path):
    """`fbloop run --llm-mode offline` (no answers yet, so no PCC) prints its result and the export / ingest
    commands instead of failing on the missing PCC."""
    from click.testing import CliRunner

    from fbloop.cli import main

    args = ["run", "--target", SPEC, "--design", "rank", "--k", "4", "--agent", "llm", "--llm-mode", "offline",
            "--run-id", "off", "--budget", "20", "--db", str(tmp_path / "r.db")]
    done = CliRunner().invoke(main, args, catch_exceptions=False)
    assert done.exit_code == 0, done.output[-2000:]
    assert "run off: PCC — (nothing to learn from yet) after 0 answers" in done.output
    assert "fbloop batch export off --out requests.jsonl" in done.output
