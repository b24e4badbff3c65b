"""Shared helpers: store/CLI test data, and a local oracle server for the LLM and server tests."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fbloop.records import Answers, Queries
from fbloop.sparse import SparseBatch


def pytest_configure(config) -> None:
    """Every test (and every process a test starts) caches in a fresh folder, never the user's ~/.cache."""
    import tempfile

    os.environ["FBLOOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="fbloop-test-cache-")


def pair_queries(start: int, stop: int, p: int = 5) -> Queries:
    """Deterministic 2-sparse pair queries ``start:stop``."""
    seq = np.arange(start, stop)
    idx = np.stack([seq % p, (seq + 1) % p], 1)
    val = np.stack([np.ones(len(seq)), 0.5 + (seq % 3)], 1).astype(np.float64)
    return Queries("pair", seq, SparseBatch(idx, val, p))


def ok_answers(seq, values=None, agent: str = "oracle") -> Answers:
    seq = np.asarray(seq, dtype=np.int64)
    values = np.arange(len(seq), dtype=np.float64) + 0.25 if values is None else np.asarray(values, float)
    return Answers(agent, seq, values, np.full(len(seq), "ok"))


def crash_on_record(monkeypatch, store, call: int):
    """Make ``store.record`` raise ``KeyboardInterrupt`` on its ``call``-th use (a run killed mid-chunk,
    before that chunk is stored); returns the real ``record`` to put back with ``monkeypatch.setattr``."""
    real, calls = store.record, []

    def record(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "record", record)
    return real


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module; the environment it sets for its own process (thread counts,
    an API key) is put back, so it does not leak into the other tests."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent.parent / "benchmarks"
                                                  / f"{name}.py")
    env = dict(os.environ)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(env)
    return module


def sql_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a query on a database file, through a separate read-only connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


ORACLE_SPEC = "synthetic:p=8,rank=3"


@pytest.fixture(scope="module")
def target():
    """The simulated target behind ``server``."""
    from fbloop import targets

    return targets.load_target(ORACLE_SPEC)


@pytest.fixture(scope="module")
def server(target):
    """A local OpenAI-compatible server answering from ``target``'s oracle."""
    from fbloop.agents.server import ServerConfig, serve

    with serve(ServerConfig(target=ORACLE_SPEC), target=target) as srv:
        yield srv


def one_hot(p: int, rows: list[list[tuple[int, float]]]):
    """Activations from (index, value) lists, padded to a common width."""
    import numpy as np

    from fbloop.sparse import SparseBatch

    s = max(len(r) for r in rows)
    idx = np.zeros((len(rows), s), np.int64)
    val = np.zeros((len(rows), s))
    for i, r in enumerate(rows):
        for j, (k, v) in enumerate(r):
            idx[i, j], val[i, j] = k, v
    return SparseBatch(idx, val, p)
