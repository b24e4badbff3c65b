"""The run database: :class:`Store`, every run, query, answer and learner snapshot."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sqlite_utils

from ..errors import StoreError
from ..records import CANDIDATE_KINDS, Answers, MIXED, Queries
from ..sparse import SparseBatch
from .batches import BatchStore
from .codec import _decode, _decode_cands, _encode, _encode_cands, encode_metas
from .crowd import CrowdStore
from .migrations import migrate
from .transactions import write


def _not_a_check(alias: str) -> str:
    """SQL condition: answer row ``alias`` is not an attention check (checks test people, not ``Φ``)."""
    return f"NOT EXISTS (SELECT 1 FROM checks k WHERE k.run_id = {alias}.run_id AND k.seq = {alias}.seq)"


# ---------------------------------------------------------------- the store


class Store(CrowdStore, BatchStore):
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

    def run_kinds(self) -> dict[str, str]:
        """Every run's query kind (pair, triplet, closest, rank, odd), oldest first: ``{run_id: kind}``."""
        return {r[0]: r[1] for r in self.db.execute("SELECT id, kind FROM runs ORDER BY created_at")}

    def run_configs(self) -> dict[str, dict]:
        """Every run's config, oldest first, without counting anything: ``{run_id: config}``."""
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT id, config FROM runs ORDER BY created_at")}

    def runs(self, run_id: str | None = None) -> list[dict]:
        """Every run (or the one ``run_id``), oldest first: id, created_at, status, kind, p, budget, the
        target's name, the agent, ok answers (attention checks left out), the latest PCC and the process
        that last ran it. Counts each run's answers: for a list of names use :meth:`run_configs`."""
        sql = ("SELECT r.id, r.created_at, r.status, r.kind, r.p, r.budget, r.owner_host, r.owner_pid, "
               "json_extract(r.target, '$.name') AS target, json_extract(r.config, '$.agent') AS agent, "
               f"(SELECT COUNT(*) FROM answers a WHERE a.run_id = r.id AND a.status = 'ok' AND {_not_a_check('a')}) "
               "AS answers, "
               "(SELECT pcc FROM snapshots s WHERE s.run_id = r.id ORDER BY s.id DESC LIMIT 1) AS pcc "
               "FROM runs r" + (" WHERE r.id = ?" if run_id is not None else "") + " ORDER BY r.created_at")
        return list(self.db.query(sql, [run_id] if run_id is not None else []))

    def set_status(self, run_id: str, status: str) -> None:
        """Set a run's status; ``running`` also records this process (host, pid) as the run's owner."""
        if status == "running":
            self.db.execute("UPDATE runs SET status = ?, owner_host = ?, owner_pid = ? WHERE id = ?",
                            [status, socket.gethostname(), os.getpid(), run_id])
        else:
            self.db.execute("UPDATE runs SET status = ? WHERE id = ?", [status, run_id])

    # ------------------------------------------------------------ queries and answers

    def _query_rows(self, run_id: str, queries: Queries) -> list[tuple]:
        cols = [_encode(queries.a)]
        for extra in (queries.b, queries.c):
            cols.append(_encode(extra) if extra is not None else [(None, None)] * len(queries))
        cols.append(_encode_cands(queries.cands) if queries.cands is not None else [(None, None)] * len(queries))
        return [
            (run_id, s, queries.kind, *a, *b, *c, *k)
            for s, a, b, c, k in zip(np.asarray(queries.seq).tolist(), *cols)
        ]

    def _answer_rows(self, run_id: str, answers: Answers, attempt: int) -> list[tuple]:
        now = time.time()
        raw = answers.raw or [None] * len(answers)
        meta = encode_metas(answers.meta) if answers.meta else [None] * len(answers)  # json.dumps' texts
        return [
            (run_id, s, answers.agent, attempt, v if st == "ok" else None, st, r, m, now)
            for s, v, st, r, m in zip(np.asarray(answers.seq).tolist(), np.asarray(answers.value, np.float64).tolist(),
                                      [str(x) for x in answers.status], raw, meta)
        ]

    def add_queries(self, run_id: str, queries: Queries) -> int:
        """Store queries not yet stored; returns how many were new."""
        with write(self.db):
            return self._insert_queries(run_id, queries)

    def _insert_queries(self, run_id: str, queries: Queries) -> int:
        before = self.db.conn.total_changes
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO queries (run_id, seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val, "
            "cands_idx, cands_val) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._query_rows(run_id, queries))
        return self.db.conn.total_changes - before

    def _insert_answers(self, run_id: str, answers: Answers, attempt: int) -> int:
        before = self.db.conn.total_changes
        self.db.conn.executemany(
            "INSERT OR IGNORE INTO answers (run_id, seq, agent, attempt, value, status, raw, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self._answer_rows(run_id, answers, attempt))
        return self.db.conn.total_changes - before

    def add_answers(self, run_id: str, answers: Answers, attempt: int = 0) -> int:
        """Store answers to stored queries; returns how many were new (repeats are ignored)."""
        with write(self.db):
            missing = self._missing_queries(run_id, answers.seq)
            if missing:
                raise StoreError(f"Run {run_id!r} has no queries at positions {missing[:5]}; "
                                 "store the queries before their answers.")
            return self._insert_answers(run_id, answers, attempt)

    def record(self, run_id: str, queries: Queries, answers: Answers | list[Answers], attempt: int = 0) -> int:
        """Queries and their answers (one set, or several from different agents) in one transaction;
        returns new answers."""
        sets = [answers] if isinstance(answers, Answers) else list(answers)
        with write(self.db):
            self._insert_queries(run_id, queries)
            return sum(self._insert_answers(run_id, a, attempt) for a in sets)

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

    def invalid_only(self, run_id: str, start: int, stop: int, agents: list[str]) -> dict[int, int]:
        """Positions in ``[start, stop)`` whose every answer by ``agents`` is ``invalid``, each with the
        attempt a re-ask is stored under (one past the last): ``{seq: attempt}``."""
        marks = ",".join("?" * len(agents))
        rows = self.db.execute(
            f"SELECT seq, MAX(attempt) + 1 FROM answers WHERE run_id = ? AND seq >= ? AND seq < ? "
            f"AND agent IN ({marks}) GROUP BY seq HAVING SUM(status != 'invalid') = 0",
            [run_id, start, stop, *agents])
        return {int(r[0]): int(r[1]) for r in rows}

    def invalid_reasons(self, run_id: str, top: int = 3, width: int = 80) -> dict:
        """How a run's answers went: ``{"answers", "invalid", "reasons": [(reason, count), ...]}``, the
        ``top`` commonest reasons (``meta.error``, its first ``width`` characters) first."""
        n, bad = self.db.execute("SELECT COUNT(*), COALESCE(SUM(status = 'invalid'), 0) FROM answers "
                                 "WHERE run_id = ?", [run_id]).fetchone()
        rows = self.db.execute(
            "SELECT substr(COALESCE(json_extract(meta, '$.error'), '(no reason stored)'), 1, ?) AS why, "
            "COUNT(*) AS k FROM answers WHERE run_id = ? AND status = 'invalid' GROUP BY why "
            "ORDER BY k DESC, why LIMIT ?", [width, run_id, top]).fetchall()
        return {"answers": int(n), "invalid": int(bad), "reasons": [(r[0], int(r[1])) for r in rows]}

    def record_attempts(self, run_id: str, queries: Queries, answers: list[Answers],
                        attempts: dict[int, int]) -> int:
        """Like :meth:`record`, each answer stored under ``attempts[seq]`` (0 where absent): a query asked
        again keeps its earlier answers beside the new one. One transaction; returns new answers."""
        with write(self.db):
            self._insert_queries(run_id, queries)
            n = 0
            for a in answers:
                att = np.array([attempts.get(int(s), 0) for s in a.seq], dtype=np.int64)
                for k in np.unique(att):
                    n += self._insert_answers(run_id, a.select(att == k), int(k))
            return n

    def count_answers(self, run_id: str, status: str | None = "ok") -> int:
        """Answers of a run (of ``status``, any when ``None``); attention checks are not counted."""
        sql = f"SELECT COUNT(*) FROM answers WHERE run_id = ? AND {_not_a_check('answers')}"
        args: list = [run_id]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        return int(self.db.execute(sql, args).fetchone()[0])

    def query_shape(self, run_id: str, seq: int | None = None) -> tuple[str, int] | None:
        """``(kind, k)`` of the stored query at ``seq`` (of the run's first one when ``None``): ``k`` the
        options its answer chooses among, as :attr:`Queries.k`; ``None`` when there is none. One indexed
        lookup, nothing decoded but the candidates' count."""
        where, args = ("AND seq = ?", [run_id, int(seq)]) if seq is not None else ("ORDER BY seq", [run_id])
        row = self.db.execute(f"SELECT kind, substr(cands_idx, 1, 4) FROM queries WHERE run_id = ? {where} LIMIT 1",
                              args).fetchone()
        if row is None:
            return None
        kind, head = row
        return kind, (int.from_bytes(head, "little") if head is not None else 3 if kind == "odd" else 2)

    def load_queries(self, run_id: str, seq: np.ndarray | None = None) -> Queries:
        """Stored queries, by position (all of them when ``seq`` is ``None``), in seq order."""
        run = self.require_run(run_id)
        sql = ("SELECT seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val, cands_idx, cands_val FROM queries "
               "WHERE run_id = ?")
        args: list = [run_id]
        if seq is not None:
            seq = np.asarray(seq, dtype=np.int64)
            sql += f" AND seq IN ({','.join('?' * len(seq))})"
            args += [int(s) for s in seq]
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return self._rows_to_queries(rows, run["p"], run["kind"])

    @staticmethod
    def _rows_to_queries(rows: list, p: int, kind: str) -> Queries:
        """Rows ``(seq, kind, a_idx, a_val, b_idx, b_val, c_idx, c_val, cands_idx, cands_val, …)`` as queries
        of the run's ``kind``."""
        seqs = np.array([r[0] for r in rows], dtype=np.int64)
        a = _decode([(r[2], r[3]) for r in rows], p)
        if kind in CANDIDATE_KINDS:
            return Queries(kind, seqs, a, cands=_decode_cands([(r[8], r[9]) for r in rows], p))  # type: ignore[arg-type]
        if kind != "pair":  # triplet, odd
            b = _decode([(r[4], r[5]) for r in rows], p)
            c = _decode([(r[6], r[7]) for r in rows], p)
            return Queries(kind, seqs, a, b, c)  # type: ignore[arg-type]
        return Queries("pair", seqs, a)

    def iter_answered(self, run_id: str, chunk: int = 50_000, agent: str | None = None,
                      since: float | None = None, prefix: str | None = None, after_id: int = -1,
                      upto_id: int | None = None) -> Iterator[tuple[Queries, Answers]]:
        """Stored ok answers with their queries, in storage order, ``chunk`` rows at a time.

        Attention checks are left out: they test the annotator, not ``Φ``; so are the answers of
        people blocked on the run (:meth:`set_blocked`: kept in the store, not learned from). ``since``
        keeps only answers stored after that time (seconds since the epoch); ``prefix`` only those of
        agents whose name starts with it (``"human:"``: every annotator). A chunk from
        several agents comes as agent ``MIXED`` with each row's agent in ``meta[i]["agent"]``. ``after_id``
        and ``upto_id`` bound the answers' row ids (:meth:`last_answer_id`): a reader that has seen every
        answer up to one id asks for those after it.
        """
        run = self.require_run(run_id)
        sql = ("SELECT q.seq, q.kind, q.a_idx, q.a_val, q.b_idx, q.b_val, q.c_idx, q.c_val, q.cands_idx, "
               "q.cands_val, a.agent, a.value, a.id FROM answers a JOIN queries q ON q.run_id = a.run_id AND q.seq = a.seq "
               f"WHERE a.run_id = ? AND a.status = 'ok' AND a.id > ? AND {_not_a_check('a')} "
               "AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.run_id = a.run_id AND b.agent = a.agent)"
               + (" AND a.agent = ?" if agent is not None else "")
               + (" AND substr(a.agent, 1, ?) = ?" if prefix is not None else "")
               + (" AND a.created_at > ?" if since is not None else "")
               + (" AND a.id <= ?" if upto_id is not None else "") + " ORDER BY a.id LIMIT ?")
        last = after_id
        while True:
            args = ([run_id, last] + ([agent] if agent is not None else [])
                    + ([len(prefix), prefix] if prefix is not None else [])
                    + ([since] if since is not None else []) + ([upto_id] if upto_id is not None else [])
                    + [chunk])
            rows = self.db.execute(sql, args).fetchall()
            if not rows:
                return
            last = rows[-1][12]
            queries = self._rows_to_queries(rows, run["p"], run["kind"])
            names = [r[10] for r in rows]
            one = len(set(names)) == 1  # else MIXED, each row's agent in its meta
            answers = Answers(names[0] if one else MIXED, queries.seq,
                              np.array([r[11] for r in rows], dtype=np.float64), np.full(len(rows), "ok"),
                              meta=None if one else [{"agent": n} for n in names])
            yield queries, answers

    def last_answer_id(self, run_id: str) -> int:
        """The row id of a run's latest stored answer (−1 before the first): a cursor for
        :meth:`iter_answered`'s ``after_id``."""
        row = self.db.execute("SELECT MAX(id) FROM answers WHERE run_id = ?", [run_id]).fetchone()
        return -1 if row[0] is None else int(row[0])

    def next_position(self, run_id: str) -> int:
        """One past the last stored query position of a run (attention checks, at negative ones, aside)."""
        row = self.db.execute("SELECT MAX(seq) FROM queries WHERE run_id = ? AND seq >= 0", [run_id]).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def answer_values(self, run_id: str) -> list[tuple[int, str, str, float | None]]:
        """Every stored answer of a run as ``(seq, agent, status, value)``, in storage order; checks left out."""
        return [tuple(r) for r in self.db.execute(
            f"SELECT seq, agent, status, value FROM answers WHERE run_id = ? AND {_not_a_check('answers')} "
            "ORDER BY id", [run_id])]

    def answer_rows(self, run_id: str) -> Iterator[dict]:
        """Every stored answer (any status) with its query, as plain dicts, in seq order."""
        run = self.require_run(run_id)
        sql = ("SELECT a.seq, a.agent, a.attempt, a.status, a.value, a.raw, a.meta, a.created_at, "
               "q.a_idx, q.a_val, q.b_idx, q.b_val, q.c_idx, q.c_val, q.cands_idx, q.cands_val FROM answers a "
               "JOIN queries q ON q.run_id = a.run_id AND q.seq = a.seq WHERE a.run_id = ? ORDER BY a.seq, a.id")
        for row in self.db.execute(sql, [run_id]):
            out = {"run_id": run_id, "seq": row[0], "agent": row[1], "attempt": row[2], "status": row[3],
                   "value": row[4], "raw": row[5], "meta": row[6], "created_at": row[7]}
            for name, i in (("a", 8), ("b", 10), ("c", 12)):
                if row[i] is None:
                    continue
                out[f"{name}_indices"] = np.frombuffer(row[i], "<i4").tolist()
                out[f"{name}_values"] = np.frombuffer(row[i + 1], "<f8").tolist()
            if row[14] is not None:  # closest / rank: the k candidates
                cands = _decode_cands([(row[14], row[15])], run["p"])
                out["cands_indices"] = [[int(i) for i, v in zip(c.indices[0], c.values[0]) if v != 0] for c in cands]
                out["cands_values"] = [[float(v) for v in c.values[0] if v != 0] for c in cands]
            out["kind"] = run["kind"]
            yield out

    def answer_counts(self, run_id: str) -> list[dict]:
        """Answers grouped by ``agent``, ``status``, ``sign`` of the value (+1/−1/0, ``None`` unless ok)
        and ``is_check``, with their count ``n``."""
        return list(self.db.query(
            "SELECT a.agent, a.status, CASE WHEN a.value > 0 THEN 1 WHEN a.value < 0 THEN -1 "
            "WHEN a.value = 0 THEN 0 END AS sign, k.seq IS NOT NULL AS is_check, COUNT(*) AS n FROM answers a "
            "LEFT JOIN checks k ON k.run_id = a.run_id AND k.seq = a.seq WHERE a.run_id = ? "
            "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", [run_id]))

    def factor_saved_at(self, run_id: str) -> float | None:
        """When the run's current factor was stored (seconds since the epoch), or ``None``."""
        row = self.db.execute("SELECT created_at FROM factors WHERE run_id = ?", [run_id]).fetchone()
        return None if row is None else float(row[0])

    def sum_meta(self, run_id: str, key: str) -> int:
        """Sum of a numeric ``meta`` field over a run's answers (e.g. triplets behind bisection pairs)."""
        row = self.db.execute(
            "SELECT COALESCE(SUM(json_extract(meta, ?)), 0) FROM answers WHERE run_id = ?",
            [f"$.{key}", run_id]).fetchone()
        return int(row[0])

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
                        [run_id, u.shape[0], u.shape[1], memoryview(u).cast("B"), time.time()])  # no bytes copy

    def load_factor(self, run_id: str) -> np.ndarray | None:
        row = self.db.execute("SELECT p, r, data FROM factors WHERE run_id = ?", [run_id]).fetchone()
        if row is None:
            return None
        return np.frombuffer(row[2], "<f8").reshape(row[0], row[1]).copy()

    def agreement(self, run_id: str, agent_a: str, agent_b: str) -> dict:
        """How often two agents gave the same ok answer to the same position: ``{"both", "agree"}``."""
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(x.value = y.value), 0) FROM answers x JOIN answers y "
            "ON y.run_id = x.run_id AND y.seq = x.seq AND y.attempt = x.attempt "
            "WHERE x.run_id = ? AND x.agent = ? AND y.agent = ? AND x.status = 'ok' AND y.status = 'ok'",
            [run_id, agent_a, agent_b]).fetchone()
        return {"both": int(row[0]), "agree": int(row[1])}

    def request_usage(self, run_id: str, agents: list[str], before_seq: int | None = None) -> dict:
        """Requests, tokens and answer statuses behind a run's answers by ``agents`` (those at query
        positions below ``before_seq`` when given: what the run had spent by then).

        Each answer's meta carries its request's token counts; only the first answer of a
        request (``batch_index`` 0) counts them, and cached replies cost nothing.
        """
        marks = ",".join("?" * len(agents))
        upto, args = ("AND seq < ?", [before_seq]) if before_seq is not None else ("", [])
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(json_extract(meta, '$.prompt_tokens')), 0), "
            "COALESCE(SUM(json_extract(meta, '$.completion_tokens')), 0) FROM answers "
            f"WHERE run_id = ? AND agent IN ({marks}) AND json_extract(meta, '$.batch_index') = 0 "
            f"AND NOT COALESCE(json_extract(meta, '$.cached'), 0) {upto}", [run_id, *agents, *args]).fetchone()
        counts = dict(self.db.execute(
            f"SELECT status, COUNT(*) FROM answers WHERE run_id = ? AND agent IN ({marks}) {upto} GROUP BY status",
            [run_id, *agents, *args]).fetchall())
        return {"requests": int(row[0]), "prompt_tokens": int(row[1]), "completion_tokens": int(row[2]),
                "answers": {k: int(v) for k, v in counts.items()}}

    # ------------------------------------------------------------ LLM request cache

    def cache_get(self, key: str) -> dict | None:
        """A cached LLM reply ``{"reply", "meta", "model", "template_hash"}``, or ``None``."""
        row = self.db.execute("SELECT reply, meta, model, template_hash FROM llm_cache WHERE key = ?",
                              [key]).fetchone()
        if row is None:
            return None
        return {"reply": row[0], "meta": json.loads(row[1]) if row[1] else {}, "model": row[2],
                "template_hash": row[3]}

    def cache_put(self, key: str, *, model: str, template_hash: str, prompt: str, reply: str,
                  meta: dict | None = None) -> None:
        """Keep one understood LLM reply (the first one stored for a key wins)."""
        with write(self.db):
            self.db.execute(
                "INSERT OR IGNORE INTO llm_cache (key, model, template_hash, prompt, reply, meta, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [key, model, template_hash, prompt, reply, json.dumps(meta or {}), time.time()])

    def cache_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM llm_cache").fetchone()[0])

    # ------------------------------------------------------------ export

    def export(self, run_id: str, path: str | Path, fmt: str | None = None) -> int:
        """Write every answer of a run with its query to CSV, JSONL, Parquet or cblearn ``.npz``
        (:mod:`fbloop.store.export`, which documents the columns); returns rows written."""
        from .export import export

        return export(self, run_id, path, fmt)
