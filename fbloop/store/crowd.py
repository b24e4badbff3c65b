"""The annotation queue for a crowd: assignment with leases, answers with running totals, access.

Mixed into :class:`~fbloop.store.core.Store`. Every call an annotator's click makes
(:meth:`CrowdStore.assign`, :meth:`CrowdStore.submit_answer`, :meth:`CrowdStore.annotator_stats`)
is a handful of indexed lookups in one short transaction: nothing here reads a run's
whole queue or all of its answers.

- **Assignment.** Each queued triplet keeps ``taken`` (ok answers from different people)
  and ``open`` (it still wants answers). A real triplet closes once ``overlap`` people
  answered it; an attention check never closes (everyone gets every check). A *lease*
  reserves the triplet on a person's screen for ``lease_s`` seconds, so two people are
  not shown the same triplet when one answer is wanted; a skip does not count as an
  answer, so the triplet stays open for someone else.
- **Access.** Invitation and owner secrets are stored as their sha256 hex digest only.
"""

from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from ..errors import StoreError
from ..records import Queries
from .transactions import write

ENQUEUE_CHUNK = 20_000  # queue rows per write transaction: other writers (people's answers) get in between
ASSIGN_WINDOW = 16  # open triplets at the queue's front among which each person's own order picks


def token_hash(token: str) -> str:
    """What the store keeps of a secret: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _spread(agent: str, seq: int) -> int:
    """A fixed pseudo-random rank of ``seq`` for ``agent``: each person's own order within the window."""
    return int.from_bytes(hashlib.blake2b(f"{agent}|{seq}".encode(), digest_size=8).digest(), "big")


def passes(value: float | None, expected: float | None, expected_hi: float | None) -> bool:
    """Whether an answer ``value`` passes a check expecting ``expected`` (or any value up to ``expected_hi``:
    a rank check accepts every ranking with the right candidate first)."""
    if value is None or expected is None:
        return False
    return expected <= value <= (expected if expected_hi is None else expected_hi)


def _passes_sql(db) -> str:
    """SQL: answer ``a`` passes check ``k``. A database upgraded through migration 7 has no range column
    yet (migration 10 adds it; every check before it has one exact answer)."""
    if "expected_hi" in {c.name for c in db["checks"].columns}:
        return "a.value BETWEEN k.expected AND COALESCE(k.expected_hi, k.expected)"
    return "a.value = k.expected"


