"""Issue 18 against hostile or foreign senders: whatever arrives in a session gets its own
outcome in bounded time, holds up its own session only, and never puts a sender's control
characters into the worker's logs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from pydantic import BaseModel
from worker_testkit import fast_worker, running, send_raw

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.testing.storage_server import Reply, storage_server
from claimcheck_bus.worker import EventContext, LoggingMiddleware, MetricsMiddleware, Worker


class Step(BaseModel):
    """One step of an aggregate (its session), numbered from 1."""

    Aggregate: str
    Seq: int
    Blob: str = ""


class Applied:
    """A plain session handler noting the steps each session saw, in the order it saw them."""

    def __init__(self) -> None:
        self.steps: dict[str, list[int]] = defaultdict(list)
        self.sessions: dict[str, str | None] = {}

    async def __call__(self, step: Step, context: EventContext) -> None:
        self.steps[step.Aggregate].append(step.Seq)
        self.sessions[step.Aggregate] = context.session_id


def step(aggregate: str, seq: int, session_id: str | None = None, **properties: Any) -> Any:
    """A raw Step message as any SDK would send it; ``properties`` replace the body or the
    subject when given as ``body=`` / ``subject=``."""
    body = properties.pop("body", json.dumps({"Aggregate": aggregate, "Seq": seq}).encode())
    return ServiceBusMessage(
        body,
        message_id=f"{aggregate[:40]}-{seq}",
        session_id=session_id if session_id is not None else aggregate,
        subject=properties.pop("subject", "Step"),
        application_properties=properties or None,
    )


async def dead_letters(settings: BusSettings, queue: str, expected: int) -> dict[str, str]:
    """The dead-letter reasons on ``queue`` by message id (each completed once read)."""
    found: dict[str, str] = {}
    async with AsyncClaimCheckBus(settings) as bus:
        deadline = time.monotonic() + 10
        while len(found) < expected and time.monotonic() < deadline:
            dead = await bus.receive(
                bytes, queue=queue, dead_letter=True, max_messages=20, max_wait=1, prefetch=False
            )
            for letter in dead:
                found[str(letter.message_id)] = str(letter.message.dead_letter_reason)
                await letter.complete()
    return found


def until(check: Callable[[], bool]) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return check() or None

    return probe


def handler_worker(settings: BusSettings, queue: str, **options: Any) -> tuple[Worker, Applied]:
    applied = Applied()
    worker = fast_worker(settings, **options)
    worker.add_handler(Step, applied, queue=queue, sessions=True)
    return worker, applied


def storage_settings(settings: BusSettings, endpoint: str, **claim_check: Any) -> BusSettings:
    update = {"trusted_blob_endpoints": [endpoint], **claim_check}
    return settings.model_copy(
        update={"claim_check": settings.claim_check.model_copy(update=update)}
    )


def claim_checked(aggregate: str, seq: int, url: str) -> ServiceBusMessage:
    return step(aggregate, seq, body=b"", IsClaimCheck=True, ClaimCheckBlobUri=url)


# -- 1. a payload that trickles --------------------------------------------------------------


async def test_a_slow_payload_holds_up_its_own_session_only(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Session "slow" waits 4 s for its step 2's payload (within the download deadline): the
    other sessions are applied meanwhile, and "slow" goes on in order once it arrives."""
    queue = make_queue(lock=2.0, sessions=True)
    with storage_server() as server:
        settings = storage_settings(bus_settings, server.url("/store"), download_timeout_seconds=10)
        payload = json.dumps({"Aggregate": "slow", "Seq": 2}).encode()
        url = server.serve(f"/store/{queue}/Step/slow.json", Reply(payload, delay=4))
        fast = [f"fast-{n}" for n in range(3)]
        await send_raw(
            settings,
            queue,
            [
                step("slow", 1),
                claim_checked("slow", 2, url),
                step("slow", 3),
                *(step(name, seq) for seq in (1, 2, 3) for name in fast),
            ],
        )
        worker, applied = handler_worker(settings, queue, max_concurrent_sessions=4)
        metrics = MetricsMiddleware(use_otel=False)
        worker.use(metrics)
        async with running(worker):
            await wait_for_async(
                until(lambda: all(applied.steps[name] == [1, 2, 3] for name in fast)),
                timeout=15,
                what="the other sessions applied",
            )
            assert applied.steps["slow"] == [1]  # step 2's payload is still on its way
            await wait_for_async(
                until(lambda: applied.steps["slow"] == [1, 2, 3]), timeout=15, what="slow"
            )
    assert metrics.outcomes == {"completed": 12}


