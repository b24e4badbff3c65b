"""Write transactions on a run database.

Write transactions begin ``IMMEDIATE`` (:func:`write`): they take the write lock
before their first read, so two writers (an app's double click, the app beside a
running loop) queue behind each other for up to the busy timeout. A deferred
transaction that read first would fail at once with "database is locked" when the
other committed in between, however long the timeout.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import sqlite_utils

from ..errors import StoreError


@contextlib.contextmanager
def write(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """A write transaction holding the write lock from its start (``BEGIN IMMEDIATE``); nested: a savepoint."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    try:
        db.conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:  # another writer held the lock past the busy timeout
        raise StoreError(f"The database is busy: another writer held it past the busy timeout ({exc}). "
                         "Nothing was written; try again.") from exc
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
