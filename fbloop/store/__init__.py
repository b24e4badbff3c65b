"""Every run, query, answer and learner snapshot, in SQLite (WAL mode).

All of fbloop's SQL lives in this package. The schema grows by numbered
migrations applied inside a transaction. Writes that belong together (a chunk
of queries with its answers) commit atomically, and answers are keyed by
``(run_id, seq, agent, attempt)`` with ``INSERT OR IGNORE``: a killed process
loses at most the chunk it was writing, and a resumed one never stores an
answer twice.

- :mod:`.core`: :class:`Store`, a run database on disk (runs, queries and answers, the annotation
  queue and attention checks, snapshots and factors, the LLM request cache, export);
- :mod:`.crowd`: the annotation queue for a crowd (assignment with leases and overlap, answers with
  running totals, undo, invitations and owner tokens as sha256 hashes, blocking), mixed into :class:`Store`;
- :mod:`.migrations`: the numbered schema migrations and :func:`migrate`;
- :mod:`.transactions`: :func:`write`, the ``BEGIN IMMEDIATE`` write transaction, retried while the
  database is busy for up to ``WRITE_WAIT_S``;
- :mod:`.export`: a run's answers as CSV, JSONL, Parquet or a cblearn ``.npz``, with a sidecar;
- :mod:`.codec`: sparse activations as BLOBs.
"""

from .core import Store
from .migrations import MIGRATIONS, migrate
from .transactions import write

__all__ = ["MIGRATIONS", "Store", "migrate", "write"]
