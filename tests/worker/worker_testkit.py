"""The worker tests' shared kit: events, a ledger projection, helpers, and a worker process.

Run as a script (``python worker_testkit.py``) it is the worker the SIGKILL tests start: a
Worker built from environment variables, with an optional injected crash; with
``WORKER_PROJECTION=sequenced`` it feeds :class:`SequencedProjection` from a session queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
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


class Sequenced(BaseModel):
    """Event ``Seq`` (from 1) of stream ``Stream``; the stream is its session."""

    __session_key__: ClassVar[str] = "Stream"

    Stream: str
    Seq: int
    Blob: str = ""


class Rejections:
    """Out-of-order or repeated events a :class:`SequencedProjection` refused, written at once
    in an SQLite file of their own: outside the read model's transaction, which rolls back
    (and would take the record with it), and outside its database, whose writer lock that
    transaction holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with contextlib.closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS rejections (pid INTEGER, stream TEXT, last INTEGER,"
                " seq INTEGER, delivery_count INTEGER)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def record(self, stream: str, last: int, seq: int, delivery_count: int) -> None:
        """Note one refusal (autocommit: it stays whatever the handler's transaction does)."""
        with contextlib.closing(self._connect()) as db:
            db.execute(
                "INSERT INTO rejections VALUES (?, ?, ?, ?, ?)",
                (os.getpid(), stream, last, seq, delivery_count),
            )

    def all(self) -> list[tuple[Any, ...]]:
        """Every refusal: (pid, stream, last applied, refused seq, delivery count)."""
        with contextlib.closing(self._connect()) as db:
            return db.execute("SELECT * FROM rejections").fetchall()


class SequencedProjection(Projection):
    """Applies a stream's events only in sequence: the stream's last applied ``Seq`` lives in
    the read model, updated in the event's transaction, and an event that is not that plus
    one is refused (recorded in ``rejections``, then raised, so it is retried). ``applied``
    gets a row per applied event, so an event applied twice shows up as a second row."""

    name = "sequenced"

    def __init__(self, rejections: Rejections) -> None:
        self.rejections = rejections

    def setup(self, db: Any) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS stream_heads (stream TEXT PRIMARY KEY,"
            " last_seq INTEGER NOT NULL)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS applied (stream TEXT NOT NULL, seq INTEGER NOT NULL,"
            " pid INTEGER NOT NULL, delivery_count INTEGER NOT NULL, session_id TEXT)"
        )

    def reset(self, db: Any) -> None:
        db.execute("DELETE FROM stream_heads")
        db.execute("DELETE FROM applied")

    @handles(Sequenced)
    def on_event(self, event: Sequenced, db: Any, context: EventContext) -> None:
        p = placeholder(db)
        found = db.execute(
            f"SELECT last_seq FROM stream_heads WHERE stream = {p}",  # noqa: S608
            (event.Stream,),
        ).fetchone()
        last = found[0] if found else 0
        if event.Seq != last + 1:
            self.rejections.record(event.Stream, last, event.Seq, context.delivery_count)
            raise AssertionError(f"{event.Stream}: event {event.Seq} after {last}")
        db.execute(
            f"INSERT INTO stream_heads (stream, last_seq) VALUES ({p}, {p})"  # noqa: S608
            " ON CONFLICT (stream) DO UPDATE SET last_seq = excluded.last_seq",
            (event.Stream, event.Seq),
        )
        db.execute(
            f"INSERT INTO applied VALUES ({p}, {p}, {p}, {p}, {p})",  # noqa: S608
            (event.Stream, event.Seq, os.getpid(), context.delivery_count, context.session_id),
        )


class KillAfter(Middleware):
    """SIGKILL this process right after its ``commits``-th committed event: its messages are
    in the read model, and neither they nor its sessions are settled or given back."""

    def __init__(self, commits: int) -> None:
        self.left = commits

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        self.left -= 1
        if self.left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def applied_count(store: ProjectionStore) -> int:
    """How many events a :class:`SequencedProjection` applied (0 before it made its table)."""
    try:
        return int(store.query("SELECT COUNT(*) FROM applied")[0][0])
    except Exception:
        return 0


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


async def send_raw(
    settings: BusSettings, queue: str, messages: ServiceBusMessage | list[ServiceBusMessage]
) -> None:
    """Send with the SDK itself, as a sender that does not use this library would."""
    conn = settings.service_bus.connection_string
    assert conn is not None
    async with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(messages)


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
    after_commit); WORKER_PROJECTION=sequenced for :func:`main_sequenced`."""
    if os.environ.get("WORKER_PROJECTION") == "sequenced":
        main_sequenced()
        return
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


def main_sequenced() -> None:
    """:class:`SequencedProjection` on the session queue WORKER_QUEUE, refusals recorded in
    WORKER_REJECTIONS; WORKER_KILL_AFTER=n: SIGKILL after the n-th committed event."""
    store = open_store(os.environ.get("WORKER_STORE_KIND", "sqlite"), os.environ["WORKER_STORE"])
    worker = Worker(BusSettings(), max_wait=0.5, backoff_base=0.05, backoff_max=0.5)
    projection = SequencedProjection(Rejections(os.environ["WORKER_REJECTIONS"]))
    worker.add_projection(projection, store=store, queue=os.environ["WORKER_QUEUE"], sessions=True)
    kill_after = os.environ.get("WORKER_KILL_AFTER")
    if kill_after:
        worker.use(KillAfter(int(kill_after)))
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("claimcheck_bus.worker").setLevel(logging.INFO)
    worker.run()


if __name__ == "__main__":
    main()
