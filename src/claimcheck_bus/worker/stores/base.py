"""The read-model store interface: transactions with an inbox of processed message ids.

A projection's writes and its inbox row commit in one transaction of the read model's own
database, so a redelivered message is a no-op and a crash never applies half an event.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

#: The inbox table every store creates: (projection, message_id) is the key.
INBOX_TABLE = "claimcheck_inbox"


class ProjectionStore(ABC):
    """A read-model database: short transactions, an inbox, pruning and reset."""

    #: The DB-API parameter placeholder of this store's connections (``?`` or ``%s``).
    placeholder: str = "?"

    #: How many transactions the store runs at once (SQLite: one writer).
    concurrent_transactions: int = 1

    #: A statement's error may surface after the handler that ran it returned (PostgreSQL's
    #: pipeline mode): the runner then cannot tell which event of a batch failed.
    defers_errors: bool = False

    @abstractmethod
    def open(self) -> None:
        """Connect and create the inbox table (idempotent)."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Any]:
        """A connection inside an open transaction: committed on exit, rolled back on error."""

    @abstractmethod
    def claim(self, db: Any, projection: str, message_id: str, now: datetime) -> bool:
        """Insert the inbox row in ``db``'s transaction; ``False`` when it was already there."""

    def claim_batch(
        self, db: Any, projection: str, message_ids: Sequence[str], now: datetime
    ) -> set[str]:
        """Insert the inbox rows of distinct ``message_ids`` in ``db``'s transaction; the ids
        that were not there yet. Stores with a round trip per statement do it in one."""
        return {m for m in message_ids if self.claim(db, projection, m, now)}

    @abstractmethod
    def prune(self, cutoff: datetime) -> int:
        """Delete inbox rows processed before ``cutoff``; returns how many went."""

    @abstractmethod
    def clear_inbox(self, db: Any, projection: str) -> None:
        """Delete a projection's inbox rows in ``db``'s transaction (for a rebuild)."""

    def lock_for_setup(self, db: Any) -> None:
        """Serialize schema set-up between processes for the rest of ``db``'s transaction
        (concurrent ``CREATE TABLE IF NOT EXISTS`` can fail in some databases)."""
        return  # most databases need nothing: their write transaction already serializes

    def processed(self, projection: str) -> int:
        """How many messages the inbox records for ``projection``."""
        with self.transaction() as db:
            row = db.execute(
                f"SELECT COUNT(*) FROM {INBOX_TABLE} WHERE projection = {self.placeholder}",  # noqa: S608 (a constant table name)
                (projection,),
            ).fetchone()
        return int(row[0])

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read query, for tests and tools (write through a transaction instead)."""
        with self.transaction() as db:
            return [tuple(row) for row in db.execute(sql, params).fetchall()]
