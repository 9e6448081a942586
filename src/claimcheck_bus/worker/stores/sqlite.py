"""The SQLite projection store: the embedded default, a file or ``:memory:``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from claimcheck_bus.worker.stores.base import INBOX_TABLE, ProjectionStore

#: SQLite before 3.32 allows 999 parameters in one statement (an inbox row takes three).
_IDS_PER_STATEMENT = 300


class SQLiteProjectionStore(ProjectionStore):
    """A read model in SQLite. One connection, one writer at a time (SQLite's own rule);
    several processes may share a file (WAL mode, a busy timeout)."""

    placeholder = "?"

    def __init__(self, path: str | Path = ":memory:", *, busy_timeout: float = 30.0) -> None:
        self.path = str(path)
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None
        # The connection is used from the worker's threads, one transaction at a time.
        self._lock = threading.RLock()

    def open(self) -> None:
        """Connect (WAL for files) and create the inbox table."""
        with self._lock:
            if self._connection is not None:
                return
            connection = sqlite3.connect(
                self.path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
            if self.path != ":memory:":
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(
                f"CREATE TABLE IF NOT EXISTS {INBOX_TABLE} ("
                " projection TEXT NOT NULL,"
                " message_id TEXT NOT NULL,"
                " processed_at REAL NOT NULL,"
                " PRIMARY KEY (projection, message_id))"
            )
            connection.execute(
                f"CREATE INDEX IF NOT EXISTS {INBOX_TABLE}_processed_at"
                f" ON {INBOX_TABLE} (processed_at)"
            )
            self._connection = connection

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside ``BEGIN IMMEDIATE`` (a write lock from the start, so two
        processes never deadlock upgrading read locks)."""
        with self._lock:
            if self._connection is None:
                self.open()
            connection = self._connection
            assert connection is not None
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def claim(self, db: Any, projection: str, message_id: str, now: datetime) -> bool:
        """Insert the inbox row; ``False`` when this projection already processed the id."""
        cursor = db.execute(
            f"INSERT INTO {INBOX_TABLE} (projection, message_id, processed_at)"  # noqa: S608 (a constant table name)
            " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
            (projection, message_id, now.timestamp()),
        )
        return bool(cursor.rowcount == 1)

    def claim_batch(
        self, db: Any, projection: str, message_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Insert the inbox rows of the ids not processed yet: two statements for a batch
        rather than one per id.

        Reading first is safe: ``transaction`` holds SQLite's write lock from its start.
        """
        fresh: list[str] = []
        for start in range(0, len(message_ids), _IDS_PER_STATEMENT):
            chunk = message_ids[start : start + _IDS_PER_STATEMENT]
            seen = {
                row[0]
                for row in db.execute(
                    f"SELECT message_id FROM {INBOX_TABLE} WHERE projection = ?"  # noqa: S608 (a constant table name and placeholders)
                    f" AND message_id IN ({', '.join('?' * len(chunk))})",
                    (projection, *chunk),
                )
            }
            new = [message_id for message_id in chunk if message_id not in seen]
            if new:
                db.execute(
                    f"INSERT INTO {INBOX_TABLE} (projection, message_id, processed_at)"  # noqa: S608 (a constant table name and placeholders)
                    f" VALUES {', '.join(['(?, ?, ?)'] * len(new))}",
                    [value for m in new for value in (projection, m, now.timestamp())],
                )
            fresh.extend(new)
        return set(fresh)

    def prune(self, cutoff: datetime) -> int:
        """Delete inbox rows older than ``cutoff``."""
        with self.transaction() as db:
            cursor = db.execute(
                f"DELETE FROM {INBOX_TABLE} WHERE processed_at < ?",  # noqa: S608 (a constant table name)
                (cutoff.timestamp(),),
            )
            return int(cursor.rowcount)

    def clear_inbox(self, db: Any, projection: str) -> None:
        """Forget what ``projection`` processed."""
        db.execute(f"DELETE FROM {INBOX_TABLE} WHERE projection = ?", (projection,))  # noqa: S608 (a constant table name)

    def __repr__(self) -> str:
        return f"SQLiteProjectionStore({self.path!r})"
