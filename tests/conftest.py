"""Shared helpers for the store and CLI tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from fbloop.agents.base import Answers
from fbloop.designs import Queries
from fbloop.sparse import SparseBatch


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


def sql_rows(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of a query on a database file, through a separate read-only connection."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()
