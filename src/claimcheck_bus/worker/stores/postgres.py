"""The PostgreSQL projection store (psycopg 3), for read models several workers share."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from claimcheck_bus.worker.stores.base import INBOX_TABLE, ProjectionStore


class PostgresProjectionStore(ProjectionStore):
    """A read model in PostgreSQL; a small pool of connections, one per concurrent handler.

    Two workers handling the same message id at once serialize on the inbox row: the second
    waits for the first's transaction and then skips (or proceeds if the first rolled back).

    With ``pipeline=True`` each transaction runs in psycopg's pipeline mode: a handler's
    statements go out without waiting for one another, one round trip per batch instead of
    one per statement. Fetching a result (``fetchone``, ``fetchall``) still waits for it, but
    ``rowcount`` reads -1 until something is fetched, and a failing statement raises at the
    commit rather than where it ran, so a handler cannot catch its own statements' errors (a
    savepoint does not help). The runner then applies each event of the batch alone, which
    finds the one at fault. Leave it off for handlers that inspect ``rowcount`` or recover
    from errors.
    """

    placeholder = "%s"

    def __init__(self, conninfo: str, *, max_connections: int = 16, pipeline: bool = False) -> None:
        self._conninfo = conninfo
        self._max = max_connections
        self._pipeline = pipeline
        self.concurrent_transactions = max_connections
        self.defers_errors = pipeline
        self._idle: list[Any] = []
        self._count = 0
        self._lock = threading.Condition()
        self._opened = False

    def _connect(self) -> Any:
        import psycopg  # optional dependency: only this store needs it

        return psycopg.connect(self._conninfo, autocommit=True)

    def open(self) -> None:
        """Check the server answers and create the inbox table."""
        with self._lock:
            if self._opened:
                return
            self._opened = True
        with self.transaction() as db:
            self.lock_for_setup(db)
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {INBOX_TABLE} ("
                " projection TEXT NOT NULL,"
                " message_id TEXT NOT NULL,"
                " processed_at TIMESTAMPTZ NOT NULL,"
                " PRIMARY KEY (projection, message_id))"
            )
            db.execute(
                f"CREATE INDEX IF NOT EXISTS {INBOX_TABLE}_processed_at"
                f" ON {INBOX_TABLE} (processed_at)"
            )

    def lock_for_setup(self, db: Any) -> None:
        """Take a transaction-scoped advisory lock: two processes running ``CREATE TABLE IF
        NOT EXISTS`` at once can otherwise fail on PostgreSQL's catalog unique index."""
        db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (INBOX_TABLE + ".setup",))

    def close(self) -> None:
        """Close the idle connections (busy ones close when returned)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._opened = False
            self._lock.notify_all()
        for connection in idle:
            connection.close()

    def _borrow(self) -> Any:
        with self._lock:
            while not self._idle and self._count >= self._max:
                self._lock.wait()
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return self._connect()
        except BaseException:
            with self._lock:
                self._count -= 1
                self._lock.notify()
            raise

    def _give_back(self, connection: Any) -> None:
        with self._lock:
            if connection.closed or connection.broken or not self._opened:
                self._count -= 1
                connection.close()
            else:
                self._idle.append(connection)
            self._lock.notify()

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A pooled ``psycopg.Connection`` inside a transaction."""
        connection = self._borrow()
        try:
            with contextlib.ExitStack() as stack:
                if self._pipeline:
                    stack.enter_context(connection.pipeline())
                stack.enter_context(connection.transaction())
                yield connection
        finally:
            self._give_back(connection)

    def claim(self, db: Any, projection: str, message_id: str, now: datetime) -> bool:
        """Insert the inbox row; ``False`` when this projection already processed the id."""
        # Through the returned rows: in pipeline mode rowcount is unknown until a fetch.
        return message_id in self.claim_batch(db, projection, [message_id], now)

    def claim_batch(
        self, db: Any, projection: str, message_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Insert every inbox row in one statement; the ids that were not there yet.

        The rows go in message id order, so two workers claiming overlapping batches lock
        them in the same order and never deadlock on each other.
        """
        if not message_ids:
            return set()
        cursor = db.execute(
            f"INSERT INTO {INBOX_TABLE} (projection, message_id, processed_at)"  # noqa: S608 (a constant table name)
            " SELECT %s, message_id, %s FROM unnest(%s::text[]) AS claimed (message_id)"
            " ORDER BY message_id ON CONFLICT DO NOTHING RETURNING message_id",
            (projection, now, sorted(message_ids)),
        )
        return {row[0] for row in cursor.fetchall()}

    def prune(self, cutoff: datetime) -> int:
        """Delete inbox rows older than ``cutoff``."""
        with self.transaction() as db:
            cursor = db.execute(f"DELETE FROM {INBOX_TABLE} WHERE processed_at < %s", (cutoff,))  # noqa: S608 (a constant table name)
            return int(cursor.rowcount)

    def clear_inbox(self, db: Any, projection: str) -> None:
        """Forget what ``projection`` processed."""
        db.execute(f"DELETE FROM {INBOX_TABLE} WHERE projection = %s", (projection,))  # noqa: S608 (a constant table name)

    def __repr__(self) -> str:
        return "PostgresProjectionStore(<conninfo hidden>)"
