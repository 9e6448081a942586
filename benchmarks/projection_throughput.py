"""Projected events/s (SQLite, PostgreSQL) against the raw receive+complete rate, and
read-model lag p50/p95 under steady load, through the emulator and the real SDK.

The emulator runs as a subprocess so its CPU does not share this process's GIL.

    .venv/bin/python benchmarks/projection_throughput.py [--events 2000] [--concurrency 16]
        [--postgres "host=127.0.0.1 user=postgres dbname=postgres"] [--rate 100 --seconds 10]

PostgreSQL is measured in a schema created for the run (dropped after); pass ``--postgres ''``
to skip it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from claimcheck_bus.aio import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.worker import (
    EventContext,
    MetricsMiddleware,
    PostgresProjectionStore,
    Projection,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
    handles,
)

QUEUE = "orders"


class OrderPlaced(BaseModel):
    OrderId: str
    Amount: int


class Totals(Projection):
    """A typical small read model: one upsert per event."""

    name = "totals"

    def setup(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS totals (order_id TEXT PRIMARY KEY, amount INTEGER)")

    @handles(OrderPlaced)
    def on_placed(self, event: OrderPlaced, db: Any, context: EventContext) -> None:
        p = "?" if type(db).__module__ == "sqlite3" else "%s"
        db.execute(
            f"INSERT INTO totals VALUES ({p}, {p}) ON CONFLICT (order_id) DO UPDATE"  # noqa: S608
            " SET amount = excluded.amount",
            (event.OrderId, event.Amount),
        )


def count(store: ProjectionStore) -> int:
    try:
        return int(store.query("SELECT COUNT(*) FROM totals")[0][0])
    except Exception:
        return 0


async def publish(settings: BusSettings, n: int) -> None:
    events = [OrderPlaced(OrderId=str(uuid.uuid4()), Amount=i) for i in range(n)]
    async with AsyncClaimCheckBus(settings) as bus:
        for start in range(0, n, 500):
            await bus.publish_batch(events[start : start + 500], queue=QUEUE)


async def raw_rate(settings: BusSettings, n: int, batch: int) -> float:
    """Receive + complete with no handler at all: the ceiling a worker is compared with."""
    await publish(settings, n)
    async with AsyncClaimCheckBus(settings) as bus:
        await bus.receive(bytes, queue=QUEUE, max_messages=1, max_wait=10)  # open the link
        started, done = time.perf_counter(), 0
        while done < n - 1:
            events = await bus.receive(
                bytes, queue=QUEUE, max_messages=min(batch, n - done), max_wait=5
            )
            if not events:
                break
            await asyncio.gather(*(e.complete() for e in events))
            done += len(events)
        return done / (time.perf_counter() - started)


async def projected_rate(
    settings: BusSettings, store: ProjectionStore, n: int, concurrency: int
) -> float:
    await publish(settings, n)
    worker = Worker(settings, max_concurrency=concurrency, max_wait=1.0)
    worker.add_projection(Totals(), store=store, queue=QUEUE)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    started = time.perf_counter()
    while await asyncio.to_thread(count, store) < n:  # noqa: ASYNC110 (polls a database)
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    return n / elapsed


async def steady_lag(
    settings: BusSettings, store: ProjectionStore, rate: int, seconds: float, concurrency: int
) -> tuple[float | None, float | None]:
    metrics = MetricsMiddleware(use_otel=False)
    worker = Worker(settings, max_concurrency=concurrency, max_wait=1.0)
    worker.add_projection(Totals(), store=store, queue=QUEUE)
    worker.use(metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    before = await asyncio.to_thread(count, store)
    sent = 0
    async with AsyncClaimCheckBus(settings) as bus:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            tick = time.perf_counter()
            burst = [OrderPlaced(OrderId=str(uuid.uuid4()), Amount=1) for _ in range(rate // 10)]
            await bus.publish_batch(burst, queue=QUEUE)
            sent += len(burst)
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
    while await asyncio.to_thread(count, store) < before + sent:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    stop.set()
    await task
    return metrics.lag_percentile("totals", 0.5), metrics.lag_percentile("totals", 0.95)


def postgres_store(dsn: str) -> tuple[PostgresProjectionStore, str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    return PostgresProjectionStore(f"{dsn} options='-c search_path={schema}'"), schema


def drop_schema(dsn: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA {schema} CASCADE")


async def run(args: argparse.Namespace, settings: BusSettings, folder: Path) -> None:
    raw = await raw_rate(settings, args.events, args.concurrency)
    print(f"{'raw receive + complete':<28} {raw:>8.0f} events/s")
    stores: list[tuple[str, ProjectionStore]] = [
        ("SQLite projection", SQLiteProjectionStore(folder / "bench.db"))
    ]
    schema = None
    if args.postgres:
        try:
            pg, schema = postgres_store(args.postgres)
            stores.append(("PostgreSQL projection", pg))
        except Exception as error:
            print(f"PostgreSQL skipped: {error}")
    try:
        for label, store in stores:
            rate = await projected_rate(settings, store, args.events, args.concurrency)
            print(f"{label:<28} {rate:>8.0f} events/s  ({rate / raw:.2f}x raw)")
        for label, store in stores:
            p50, p95 = await steady_lag(settings, store, args.rate, args.seconds, args.concurrency)
            print(
                f"{label + ' lag':<28} p50 {1000 * (p50 or 0):.0f} ms, p95 {1000 * (p95 or 0):.0f}"
                f" ms at {args.rate} events/s"
            )
    finally:
        if schema is not None:
            drop_schema(args.postgres, schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=100, help="steady-load events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="steady-load duration")
    parser.add_argument(
        "--postgres", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    args = parser.parse_args()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "claimcheck_bus.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert emulator.stdout is not None
    conn = emulator.stdout.readline().strip()
    if not conn.startswith("Endpoint="):
        print(f"emulator did not start: {conn!r}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory() as folder:
            os.environ["CLAIMCHECK_CONFIG_DIR"] = folder  # no project settings leak in
            settings = BusSettings(
                service_bus={"connection_string": conn, "default_queue_name": QUEUE},
                claim_check={"enabled": False},
            )
            asyncio.run(run(args, settings, Path(folder)))
    finally:
        emulator.terminate()
        emulator.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
