"""The billing read model: its tables, and the queries the query API and the outbox relay run.

SQLite by default (a file path or ``sqlite:///path``), PostgreSQL with a ``postgresql://`` URL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from samples.billing_worker.invoicing import invoice_status

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS invoices (
        order_id      TEXT PRIMARY KEY,
        invoice_id    TEXT NOT NULL UNIQUE,
        customer_id   TEXT NOT NULL,
        currency      TEXT NOT NULL,
        total         TEXT NOT NULL,
        line_count    INTEGER NOT NULL,
        claim_checked INTEGER NOT NULL,
        message_id    TEXT NOT NULL,
        enqueued_at   TEXT,
        committed_at  TEXT NOT NULL,
        lag_ms        DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS invoices_by_customer ON invoices (customer_id, committed_at)",
    # A cancelled order's invoice is voided: a row here, its amount due 0. A table of its own
    # (not columns of invoices): a read model from before cancellations gets it by
    # CREATE TABLE IF NOT EXISTS.
    """CREATE TABLE IF NOT EXISTS invoice_voids (
        order_id      TEXT PRIMARY KEY,
        cancelled_at  TEXT NOT NULL,
        reason        TEXT NOT NULL,
        message_id    TEXT NOT NULL,
        committed_at  TEXT NOT NULL
    )""",
    # The outbox: InvoiceIssued documents written in the same transaction as the invoice, then
    # published by the relay, so an invoice is announced exactly when it exists.
    """CREATE TABLE IF NOT EXISTS invoice_outbox (
        invoice_id    TEXT PRIMARY KEY,
        body          TEXT NOT NULL,
        published_at  TEXT
    )""",
)
TABLES = ("invoices", "invoice_voids", "invoice_outbox")

_SELECT = (
    "SELECT i.order_id, i.invoice_id, i.customer_id, i.currency, i.total, i.line_count,"
    " i.claim_checked, i.message_id, i.enqueued_at, i.committed_at, i.lag_ms,"
    " v.cancelled_at, v.reason"
    " FROM invoices i LEFT JOIN invoice_voids v ON v.order_id = i.order_id"
)


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL database (a URL or a ``key=value`` DSN); else it is
    a SQLite file."""
    return url.startswith(("postgresql://", "postgres://")) or "dbname=" in url


def sqlite_path(url: str) -> str:
    """The file of a SQLite URL or plain path."""
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url


def placeholder_for(url: str) -> str:
    """The DB-API placeholder of the database ``url`` names."""
    return "%s" if is_postgres(url) else "?"


@dataclass(frozen=True)
class Invoice:
    """One row of the read model, as the query API returns it."""

    order_id: str
    invoice_id: str
    customer_id: str
    currency: str
    total: str
    line_count: int
    claim_checked: bool
    message_id: str
    enqueued_at: str | None
    committed_at: str
    lag_ms: float | None
    status: str
    """``issued``, or ``void`` once the order was cancelled."""
    amount_due: str
    """The total, or ``0.00`` for a voided invoice."""
    cancelled_at: str | None
    cancel_reason: str | None


class ReadModel:
    """A connection to the read model for queries and the outbox; thread-safe (one lock)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.placeholder = placeholder_for(url)
        self._lock = threading.Lock()
        self._db: Any
        if is_postgres(url):
            import psycopg

            self._db = psycopg.connect(url, autocommit=True)
        else:
            self._db = sqlite3.connect(
                sqlite_path(url), check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock:
            for statement in SCHEMA:
                self._db.execute(statement)

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql.replace("?", self.placeholder), params).fetchall())

    def invoice(self, order_id: str) -> Invoice | None:
        """The invoice of one order, or None."""
        rows = self._rows(_SELECT + " WHERE i.order_id = ?", (order_id,))
        return _invoice(rows[0]) if rows else None

    def customer_invoices(self, customer_id: str, limit: int = 100) -> list[Invoice]:
        """A customer's invoices, newest first."""
        rows = self._rows(
            _SELECT + " WHERE i.customer_id = ? ORDER BY i.committed_at DESC LIMIT ?",
            (customer_id, limit),
        )
        return [_invoice(row) for row in rows]

    def unpublished(self, limit: int = 50) -> list[tuple[str, str]]:
        """Outbox rows not published yet: (invoice id, InvoiceIssued JSON)."""
        return [
            (str(row[0]), str(row[1]))
            for row in self._rows(
                "SELECT invoice_id, body FROM invoice_outbox WHERE published_at IS NULL"
                " ORDER BY invoice_id LIMIT ?",
                (limit,),
            )
        ]

    def mark_published(self, invoice_id: str, at: str) -> None:
        """Record that an outbox row reached Service Bus."""
        with self._lock:
            self._db.execute(
                "UPDATE invoice_outbox SET published_at = ? WHERE invoice_id = ?".replace(
                    "?", self.placeholder
                ),
                (at, invoice_id),
            )

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()


def _invoice(row: tuple[Any, ...]) -> Invoice:
    values = list(row[:11])
    values[6] = bool(values[6])
    cancelled_at, reason = row[11], row[12]
    status, due = invoice_status(str(values[4]), cancelled_at is not None)
    return Invoice(*values, status, due, cancelled_at, reason)
