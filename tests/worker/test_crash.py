"""A worker process killed with SIGKILL around the commit: after a restart every event is
applied exactly once (the injected kill is the one fake)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient
from worker_testkit import OrderCreated, ledger, ledger_count, open_store

from claimcheck_bus import ClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for

KIT = Path(__file__).parent / "worker_testkit.py"


@pytest.fixture
def start_worker(
    store_location: tuple[str, str],
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start worker processes on a queue; any still running at the end are killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: str, crash: str | None = None) -> subprocess.Popen[bytes]:
        kind, location = store_location
        env = {**os.environ, "WORKER_QUEUE": queue, "WORKER_STORE": location}
        env["WORKER_STORE_KIND"] = kind
        env.pop("WORKER_CRASH", None)
        if crash:
            env["WORKER_CRASH"] = crash
        process = subprocess.Popen([sys.executable, str(KIT)], env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def queue_is_empty(settings: BusSettings, queue: str) -> bool:
    """No message left on the queue, locked or not."""
    conn = settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_receiver(queue) as receiver:
            return not receiver.peek_messages(max_message_count=10)


def wait_exit(process: subprocess.Popen[bytes], timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise TimeoutError("the worker process did not exit")
        time.sleep(0.05)
    return process.returncode


@pytest.mark.parametrize("crash", ["after_commit", "before_commit"])
def test_sigkill_around_the_commit_applies_once(
    bus_settings: BusSettings,
    store_location: tuple[str, str],
    make_queue: Callable[..., str],
    start_worker: Callable[..., subprocess.Popen[bytes]],
    crash: str,
) -> None:
    queue = make_queue(lock=2.0)
    with ClaimCheckBus(bus_settings) as bus:
        bus.publish(OrderCreated(OrderId="o-1", Amount=5), queue=queue)
    doomed = start_worker(queue, crash)
    assert wait_exit(doomed) == -signal.SIGKILL
    store = open_store(*store_location)
    try:
        # Killed after the commit: the row is there, the message was never completed.
        assert ledger_count(store) == (1 if crash == "after_commit" else 0)
        assert not queue_is_empty(bus_settings, queue)

        survivor = start_worker(queue)
        wait_for(lambda: queue_is_empty(bus_settings, queue), timeout=30, what="the redelivery")
        survivor.send_signal(signal.SIGTERM)
        assert wait_exit(survivor) == 0
        rows = ledger(store)
        assert len(rows) == 1
        assert rows[0][:2] == ("o-1", 5)
        # Applied by the first delivery (after_commit) or, after the lock expired, a later one.
        assert (rows[0][2] == 0) == (crash == "after_commit")
        assert store.processed("ledger") == 1
    finally:
        store.close()
