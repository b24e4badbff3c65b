"""The run database's schema, grown by numbered migrations applied inside a transaction."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlite_utils

from ..errors import StoreError
from .transactions import write


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


def _m2_human(db: sqlite_utils.Database) -> None:
    # The annotation form's queue (the order people are asked in) and attention checks:
    # triplets whose answer is known. Checks live at negative positions, outside any
    # design's sequence, and never reach a learner (iter_answered leaves them out).
    db.executescript(
        """
        CREATE TABLE human_queue (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            position INTEGER NOT NULL,       -- the order the form asks in, shared by all annotators
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, seq),
            FOREIGN KEY (run_id, seq) REFERENCES queries(run_id, seq)
        );
        CREATE INDEX human_queue_order ON human_queue(run_id, position);
        CREATE TABLE checks (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,              -- 'identical' (a candidate is the reference) or 'lopsided'
            expected REAL NOT NULL,          -- the known answer: +1 first, -1 second, 0 equal
            PRIMARY KEY (run_id, seq),
            FOREIGN KEY (run_id, seq) REFERENCES queries(run_id, seq)
        );
        """
    )


def _m3_llm_cache(db: sqlite_utils.Database) -> None:
    # One row per LLM request that was understood: a resumed or repeated run reads the reply
    # here instead of paying for it again. Replies that failed to parse are never stored.
    db.executescript(
        """
        CREATE TABLE llm_cache (
            key TEXT PRIMARY KEY,            -- sha256 of (endpoint, model, temperature, template hash, prompt)
            model TEXT NOT NULL,
            template_hash TEXT NOT NULL,
            prompt TEXT NOT NULL,            -- the rendered user prompt, verbatim
            reply TEXT NOT NULL,             -- the raw reply text, verbatim
            meta TEXT,                       -- JSON: usage, request id, latency of the paid request
            created_at REAL NOT NULL
        );
        """
    )


def _m4_lean_answers(db: sqlite_utils.Database) -> None:
    # The unique key (run_id, seq, agent, attempt) already serves every (run_id, seq) lookup:
    # the second index only slowed inserts (a third of the answers' write cost at millions of rows).
    db.execute("DROP INDEX IF EXISTS answers_run_seq")


def _m5_run_owner(db: sqlite_utils.Database) -> None:
    # Which process last set a run running (host and pid): `fbloop runs` can then tell a run that is
    # still going from one whose process was killed, and say how to resume it.
    db.execute("ALTER TABLE runs ADD COLUMN owner_host TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN owner_pid INTEGER")


def _m7_crowd(db: sqlite_utils.Database) -> None:
    # The annotation form for a crowd (human.py): per-run assignment settings and running totals, how
    # many different people answered each queued triplet (so the next question is one indexed lookup,
    # never a scan of the run's answers), short leases so two people are not shown the same triplet at
    # once, per-annotator running totals (progress, speed, checks), invitations and the owner's
    # tokens (sha256 of the secret, never the secret), and blocked annotators (kept, not learned from).
    db.executescript(
        """
        CREATE TABLE human_runs (
            run_id TEXT PRIMARY KEY,
            overlap INTEGER NOT NULL DEFAULT 1,   -- different people asked per real triplet
            lease_s REAL NOT NULL DEFAULT 120,    -- how long a shown triplet stays reserved for its viewer
            queued INTEGER NOT NULL DEFAULT 0,    -- queue rows, attention checks included
            checks INTEGER NOT NULL DEFAULT 0,
            filled INTEGER NOT NULL DEFAULT 0,    -- real triplets with `overlap` ok answers
            created_at REAL NOT NULL
        );
        ALTER TABLE human_queue ADD COLUMN taken INTEGER NOT NULL DEFAULT 0;  -- ok answers from different people
        ALTER TABLE human_queue ADD COLUMN open INTEGER NOT NULL DEFAULT 1;   -- 0 once it has all it needs
        CREATE INDEX human_queue_open ON human_queue(run_id, open, position);
        CREATE TABLE human_leases (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            agent TEXT NOT NULL,
            until REAL NOT NULL,
            PRIMARY KEY (run_id, agent)              -- one triplet on screen per person and run
        );
        CREATE INDEX human_leases_seq ON human_leases(run_id, seq);
        CREATE TABLE annotator_stats (
            run_id TEXT NOT NULL,
            agent TEXT NOT NULL,
            ok INTEGER NOT NULL DEFAULT 0,
            skipped INTEGER NOT NULL DEFAULT 0,
            checks INTEGER NOT NULL DEFAULT 0,       -- attention checks answered (ok)
            correct INTEGER NOT NULL DEFAULT 0,
            ms_sum REAL NOT NULL DEFAULT 0,          -- response times of answers that carry one
            ms_n INTEGER NOT NULL DEFAULT 0,
            last_seq INTEGER,                        -- the latest answer, for undo
            last_at REAL,
            PRIMARY KEY (run_id, agent)
        );
        CREATE TABLE annotators (
            name TEXT PRIMARY KEY,                   -- NFKC, case-folded, spaces collapsed
            display TEXT NOT NULL,                   -- as first written
            token_hash TEXT NOT NULL UNIQUE,         -- sha256 hex of the invitation secret
            created_at REAL NOT NULL
        );
        CREATE TABLE invitations (
            name TEXT NOT NULL REFERENCES annotators(name),
            run_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (name, run_id)
        );
        CREATE TABLE owner_tokens (
            token_hash TEXT PRIMARY KEY,             -- sha256 hex of the dashboard secret
            label TEXT,
            created_at REAL NOT NULL
        );
        CREATE TABLE blocked (
            run_id TEXT NOT NULL,
            agent TEXT NOT NULL,                     -- human:<name>; their answers stay, the learner skips them
            created_at REAL NOT NULL,
            PRIMARY KEY (run_id, agent)
        );
        """
    )
    # Runs queued before this migration: totals and per-triplet counts from what is stored.
    from .crowd import rebuild_totals

    rebuild_totals(db)


def _m8_llm_batches(db: sqlite_utils.Database) -> None:
    # LLM batch jobs (agents/batch.py): one row per input file, its provider ids stored the moment they
    # are known (a killed run re-attaches to its batches and never creates one twice), and what it asks as
    # one BLOB of (seq, order, attempt, request) int64 rows: a million asks in 32 MB, no row per request.
    db.executescript(
        """
        CREATE TABLE llm_batches (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id),
            agent TEXT NOT NULL,             -- the answers' agent name (its #swap twin for order 1)
            state TEXT NOT NULL,             -- preparing / uploaded / submitted / ingested / offline
            mode TEXT NOT NULL,              -- the structured-output mode its bodies were written in
            provider_status TEXT,            -- validating / in_progress / finalizing / completed / failed / ...
            input_file_id TEXT, batch_id TEXT UNIQUE, output_file_id TEXT, error_file_id TEXT,
            asks BLOB NOT NULL,              -- (n, 4) little-endian int64: seq, order, attempt, request
            n_asks INTEGER NOT NULL,
            requests INTEGER NOT NULL,       -- lines of its input file
            bytes INTEGER,                   -- size of its input file
            counts TEXT, errors TEXT,        -- JSON: the provider's request_counts and errors
            created_at REAL NOT NULL, submitted_at REAL, finished_at REAL, ingested_at REAL
        );
        CREATE INDEX llm_batches_run ON llm_batches(run_id, state);
        """
    )


def _m9_candidates(db: sqlite_utils.Database) -> None:
    # closest-of-k and rank-k queries: the reference stays in a_*, the k candidates go in one blob pair
    # (fbloop.store.codec._encode_cands); triplets and odd-one-out keep a_*, b_*, c_*.
    db.executescript(
        """
        ALTER TABLE queries ADD COLUMN cands_idx BLOB;
        ALTER TABLE queries ADD COLUMN cands_val BLOB;
        """
    )


def _m10_check_ranges(db: sqlite_utils.Database) -> None:
    # Attention checks on tuple questions: a rank check knows only which candidate comes first, so any
    # ranking that puts it first passes, a range of Lehmer codes. A check passes for a value in
    # [expected, expected_hi]; NULL (every check before this) keeps the one exact answer.
    db.execute("ALTER TABLE checks ADD COLUMN expected_hi REAL")


MIGRATIONS: list[tuple[int, str, Callable[[sqlite_utils.Database], None]]] = [
    (1, "core tables", _m1_core),
    (2, "human queue and attention checks", _m2_human),
    (3, "llm request cache", _m3_llm_cache),
    (4, "drop the redundant answers(run_id, seq) index", _m4_lean_answers),
    (5, "the process that runs a run", _m5_run_owner),
    # 6 is unused: it was held for work that needed no schema change (ids need not be consecutive)
    (7, "crowd annotation: assignment, leases, totals, invitations, blocking", _m7_crowd),
    (8, "llm batch jobs: provider ids, status, what each batch asks", _m8_llm_batches),
    (9, "k candidates per query (closest-of-k, rank-k)", _m9_candidates),
    (10, "attention checks accept a range of answers (rank-k: any ranking with the right first)", _m10_check_ranges),
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
        with write(db):
            fn(db)
            db.execute("INSERT INTO _migrations VALUES (?, ?, ?)", [mid, name, time.time()])
        applied.append(mid)
    return applied
