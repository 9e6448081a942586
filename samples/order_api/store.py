"""The order service's write store: SQLite, one row per order with its event and publish state,
and one per cancelled order with its cancellation.

Each event is stored before it is published (a small outbox): an event whose publish failed
stays ``published_at IS NULL`` and is published again at the next start, with the same
message id, so Service Bus duplicate detection and the billing inbox drop any repeat. An
order's creation is always published before its cancellation: both travel in the order's
session, where the order they are sent in is the order billing receives them in.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from samples.events import OrderCancelled, OrderCreated

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS orders (
        order_id      TEXT PRIMARY KEY,
        customer_id   TEXT NOT NULL,
        created_at    TEXT NOT NULL,
        event_json    TEXT NOT NULL,
        published_at  TEXT,
        route         TEXT,
        payload_bytes INTEGER
    )""",
    # A table of its own rather than columns of orders: a write store from before
    # cancellations existed gets it by CREATE TABLE IF NOT EXISTS, with no migration.
    """CREATE TABLE IF NOT EXISTS cancellations (
        order_id      TEXT PRIMARY KEY REFERENCES orders (order_id),
        cancelled_at  TEXT NOT NULL,
        event_json    TEXT NOT NULL,
        published_at  TEXT,
        route         TEXT,
        payload_bytes INTEGER
    )""",
)

OrderEvent = OrderCreated | OrderCancelled


@dataclass(frozen=True)
class StoredOrder:
    """An order as the write store holds it."""

    order_id: str
    customer_id: str
    published_at: str | None
    route: str | None
    payload_bytes: int | None
    cancelled_at: str | None = None
    cancellation_published_at: str | None = None


class OrderStore:
    """Orders in a SQLite file; safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
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

    def add_cancellation(self, event: OrderCancelled) -> OrderCancelled:
        """Record the cancellation of a stored order; the first one recorded stays (a second
        request gets it back) and is returned."""
        with self._lock:
            self._db.execute(
                "INSERT INTO cancellations (order_id, cancelled_at, event_json) VALUES (?, ?, ?)"
                " ON CONFLICT (order_id) DO NOTHING",
                (
                    event.order_id,
                    event.cancelled_at.isoformat(),
                    event.model_dump_json(by_alias=True),
                ),
            )
            row = self._db.execute(
                "SELECT event_json FROM cancellations WHERE order_id = ?", (event.order_id,)
            ).fetchone()
        return OrderCancelled.model_validate_json(row[0])

    def mark_published(
        self, event: OrderEvent, *, at: datetime, route: str, payload_bytes: int
    ) -> None:
        """Record that an order's event reached Service Bus, and how."""
        table = "cancellations" if isinstance(event, OrderCancelled) else "orders"
        with self._lock:
            self._db.execute(
                f"UPDATE {table} SET published_at = ?, route = ?, payload_bytes = ?"  # noqa: S608
                " WHERE order_id = ?",
                (at.isoformat(), route, payload_bytes, event.order_id),
            )

    def unpublished(self, order_id: str | None = None) -> list[OrderEvent]:
        """Events that have not reached Service Bus yet (of one order, or of all): oldest
        order first, and an order's creation before its cancellation."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.event_json, o.published_at, c.event_json, c.published_at"
                " FROM orders o LEFT JOIN cancellations c ON c.order_id = o.order_id"
                " WHERE ? IS NULL OR o.order_id = ? ORDER BY o.created_at, o.order_id",
                (order_id, order_id),
            ).fetchall()
        pending: list[OrderEvent] = []
        for created, created_published, cancelled, cancelled_published in rows:
            if created_published is None:
                pending.append(OrderCreated.model_validate_json(created))
            if cancelled is not None and cancelled_published is None:
                pending.append(OrderCancelled.model_validate_json(cancelled))
        return pending

    def get(self, order_id: str) -> StoredOrder | None:
        """One order, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT o.order_id, o.customer_id, o.published_at, o.route, o.payload_bytes,"
                " c.cancelled_at, c.published_at"
                " FROM orders o LEFT JOIN cancellations c ON c.order_id = o.order_id"
                " WHERE o.order_id = ?",
                (order_id,),
            ).fetchone()
        return StoredOrder(*row) if row else None

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
