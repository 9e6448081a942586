"""The worker tests' shared kit: events, a ledger projection, helpers, and a worker process.

Run as a script (``python worker_testkit.py``) it is the worker the SIGKILL tests start: a
Worker built from environment variables, with an optional injected crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

from claimcheck_bus.settings import BusSettings
from claimcheck_bus.worker import (
    EventContext,
    Middleware,
    PostgresProjectionStore,
    Projection,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
    handles,
)


class OrderCreated(BaseModel):
    OrderId: str
    Amount: int
    Blob: str = ""


class OrderShipped(BaseModel):
    OrderId: str


class LedgerProjection(Projection):
    """Appends one row per applied event, so a double apply shows up as an extra row."""

    name = "ledger"

    def setup(self, db: Any) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS ledger (order_id TEXT NOT NULL, amount INTEGER NOT NULL,"
            " delivery_count INTEGER NOT NULL)"
        )

    def reset(self, db: Any) -> None:
        db.execute("DELETE FROM ledger")

    @handles(OrderCreated)
    def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
        p = placeholder(db)
        db.execute(
            f"INSERT INTO ledger (order_id, amount, delivery_count) VALUES ({p}, {p}, {p})",  # noqa: S608
            (event.OrderId, event.Amount, context.delivery_count),
        )


class BatchLedgerProjection(LedgerProjection):
    """The ledger written with one ``executemany`` per batch; ``calls`` records each batch's
    order ids, so a test can see how events were grouped."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    @handles(OrderCreated, batch=True)
    def on_created(  # type: ignore[override]
        self, events: list[OrderCreated], db: Any, contexts: list[EventContext]
    ) -> None:
        self.calls.append([event.OrderId for event in events])
        p = placeholder(db)
        db.cursor().executemany(
            f"INSERT INTO ledger (order_id, amount, delivery_count) VALUES ({p}, {p}, {p})",  # noqa: S608
            [
                (e.OrderId, e.Amount, c.delivery_count)
                for e, c in zip(events, contexts, strict=True)
            ],
        )
        if any(event.Amount < 0 for event in events):
            raise ValueError("a negative amount")


def placeholder(db: Any) -> str:
    """``?`` for sqlite3 connections, ``%s`` for psycopg ones."""
    return "?" if type(db).__module__ == "sqlite3" else "%s"


def ledger(store: ProjectionStore) -> list[tuple[Any, ...]]:
    """The ledger rows, oldest first."""
    return store.query("SELECT order_id, amount, delivery_count FROM ledger ORDER BY order_id")


def ledger_count(store: ProjectionStore) -> int:
    """How many ledger rows exist (0 before the projection created its table)."""
    try:
        return int(store.query("SELECT COUNT(*) FROM ledger")[0][0])
    except Exception:
        return 0


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Serve ``worker`` in a task for the duration of the block, then stop it gracefully."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def fast_worker(settings: BusSettings, **options: Any) -> Worker:
    """A worker with test-friendly timings (short waits and backoff)."""
    defaults: dict[str, Any] = {
        "max_wait": 0.3,
        "backoff_base": 0.02,
        "backoff_max": 0.2,
        "shutdown_timeout": 5.0,
    }
    return Worker(settings, **{**defaults, **options})


def open_store(kind: str, location: str) -> ProjectionStore:
    """The store a (kind, location) pair names: ``sqlite`` and a path, ``postgres`` and a DSN."""
    if kind == "sqlite":
        return SQLiteProjectionStore(location)
    return PostgresProjectionStore(location)


class CrashAt(Middleware):
    """The one injected fault: SIGKILL this process just before or just after the commit."""

    def __init__(self, when: str) -> None:
        self.when = when

    def before_commit(self, context: EventContext, projection: str) -> None:
        if self.when == "before_commit":
            os.kill(os.getpid(), signal.SIGKILL)

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        if self.when == "after_commit":
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    """A worker from the environment: CLAIMCHECK_ settings, WORKER_QUEUE, WORKER_STORE (an
    SQLite path, or a DSN with WORKER_STORE_KIND=postgres) and WORKER_CRASH (before_commit /
    after_commit)."""
    store = open_store(os.environ.get("WORKER_STORE_KIND", "sqlite"), os.environ["WORKER_STORE"])
    worker = Worker(
        BusSettings(), max_wait=0.3, max_concurrency=int(os.environ.get("WORKER_CONCURRENCY", "4"))
    )
    worker.add_projection(LedgerProjection(), store=store, queue=os.environ["WORKER_QUEUE"])
    crash = os.environ.get("WORKER_CRASH")
    if crash:
        worker.use(CrashAt(crash))
    # The scale test reads "worker consuming" on stderr: SIGTERM is handled from then on.
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("claimcheck_bus.worker").setLevel(logging.INFO)
    worker.run()


if __name__ == "__main__":
    main()
