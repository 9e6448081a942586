"""Projected events/s on a session queue (50 sessions, in order within each) against the same
projection on a queue without sessions, in the same run, through the emulator and the real SDK.

    .venv/bin/python benchmarks/sessions.py [--events 4000] [--sessions 50] [--rounds 5]
        [--slots 8,32] [--postgres "host=127.0.0.1 user=postgres dbname=postgres"] [--no-pin]

The same projection (one upsert per event), the same store, the same events: the session runs
publish them round robin across ``--sessions`` sessions (event 1 of every session, then event 2,
...), the plain runs to a queue without sessions. The worker without sessions handles up to
``max_concurrency`` (64) messages side by side; the session worker holds ``--slots`` sessions
at once (``max_concurrent_sessions``, 8 by default), each one batch after the other, strictly in
order. Each round runs every variant once in a shuffled order (the machine's speed drifts; a
fixed order would favour one side); rates count from the first settled message, so neither
side pays for opening its links. The table gives medians over the rounds and, for each session
variant, the median and spread of its per-round ratio to the plain worker on the same store.

The emulator runs as a subprocess; with two CPUs or more it is pinned to the last one and this
process to the others (``--no-pin`` leaves both to the scheduler). PostgreSQL is measured in a
schema created for the run (dropped after); pass ``--postgres ''`` to skip it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from projection_throughput import Settled, pin
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.postgres_schema import schema_of_its_own
from claimcheck_bus.worker import (
    EventContext,
    PostgresProjectionStore,
    Projection,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
    handles,
    reset_projection,
)

PLAIN, SESSIONS = "plain", "sessions"
CONFIG = {
    "UserConfig": {
        "Namespaces": [
            {
                "Name": "sbemulatorns",
                "Queues": [
                    {"Name": PLAIN, "Properties": {"LockDuration": "PT30S"}},
                    {
                        "Name": SESSIONS,
                        "Properties": {"LockDuration": "PT30S", "RequiresSession": True},
                    },
                ],
                "Topics": [],
            }
        ],
        "Logging": {"Type": "Console"},
    }
}
UPSERT = (
    "INSERT INTO totals (order_id, amount, seq) VALUES ({p}, {p}, {p})"
    " ON CONFLICT (order_id) DO UPDATE SET amount = totals.amount + excluded.amount,"
    " seq = excluded.seq"
)


class OrderLine(BaseModel):
    """Line ``Seq`` of order ``OrderId``: the order is the session on the session queue."""

    OrderId: str
    Seq: int
    Amount: int


class Totals(Projection):
    """A typical small read model: a running total per order, one upsert per event."""

    name = "totals"

    def __init__(self, placeholder: str) -> None:
        self.upsert = UPSERT.format(p=placeholder)

    def setup(self, db: Any) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS totals (order_id TEXT PRIMARY KEY, amount INTEGER,"
            " seq INTEGER)"
        )

    def reset(self, db: Any) -> None:
        self.setup(db)  # the first round resets before any worker created it
        db.execute("DELETE FROM totals")

    @handles(OrderLine)
    def on_line(self, event: OrderLine, db: Any, context: EventContext) -> None:
        db.execute(self.upsert, (event.OrderId, event.Amount, event.Seq))


def lines(events: int, orders: int) -> list[OrderLine]:
    """``events`` lines of ``orders`` orders, interleaved: line 1 of each, then line 2, ..."""
    return [
        OrderLine(OrderId=f"order-{n % orders:03}", Seq=n // orders + 1, Amount=1)
        for n in range(events)
    ]


async def publish(settings: BusSettings, queue: str, events: list[OrderLine]) -> None:
    """Publish in batches; on the session queue each line in its order's session."""
    keyed = queue == SESSIONS
    bus = AsyncClaimCheckBus(settings, session_key=(lambda e: e.OrderId) if keyed else None)
    async with bus:
        for start in range(0, len(events), 500):
            await bus.publish_batch(events[start : start + 500], queue=queue)


def check(store: ProjectionStore, events: list[OrderLine]) -> None:
    """Every line applied once: each order's total is its number of lines."""
    expected: dict[str, int] = {}
    for event in events:
        expected[event.OrderId] = expected.get(event.OrderId, 0) + 1
    found = dict(store.query("SELECT order_id, amount FROM totals"))
    if found != expected:
        raise RuntimeError("the read model does not hold every line exactly once")


