"""Sessions end to end through worker processes: 50 sessions of 40 events each, published
interleaved (every 20th claim-checked), one read model, a worker SIGKILLed mid-run. Every
event is applied exactly once and in its session's order.

The projection checks the order itself: it keeps each stream's last applied sequence number in
the read model, in the event's transaction, and refuses an event that is not that plus one. A
refusal is recorded outside the transaction (which rolls back) and there must be none: a
refused event would be retried and applied later, so a count of applied rows alone could not
tell an ordered run from a lucky one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_testkit import Rejections, Sequenced, applied_count, open_store

from claimcheck_bus import AsyncClaimCheckBus, PublishReceipt, Route
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for

KIT = Path(__file__).parent / "worker_testkit.py"
STREAMS = 50
PER_STREAM = 40
EVENTS = STREAMS * PER_STREAM
BIG_EVERY = 20
"""Every 20th event published is large enough to travel through Blob Storage (5%)."""
LOCK = 15.0
"""The queue's lock duration: long enough not to expire while a worker on this loaded machine
applies a batch. A killed worker's sessions come back sooner, when the broker sees its
connection drop."""


async def publish_interleaved(settings: BusSettings, queue: str) -> list[PublishReceipt]:
    """Event 1 of every stream, then event 2 of every stream, ...: the queue holds the streams
    interleaved, one send after the other, so each stream's events are sent in order."""
    receipts = []
    async with AsyncClaimCheckBus(settings) as bus:
        for seq in range(1, PER_STREAM + 1):
            for number in range(STREAMS):
                blob = "x" * 300_000 if len(receipts) % BIG_EVERY == BIG_EVERY - 1 else ""
                event = Sequenced(Stream=f"stream-{number:02}", Seq=seq, Blob=blob)
                receipts.append(await bus.publish(event, queue=queue))
    return receipts


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Start sequenced worker processes (log files in ``tmp_path``); any still running at the
    end are killed."""
    started: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, str(KIT)], env={**os.environ, **env}, stderr=output
            )
        started.append(process)
        return process, log

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _consuming(log: Path) -> bool:
    return "worker consuming" in log.read_text(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "workers", "kill_after"),
    [
        # Three workers share the sessions; one dies after 200 commits (a third of its share).
        pytest.param("postgres", 3, 200, id="postgres-3-workers"),
        # One worker dies after 600 commits; a new one is started in its place.
        pytest.param("sqlite", 1, 600, id="sqlite-1-worker-restarted"),
    ],
)
def test_sessions_in_order_exactly_once_through_a_sigkill(
    bus_settings: BusSettings,
    make_queue: Callable[..., str],
    left_in: Callable[[str], int],
    servicebus: Any,
    start_worker: Callable[..., tuple[subprocess.Popen[bytes], Path]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kind: str,
    workers: int,
    kill_after: int,
) -> None:
    queue = make_queue(lock=LOCK, sessions=True)
    location = (
        request.getfixturevalue("postgres_schema")
        if kind == "postgres"
        else str(tmp_path / "read.db")
    )
    rejections = Rejections(tmp_path / "rejections.db")
    env = {
        "WORKER_PROJECTION": "sequenced",
        "WORKER_QUEUE": queue,
        "WORKER_STORE": location,
        "WORKER_STORE_KIND": kind,
        "WORKER_REJECTIONS": rejections.path,
    }
    victim, victim_log = start_worker({**env, "WORKER_KILL_AFTER": str(kill_after)})
    others = [start_worker(env) for _ in range(workers - 1)]
    logs = [victim_log, *(log for _, log in others)]
    store = open_store(kind, location)

    def wait(probe: Callable[[], object], timeout: float, what: str) -> None:
        try:
            wait_for(probe, timeout=timeout, interval=0.5, what=what)
        except TimeoutError as error:
            tails = "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)
            raise AssertionError(
                f"{error}; {applied_count(store)} applied, {left_in(queue)} left; logs:\n{tails}"
            ) from None

    wait(
        lambda: all(_consuming(log) for log in logs) or victim.poll() is not None,
        timeout=60,
        what="the workers to start",
    )
    assert victim.poll() is None, victim_log.read_text()

    # Published while the workers consume: sessions fill up one event at a time.
    started = time.monotonic()
    receipts = asyncio.run(publish_interleaved(bus_settings, queue))
    assert sum(r.route is Route.CLAIM_CHECK for r in receipts) == EVENTS // BIG_EVERY
    assert {r.session_id for r in receipts} == {f"stream-{n:02}" for n in range(STREAMS)}

    try:
        wait(lambda: victim.poll() is not None, timeout=60, what="the worker to be killed")
        assert victim.returncode == -signal.SIGKILL, victim_log.read_text()[-3000:]
        # Killed right after a commit: those events are applied, their messages unsettled.
        at_kill = applied_count(store)
        assert kill_after <= at_kill < EVENTS
        if workers == 1:
            others.append(start_worker(env))
            logs.append(others[-1][1])
        survivors = [process for process, _ in others]

        def problems() -> str:
            return "\n".join(log.read_text(errors="replace")[-3000:] for log in logs)

        wait(
            lambda: applied_count(store) >= EVENTS and left_in(queue) == 0,
            timeout=90,
            what=f"{EVENTS} events applied and the queue drained",
        )
        elapsed = time.monotonic() - started
        for process in survivors:
            process.send_signal(signal.SIGTERM)
        assert [p.wait(30) for p in survivors] == [0] * len(survivors), problems()

        assert rejections.all() == [], "events applied out of order or twice"
        rows = store.query("SELECT COUNT(*), COUNT(DISTINCT stream || ':' || seq) FROM applied")
        assert rows == [(EVENTS, EVENTS)], problems()
        assert store.processed("sequenced") == EVENTS  # the inbox: one row per message
        heads = dict(store.query("SELECT stream, last_seq FROM stream_heads"))
        assert heads == {f"stream-{n:02}": PER_STREAM for n in range(STREAMS)}
        # Each event ran in its own stream's session.
        assert store.query("SELECT COUNT(*) FROM applied WHERE session_id <> stream") == [(0,)]
        by_worker = dict(store.query("SELECT pid, COUNT(*) FROM applied GROUP BY pid"))
        assert by_worker[victim.pid] >= kill_after
        assert sum(by_worker.get(p.pid, 0) for p in survivors) == EVENTS - by_worker[victim.pid]
        dead_letters = servicebus.call(
            lambda broker: broker.peek(f"{queue}/$DeadLetterQueue", 1, 100)
        )
        assert dead_letters == []
        print(
            f"\n{EVENTS} events in {STREAMS} sessions, {workers} worker(s) ({kind}), one killed"
            f" after {at_kill} applied: all applied in {elapsed:.1f} s"
        )
    finally:
        store.close()
