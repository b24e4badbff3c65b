"""The LLM agent against a hostile endpoint (tests/hostile.py): every misbehaviour is an invalid answer
with its raw text, never an exception; nothing is lost or doubled, a kill -9 loses nothing, and the
API key is in no stored or printed byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbloop.agents import LLMAgent, LLMConfig
from fbloop.agents.replies import TOKENS
from fbloop.agents.structured import CHOICES
from fbloop.learners import LearnerConfig
from fbloop.loop import RunConfig, run_loop
from fbloop.queries.designs import DesignConfig
from fbloop.store import Store

from conftest import ORACLE_SPEC as SPEC, sql_rows
from hostile import HUGE, KIND, HostileConfig, Running

KEY = "sk-hostile-0123456789abcdef"  # echoed back by the hostile server; must never be stored or printed
FAST = LearnerConfig(steps_per_chunk=1, final_steps=0, polish=False)
REPO = Path(__file__).resolve().parent.parent
CAP = LLMConfig().raw_cap


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def check_run(db: Path, run_id: str, log: list[dict], budget: int, agents: list[str]) -> dict:
    """Every answer tied back to the request it came from: ok exactly when the reply was readable, with
    the value it meant; none lost, none doubled; raw text kept (capped); the key nowhere. Returns counts."""
    with Store(db) as store:
        rows = list(store.answer_rows(run_id))
    by_n = {e["n"]: e for e in log}
    counts = {"answers": len(rows), "ok": 0, "invalid": 0, "classes": set()}
    for agent in agents:
        firsts = sorted(r["seq"] for r in rows if r["agent"] == agent and r["attempt"] == 0)
        assert firsts == list(range(budget)), f"{agent}: lost or doubled"
    keys = [(r["seq"], r["agent"], r["attempt"]) for r in rows]
    assert len(keys) == len(set(keys))
    for r in rows:
        meta, raw = json.loads(r["meta"]), r["raw"]
        assert raw is not None and len(raw) <= CAP, (r, len(raw or ""))
        rid = meta.get("request_id")
        counts[r["status"]] += 1
        if rid is None:  # no reply: the request failed (after retries, or a 400)
            assert r["status"] == "invalid" and raw.startswith("error: ") and meta["error"] == raw
            continue
        e = by_n[int(rid.removeprefix("hreq-"))]
        counts["classes"].add(e["cls"])
        if r["status"] == "ok":
            assert KIND[e["cls"]] == "ok", (e["cls"], raw)
            sign = 1.0 if meta["order"] == "ab" else -1.0
            assert r["value"] == sign * TOKENS[e["tokens"][meta["batch_index"] + 1]]
        else:
            assert KIND[e["cls"]] == "invalid", (e["cls"], raw, meta)
            assert r["value"] is None and meta["error"] and raw
            if e["cls"] == "huge":
                assert meta["raw_chars"] > HUGE and meta["raw_truncated"] and len(raw) == CAP
    for f in db.parent.iterdir():  # the database, its WAL and anything beside it
        assert KEY.encode() not in f.read_bytes(), f
    return counts


def hostile_run(srv, db: Path, run_id: str, budget: int, batch_size: int, order_swap: bool) -> dict:
    llm = LLMConfig(base_url=srv.url, batch_size=batch_size, order_swap=order_swap, concurrency=8,
                    backoff_s=0.005, backoff_max_s=0.02)
    config = RunConfig(target=SPEC, design=DesignConfig(name="triplet"), budget=budget, learner_config=FAST,
                       rfm_mse=False, agent="llm", llm=llm, chunk=32)
    with Store(db) as store:
        result = run_loop(config, store, run_id=run_id)
    agents = ["llm:fbloop-oracle"] + (["llm:fbloop-oracle#swap"] if order_swap else [])
    counts = check_run(db, run_id, srv.app.log, budget, agents)
    assert result.answers == counts["ok"]
    assert result.extra["llm"]["structured"] in CHOICES and result.extra["llm"]["structured_probe"]
    return counts


@pytest.mark.parametrize("batch_size, order_swap", [(1, False), (1, True), (8, False), (8, True)])
def test_every_hostile_class_is_invalid_or_read_right_and_nothing_is_lost(target, tmp_path, batch_size,
                                                                          order_swap):
    with Running(HostileConfig(), target) as srv:
        # enough requests for the cycle of 40 classes to come round: 48 batches a run
        counts = hostile_run(srv, tmp_path / "h.db", "h", 48 * batch_size, batch_size, order_swap)
    assert counts["ok"] > 0 and counts["invalid"] > 0
    assert len(srv.app.log) >= 40  # the whole cycle of classes came round at least once
    misbehaving = sum(k != "ok" for k in (KIND[e["cls"]] for e in srv.app.log if e["cls"] in KIND))
    assert misbehaving / len(srv.app.log) > 0.5


def test_a_batch_numbered_from_zero_is_invalid_whole_not_shifted(target, tmp_path):
    with Running(HostileConfig(only=("zero-ids", "ok")), target) as srv:
        counts = hostile_run(srv, tmp_path / "z.db", "z", 64, 8, False)
    assert "zero-ids" in counts["classes"] and counts["ok"] > 0


def test_retry_after_is_honoured_and_capped(target):
    from fbloop.queries.catalogue import make_design

    q = make_design(DesignConfig(name="triplet"), target, 0).queries(0, 1)
    for asked, cap, low, high in [("0.4", 5.0, 0.4, 1.5), ("3600", 0.3, 0.3, 1.5)]:
        with Running(HostileConfig(only=("429", "ok"), retry_after=asked), target) as srv:
            agent = LLMAgent(LLMConfig(base_url=srv.url, structured="json_schema", backoff_s=0.001,
                                       backoff_max_s=0.001, retry_after_max_s=cap))
            ans = agent.answer(q)
            assert ans.ok.all()
            t = [e["t"] for e in srv.app.log]
            assert [e["cls"] for e in srv.app.log] == ["429", "ok"] and low <= t[1] - t[0] < high


def test_the_cli_structured_choices_are_the_agents():
    from fbloop.cli.running import run_options

    @run_options
    def f(**kw):
        pass

    (opt,) = [p for p in f.__click_params__ if p.name == "structured"]
    assert list(opt.type.choices) == list(CHOICES)


# ---------------------------------------------------------------- the command line: kill -9, no usable data


def fbloop_cmd(url: str, db: Path, run_id: str, budget: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fbloop", "run", "--target", SPEC, "--design", "triplet", "--agent", "llm",
            "--base-url", url, "--model", "fbloop-oracle", "--budget", str(budget), "--chunk", "16",
            "--run-id", run_id, "--db", str(db), "--concurrency", "8", "--timeout", "20", "--max-attempts", "4",
            *extra]


def cli_env() -> dict:
    return {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def killed_and_resumed(srv, db: Path, budget: int, batch_size: int, order_swap: bool) -> tuple[dict, str]:
    """Run the CLI, kill -9 it once answers are stored, resume it; returns the checked counts and output."""
    extra = ["--batch-size", str(batch_size)] + (["--order-swap"] if order_swap else [])
    cmd = fbloop_cmd(srv.url, db, "k", budget, *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), cwd=REPO)
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                stored = sql_rows(db, "SELECT COUNT(*) FROM answers")[0][0]
            except Exception:  # the schema is being created
                stored = 0
        if stored >= 16:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    out1, err1 = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert sql_rows(db, "SELECT status FROM runs WHERE id = 'k'") == [("running",)]
    done = subprocess.run(cmd, capture_output=True, env=cli_env(), cwd=REPO, timeout=600)
    printed = (out1 + err1 + done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, printed[-3000:]
    agents = ["llm:fbloop-oracle"] + (["llm:fbloop-oracle#swap"] if order_swap else [])
    counts = check_run(db, "k", srv.app.log, budget, agents)
    assert KEY not in printed
    assert sql_rows(db, "SELECT status FROM runs WHERE id = 'k'") == [("done",)]
    return counts, printed


@pytest.mark.slow  # 35–75 s each; test_resume's default run keeps kill -9 cases (oracle, pool, active, people)
@pytest.mark.parametrize("batch_size, order_swap", [(1, True), (8, True)])
def test_kill_9_and_resume_against_the_hostile_server(target, tmp_path, batch_size, order_swap):
    with Running(HostileConfig(), target) as srv:
        counts, _ = killed_and_resumed(srv, tmp_path / "k.db", 128 if batch_size == 8 else 256, batch_size,
                                       order_swap)
    assert counts["ok"] > 0 and counts["invalid"] > 0


def test_a_run_whose_every_answer_is_invalid_ends_with_one_line_and_resumes(target, tmp_path):
    db = tmp_path / "n.db"
    with Running(HostileConfig(only=("prose", "zero-ids")), target) as srv:
        cmd = fbloop_cmd(srv.url, db, "n", 24, "--batch-size", "4")
        first = subprocess.run(cmd, capture_output=True, env=cli_env(), cwd=REPO, timeout=300)
        err = first.stderr.decode()
        assert first.returncode == 2, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: Run 'n' has no usable answer: 24 asked, 24 invalid; commonest reasons: ")
        assert "Traceback" not in err and KEY not in err + first.stdout.decode()
        assert sql_rows(db, "SELECT status FROM runs WHERE id = 'n'") == [("no-data",)]
        srv.app.cycle = ["ok"]  # the server mends: the same command asks the invalid ones again
        second = subprocess.run(cmd, capture_output=True, env=cli_env(), cwd=REPO, timeout=300)
        assert second.returncode == 0, second.stderr.decode()[-2000:]
    assert sql_rows(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'n' AND status = 'ok' AND attempt = 1") == [(24,)]
    assert sql_rows(db, "SELECT status FROM runs WHERE id = 'n'") == [("done",)]


# ---------------------------------------------------------------- ≥ 1,000 queries (slow)


@pytest.mark.slow
def test_a_thousand_hostile_queries_at_batch_1_and_8_with_and_without_swap_and_a_kill(target, tmp_path):
    total = {"queries": 0, "answers": 0, "ok": 0, "invalid": 0}
    with Running(HostileConfig(), target) as srv:
        for i, (b, swap) in enumerate([(1, False), (1, True), (8, False), (8, True)]):
            c = hostile_run(srv, tmp_path / f"r{i}.db", f"r{i}", 256, b, swap)
            total["queries"] += 256
            for k in ("answers", "ok", "invalid"):
                total[k] += c[k]
        for b, swap in [(1, True), (8, True)]:
            c, _ = killed_and_resumed(srv, tmp_path / f"k{b}.db", 256, b, swap)
            total["queries"] += 256
            for k in ("answers", "ok", "invalid"):
                total[k] += c[k]
        print(f"hostile: {total}, {len(srv.app.log)} requests, kinds {dict(srv.app.kinds)}")
    assert total["queries"] >= 1000


def test_the_probe_keeps_the_first_mode_whose_reply_parses(target):
    from fbloop.agents.server import ServerConfig, serve

    with serve(ServerConfig(target=SPEC), target=target) as srv:
        agent = LLMAgent(LLMConfig(base_url=srv.url))
        agent.check()
        assert agent.modes.current == "json_schema" and srv.stats["requests"] == 1
        assert agent.probe_log == [{"mode": "json_schema", "outcome": "ok"}]
    with Running(HostileConfig(only=("prose",)), target) as srv:  # ignores every field, answers in prose
        agent = LLMAgent(LLMConfig(base_url=srv.url, backoff_s=0.001))
        agent.check()
        assert agent.modes.current == "prompt" and len(srv.app.log) == 5
        assert [e["mode"] for e in agent.probe_log] == ["json_schema", "json_object", "vllm", "vllm-guided",
                                                       "ollama", "prompt"]
