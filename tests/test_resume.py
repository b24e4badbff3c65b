"""Kill -9 and resume, for every kind of agent, through the real command line.

Each run is started with ``fbloop run``, killed with SIGKILL once part of its answers are stored, and
run again with the same command. Afterwards every stored answer is unique (one row per position,
agent and attempt), the run is done, and the learner holds each stored ok answer exactly once
(``learned``: a replayed answer collected again, or one missed between replay and collection, would
show there). People answer through ``fbloop run --watch`` while simulated annotators submit in this
process; the watcher is killed in the middle and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from simulated_people import Annotators

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "test-key"}
SMALL = ["--target", "synthetic:p=8,rank=3", "--seed", "1", "--run-id", "R", "--json"]


def fbloop(*args: str) -> list[str]:
    return [sys.executable, "-m", "fbloop", *args]


def scalar(db: Path, sql: str, args: tuple = ()) -> int | None:
    """One number from ``db``, read-only; ``None`` while it is missing or locked."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2)
        try:
            return con.execute(sql, args).fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None


def stored(db: Path) -> int | None:
    return scalar(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'R'")


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL ``proc`` once ``ready()``; ``False`` when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.01)
    return False


def finish(cmd: list[str], cwd: Path, timeout: float = 400) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def check_ledger(db: Path, result: dict, learned: bool = True) -> None:
    """No answer doubled; the run done; the learner holds every stored ok answer once."""
    dup = scalar(db, "SELECT COUNT(*) FROM (SELECT 1 FROM answers WHERE run_id = 'R' "
                     "GROUP BY seq, agent, attempt HAVING COUNT(*) > 1)")
    assert dup == 0
    ok = scalar(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'R' AND status = 'ok' AND seq >= 0")
    assert result["answers"] == ok
    if learned:
        assert result["learned"] == ok
    assert scalar(db, "SELECT status FROM runs WHERE id = 'R'") == "done"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def oracle_server():
    port = free_port()
    proc = subprocess.Popen(fbloop("serve-oracle", "--target", "synthetic:p=8,rank=3", "--port", str(port),
                                   "--seed", "1", "--latency-ms", "2"), env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


KINDS = {
    "oracle": ["--design", "triplet", "--chunk", "64", "--budget", "20000"],
    "oracle-noisy": ["--design", "triplet", "--noise", "flip", "--flip", "0.1", "--chunk", "64", "--budget", "20000"],
    "pool": ["--design", "triplet", "--agent", "pool", "--chunk", "64", "--budget", "20000",
             "--member", "good:oracle,cost=1,reference", "--member", "cheap:oracle,noise=flip,flip=0.2,cost=0.01"],
    "active": ["--design", "triplet", "--active", "uncertainty", "--chunk", "64", "--budget", "3000"],
    "llm": ["--design", "triplet", "--agent", "llm", "--chunk", "16", "--budget", "400", "--order-swap"],
    "llm-bisection": ["--design", "eigen", "--agent", "llm", "--bisection", "0.05", "--chunk", "2",
                      "--learner", "gradient"],
}


# 25–65 s each: `-m slow` runs them. The default run keeps people through --watch (and the oracle's
# kill -9 is tests/test_cli.py::test_kill_and_resume_matches_an_uninterrupted_run).
SLOW_KINDS = {"oracle", "oracle-noisy", "pool", "active", "llm", "llm-bisection"}


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_KINDS else k for k in KINDS])
def test_kill_9_and_resume_loses_and_doubles_nothing(kind, tmp_path, request):
    args = SMALL + KINDS[kind] + ["--db", str(tmp_path / "r.db")]
    if kind.startswith("llm"):
        args += ["--base-url", request.getfixturevalue("oracle_server"), "--concurrency", "2"]
    db = tmp_path / "r.db"
    proc = subprocess.Popen(fbloop("run", *args), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        killed = kill_when(proc, lambda: (stored(db) or 0) >= 4)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert killed, f"the {kind} run ended before it could be killed"
    assert scalar(db, "SELECT status FROM runs WHERE id = 'R'") == "running"
    result = finish(fbloop("run", *args), tmp_path)
    check_ledger(db, result, learned=kind != "llm-bisection" or "learned" in result)


# ---------------------------------------------------------------- people, through --watch

PEOPLE = SMALL + ["--design", "triplet", "--agent", "human", "--budget", "60", "--check-rate", "0.1",
                  "--learner", "gradient"]


def watcher(tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen(fbloop("run", *PEOPLE, "--db", str(tmp_path / "p.db"), "--watch", "--poll", "0.1"),
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_people_through_watch_survive_a_kill_9(tmp_path):
    db = tmp_path / "p.db"
    first = watcher(tmp_path)
    ann = Annotators(db)
    try:
        deadline = time.monotonic() + 120
        while not (scalar(db, "SELECT COUNT(*) FROM human_queue WHERE run_id = 'R'") or 0):  # the queue is written
            assert time.monotonic() < deadline and first.poll() is None, first.stderr.read()
            time.sleep(0.05)
        ann.start()
        assert kill_when(first, lambda: ann.n >= 15), "the watcher ended before it could be killed"
        while ann.n < 30:  # people go on answering while nobody watches
            assert ann.error is None and ann.is_alive()
            time.sleep(0.02)
        second = watcher(tmp_path)
        out, err = second.communicate(timeout=300)  # it exits on its own once every triplet is answered
        assert second.returncode == 0, err[-2000:]
    finally:
        ann.stop.set()
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert ann.error is None
    result = json.loads(out.strip().splitlines()[-1])
    assert result["waiting"] is False and result["checks"] > 0
    ok = scalar(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'R' AND status = 'ok' AND seq >= 0")
    assert ok == 60 and result["answers"] == ok and result["learned"] == ok
    assert scalar(db, "SELECT status FROM runs WHERE id = 'R'") == "done"
    assert 0.5 < result["pcc"] <= 1, result  # 60 exact triplets at p = 8, each learnt once: a rough Φ̂


@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_watch_learns_as_answers_arrive_and_stops_cleanly_on_a_signal(tmp_path, sig):
    db = tmp_path / "p.db"
    proc = watcher(tmp_path)
    ann = Annotators(db, pause=0.05)
    try:
        deadline = time.monotonic() + 120
        while not (scalar(db, "SELECT COUNT(*) FROM human_queue WHERE run_id = 'R'") or 0):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        ann.start()
        deadline = time.monotonic() + 120
        while (scalar(db, "SELECT COUNT(*) FROM snapshots WHERE run_id = 'R'") or 0) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, "no snapshot while answers arrived"
            time.sleep(0.05)
        ann.stop.set()
        ann.join(timeout=30)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        ann.stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert signal.Signals(sig).name in err
    result = json.loads(out.strip().splitlines()[-1])
    ok = scalar(db, "SELECT COUNT(*) FROM answers WHERE run_id = 'R' AND status = 'ok' AND seq >= 0")
    assert 0 < ok < 60 and result["answers"] == ok and result["learned"] == ok
    assert scalar(db, "SELECT status FROM runs WHERE id = 'R'") == "waiting"
    assert np.isfinite(result["pcc"])