async def test_a_payload_that_never_comes_is_retried_then_dead_lettered(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Step 2's payload never arrives within the 1 s download deadline: it is abandoned
    after each try, dead-lettered by the max delivery count, and step 3 is applied after."""
    # The abandons are the worker's, after each failed try: the lock plays no part, and a 2 s
    # one was lost to a late renewal on a loaded machine.
    queue = make_queue(lock=10.0, max_delivery_count=2, sessions=True)
    with storage_server() as server:
        settings = storage_settings(bus_settings, server.url("/store"), download_timeout_seconds=1)
        url = server.serve(f"/store/{queue}/Step/never.json", Reply(b"{}", delay=60))
        await send_raw(
            settings,
            queue,
            [step("a", 1), claim_checked("a", 2, url), step("a", 3), step("b", 1)],
        )
        worker, applied = handler_worker(settings, queue)
        metrics = MetricsMiddleware(use_otel=False)
        worker.use(metrics)
        started = time.monotonic()
        async with running(worker):
            await wait_for_async(until(lambda: applied.steps["a"] == [1, 3]), timeout=15)
            took = time.monotonic() - started
        assert applied.steps["b"] == [1]
        assert metrics.outcomes["abandoned"] == 2
        assert await dead_letters(settings, queue, 1) == {"a-2": "MaxDeliveryCountExceeded"}
    print(f"payload never came: session went on after {took:.1f} s")


# -- 2. many large payloads in one session, small budget ---------------------------------------


async def test_large_payloads_of_one_session_fit_a_small_budget(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Six 1.5 MB payloads in one session, received in one batch, with a budget of 2 MB
    (room for one at a time): applied in order, each on its first delivery."""
    # A long lock: what this checks is the budget, and on a loaded machine a late renewal of a
    # 3 s lock redelivered a step, which looked like the budget's fault.
    queue = make_queue(lock=30.0, sessions=True)
    with storage_server() as server:
        settings = storage_settings(
            bus_settings,
            server.url("/store"),
            max_download_size_mb=2,
            payload_budget_mb=2,
            download_timeout_seconds=5,
        )
        messages = []
        for seq in range(1, 7):
            payload = json.dumps({"Aggregate": "big", "Seq": seq, "Blob": "b" * 1_500_000})
            url = server.serve(f"/store/{queue}/Step/{seq}.json", Reply(payload.encode()))
            messages.append(claim_checked("big", seq, url))
        await send_raw(settings, queue, messages)
        worker, applied = handler_worker(settings, queue, max_batch_size=10)
        metrics = MetricsMiddleware(use_otel=False)
        worker.use(metrics)
        async with running(worker):
            await wait_for_async(
                until(lambda: metrics.outcomes["completed"] >= 6), timeout=20, what="all six"
            )
    assert applied.steps["big"] == [1, 2, 3, 4, 5, 6]
    assert metrics.outcomes == {"completed": 6}


# -- 3. session ids hostile to logs --------------------------------------------------------

HOSTILE_IDS = [
    "s" * 128,
    "ünïcødé-セッション-🚀",
    "line\nbreak",
    "carriage\rreturn",
    "escape\x1b[31mred\x1b[0m",
]


def _control(text: str) -> bool:
    return any(not char.isprintable() for char in text)


async def test_hostile_session_ids_are_served_and_never_logged_raw(
    bus_settings: BusSettings, make_queue: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    queue = make_queue(sessions=True)
    await send_raw(
        bus_settings,
        queue,
        [
            step(f"agg-{n}", seq, session_id)
            for seq in (1, 2)
            for n, session_id in enumerate(HOSTILE_IDS)
        ]
        # A message naming an unknown type from the same kind of sender: its failure is logged.
        + [step("agg-x", 1, "bad\x1b]0;title\x07", subject="Nope\r\nInjected: yes")],
    )
    worker, applied = handler_worker(bus_settings, queue, max_concurrent_sessions=3)
    worker.use(LoggingMiddleware())
    metrics = MetricsMiddleware(use_otel=False)
    worker.use(metrics)
    caplog.set_level(logging.DEBUG, logger="claimcheck_bus")
    async with running(worker):
        await wait_for_async(
            until(
                lambda: metrics.outcomes["completed"] >= 10 and metrics.outcomes["dead_lettered"]
            ),
            timeout=15,
        )
    assert {f"agg-{n}": applied.steps[f"agg-{n}"] for n in range(len(HOSTILE_IDS))} == {
        f"agg-{n}": [1, 2] for n in range(len(HOSTILE_IDS))
    }
    # The handler sees the session id as sent: it is the sender's key, not a log line.
    assert [applied.sessions[f"agg-{n}"] for n in range(len(HOSTILE_IDS))] == HOSTILE_IDS
    lines = [record.getMessage() for record in caplog.records]
    assert any("Nope" in line for line in lines)  # the failure was logged...
    assert [line for line in lines if _control(line)] == []  # ...with no control characters


async def test_a_lost_session_lock_is_logged_without_control_characters(
    bus_settings: BusSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The lock-lost warning names the session: a fault injected into a stand-in session."""
    from claimcheck_bus.worker.handling import EntityState
    from claimcheck_bus.worker.session_lane import SessionLane

    class Lost:
        session_id = "evil\n2026-01-01 ERROR forged line\x1b[2J"
        locked_until = datetime.now(timezone.utc) - timedelta(seconds=1)

        async def renew_lock(self) -> None:
            raise RuntimeError("the session lock was lost")

    lane = SessionLane(
        Worker(bus_settings),
        None,
        EntityState("q", None, None),
        None,  # type: ignore[arg-type]
    )
    caplog.set_level(logging.WARNING, logger="claimcheck_bus")
    await lane._renew(Lost())
    [line] = [record.getMessage() for record in caplog.records]
    assert "lost the lock of session evil?2026-01-01 ERROR forged line?[2J" in line


# -- 4. a flood of sessions ----------------------------------------------------------------


async def test_a_flood_of_sessions_is_served_without_starving_any(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Many one-message sessions through two slots: every one is served. (On the emulator a
    session costs a slot about 1.1 s of accepting, receiving and closing, whatever its size:
    200 sessions took 112 s; 24 keep this test short.)"""
    queue = make_queue(sessions=True)
    names = [f"flood-{n:03d}" for n in range(24)]
    await send_raw(bus_settings, queue, [step(name, 1) for name in names])
    worker, applied = handler_worker(
        bus_settings, queue, max_concurrent_sessions=2, session_idle_timeout=0.05
    )
    started = time.monotonic()
    async with running(worker):
        await wait_for_async(
            until(lambda: len(applied.steps) == len(names)), timeout=30, what="every session"
        )
        took = time.monotonic() - started
    assert all(applied.steps[name] == [1] for name in names)
    print(f"{len(names)} one-message sessions, 2 slots: {took:.1f} s")


async def test_busy_sessions_do_not_starve_the_others(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Two sessions that never go idle (a sender keeps feeding them) and two slots: the
    other sessions' messages are still served while the busy ones go on."""
    queue = make_queue(sessions=True)
    worker, applied = handler_worker(
        bus_settings, queue, max_concurrent_sessions=2, session_turn=2.0
    )
    stop = asyncio.Event()

    async def feed() -> None:
        conn = bus_settings.service_bus.connection_string
        assert conn is not None
        async with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
            async with client.get_queue_sender(queue) as sender:
                seq = 0
                while not stop.is_set():
                    seq += 1
                    await sender.send_messages([step("busy-a", seq), step("busy-b", seq)])
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.05)

    feeding = asyncio.create_task(feed())
    try:
        async with running(worker):
            await wait_for_async(
                until(lambda: len(applied.steps["busy-a"]) > 3 < len(applied.steps["busy-b"])),
                timeout=10,
                what="both slots busy",
            )
            await send_raw(bus_settings, queue, [step(f"quiet-{n}", 1) for n in range(3)])
            await wait_for_async(
                until(lambda: all(applied.steps[f"quiet-{n}"] == [1] for n in range(3))),
                timeout=20,
                what="the quiet sessions served while the busy ones are fed",
            )
            assert not feeding.done()
    finally:
        stop.set()
        await feeding
    for name in ("busy-a", "busy-b"):
        seen = applied.steps[name]
        assert seen == list(range(1, len(seen) + 1))  # in order, none twice


# -- 5. foreign messages inside a session ---------------------------------------------------


async def test_undecodable_unknown_and_unversioned_messages_are_dead_lettered_in_place(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    queue = make_queue(sessions=True)
    await send_raw(
        bus_settings,
        queue,
        [
            step("a", 1),
            step("a", 90, body=b"\xff\xfe not json"),
            step("a", 2),
            step("a", 91, subject="NoSuchEvent"),
            step("a", 3),
            step("a", 92, EventVersion="v2; DROP TABLE"),
            step("a", 4),
            step("a", 93, body=b'{"Aggregate": "a", "Seq": "not a number"}'),
            step("a", 5),
        ],
    )
    worker, applied = handler_worker(bus_settings, queue)
    metrics = MetricsMiddleware(use_otel=False)
    worker.use(metrics)
    async with running(worker):
        await wait_for_async(until(lambda: applied.steps["a"] == [1, 2, 3, 4, 5]), timeout=15)
        await wait_for_async(until(lambda: metrics.outcomes["dead_lettered"] >= 4), timeout=10)
    assert await dead_letters(bus_settings, queue, 4) == {
        "a-90": "UndecodableEvent",
        "a-91": "UnknownEventType",
        "a-92": "UnsupportedEventVersion",
        "a-93": "InvalidEvent",
    }
    assert metrics.outcomes["abandoned"] == 0


# -- 6. a handler slower than the session lock -------------------------------------------------


async def test_a_handler_slower_than_the_lock_keeps_its_session(
    bus_settings: BusSettings, make_queue: Callable[..., str]
) -> None:
    """Lock 1.5 s, a step handled in 4 s: the session's lock is renewed meanwhile, so the
    batch settles once and every step is seen once."""
    queue = make_queue(lock=1.5, sessions=True)
    await send_raw(bus_settings, queue, [step("slow", seq) for seq in (1, 2, 3)])
    seen: list[tuple[int, int]] = []

    async def slow(event: Step, context: EventContext) -> None:
        seen.append((event.Seq, context.delivery_count))
        if event.Seq == 2:
            await asyncio.sleep(4)  # the work itself, not synchronization

    worker = fast_worker(bus_settings)
    worker.add_handler(Step, slow, queue=queue, sessions=True)
    metrics = MetricsMiddleware(use_otel=False)
    worker.use(metrics)
    async with running(worker):
        await wait_for_async(until(lambda: metrics.outcomes["completed"] >= 3), timeout=15)
    assert seen == [(1, 0), (2, 0), (3, 0)]
    assert metrics.outcomes == {"completed": 3}


def test_a_round_fetches_one_payload_at_most_and_never_delays_inline_ones() -> None:
    from claimcheck_bus.worker.session_lane import payload_rounds

    assert payload_rounds([False, False, False]) == 3
    assert payload_rounds([False, True, False]) == 1  # the inline one first
    assert payload_rounds([True, False, False, True]) == 3  # a payload and the inline after it
    assert payload_rounds([True, True]) == 1
    assert payload_rounds([True]) == 1
