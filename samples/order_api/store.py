"""The order service's write store: SQLite, one row per order with its event and publish state.

The event is stored before it is published (a small outbox): an order whose publish failed
stays ``published_at IS NULL`` and is published again at the next start, with the same
message id, so Service Bus duplicate detection and the billing inbox drop any repeat.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from samples.events import OrderCreated

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id      TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    event_json    TEXT NOT NULL,
    published_at  TEXT,
    route         TEXT,
    payload_bytes INTEGER
)
"""


@dataclass(frozen=True)
class StoredOrder:
    """An order as the write store holds it."""

    order_id: str
    customer_id: str
    published_at: str | None
    route: str | None
    payload_bytes: int | None


class OrderStore:
    """Orders in a SQLite file; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def add(self, event: OrderCreated) -> None:
        """Record a new, not yet published order."""
        with self._lock:
            self._db.execute(
                "INSERT INTO orders (order_id, customer_id, created_at, event_json)"
                " VALUES (?, ?, ?, ?)",
                (
                    event.order_id,
                    event.customer_id,
                    event.created_at.isoformat(),
                    event.model_dump_json(by_alias=True),
                ),
            )

    def mark_published(
        self, order_id: str, *, at: datetime, route: str, payload_bytes: int
    ) -> None:
        """Record that the order's event reached Service Bus, and how."""
        with self._lock:
            self._db.execute(
                "UPDATE orders SET published_at = ?, route = ?, payload_bytes = ?"
                " WHERE order_id = ?",
                (at.isoformat(), route, payload_bytes, order_id),
            )

    def unpublished(self) -> list[OrderCreated]:
        """Orders whose event has not reached Service Bus yet, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_json FROM orders WHERE published_at IS NULL ORDER BY created_at"
            ).fetchall()
        return [OrderCreated.model_validate_json(row[0]) for row in rows]

    def get(self, order_id: str) -> StoredOrder | None:
        """One order, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT order_id, customer_id, published_at, route, payload_bytes"
                " FROM orders WHERE order_id = ?",
                (order_id,),
            ).fetchone()
        return StoredOrder(*row) if row else None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
