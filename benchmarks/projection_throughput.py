"""Projected events/s (SQLite, PostgreSQL) against the raw receive+complete rate, and
read-model lag p50/p95 under steady load, through the emulator and the real SDK.

    .venv/bin/python benchmarks/projection_throughput.py [--events 8000] [--rounds 7] [--seed 1]
        [--concurrency 64] [--postgres "host=127.0.0.1 user=postgres dbname=postgres"]
        [--rate 100 --seconds 10] [--no-pin]

The emulator runs as a subprocess so its CPU does not share this process's GIL; with two
CPUs or more it is pinned to the last one and this process to the others (``--no-pin`` leaves
both to the scheduler), so the consumer never trades places with the broker between runs.

Each round measures the raw rate (``AsyncClaimCheckBus.receive`` + ``complete``, no handler)
with a receive batch as large as the worker's, one twice as large and a default worker's (32),
and every projection, in a shuffled order (the machine's speed drifts; a fixed order would
favour one side). The table gives medians over the rounds. The raw baseline is the receive
size with the highest median, and each ratio is the median of per-round ratios against that
size's rate in the same round (a per-round maximum of noisy rates would inflate the
baseline). Rates count from the first message on, so neither side pays for opening its link.

Two read models per store: one statement per event (``@handles``), and one ``executemany``
per batch (``@handles(..., batch=True)``); on PostgreSQL also the first in a store with
``pipeline=True``. PostgreSQL is measured in a schema created for the run (dropped after);
pass ``--postgres ''`` to skip it.

A local PostgreSQL server shares the broker's and the consumer's CPUs, which the raw loop
never has to. After the rounds, paired raw runs with and without the batch projection's
statements running server-side (a procedure paced to keep the server as busy as the
projection did, read from ``/proc``) show what that costs the raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.postgres_schema import schema_of_its_own
from claimcheck_bus.worker import (
    EventContext,
    MetricsMiddleware,
    Middleware,
    Outcome,
    PostgresProjectionStore,
    Projection,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
    handles,
    reset_projection,
)
from claimcheck_bus.worker.dispatch import refill_size

QUEUE = "orders"
UPSERT = (
    "INSERT INTO totals (order_id, amount) VALUES ({p}, {p})"
    " ON CONFLICT (order_id) DO UPDATE SET amount = excluded.amount"
)


class OrderPlaced(BaseModel):
    OrderId: str
    Amount: int


class TotalsTable(Projection):
    """A typical small read model: order totals, one upsert per event."""

    name = "totals"

    def __init__(self, placeholder: str) -> None:
        self.upsert = UPSERT.format(p=placeholder)

    def setup(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS totals (order_id TEXT PRIMARY KEY, amount INTEGER)")

    def reset(self, db: Any) -> None:
        self.setup(db)  # the first round resets before any worker created it
        db.execute("DELETE FROM totals")


class Totals(TotalsTable):
    """One statement per event."""

    @handles(OrderPlaced)
    def on_placed(self, event: OrderPlaced, db: Any, context: EventContext) -> None:
        db.execute(self.upsert, (event.OrderId, event.Amount))


class BatchTotals(TotalsTable):
    """One ``executemany`` per batch."""

    @handles(OrderPlaced, batch=True)
    def on_placed_batch(
        self, events: Sequence[OrderPlaced], db: Any, contexts: Sequence[EventContext]
    ) -> None:
        db.cursor().executemany(self.upsert, [(e.OrderId, e.Amount) for e in events])


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
        first = await bus.receive(bytes, queue=QUEUE, max_messages=1, max_wait=10)  # the link
        await asyncio.gather(*(e.complete() for e in first))
        started, done = time.perf_counter(), 0
        while done < n - 1:
            events = await bus.receive(
                bytes, queue=QUEUE, max_messages=min(batch, n - 1 - done), max_wait=5
            )
            if not events:
                break
            await asyncio.gather(*(e.complete() for e in events))
            done += len(events)
        return done / (time.perf_counter() - started)


class Settled(Middleware):
    """Counts settled messages and wakes the benchmark at a target, with no database polling
    (a poll would compete with the worker for the store and the GIL)."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def after_handle(
        self, context: EventContext, outcome: Outcome, error: BaseException | None, duration: float
    ) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    async def until(self, target: int) -> None:
        self.target = target
        self.reached.clear()
        if self.count < target:
            await self.reached.wait()