async def projected_rate(
    settings: BusSettings,
    store: ProjectionStore,
    queue: str,
    slots: int,
    events: list[OrderLine],
) -> float:
    """Events/s from the first settlement to the last."""
    projection = Totals(store.placeholder)
    await asyncio.to_thread(reset_projection, projection, store)
    await publish(settings, queue, events)
    settled = Settled()
    worker = Worker(settings, max_wait=1.0, max_concurrent_sessions=slots)
    worker.add_projection(projection, store=store, queue=queue, sessions=queue == SESSIONS)
    worker.use(settled)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    await settled.until(1)
    first, started = settled.count, time.perf_counter()
    await settled.until(len(events))
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await asyncio.to_thread(check, store, events)
    return (len(events) - first) / elapsed


async def run(
    args: argparse.Namespace, settings: BusSettings, folder: Path, dsn: str | None
) -> None:
    stores: list[tuple[str, ProjectionStore]] = [
        ("SQLite", SQLiteProjectionStore(folder / "bench.db"))
    ]
    if dsn is not None:
        stores.append(("PostgreSQL", PostgresProjectionStore(dsn)))
    slot_counts = [int(s) for s in args.slots.split(",")]
    events = lines(args.events, args.sessions)
    # (store label, store, queue, session slots): the plain worker and a session worker per
    # slot count, on each store.
    variants = [
        (label, store, queue, slots)
        for label, store in stores
        for queue, slots in [(PLAIN, 0), *((SESSIONS, n) for n in slot_counts)]
    ]
    rates: dict[tuple[str, str, int], list[float]] = {
        (label, queue, slots): [] for label, _, queue, slots in variants
    }
    order = random.Random(args.seed)
    try:
        for number in range(1, args.rounds + 1):
            runs = list(variants)
            order.shuffle(runs)
            for label, store, queue, slots in runs:
                rate = await projected_rate(settings, store, queue, max(slots, 1), events)
                rates[(label, queue, slots)].append(rate)
            print(
                f"round {number}: "
                + ", ".join(f"{name(*key)} {values[-1]:.0f}/s" for key, values in rates.items()),
                flush=True,
            )
    finally:
        for _, store in stores:
            store.close()
    table = Table(
        title=f"{args.events:,} events, {args.sessions} sessions, medians of {args.rounds} rounds"
    )
    table.add_column("store")
    table.add_column("worker")
    table.add_column("events/s", justify="right")
    table.add_column("vs no sessions (spread)", justify="right")
    for (label, queue, slots), values in rates.items():
        plain = rates[(label, PLAIN, 0)]
        ratios = [rate / base for rate, base in zip(values, plain, strict=True)]
        ratio = (
            "1.00x"
            if queue == PLAIN
            else f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
        table.add_row(label, worker_name(queue, slots), f"{statistics.median(values):,.0f}", ratio)
    Console(width=120).print(table)


def worker_name(queue: str, slots: int) -> str:
    if queue == PLAIN:
        return "no sessions, max_concurrency=64"
    return f"sessions, max_concurrent_sessions={slots}"


def name(label: str, queue: str, slots: int) -> str:
    return f"{label} {queue}" + (f" x{slots}" if queue == SESSIONS else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="of the shuffled run order")
    parser.add_argument(
        "--slots", default="8,32", help="max_concurrent_sessions values, comma-separated"
    )
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler"
    )
    parser.add_argument(
        "--postgres", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as cleanup:
        config = Path(folder) / "Config.json"
        config.write_text(json.dumps(CONFIG))
        command = ["-m", "claimcheck_bus.emulator", "--config", str(config), "--port", "0"]
        emulator = subprocess.Popen(
            [sys.executable, *command],
            stdout=subprocess.PIPE,
            text=True,
        )
        cleanup.callback(emulator.wait, 10)
        cleanup.callback(emulator.terminate)
        assert emulator.stdout is not None
        conn = emulator.stdout.readline().strip()
        if not conn.startswith("Endpoint="):
            print(f"emulator did not start: {conn!r}", file=sys.stderr)
            return 1
        # The emulator keeps writing to its stdout: a pipe nobody reads would fill up and stop it.
        threading.Thread(target=emulator.stdout.read, daemon=True).start()
        if args.pin:
            print(pin(emulator.pid))
        os.environ["CLAIMCHECK_CONFIG_DIR"] = folder  # no project settings leak in
        settings = BusSettings(
            service_bus={"connection_string": conn, "default_queue_name": PLAIN},
            claim_check={"enabled": False},
        )
        dsn = None
        if args.postgres:
            try:
                dsn = cleanup.enter_context(schema_of_its_own(args.postgres, "bench"))
            except Exception as error:
                print(f"PostgreSQL skipped: {error}")
        asyncio.run(run(args, settings, Path(folder), dsn))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
