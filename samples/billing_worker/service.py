"""Wiring of the billing worker: its projection store, projection and subscriber."""

from __future__ import annotations

from pathlib import Path

from claimcheck_bus import BusSettings
from claimcheck_bus.worker import (
    LoggingMiddleware,
    PostgresProjectionStore,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
)
from samples.billing_worker.archive import InvoiceArchive
from samples.billing_worker.outbox import TOPIC, OutboxRelay
from samples.billing_worker.projection import BillingProjection
from samples.billing_worker.read_model import is_postgres, sqlite_path
from samples.events import InvoiceIssued


def projection_store(url: str) -> ProjectionStore:
    """The projection store for a database URL: PostgreSQL or a SQLite file."""
    if is_postgres(url):
        return PostgresProjectionStore(url)
    return SQLiteProjectionStore(sqlite_path(url))


def build_worker(
    settings: BusSettings,
    database: str,
    archive_dir: str | Path,
    relay: OutboxRelay | None,
    *,
    queue: str = "orders",
    topic: str = TOPIC,
    subscription: str = "archive",
) -> Worker:
    """The worker: billing projection on ``queue`` (session-enabled: one session per order,
    applied in order), archive subscriber on ``topic``."""
    store = projection_store(database)
    worker = Worker(settings)
    worker.add_projection(
        BillingProjection(store.placeholder), store=store, queue=queue, sessions=True
    )
    worker.add_handler(
        InvoiceIssued, InvoiceArchive(archive_dir), topic=topic, subscription=subscription
    )
    worker.use(LoggingMiddleware())
    if relay is not None:
        worker.use(relay)
    return worker