async def projected_rate(
    settings: BusSettings, store: ProjectionStore, projection: Projection, n: int, capacity: int
) -> tuple[float, float | None]:
    """Events/s from the first settlement on, and the share of a CPU the local PostgreSQL
    server used meanwhile (``None`` where it cannot be read)."""
    await asyncio.to_thread(reset_projection, projection, store)
    await publish(settings, n)
    settled = Settled()
    worker = Worker(settings, max_concurrency=capacity, max_wait=1.0)
    worker.add_projection(projection, store=store, queue=QUEUE)
    worker.use(settled)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    await settled.until(1)
    mark = server_mark()
    first, started = settled.count, time.perf_counter()
    await settled.until(n)
    elapsed = time.perf_counter() - started
    share = server_share(mark)
    stop.set()
    await task
    applied = await asyncio.to_thread(count, store)
    if applied != n:
        raise RuntimeError(f"{applied} of {n} events in the read model")
    return (n - first) / elapsed, share


async def steady_lag(
    settings: BusSettings,
    store: ProjectionStore,
    projection: Projection,
    rate: int,
    seconds: float,
    capacity: int,
) -> tuple[float | None, float | None]:
    await asyncio.to_thread(reset_projection, projection, store)
    metrics, settled = MetricsMiddleware(use_otel=False), Settled()
    worker = Worker(settings, max_concurrency=capacity, max_wait=1.0)
    worker.add_projection(projection, store=store, queue=QUEUE)
    worker.use(metrics)
    worker.use(settled)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))
    sent = 0
    async with AsyncClaimCheckBus(settings) as bus:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            tick = time.perf_counter()
            burst = [OrderPlaced(OrderId=str(uuid.uuid4()), Amount=1) for _ in range(rate // 10)]
            await bus.publish_batch(burst, queue=QUEUE)
            sent += len(burst)
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))
    await settled.until(sent)
    stop.set()
    await task
    return metrics.lag_percentile("totals", 0.5), metrics.lag_percentile("totals", 0.95)


#: The database work of the batch projection, done by the server alone: per event an inbox row
#: and an upsert, a commit per 32, paced to ``per_second``, until cancelled. No client work.
SERVER_LOAD = """
CREATE TABLE IF NOT EXISTS load_inbox (projection TEXT NOT NULL, message_id TEXT NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (projection, message_id));
CREATE INDEX IF NOT EXISTS load_inbox_at ON load_inbox (processed_at);
CREATE TABLE IF NOT EXISTS load_totals (order_id TEXT PRIMARY KEY, amount INTEGER);
CREATE OR REPLACE PROCEDURE load_run(per_second INT) LANGUAGE plpgsql AS $$
DECLARE started TIMESTAMPTZ := clock_timestamp(); done INT := 0; ahead FLOAT; i INT;
BEGIN
  LOOP
    INSERT INTO load_inbox SELECT 'load', gen_random_uuid()::TEXT, now()
        FROM generate_series(1, 32) ORDER BY 2 ON CONFLICT DO NOTHING;
    FOR i IN 1..32 LOOP
      INSERT INTO load_totals VALUES (gen_random_uuid()::TEXT, i)
          ON CONFLICT (order_id) DO UPDATE SET amount = excluded.amount;
    END LOOP;
    COMMIT;
    done := done + 32;
    ahead := done::FLOAT / per_second - extract(epoch FROM clock_timestamp() - started);
    IF ahead > 0 THEN PERFORM pg_sleep(ahead); END IF;
  END LOOP;
END $$;
"""


def postgres_cpu() -> float | None:
    """CPU seconds the local PostgreSQL server's processes have used, exited children
    included; ``None`` where ``/proc`` does not show them (another machine, no permission)."""
    total, found = 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found = True
        total += sum(int(f) for f in fields[11:15])  # utime, stime, children's utime, stime
    return total / os.sysconf("SC_CLK_TCK") if found else None


