"""Four worker processes, 2,000 events (5% claim-checked, some published twice), one
PostgreSQL read model: every event applied exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient
from worker_testkit import OrderCreated, ledger_count, open_store

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.claim_check.publication import PublishReceipt
from claimcheck_bus.claim_check.wire import Route
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for

KIT = Path(__file__).parent / "worker_testkit.py"
EVENTS = 2000
WORKERS = 4
DUPLICATED = 50


def queue_depth(settings: BusSettings, queue: str) -> int:
    conn = settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_receiver(queue) as receiver:
            return len(receiver.peek_messages(max_message_count=10))


async def publish_all(settings: BusSettings, queue: str) -> list[PublishReceipt]:
    """2,000 events, every 20th claim-checked; the first 50 sent twice with the same id."""
    events = [
        OrderCreated(OrderId=f"o-{i:05}", Amount=i, Blob="x" * (300_000 if i % 20 == 0 else 0))
        for i in range(EVENTS)
    ]
    async with AsyncClaimCheckBus(settings) as bus:
        twice, once = events[:DUPLICATED], events[DUPLICATED:]
        receipts = await bus.publish_batch(once, queue=queue)
        for event in twice:  # no duplicate detection on the queue: both copies are delivered
            receipt = await bus.publish(event, queue=queue)
            await bus.publish(event, queue=queue, message_id=receipt.message_id)
            receipts.append(receipt)
    return receipts


@pytest.mark.slow
@pytest.mark.xdist_group("process-trees")  # four worker processes: see test_demo.py
def test_four_workers_two_thousand_events_into_postgres(
    bus_settings: BusSettings,
    postgres_schema: str,
    make_queue: Callable[..., str],
    tmp_path: Path,
) -> None:
    location = postgres_schema
    queue = make_queue(lock=5.0)
    receipts = asyncio.run(publish_all(bus_settings, queue))
    assert sum(r.route is Route.CLAIM_CHECK for r in receipts) == EVENTS // 20

    env = {
        **os.environ,
        "WORKER_QUEUE": queue,
        "WORKER_STORE": location,
        "WORKER_STORE_KIND": "postgres",
        "WORKER_CONCURRENCY": "8",
    }
    logs = [tmp_path / f"worker-{n}.log" for n in range(WORKERS)]
    workers = [
        subprocess.Popen([sys.executable, str(KIT)], env=env, stderr=log.open("wb")) for log in logs
    ]
    store = open_store("postgres", location)
    # Every worker is up (and handles SIGTERM) before the clock starts.
    wait_for(
        lambda: (
            all("worker consuming" in log.read_text() for log in logs)
            or any(w.poll() is not None for w in workers)
        ),
        timeout=60,
        what="the workers to start",
    )
    assert all(w.poll() is None for w in workers), "\n".join(log.read_text() for log in logs)
    started = time.monotonic()
    try:
        wait_for(
            lambda: ledger_count(store) >= EVENTS and queue_depth(bus_settings, queue) == 0,
            timeout=90,
            interval=0.5,
            what=f"{EVENTS} events projected and the queue drained",
        )
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        codes = [w.wait(30) for w in workers]
        problems = "\n".join(log.read_text()[-3000:] for log in logs)
        assert codes == [0] * WORKERS, problems
        rows = store.query("SELECT COUNT(*), COUNT(DISTINCT order_id), SUM(amount) FROM ledger")
        assert rows == [(EVENTS, EVENTS, sum(range(EVENTS)))], problems
        assert store.processed("ledger") == EVENTS
        print(f"\n{EVENTS} events through {WORKERS} workers in {elapsed:.1f} s")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        store.close()
