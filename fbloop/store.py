"""Every run, query, answer and learner snapshot, in SQLite (WAL mode).

All of fbloop's SQL lives in this module. The schema grows by numbered
migrations applied inside a transaction. Writes that belong together (a chunk
of queries with its answers) commit atomically, and answers are keyed by
``(run_id, seq, agent, attempt)`` with ``INSERT OR IGNORE``: a killed process
loses at most the chunk it was writing, and a resumed one never stores an
answer twice.

Activations are stored compactly: the nonzero slots of each activation as
little-endian ``int32`` indices and ``float64`` values in two BLOB columns.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import sqlite_utils

from .agents.base import Answers
from .designs import Queries
from .errors import StoreError
from .sparse import SparseBatch

# ---------------------------------------------------------------- migrations


def _m1_core(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',
            kind TEXT NOT NULL,              -- 'pair' or 'triplet'
            p INTEGER NOT NULL,
            budget INTEGER NOT NULL,
            config TEXT NOT NULL,            -- the run's full config, JSON
            target TEXT NOT NULL,            -- target summary, JSON
            anchor_idx BLOB, anchor_val BLOB
        );
        CREATE TABLE queries (
            run_id TEXT NOT NULL REFERENCES runs(id),
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            a_idx BLOB NOT NULL, a_val BLOB NOT NULL,
            b_idx BLOB, b_val BLOB,
            c_idx BLOB, c_val BLOB,
            PRIMARY KEY (run_id, seq)
        );
        CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            agent TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            value REAL,                      -- scale c for pairs, +1/-1/0 for triplets
            status TEXT NOT NULL,            -- ok / invalid / skipped
            raw TEXT,                        -- e.g. an LLM's reply, verbatim
            meta TEXT,                       -- JSON extras: latency, annotator, template
            created_at REAL NOT NULL,
            UNIQUE (run_id, seq, agent, attempt),
            FOREIGN KEY (run_id, seq) REFERENCES queries(run_id, seq)
        );
        CREATE INDEX answers_run_seq ON answers(run_id, seq);
        CREATE TABLE snapshots (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            answers INTEGER NOT NULL,
            pcc REAL,
            elapsed_s REAL,
            extra TEXT,                      -- JSON: loss, mse, learner name
            created_at REAL NOT NULL
        );
        CREATE TABLE factors (
            run_id TEXT PRIMARY KEY REFERENCES runs(id),
            p INTEGER NOT NULL, r INTEGER NOT NULL,
            data BLOB NOT NULL,              -- float64 (p, r), Φ̂ = U Uᵀ
            created_at REAL NOT NULL
        );
        """
    )


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "core tables", _m1_core),
]


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply pending migrations in order; returns the ids applied."""
    if "_migrations" not in db.table_names():
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (id INTEGER PRIMARY KEY, name TEXT, applied_at REAL)")
    done = {row[0] for row in db.execute("SELECT id FROM _migrations").fetchall()}
    known = {m[0] for m in MIGRATIONS}
    if done - known:
        raise StoreError(f"Database has migrations {sorted(done - known)} this fbloop does not know; "
                         "it was written by a newer version.")
    applied = []
    for mid, name, fn in MIGRATIONS:
        if mid in done:
            continue
        with db.atomic():
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", [mid, name, time.time()])
        applied.append(mid)
    return applied


# ---------------------------------------------------------------- encoding


def _encode(batch: SparseBatch) -> list[tuple[bytes, bytes]]:
    out = []
    for idx, val in zip(batch.indices, batch.values):
        nz = val != 0
        out.append((idx[nz].astype("<i4").tobytes(), val[nz].astype("<f8").tobytes()))
    return out


def _decode(rows: list[tuple[bytes, bytes]], p: int) -> SparseBatch:
    idx = [np.frombuffer(i, "<i4") for i, _ in rows]
    val = [np.frombuffer(v, "<f8") for _, v in rows]
    s = max(1, max((len(x) for x in idx), default=1))
    out_i = np.zeros((len(rows), s), np.int64)
    out_v = np.zeros((len(rows), s))
    for k, (i, v) in enumerate(zip(idx, val)):
        out_i[k, : len(i)] = i
        out_v[k, : len(v)] = v
    return SparseBatch(out_i, out_v, p)


# ---------------------------------------------------------------- the store


class Store:
    """A run database on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            raise StoreError(f"{self.path}: folder {self.path.parent} does not exist.")
        try:
            self.db = sqlite_utils.Database(self.path)
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
            self.db.execute("PRAGMA busy_timeout=10000")
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not an fbloop database ({exc}).") from exc

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ runs

    def create_run(self, run_id: str, *, kind: str, p: int, budget: int, config: dict,
                   target: dict, anchor: SparseBatch | None) -> None:
        anchor_idx, anchor_val = _encode(anchor)[0] if anchor is not None else (None, None)
        self.db.execute(
            "INSERT INTO runs (id, created_at, status, kind, p, budget, config, target, anchor_idx, anchor_val) "
            "VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
            [run_id, time.time(), kind, p, budget, json.dumps(config, sort_keys=True),
             json.dumps(target, sort_keys=True), anchor_idx, anchor_val],
        )

    def get_run(self, run_id: str) -> dict | None:
        rows = list(self.db.query("SELECT * FROM runs WHERE id = ?", [run_id]))
        if not rows:
            return None
        run = rows[0]
        run["config"] = json.loads(run["config"])
        run["target"] = json.loads(run["target"])
        if run["anchor_idx"] is not None:
            run["anchor"] = _decode([(run["anchor_idx"], run["anchor_val"])], run["p"])
        else:
            run["anchor"] = None
        del run["anchor_idx"], run["anchor_val"]
        return run

    def require_run(self, run_id: str) -> dict:
        run = self.get_run(run_id)
        if run is None:
            known = [r["id"] for r in self.runs()][-5:]
            raise StoreError(f"No run {run_id!r} in {self.path}; latest runs: {known}.")
        return run

    def runs(self) -> list[dict]:
        sql = ("SELECT r.id, r.created_at, r.status, r.kind, r.p, r.budget, "
               "(SELECT COUNT(*) FROM answers a WHERE a.run_id = r.id AND a.status = 'ok') AS answers, "
               "(SELECT pcc FROM snapshots s WHERE s.run_id = r.id ORDER BY s.id DESC LIMIT 1) AS pcc "
               "FROM runs r ORDER BY r.created_at")
        return list(self.db.query(sql))

    def set_status(self, run_id: str, status: str) -> None:
        self.db.execute("UPDATE runs SET status = ? WHERE id = ?", [status, run_id])

    # ------------------------------------------------------------ queries and answers

    def _query_rows(self, run_id: str, queries: Queries) -> list[tuple]:
        cols = [_encode(queries.a)]
        for extra in (queries.b, queries.c):
            cols.append(_encode(extra) if extra is not None else [(None, None)] * len(queries))
        return [
            (run_id, int(s), queries.kind, *a, *b, *c)
            for s, a, b, c in zip(queries.seq, *cols)
        ]

    def _answer_rows(self, run_id: str, answers: Answers, attempt: int) -> list[tuple]:
        now = time.time()
        raw = answers.raw or [None] * len(answers)
        meta = answers.meta or [None] * len(answers)
        return [
            (run_id, int(s), answers.agent, attempt, float(v) if st == "ok" else None, str(st), r,
             json.dumps(m) if m is not None else None, now)
            for s, v, st, r, m in zip(answers.seq, answers.value, answers.status, raw, meta)
        ]

    def add_queries(self, run_id: str, queries: Queries) -> int:
        """Store queries not yet stored; returns how many were new."""
        with self.db.atomic():
            return self._insert_queries(run_id, queries)

    def _insert_queries(self, run_id: str, queries: Queries) -> int:
        before = self.db.conn.total_changes
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO queries (run_id, seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._query_rows(run_id, queries))
        return self.db.conn.total_changes - before

    def _insert_answers(self, run_id: str, answers: Answers, attempt: int) -> int:
        before = self.db.conn.total_changes
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO answers (run_id, seq, agent, attempt, value, status, raw, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._answer_rows(run_id, answers, attempt))
        return self.db.conn.total_changes - before

    def add_answers(self, run_id: str, answers: Answers, attempt: int = 0) -> int:
        """Store answers to stored queries; returns how many were new (repeats are ignored)."""
        with self.db.atomic():
            missing = self._missing_queries(run_id, answers.seq)
            if missing:
                raise StoreError(f"Run {run_id!r} has no queries at positions {missing[:5]}; "
                                 "store the queries before their answers.")
            return self._insert_answers(run_id, answers, attempt)

    def record(self, run_id: str, queries: Queries, answers: Answers, attempt: int = 0) -> int:
        """Queries and their answers in one transaction; returns new answers."""
        with self.db.atomic():
            self._insert_queries(run_id, queries)
            return self._insert_answers(run_id, answers, attempt)

    def _missing_queries(self, run_id: str, seq: np.ndarray) -> list[int]:
        if len(seq) == 0:
            return []
        lo, hi = int(np.min(seq)), int(np.max(seq))
        have = {r[0] for r in self.db.execute(
            "SELECT seq FROM queries WHERE run_id = ? AND seq BETWEEN ? AND ?", [run_id, lo, hi])}
        return [int(s) for s in seq if int(s) not in have]

    def answered(self, run_id: str, start: int, stop: int, agent: str | None = None) -> np.ndarray:
        """Positions in ``[start, stop)`` that hold a final answer (ok, invalid or skipped)."""
        sql = "SELECT DISTINCT seq FROM answers WHERE run_id = ? AND seq >= ? AND seq < ?"
        args: list = [run_id, start, stop]
        if agent is not None:
            sql += " AND agent = ?"
            args.append(agent)
        return np.array(sorted(r[0] for r in self.db.execute(sql, args)), dtype=np.int64)

    def count_answers(self, run_id: str, status: str | None = "ok") -> int:
        sql = "SELECT COUNT(*) FROM answers WHERE run_id = ?"
        args: list = [run_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return int(self.db.execute(sql, args).fetchone()[0])

    def load_queries(self, run_id: str, seq: np.ndarray | None = None) -> Queries:
        """Stored queries, by position (all of them when ``seq`` is ``None``), in seq order."""
        run = self.require_run(run_id)
        sql = "SELECT seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val FROM queries WHERE run_id = ?"
        args: list = [run_id]
        if seq is not None:
            seq = np.asarray(seq, dtype=np.int64)
            sql += f" AND seq IN ({','.join('?' * len(seq))})"
            args += [int(s) for s in seq]
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return self._rows_to_queries(rows, run["p"], run["kind"])

    @staticmethod
    def _rows_to_queries(rows: list, p: int, kind: str) -> Queries:
        seqs = np.array([r[0] for r in rows], dtype=np.int64)
        a = _decode([(r[2], r[3]) for r in rows], p)
        if kind == "triplet":
            b = _decode([(r[4], r[5]) for r in rows], p)
            c = _decode([(r[6], r[7]) for r in rows], p)
            return Queries("triplet", seqs, a, b, c)
        return Queries("pair", seqs, a)

    def iter_answered(self, run_id: str, chunk: int = 50_000, agent: str | None = None
                      ) -> Iterator[tuple[Queries, Answers]]:
        """Stored ok answers with their queries, in storage order, ``chunk`` rows at a time."""
        run = self.require_run(run_id)
        sql = ("SELECT q.seq, q.kind, q.a_idx, q.a_val, q.b_idx, q.b_val, q.c_idx, q.c_val, "
               "a.agent, a.value, a.id FROM answers a JOIN queries q ON q.run_id = a.run_id AND q.seq = a.seq "
               "WHERE a.run_id = ? AND a.status = 'ok' AND a.id > ?"
               + (" AND a.agent = ?" if agent is not None else "") + " ORDER BY a.id LIMIT ?")
        last = -1
        while True:
            args = [run_id, last] + ([agent] if agent is not None else []) + [chunk]
            rows = self.db.execute(sql, args).fetchall()
            if not rows:
                return
            last = rows[-1][10]
            queries = self._rows_to_queries(rows, run["p"], run["kind"])
            agents = {r[8] for r in rows}
            answers = Answers(agents.pop() if len(agents) == 1 else "mixed", queries.seq,
                              np.array([r[9] for r in rows], dtype=np.float64), np.full(len(rows), "ok"))
            yield queries, answers

    def answer_rows(self, run_id: str) -> Iterator[dict]:
        """Every stored answer (any status) with its query, as plain dicts, in seq order."""
        run = self.require_run(run_id)
        sql = ("SELECT a.seq, a.agent, a.attempt, a.status, a.value, a.raw, a.meta, a.created_at, "
               "q.a_idx, q.a_val, q.b_idx, q.b_val, q.c_idx, q.c_val FROM answers a "
               "JOIN queries q ON q.run_id = a.run_id AND q.seq = a.seq WHERE a.run_id = ? ORDER BY a.seq, a.id")
        for row in self.db.execute(sql, [run_id]):
            out = {"run_id": run_id, "seq": row[0], "agent": row[1], "attempt": row[2], "status": row[3],
                   "value": row[4], "raw": row[5], "meta": row[6], "created_at": row[7]}
            for name, i in (("a", 8), ("b", 10), ("c", 12)):
                if row[i] is None:
                    continue
                out[f"{name}_indices"] = np.frombuffer(row[i], "<i4").tolist()
                out[f"{name}_values"] = np.frombuffer(row[i + 1], "<f8").tolist()
            out["kind"] = run["kind"]
            yield out

    # ------------------------------------------------------------ snapshots and factors

    def add_snapshot(self, run_id: str, answers: int, pcc: float | None, elapsed_s: float,
                     extra: dict | None = None) -> None:
        self.db.execute(
            "INSERT INTO snapshots (run_id, answers, pcc, elapsed_s, extra, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [run_id, answers, pcc, elapsed_s, json.dumps(extra or {}), time.time()])

    def snapshots(self, run_id: str) -> list[dict]:
        rows = list(self.db.query(
            "SELECT answers, pcc, elapsed_s, extra, created_at FROM snapshots WHERE run_id = ? ORDER BY id",
            [run_id]))
        for row in rows:
            row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
        return rows

    def save_factor(self, run_id: str, factor: np.ndarray) -> None:
        u = np.ascontiguousarray(factor, dtype="<f8")
        self.db.execute("INSERT OR REPLACE INTO factors (run_id, p, r, data, created_at) VALUES (?, ?, ?, ?, ?)",
                        [run_id, u.shape[0], u.shape[1], u.tobytes(), time.time()])

    def load_factor(self, run_id: str) -> np.ndarray | None:
        row = self.db.execute("SELECT p, r, data FROM factors WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[2], "<f8").reshape(row[0], row[1]).copy()

    # ------------------------------------------------------------ export

    def export(self, run_id: str, path: str | Path, fmt: str | None = None) -> int:
        """Write every answer of a run with its query to CSV or JSONL; returns rows written.

        The file is written to a temporary name and renamed, so a failed export
        never leaves a half-written file behind.
        """
        path = Path(path)
        fmt = fmt or path.suffix.lstrip(".").lower()
        if fmt not in ("csv", "jsonl"):
            raise StoreError(f"Unknown export format {fmt!r}; expect csv or jsonl.")
        tmp = path.with_name(path.name + ".partial")
        n = 0
        fields = ["run_id", "seq", "kind", "agent", "attempt", "status", "value", "raw", "meta", "created_at",
                  "a_indices", "a_values", "b_indices", "b_values", "c_indices", "c_values"]
        try:
            with tmp.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields) if fmt == "csv" else None
                if writer:
                    writer.writeheader()
                for row in self.answer_rows(run_id):
                    if writer:
                        writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})
                    else:
                        fh.write(json.dumps(row) + "\n")
                    n += 1
        except BaseException:  # e.g. an unknown run: answer_rows raises on its first row
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(path)
        return n
