"""Write transactions on a run database.

Write transactions begin ``IMMEDIATE`` (:func:`write`): they take the write lock
before their first read, so two writers (an app's double click, the app beside a
running loop) queue behind each other for up to the busy timeout. A deferred
transaction that read first would fail at once with "database is locked" when the
other committed in between, however long the timeout.

**Busy waits stay inside the store.** SQLite's busy timeout covers one attempt; a
writer that holds the lock longer (a large queue being written) or a burst of
many writers can outlast it. :func:`write` then tries again, with a short
randomised pause, until ``WRITE_WAIT_S`` have passed in all, and only then raises
:class:`~fbloop.errors.StoreError` ("nothing was written"). Large writers commit in
chunks (``Store.enqueue``), so no one waits for a whole queue.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
from collections.abc import Iterator

import sqlite_utils

from ..errors import StoreError

WRITE_WAIT_S = 60.0  # the longest a write waits for the lock, all tries together, before it gives up
RETRY_PAUSE_S = (0.005, 0.05)  # a random pause between tries, so waiting writers do not retry in step


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def begin_immediate(db: sqlite_utils.Database, wait_s: float | None = None) -> None:
    """``BEGIN IMMEDIATE``, tried again while the database is busy, for up to ``wait_s`` seconds in all
    (default :data:`WRITE_WAIT_S`)."""
    wait_s = WRITE_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise StoreError(f"The database is busy: other writers held it for {wait_s:.0f} s ({exc}). "
                                 "Nothing was written; try again.") from exc
            time.sleep(random.uniform(*RETRY_PAUSE_S))


@contextlib.contextmanager
def write(db: sqlite_utils.Database, wait_s: float | None = None) -> Iterator[sqlite_utils.Database]:
    """A write transaction holding the write lock from its start (``BEGIN IMMEDIATE``); nested: a savepoint.

    Waits for the lock up to ``wait_s`` seconds in all (see the module's docstring)."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    begin_immediate(db, wait_s)
    try:
        yield db
    except BaseException:
        db.conn.rollback()
        raise
    else:
        try:
            db.conn.execute("COMMIT")
        except BaseException:
            db.conn.rollback()
            raise