def rebuild_totals(db, run_id: str | None = None) -> None:
    """Recompute the crowd's running totals (per run, per triplet, per person) from the stored queue and
    answers, for one run or all: after a migration, or after answers were stored by another path than
    :meth:`CrowdStore.submit_answer` (a bulk import). Keeps each run's overlap and lease settings."""
    where, args = ("WHERE h.run_id = ?", [run_id]) if run_id is not None else ("", [])
    db.execute("INSERT OR IGNORE INTO human_runs (run_id, created_at) SELECT DISTINCT h.run_id, ? FROM human_queue h "
               + where, [time.time(), *args])
    runs = "" if run_id is None else " AND run_id = ?"
    db.execute("UPDATE human_runs SET queued = (SELECT COUNT(*) FROM human_queue h WHERE h.run_id = "
               "human_runs.run_id), "
               "checks = (SELECT COUNT(*) FROM checks k JOIN human_queue h ON h.run_id = k.run_id AND h.seq = k.seq "
               "WHERE k.run_id = human_runs.run_id) WHERE 1" + runs, args)
    db.execute("UPDATE human_queue SET taken = CASE WHEN EXISTS (SELECT 1 FROM checks k WHERE k.run_id = "
               "human_queue.run_id AND k.seq = human_queue.seq) THEN 0 ELSE (SELECT COUNT(DISTINCT a.agent) "
               "FROM answers a WHERE a.run_id = human_queue.run_id AND a.seq = human_queue.seq AND a.status = 'ok') "
               "END WHERE 1" + runs, args)
    db.execute("UPDATE human_queue SET open = (taken < (SELECT overlap FROM human_runs r WHERE r.run_id = "
               "human_queue.run_id) OR EXISTS (SELECT 1 FROM checks k WHERE k.run_id = human_queue.run_id "
               "AND k.seq = human_queue.seq)) WHERE 1" + runs, args)
    db.execute("UPDATE human_runs SET filled = (SELECT COUNT(*) FROM human_queue h WHERE h.run_id = "
               "human_runs.run_id AND h.open = 0) WHERE 1" + runs, args)
    db.execute("DELETE FROM annotator_stats WHERE 1" + runs, args)
    db.execute(
        "INSERT INTO annotator_stats (run_id, agent, ok, skipped, checks, correct, ms_sum, ms_n, last_seq, last_at) "
        "SELECT a.run_id, a.agent, SUM(a.status = 'ok' AND k.seq IS NULL), SUM(a.status = 'skipped'), "
        "SUM(k.seq IS NOT NULL AND a.status = 'ok'), "
        f"SUM(k.seq IS NOT NULL AND a.status = 'ok' AND {_passes_sql(db)}), "
        "COALESCE(SUM(json_extract(a.meta, '$.response_ms')), 0), COUNT(json_extract(a.meta, '$.response_ms')), "
        "NULL, MAX(a.created_at) FROM answers a JOIN human_queue h ON h.run_id = a.run_id AND h.seq = a.seq "
        "LEFT JOIN checks k ON k.run_id = a.run_id AND k.seq = a.seq "
        "WHERE substr(a.agent, 1, 6) = 'human:'" + ("" if run_id is None else " AND a.run_id = ?")
        + " GROUP BY a.run_id, a.agent", args)