def server_mark() -> tuple[float, float | None]:
    """Now, and the server's CPU seconds so far: the start of a :func:`server_share`."""
    cpu = postgres_cpu()  # first: reading /proc takes a few milliseconds
    return time.perf_counter(), cpu


def server_share(since: tuple[float, float | None]) -> float | None:
    """The share of a CPU the local PostgreSQL server has used since ``since``."""
    started, cpu = since
    now = postgres_cpu()
    return None if cpu is None or now is None else (now - cpu) / (time.perf_counter() - started)


@contextlib.asynccontextmanager
async def server_load(dsn: str, per_second: int) -> AsyncIterator[None]:
    """PostgreSQL busy with a projection's statements at ``per_second`` events, for a raw run
    to show what the database's CPU costs the broker and the consumer on this machine."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(SERVER_LOAD)
        connection.execute("TRUNCATE load_inbox, load_totals")
        call = asyncio.create_task(
            asyncio.to_thread(connection.execute, "CALL load_run(%s)", (per_second,))
        )
        try:
            yield
        finally:
            connection.cancel()
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                await call


def receive_size(worker: Worker) -> int:
    """How many messages one receive of ``worker`` asks for at most."""
    return refill_size(worker.max_concurrency, worker.refill_fraction)


async def run(
    args: argparse.Namespace, settings: BusSettings, folder: Path, dsn: str | None
) -> None:
    stores: list[tuple[str, ProjectionStore]] = [
        ("SQLite", SQLiteProjectionStore(folder / "bench.db"))
    ]
    if dsn is not None:
        stores.append(("PostgreSQL", PostgresProjectionStore(dsn)))
    # What one receive of this worker takes, twice that, and what a default worker's takes:
    # the baseline is whichever the SDK runs fastest.
    receive = receive_size(Worker(settings, max_concurrency=args.concurrency))
    raw_sizes = sorted({receive, 2 * receive, receive_size(Worker(settings))})
    variants = [
        (f"{label} projection, {kind}", store, factory(store.placeholder))
        for label, store in stores
        for kind, factory in (("per event", Totals), ("batch", BatchTotals))
    ]
    if dsn is not None:
        pipelined = PostgresProjectionStore(dsn, pipeline=True)  # a batch's statements at once
        stores.append(("PostgreSQL, pipeline", pipelined))
        variants.append(("PostgreSQL, pipeline, per event", pipelined, Totals("%s")))
    raw: dict[int, list[float]] = {size: [] for size in raw_sizes}
    rates: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    server_shares: dict[str, list[float]] = {}  # of a CPU, PostgreSQL's, by variant
    order = random.Random(args.seed)
    try:
        for number in range(1, args.rounds + 1):
            runs: list[tuple[str, Any]] = [("raw", size) for size in raw_sizes]
            runs += [("projection", variant) for variant in variants]
            order.shuffle(runs)
            for kind, what in runs:
                if kind == "raw":
                    raw[what].append(await raw_rate(settings, args.events, what))
                else:
                    name, store, projection = what
                    rate, share = await projected_rate(
                        settings, store, projection, args.events, args.concurrency
                    )
                    rates[name].append(rate)
                    if share is not None:
                        server_shares.setdefault(name, []).append(share)
            print(
                f"round {number}: "
                + ", ".join(f"raw ({size} a receive) {raw[size][-1]:.0f}/s" for size in raw_sizes)
                + ", "
                + ", ".join(f"{name} {rates[name][-1]:.0f}/s" for name, _, _ in variants),
                flush=True,
            )
        best = max(raw_sizes, key=lambda size: statistics.median(raw[size]))
        print()
        print(f"{'':<34} {'events/s':>9} {'vs raw':>7}")
        for size in raw_sizes:
            label = f"raw receive {size} + complete"
            mark = "1.00x" if size == best else ""
            print(f"{label:<34} {statistics.median(raw[size]):>9.0f} {mark:>7}")
        for name, _, _ in variants:
            ratios = [rate / base for rate, base in zip(rates[name], raw[best], strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
            spread = f"({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"{name:<34} {statistics.median(rates[name]):>9.0f} {ratio:>7} {spread}")
        if dsn is not None:
            sqlite = next(v for v in variants if v[0] == "SQLite projection, batch")
            paired = {
                f"raw receive {best} + complete": lambda: raw_rate(settings, args.events, best),
                sqlite[0]: lambda: first_of(
                    projected_rate(settings, *sqlite[1:], args.events, args.concurrency)
                ),
            }
            await beside_load(args, dsn, paired, rates, raw[best], server_shares)
        print()
        for label, store in stores:
            p50, p95 = await steady_lag(
                settings,
                store,
                Totals(store.placeholder),
                args.rate,
                args.seconds,
                args.concurrency,
            )
            print(
                f"{label} lag at {args.rate} events/s: p50 {1000 * (p50 or 0):.0f} ms,"
                f" p95 {1000 * (p95 or 0):.0f} ms"
            )
    finally:
        for _, store in stores:
            store.close()


async def first_of(pair: Awaitable[tuple[float, Any]]) -> float:
    return (await pair)[0]


async def beside_load(
    args: argparse.Namespace,
    dsn: str,
    runs: Mapping[str, Callable[[], Awaitable[float]]],
    rates: dict[str, list[float]],
    baseline: list[float],
    server_shares: dict[str, list[float]],
) -> None:
    """Each of ``runs`` alone and beside the batch projection's database load (paired runs).
    Where the database shares the broker's and the consumer's CPUs, part of a PostgreSQL
    projection's gap is the server's own CPU, which a remote database would not take from
    them. The load is paced to keep the server as busy as the projection did."""
    name = "PostgreSQL projection, batch"
    if not server_shares.get(name):
        return  # the server's CPU is not readable from here: nothing to match the load to
    target = statistics.median(server_shares[name])
    per_second = round(statistics.median(rates[name]))
    mark = server_mark()
    async with server_load(dsn, per_second):
        await asyncio.sleep(2.0)  # calibration: how busy this pace keeps the server
    measured = server_share(mark) or 0.0
    pace = round(per_second * target / measured) if measured > 0 else per_second
    slowdowns: dict[str, list[float]] = {label: [] for label in runs}
    shares = []
    for _ in range(args.rounds):
        for label, run in runs.items():
            alone = await run()
            mark = server_mark()
            async with server_load(dsn, pace):
                loaded = await run()
            shares.append(server_share(mark) or 0.0)
            slowdowns[label].append(loaded / alone)
    print(
        f"PostgreSQL server busy: {target:.0%} of a CPU during the batch projection,"
        f" {statistics.median(shares):.0%} during its load ({pace} events/s, server-side)."
        " Beside that load, against the same runs alone:"
    )
    for label, values in slowdowns.items():
        spread = f"({min(values):.2f}-{max(values):.2f})"
        print(f"  {label:<32} {statistics.median(values):.2f}x {spread}")
    ratio = statistics.median(r / b for r, b in zip(rates[name], baseline, strict=True))
    raw_slowdown = statistics.median(next(iter(slowdowns.values())))
    print(f"  {name} against the raw rate beside the load: {ratio / raw_slowdown:.2f}x")


def pin(emulator: int) -> str:
    """The emulator on the last CPU, this process (and its threads) on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return "one CPU: nothing pinned"
    os.sched_setaffinity(emulator, {cpus[-1]})
    os.sched_setaffinity(0, set(cpus[:-1]))
    return f"emulator pinned to CPU {cpus[-1]}, this process to CPU(s) {cpus[:-1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1, help="of the shuffled run order")
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="leave CPUs to the scheduler"
    )
    parser.add_argument("--concurrency", type=int, default=64, help="the worker's in-flight cap")
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
    if args.pin:
        print(pin(emulator.pid))
    try:
        with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as cleanup:
            os.environ["CLAIMCHECK_CONFIG_DIR"] = folder  # no project settings leak in
            settings = BusSettings(
                service_bus={"connection_string": conn, "default_queue_name": QUEUE},
                claim_check={"enabled": False},
            )
            dsn = None
            if args.postgres:
                try:
                    dsn = cleanup.enter_context(schema_of_its_own(args.postgres, "bench"))
                except Exception as error:
                    print(f"PostgreSQL skipped: {error}")
            asyncio.run(run(args, settings, Path(folder), dsn))
    finally:
        emulator.terminate()
        emulator.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
