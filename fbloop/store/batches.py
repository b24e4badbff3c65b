"""LLM batch jobs: what each batch asked, where it stands at the provider, and its answers.

Mixed into :class:`~fbloop.store.core.Store`. A batch is one input file of requests (a provider's
Batch API, or a file an offline engine such as ``vllm run-batch`` reads). Each row of
``llm_batches`` holds the provider's ids (input file, batch, output and error files), stored the
moment they are known, and what the batch asks as one BLOB: ``(n, 4)`` int64 rows
``(seq, order, attempt, request)`` — the position, the candidate order (0 as stored, 1 swapped),
the attempt the answer is stored under and the request (line) of the file that asks it. A run's
asked keys are therefore a few bytes each, whatever the size of the prompts.

Keys pack ``(seq, attempt, order)`` into one int64 (:func:`ask_key`) so that a million of them
match against a block of result lines in one vectorised lookup.
"""

from __future__ import annotations

import json
import time

import numpy as np

from ..records import Answers, Queries
from .transactions import write

TERMINAL = ("completed", "failed", "expired", "cancelled")  # provider statuses after which nothing changes
_BATCH_FIELDS = ("state", "provider_status", "input_file_id", "batch_id", "output_file_id", "error_file_id",
                 "counts", "errors", "submitted_at", "finished_at", "ingested_at", "bytes")


def ask_key(seq: np.ndarray, attempt: np.ndarray, order: np.ndarray) -> np.ndarray:
    """One int64 per asked answer: ``seq · 2^21 + attempt · 2 + order`` (attempts below 2^20)."""
    return (np.asarray(seq, np.int64) << 21) | (np.asarray(attempt, np.int64) << 1) | np.asarray(order, np.int64)


class BatchStore:
    """The ``llm_batches`` table (migration 8)."""

    db: object  # set by Store

    def add_batches(self, run_id: str, agent: str, queries: Queries, batches: list[dict]) -> list[int]:
        """Store ``queries`` (those not stored yet) and one ``llm_batches`` row per entry of ``batches``
        (``{"asks": (n, 4) int64, "requests", "bytes", "mode", "state"}``) in one transaction; returns
        the rows' ids. Nothing is uploaded yet: a process killed after this commit finds the rows
        (state ``preparing``) and submits them; one killed before it asks again."""
        now = time.time()
        with write(self.db):
            self._insert_queries(run_id, queries)
            ids = []
            for b in batches:
                asks = np.ascontiguousarray(b["asks"], dtype="<i8")
                cur = self.db.execute(
                    "INSERT INTO llm_batches (run_id, agent, state, mode, asks, n_asks, requests, bytes, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [run_id, agent, b["state"], b["mode"], asks.tobytes(), len(asks), b["requests"], b.get("bytes"),
                     now])
                ids.append(int(cur.lastrowid))
            return ids

    def update_batch(self, key: int, **fields) -> None:
        """Set fields of batch row ``key`` (its provider ids, status, counts), committed at once."""
        bad = set(fields) - set(_BATCH_FIELDS)
        if bad:
            raise ValueError(f"Unknown llm_batches fields {sorted(bad)}; expect some of {list(_BATCH_FIELDS)}.")
        for name in ("counts", "errors"):
            if name in fields and fields[name] is not None and not isinstance(fields[name], str):
                fields[name] = json.dumps(fields[name])
        sets = ", ".join(f"{k} = ?" for k in fields)
        with write(self.db):
            self.db.execute(f"UPDATE llm_batches SET {sets} WHERE id = ?", [*fields.values(), key])

    def batches(self, run_id: str, states: tuple[str, ...] | None = None) -> list[dict]:
        """A run's batch rows (without their asks), oldest first; only those in ``states`` when given."""
        sql = ("SELECT id, run_id, agent, state, mode, provider_status, input_file_id, batch_id, output_file_id, "
               "error_file_id, n_asks, requests, bytes, counts, errors, created_at, submitted_at, finished_at, "
               "ingested_at FROM llm_batches WHERE run_id = ?")
        args: list = [run_id]
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += list(states)
        rows = list(self.db.query(sql + " ORDER BY id", args))
        for r in rows:
            r["counts"] = json.loads(r["counts"]) if r["counts"] else None
            r["errors"] = json.loads(r["errors"]) if r["errors"] else None
        return rows

    def batch_asks(self, key: int) -> np.ndarray:
        """What batch row ``key`` asks: ``(n, 4)`` int64 rows ``(seq, order, attempt, request)``."""
        row = self.db.execute("SELECT asks FROM llm_batches WHERE id = ?", [key]).fetchone()
        return np.frombuffer(row[0], "<i8").reshape(-1, 4).copy()

    def asked_keys(self, run_id: str) -> np.ndarray:
        """Every answer a run's batches asked for, as sorted :func:`ask_key` values."""
        parts = [np.frombuffer(r[0], "<i8").reshape(-1, 4) for r in
                 self.db.execute("SELECT asks FROM llm_batches WHERE run_id = ?", [run_id])]
        if not parts:
            return np.zeros(0, np.int64)
        a = np.concatenate(parts)
        return np.unique(ask_key(a[:, 0], a[:, 2], a[:, 1]))

    def n_asked(self, run_id: str) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(n_asks), 0) FROM llm_batches WHERE run_id = ?", [run_id]).fetchone()
        return int(row[0])

    def answered_keys(self, run_id: str, agents: list[str], lo: int | None = None, hi: int | None = None
                      ) -> np.ndarray:
        """The :func:`ask_key` of every stored answer by ``agents`` (index ``i`` is order ``i``), sorted;
        only positions in ``[lo, hi]`` when given."""
        marks = ",".join("?" * len(agents))
        span = "" if lo is None else " AND seq BETWEEN ? AND ?"
        rows = np.array(self.db.execute(
            f"SELECT seq, attempt, CASE agent {' '.join(f'WHEN ? THEN {i}' for i in range(len(agents)))} END "
            f"FROM answers WHERE run_id = ? AND agent IN ({marks}){span}",
            [*agents, run_id, *agents] + ([] if lo is None else [lo, hi])).fetchall(),
            dtype=np.int64).reshape(-1, 3)
        return np.unique(ask_key(rows[:, 0], rows[:, 1], rows[:, 2]))

    def count_agent_answers(self, run_id: str, agents: list[str]) -> int:
        """Stored answers (any status) by ``agents`` in a run."""
        marks = ",".join("?" * len(agents))
        return int(self.db.execute(f"SELECT COUNT(*) FROM answers WHERE run_id = ? AND agent IN ({marks})",
                                   [run_id, *agents]).fetchone()[0])

    def store_answer_sets(self, run_id: str, sets: list[tuple[Answers, int]]) -> int:
        """Answers to stored queries, each set under its attempt, in one transaction; repeats are
        ignored (the answers' unique key). Returns how many were new."""
        with write(self.db):
            return sum(self._insert_answers(run_id, a, attempt) for a, attempt in sets if len(a))

    def stored_positions(self, run_id: str, start: int, stop: int) -> np.ndarray:
        """Positions in ``[start, stop)`` whose query is stored."""
        n = self.db.execute("SELECT COUNT(*) FROM queries WHERE run_id = ? AND seq >= ? AND seq < ?",
                            [run_id, start, stop]).fetchone()[0]
        if n == stop - start:  # all of them: no need to read them
            return np.arange(start, stop, dtype=np.int64)
        rows = self.db.execute("SELECT seq FROM queries WHERE run_id = ? AND seq >= ? AND seq < ? ORDER BY seq",
                               [run_id, start, stop]).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)