class CrowdStore:
    """The annotation queue and the crowd, as part of :class:`~fbloop.store.Store` (uses its ``self.db``
    and ``_insert_queries``)."""

    db: object

    # ------------------------------------------------------------ the annotation queue and attention checks

    def enqueue(self, run_id: str, queries: Queries, checks: dict[int, tuple] | None = None) -> int:
        """Queue queries for the annotation form in the order given, after what is queued already.

        ``checks`` maps the positions of attention checks among ``queries`` to
        ``(kind, expected answer)``, or ``(kind, lowest, highest)`` for a check that accepts a range
        (rank: every ranking with the right first place). Written in chunks of ``ENQUEUE_CHUNK`` queue
        rows, each chunk's queries, queue rows and checks in one transaction, so people's answers get in
        between the chunks of a large queue; a killed enqueue leaves a whole prefix queued, and
        queueing again (:func:`fbloop.agents.people.queue`) adds the rest. A query queued before keeps
        its place. Returns how many were newly queued.
        """
        checks = checks or {}
        queued = 0
        for lo in range(0, len(queries), ENQUEUE_CHUNK):
            part = queries.select(np.arange(lo, min(lo + ENQUEUE_CHUNK, len(queries))))
            now = time.time()
            with write(self.db):
                self._insert_queries(run_id, part)
                start = self.db.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM human_queue WHERE run_id = ?",
                                        [run_id]).fetchone()[0]
                before = self.db.conn.total_changes
                self.db.conn.executemany(
                    "INSERT OR IGNORE INTO human_queue (run_id, seq, position, created_at) VALUES (?, ?, ?, ?)",
                    [(run_id, int(s), start + i, now) for i, s in enumerate(part.seq)])
                n = self.db.conn.total_changes - before
                here = [(int(s), checks[int(s)]) for s in part.seq if int(s) in checks]
                before = self.db.conn.total_changes
                self.db.conn.executemany(
                    "INSERT OR IGNORE INTO checks (run_id, seq, kind, expected, expected_hi) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, s, c[0], float(c[1]), float(c[2]) if len(c) > 2 else None) for s, c in here])
                self._count_queued(run_id, n, self.db.conn.total_changes - before)
                queued += n
        return queued

    def queued(self, run_id: str) -> np.ndarray:
        """Positions of a run's queued queries (attention checks included), in the order asked."""
        rows = self.db.execute("SELECT seq FROM human_queue WHERE run_id = ? ORDER BY position", [run_id])
        return np.array([r[0] for r in rows], dtype=np.int64)

    def queued_runs(self) -> dict[str, int]:
        """Runs with an annotation queue, oldest first: ``{run_id: queued queries}``."""
        rows = self.db.execute("SELECT h.run_id, h.queued FROM human_runs h JOIN runs r ON r.id = h.run_id "
                               "WHERE h.queued > 0 ORDER BY r.created_at")
        return {r[0]: int(r[1]) for r in rows}

    def queue_progress(self, run_id: str, agent: str | None = None) -> dict[str, int]:
        """``{"queued", "checks", "answered"}``: queue size, checks in it, and how many queued positions
        ``agent`` answered (any status), or, when ``agent`` is ``None``, how many real triplets have all
        the answers they want (the run's overlap) plus the checks (which never hold a run up: everyone
        answers them along the way). From running totals, never a scan of the queue."""
        info = self.assignment(run_id)
        if agent is not None:
            rows = self.annotator_stats(run_id, agent)
            done = sum(int(r["ok"]) + int(r["skipped"]) + int(r["checks"]) for r in rows)
            return {"queued": info["queued"], "checks": info["checks"], "answered": done}
        return {"queued": info["queued"], "checks": info["checks"], "answered": info["filled"] + info["checks"]}

    def checks(self, run_id: str) -> dict[int, tuple[str, float]]:
        """A run's attention checks: ``{seq: (kind, expected answer)}`` (for a range, its lowest value;
        :meth:`check_answers` has both ends)."""
        rows = self.db.execute("SELECT seq, kind, expected FROM checks WHERE run_id = ?", [run_id])
        return {int(r[0]): (r[1], float(r[2])) for r in rows}

    def check_answers(self, run_id: str) -> list[dict]:
        """Every answer to an attention check: ``agent, seq, kind, expected, expected_hi, status, value``
        (``expected_hi`` ``None`` unless the check accepts any value from ``expected`` to it)."""
        return list(self.db.query(
            "SELECT a.agent, a.seq, k.kind, k.expected, k.expected_hi, a.status, a.value FROM answers a "
            "JOIN checks k ON k.run_id = a.run_id AND k.seq = a.seq WHERE a.run_id = ? ORDER BY a.id", [run_id]))

    # ------------------------------------------------------------ per-run settings and totals

    def assignment(self, run_id: str) -> dict:
        """``{"overlap", "lease_s", "queued", "checks", "filled"}`` of a run's queue (zeros when none)."""
        row = self.db.execute("SELECT overlap, lease_s, queued, checks, filled FROM human_runs WHERE run_id = ?",
                              [run_id]).fetchone()
        if row is None:
            return {"overlap": 1, "lease_s": 120.0, "queued": 0, "checks": 0, "filled": 0}
        return {"overlap": int(row[0]), "lease_s": float(row[1]), "queued": int(row[2]), "checks": int(row[3]),
                "filled": int(row[4])}

    def set_assignment(self, run_id: str, overlap: int, lease_s: float) -> None:
        """Set how many people answer each real triplet and how long a lease lasts.

        Raising the overlap reopens triplets that now want more answers; lowering it closes some.
        """
        with write(self.db):
            self._ensure_human_run(run_id)
            self.db.execute("UPDATE human_runs SET overlap = ?, lease_s = ? WHERE run_id = ?",
                            [int(overlap), float(lease_s), run_id])
            self.db.execute(
                "UPDATE human_queue SET open = (taken < ? OR EXISTS (SELECT 1 FROM checks k WHERE k.run_id = "
                "human_queue.run_id AND k.seq = human_queue.seq)) WHERE run_id = ?", [int(overlap), run_id])
            self.db.execute("UPDATE human_runs SET filled = (SELECT COUNT(*) FROM human_queue h WHERE h.run_id = ? "
                            "AND h.open = 0) WHERE run_id = ?", [run_id, run_id])

    def _ensure_human_run(self, run_id: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO human_runs (run_id, created_at) VALUES (?, ?)", [run_id, time.time()])

    def _count_queued(self, run_id: str, queued: int, checks: int) -> None:
        self._ensure_human_run(run_id)
        self.db.execute("UPDATE human_runs SET queued = queued + ?, checks = checks + ? WHERE run_id = ?",
                        [queued, checks, run_id])

    # ------------------------------------------------------------ assignment

    def assign(self, run_id: str, agent: str, now: float | None = None, window: int = ASSIGN_WINDOW) -> int | None:
        """The queued position to show ``agent`` next, leased to them; ``None`` when nothing is left for them.

        A person's unexpired lease on a triplet they have not answered comes back first (a reload, a
        second tab: they resume where they were). Otherwise the first ``window`` open triplets, in
        queue order, that they have not answered or skipped and that still want an answer once the
        other people's live leases are counted; among them their own fixed order picks one. Checks
        ignore leases and overlap (everyone may answer every check) and come to each person at the
        queue's check rate of *their own* answers, never as their first question.
        """
        now = time.time() if now is None else now
        with write(self.db):
            row = self.db.execute("SELECT lease_s, overlap FROM human_runs WHERE run_id = ?", [run_id]).fetchone()
            if row is None:
                return None
            lease_s, overlap = float(row[0]), int(row[1])
            mine = self.db.execute(
                "SELECT l.seq FROM human_leases l JOIN human_queue h ON h.run_id = l.run_id AND h.seq = l.seq "
                "WHERE l.run_id = ? AND l.agent = ? AND l.until > ? AND NOT EXISTS (SELECT 1 FROM answers a "
                "WHERE a.run_id = l.run_id AND a.seq = l.seq AND a.agent = l.agent)", [run_id, agent, now]).fetchone()
            if mine is not None:
                seq = int(mine[0])
            else:
                # A check is due when this person's own share of checks falls behind the queue's: each
                # person meets checks at the queue's rate, whatever the crowd's pace (never first).
                queued, checks = self.db.execute("SELECT queued, checks FROM human_runs WHERE run_id = ?",
                                                 [run_id]).fetchone()
                mine = self.db.execute("SELECT ok + skipped + checks, checks FROM annotator_stats WHERE run_id = ? "
                                       "AND agent = ?", [run_id, agent]).fetchone() or (0, 0)
                due = checks > 0 and mine[1] < int(mine[0] * checks / queued)
                sql = ("SELECT h.seq FROM human_queue h LEFT JOIN checks k ON k.run_id = h.run_id AND k.seq = h.seq "
                       "WHERE h.run_id = ? AND h.open = 1 AND NOT EXISTS (SELECT 1 FROM answers a WHERE "
                       "a.run_id = h.run_id AND a.seq = h.seq AND a.agent = ?) AND (k.seq IS NOT NULL OR h.taken + "
                       "(SELECT COUNT(*) FROM human_leases l WHERE l.run_id = h.run_id AND l.seq = h.seq AND "
                       "l.agent != ? AND l.until > ?) < ?) {} ORDER BY h.position LIMIT ?")
                args = [run_id, agent, agent, now, overlap]
                rows = self.db.execute(sql.format("AND (k.seq IS NULL) = ?"),
                                       args + [int(not due), int(window)]).fetchall()
                if not rows:  # nothing of the kind due: the other kind (checks at a queue's end, say)
                    rows = self.db.execute(sql.format(""), args + [int(window)]).fetchall()
                if not rows:
                    self.db.execute("DELETE FROM human_leases WHERE run_id = ? AND agent = ?", [run_id, agent])
                    return None
                seq = min((int(r[0]) for r in rows), key=lambda s: _spread(agent, s))
            self.db.execute("INSERT OR REPLACE INTO human_leases (run_id, seq, agent, until) VALUES (?, ?, ?, ?)",
                            [run_id, seq, agent, now + lease_s])
            return seq

    def rebuild_crowd_totals(self, run_id: str) -> None:
        """:func:`rebuild_totals` for one run, in one transaction."""
        with write(self.db):
            rebuild_totals(self.db, run_id)

    def submit_answer(self, run_id: str, seq: int, agent: str, status: str, value: float | None,
                      meta: dict, response_ms: float | None, now: float | None = None) -> bool:
        """Store one person's answer to queued position ``seq`` and update the totals, in one transaction.

        Returns ``False`` (and changes nothing) when ``agent`` answered ``seq`` already. Raises
        :class:`StoreError` when ``seq`` is not queued.
        """
        now = time.time() if now is None else now
        seq = int(seq)
        with write(self.db):
            row = self.db.execute(
                "SELECT h.taken, k.expected, k.expected_hi, r.overlap FROM human_queue h JOIN human_runs r "
                "ON r.run_id = h.run_id "
                "LEFT JOIN checks k ON k.run_id = h.run_id AND k.seq = h.seq WHERE h.run_id = ? AND h.seq = ?",
                [run_id, seq]).fetchone()
            if row is None:
                raise StoreError(f"Position {seq} of run {run_id!r} is not in the annotation queue.")
            taken, expected, expected_hi, overlap = int(row[0]), row[1], row[2], int(row[3])
            cur = self.db.conn.execute(
                "INSERT OR IGNORE INTO answers (run_id, seq, agent, attempt, value, status, raw, meta, created_at) "
                "VALUES (?, ?, ?, 0, ?, ?, NULL, ?, ?)",
                [run_id, seq, agent, value if status == "ok" else None, status, json.dumps(meta), now])
            if cur.rowcount != 1:
                return False
            is_check = expected is not None
            if status == "ok" and not is_check:
                self.db.execute("UPDATE human_queue SET taken = taken + 1, open = (taken + 1 < ?) "
                                "WHERE run_id = ? AND seq = ?", [overlap, run_id, seq])
                if taken + 1 == overlap:
                    self.db.execute("UPDATE human_runs SET filled = filled + 1 WHERE run_id = ?", [run_id])
            self.db.execute("DELETE FROM human_leases WHERE run_id = ? AND agent = ?", [run_id, agent])
            ok = status == "ok"
            check = int(is_check and ok)
            self.db.execute(
                "INSERT INTO annotator_stats (run_id, agent, ok, skipped, checks, correct, ms_sum, ms_n, last_seq, "
                "last_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, agent) DO UPDATE SET "
                "ok = ok + excluded.ok, skipped = skipped + excluded.skipped, checks = checks + excluded.checks, "
                "correct = correct + excluded.correct, ms_sum = ms_sum + excluded.ms_sum, ms_n = ms_n + excluded.ms_n, "
                "last_seq = excluded.last_seq, last_at = excluded.last_at",
                [run_id, agent, int(ok and not is_check), int(status == "skipped"), check,
                 int(check and passes(value, expected, expected_hi)), float(response_ms or 0.0),
                 int(response_ms is not None),
                 seq, now])
            return True

    def undo_last(self, run_id: str, agent: str, within_s: float, now: float | None = None) -> int | None:
        """Take back ``agent``'s latest answer if it is at most ``within_s`` seconds old; returns its position.

        The answer row is deleted, the totals go back, and the triplet is leased to ``agent`` again so
        that it is the next one they see. Only the latest answer can be undone (once).
        """
        now = time.time() if now is None else now
        with write(self.db):
            row = self.db.execute("SELECT last_seq, last_at FROM annotator_stats WHERE run_id = ? AND agent = ?",
                                  [run_id, agent]).fetchone()
            if row is None or row[0] is None or now - float(row[1]) > within_s:
                return None
            seq = int(row[0])
            ans = self.db.execute(
                "SELECT a.status, a.value, a.meta, k.expected, k.expected_hi, h.taken, r.overlap, r.lease_s "
                "FROM answers a "
                "JOIN human_queue h ON h.run_id = a.run_id AND h.seq = a.seq JOIN human_runs r ON r.run_id = a.run_id "
                "LEFT JOIN checks k ON k.run_id = a.run_id AND k.seq = a.seq "
                "WHERE a.run_id = ? AND a.seq = ? AND a.agent = ? AND a.attempt = 0", [run_id, seq, agent]).fetchone()
            if ans is None:
                return None
            status, value, meta, expected, expected_hi, taken, overlap, lease_s = ans
            ms = (json.loads(meta) if meta else {}).get("response_ms")
            self.db.execute("DELETE FROM answers WHERE run_id = ? AND seq = ? AND agent = ? AND attempt = 0",
                            [run_id, seq, agent])
            is_check, ok = expected is not None, status == "ok"
            if ok and not is_check:
                self.db.execute("UPDATE human_queue SET taken = taken - 1, open = 1 WHERE run_id = ? AND seq = ?",
                                [run_id, seq])
                if int(taken) == int(overlap):
                    self.db.execute("UPDATE human_runs SET filled = filled - 1 WHERE run_id = ?", [run_id])
            check = int(is_check and ok)
            self.db.execute(
                "UPDATE annotator_stats SET ok = ok - ?, skipped = skipped - ?, checks = checks - ?, "
                "correct = correct - ?, ms_sum = ms_sum - ?, ms_n = ms_n - ?, last_seq = NULL "
                "WHERE run_id = ? AND agent = ?",
                [int(ok and not is_check), int(status == "skipped"), check,
                 int(check and passes(value, expected, expected_hi)),
                 float(ms or 0.0), int(ms is not None), run_id, agent])
            self.db.execute("INSERT OR REPLACE INTO human_leases (run_id, seq, agent, until) VALUES (?, ?, ?, ?)",
                            [run_id, seq, agent, now + float(lease_s)])
            return seq

    def annotator_stats(self, run_id: str, agent: str | None = None) -> list[dict]:
        """Running totals per person on a run: ``agent, ok, skipped, checks, correct, ms_sum, ms_n, last_at,
        blocked`` (``ok`` counts real triplets; ``checks`` answered attention checks)."""
        sql = ("SELECT s.agent, s.ok, s.skipped, s.checks, s.correct, s.ms_sum, s.ms_n, s.last_at, "
               "b.agent IS NOT NULL AS blocked FROM annotator_stats s LEFT JOIN blocked b ON b.run_id = s.run_id "
               "AND b.agent = s.agent WHERE s.run_id = ?")
        args = [run_id]
        if agent is not None:
            sql += " AND s.agent = ?"
            args.append(agent)
        return list(self.db.query(sql + " ORDER BY s.agent", args))

    def human_value_table(self, run_id: str, limit: int) -> list[tuple[int, float, int]]:
        """``(seq, value, count)``: how many people (ok answers) gave each value to each real question that
        two or more people answered, for at most ``limit`` questions. Attention checks (negative positions)
        are left out. The input of agreement between people: grouped passes over the people's answers,
        never the queue."""
        people = "run_id = ? AND status = 'ok' AND seq >= 0 AND agent >= 'human:' AND agent < 'human;'"
        return [(int(r[0]), float(r[1]), int(r[2])) for r in self.db.execute(
            f"SELECT seq, value, COUNT(*) FROM answers WHERE {people} AND seq IN (SELECT seq FROM answers "
            f"WHERE {people} GROUP BY seq HAVING COUNT(*) >= 2 LIMIT ?) GROUP BY seq, value ORDER BY seq, value",
            [run_id, run_id, int(limit)])]

    def response_times(self, run_id: str, limit: int) -> list[tuple[str, float]]:
        """``(agent, response_ms)`` of people's answers on a run that carry a response time (checks and skips
        included: each was read), the first ``limit`` stored."""
        return [(r[0], float(r[1])) for r in self.db.execute(
            "SELECT agent, json_extract(meta, '$.response_ms') AS ms FROM answers WHERE run_id = ? AND "
            "agent >= 'human:' AND agent < 'human;' AND ms IS NOT NULL ORDER BY id LIMIT ?", [run_id, int(limit)])]

    # ------------------------------------------------------------ access

    def add_annotator(self, name: str, display: str, token_sha: str, run_ids: list[str]) -> bool:
        """Register ``name`` with a new secret's hash (replacing an older one) and invite them to ``run_ids``.
        Returns whether the name is new."""
        now = time.time()
        with write(self.db):
            new = self.db.execute("SELECT 1 FROM annotators WHERE name = ?", [name]).fetchone() is None
            self.db.execute("INSERT INTO annotators (name, display, token_hash, created_at) VALUES (?, ?, ?, ?) "
                            "ON CONFLICT (name) DO UPDATE SET token_hash = excluded.token_hash",
                            [name, display, token_sha, now])
            for run_id in run_ids:
                self.db.execute("INSERT OR IGNORE INTO invitations (name, run_id, created_at) VALUES (?, ?, ?)",
                                [name, run_id, now])
            return new

    def annotator_by_token(self, token_sha: str) -> dict | None:
        """``{"name", "display", "runs"}`` of the invitation with this hash, or ``None``."""
        row = self.db.execute("SELECT name, display FROM annotators WHERE token_hash = ?", [token_sha]).fetchone()
        if row is None:
            return None
        runs = [r[0] for r in self.db.execute(
            "SELECT i.run_id FROM invitations i JOIN runs r ON r.id = i.run_id WHERE i.name = ? "
            "ORDER BY r.created_at", [row[0]])]
        return {"name": row[0], "display": row[1], "runs": runs}

    def annotators(self) -> list[dict]:
        """Every invited person: ``name, display, created_at, runs`` (comma-separated run ids)."""
        return list(self.db.query(
            "SELECT n.name, n.display, n.created_at, GROUP_CONCAT(i.run_id, ',') AS runs FROM annotators n "
            "LEFT JOIN invitations i ON i.name = n.name GROUP BY n.name ORDER BY n.created_at"))

    def add_owner_token(self, token_sha: str, label: str) -> None:
        with write(self.db):
            self.db.execute("INSERT INTO owner_tokens (token_hash, label, created_at) VALUES (?, ?, ?)",
                            [token_sha, label, time.time()])

    def is_owner_token(self, token_sha: str) -> bool:
        return self.db.execute("SELECT 1 FROM owner_tokens WHERE token_hash = ?", [token_sha]).fetchone() is not None

    def set_blocked(self, run_id: str, agent: str, blocked: bool) -> None:
        """Block (or unblock) a person on a run: their answers stay stored, learners skip them."""
        with write(self.db):
            if blocked:
                self.db.execute("INSERT OR IGNORE INTO blocked (run_id, agent, created_at) VALUES (?, ?, ?)",
                                [run_id, agent, time.time()])
                self.db.execute("DELETE FROM human_leases WHERE run_id = ? AND agent = ?", [run_id, agent])
            else:
                self.db.execute("DELETE FROM blocked WHERE run_id = ? AND agent = ?", [run_id, agent])

    def has_agent_prefix(self, run_id: str, prefix: str) -> bool:
        """Whether any answer of the run comes from an agent whose name starts with ``prefix``."""
        return self.db.execute("SELECT 1 FROM answers WHERE run_id = ? AND agent >= ? AND agent < ? LIMIT 1",
                               [run_id, prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]).fetchone() is not None

    def blocked(self, run_id: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT agent FROM blocked WHERE run_id = ?", [run_id])}
