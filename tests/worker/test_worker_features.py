"""Worker behaviour beyond exactly-once: graceful shutdown, versions and upcasters, topics,
plain handlers, middleware and lag, reset and inbox pruning."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from worker_testkit import (
    LedgerProjection,
    OrderCreated,
    OrderShipped,
    fast_worker,
    ledger,
    ledger_count,
    running,
)

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import (
    EventContext,
    LoggingMiddleware,
    MetricsMiddleware,
    Middleware,
    Outcome,
    Projection,
    ProjectionStore,
    SQLiteProjectionStore,
    Worker,
    handles,
    reset_projection,
)


async def until(check: Callable[[], Any], timeout: float = 20, what: str = "") -> None:
    """Poll a synchronous ``check`` (run in a thread: it may query a database) until true."""
    await wait_for_async(lambda: asyncio.to_thread(check), timeout=timeout, what=what)


class SlowLedger(LedgerProjection):
    """The ledger, taking ``delay`` seconds per event (a CPU- or IO-heavy read model)."""

    delay = 0.02

    def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
        time.sleep(self.delay)  # runs in a worker thread: the event loop stays free
        super().on_created(event, db, context)


async def test_graceful_shutdown_mid_stream_loses_nothing(
    bus_settings: BusSettings,
    tmp_path: Path,
    make_queue: Callable[..., str],
    left_in: Callable[[str], int],
) -> None:
    # A long lock: a message left locked by the shutdown would stall the second worker.
    queue = make_queue(lock=60.0)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    events = [OrderCreated(OrderId=f"o-{i:03}", Amount=i) for i in range(150)]
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish_batch(events, queue=queue)
    first = fast_worker(bus_settings, max_concurrency=4)
    first.add_projection(SlowLedger(), store=store, queue=queue)
    async with running(first):
        await until(lambda: ledger_count(store) >= 30, what="30 events applied")
    stopped_at = ledger_count(store)
    assert 30 <= stopped_at < 150

    second = fast_worker(bus_settings, max_concurrency=8)
    second.add_projection(LedgerProjection(), store=store, queue=queue)
    async with running(second):
        await until(lambda: ledger_count(store) >= 150, timeout=15, what="the rest")
        # Applied is not yet completed: wait for the last settlements.
        await until(lambda: left_in(queue) == 0, what="every message settled")
    rows = ledger(store)
    assert [row[0] for row in rows] == [e.OrderId for e in events]
    assert store.processed("ledger") == 150
    store.close()


async def test_shutdown_deadline_abandons_what_is_still_running(
    bus_settings: BusSettings,
    tmp_path: Path,
    make_queue: Callable[..., str],
    left_in: Callable[[str], int],
) -> None:
    queue = make_queue(lock=60.0)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    release = threading.Event()

    class Stuck(LedgerProjection):
        def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
            if context.delivery_count == 0:
                release.wait(10)  # still running when the shutdown deadline passes
            super().on_created(event, db, context)

    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings, shutdown_timeout=0.3)
    worker.add_projection(Stuck(), store=store, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="o-1", Amount=1), queue=queue)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.serve(stop))
        await until(lambda: metrics.outcomes == {} and _in_flight(worker), what="in flight")
        stop.set()
        await asyncio.wait_for(task, 10)
        assert metrics.outcomes["abandoned"] == 1
        # Abandoned, not left locked for 60 s: it is back on the queue at once.
        [again] = await bus.receive(bytes, queue=queue, max_wait=5)
        assert again.delivery_count == 1
        await again.abandon()
        release.set()  # the stuck thread commits late; the redelivery must then be skipped
        second, seen = fast_worker(bus_settings), MetricsMiddleware(use_otel=False)
        second.add_projection(LedgerProjection(), store=store, queue=queue)
        second.use(seen)
        async with running(second):
            # The late commit alone satisfies the ledger and the inbox; wait for the second
            # worker to have skipped and completed the redelivery too.
            await until(lambda: seen.outcomes.get("duplicate") == 1, what="the redelivery")
        assert store.processed("ledger") == 1
        assert left_in(queue) == 0
    assert len(ledger(store)) == 1
    store.close()


def _in_flight(worker: Worker) -> bool:
    return worker._active > 0  # a test peek: the message is received and being handled


class OrderCreatedV2(BaseModel):
    """Version 2 of OrderCreated: the amount in cents."""

    __event_type__: ClassVar[str] = "OrderCreated"
    __event_version__: ClassVar[int] = 2
    OrderId: str
    AmountCents: int


class CentsProjection(Projection):
    name = "cents"
    upcasters: ClassVar[dict[tuple[str, int], Callable[[Any], Any]]] = {
        ("OrderCreated", 1): lambda v1: {
            "OrderId": v1["OrderId"],
            "AmountCents": v1["Amount"] * 100,
        }
    }
    seen: ClassVar[list[tuple[str, int, int]]] = []

    def setup(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS cents (order_id TEXT, cents INTEGER)")

    @handles(OrderCreatedV2)
    def on_created(self, event: OrderCreatedV2, db: Any, context: EventContext) -> None:
        self.seen.append((event.OrderId, event.AmountCents, context.event_version))
        db.execute("INSERT INTO cents VALUES (?, ?)", (event.OrderId, event.AmountCents))


async def test_versions_travel_with_the_message_and_are_upcast(
    bus_settings: BusSettings, fresh_queue: str, tmp_path: Path
) -> None:
    store = SQLiteProjectionStore(tmp_path / "read.db")
    worker = fast_worker(bus_settings)
    worker.add_projection(CentsProjection(), store=store, queue=fresh_queue)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="v1", Amount=3))
        await bus.publish(OrderCreatedV2(OrderId="v2", AmountCents=450))
        peeked = await bus.receive(bytes, max_messages=2, max_wait=5)
        assert sorted(str(e.properties.get("EventVersion")) for e in peeked) == ["2", "None"]
        assert {e.event_type for e in peeked} == {"OrderCreated"}
        for event in peeked:
            await event.abandon()
        async with running(worker):
            await until(lambda: store.processed("cents") == 2)
    assert sorted(store.query("SELECT order_id, cents FROM cents")) == [("v1", 300), ("v2", 450)]
    assert sorted(CentsProjection.seen) == [("v1", 300, 1), ("v2", 450, 2)]
    store.close()


class Recorder(Middleware):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def before_handle(self, context: EventContext) -> None:
        self.calls.append("before_handle")

    def before_commit(self, context: EventContext, projection: str) -> None:
        self.calls.append(f"before_commit:{projection}")

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        assert lag is not None
        assert lag >= 0
        self.calls.append(f"after_commit:{projection}")

    def after_handle(
        self, context: EventContext, outcome: Outcome, error: BaseException | None, duration: float
    ) -> None:
        self.calls.append(f"after_handle:{outcome.value}")


class Broken(Middleware):
    def after_handle(self, *args: Any) -> None:
        raise RuntimeError("metrics backend down")


async def test_topic_subscriptions_plain_handlers_and_middleware(
    bus_settings: BusSettings,
    fresh_topic: tuple[str, list[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topic, (billing, archive) = fresh_topic
    store = SQLiteProjectionStore(tmp_path / "read.db")
    archived: list[tuple[str, str]] = []

    async def archive_order(event: OrderCreated, context: EventContext) -> None:
        archived.append((event.OrderId, context.entity))

    recorder, metrics = Recorder(), MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, topic=topic, subscription=billing)
    worker.add_handler(OrderCreated, archive_order, topic=topic, subscription=archive)
    for middleware in (recorder, metrics, Broken(), LoggingMiddleware):
        worker.use(middleware)
    caplog.set_level(logging.DEBUG, logger="claimcheck_bus.worker")
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="o-1", Amount=2), topic=topic)
        async with running(worker):
            await until(lambda: metrics.outcomes["completed"] >= 2)
    assert archived == [("o-1", f"{topic}/Subscriptions/{archive}")]
    assert ledger(store) == [("o-1", 2, 0)]
    projection_calls = [c for c in recorder.calls if "ledger" in c]
    assert projection_calls == ["before_commit:ledger", "after_commit:ledger"]
    assert recorder.calls.count("before_handle") == 2
    assert recorder.calls.count("after_handle:completed") == 2
    assert len(metrics.lags("ledger")) == 1
    assert metrics.lag_percentile("ledger", 0.95) == metrics.lags("ledger")[0]
    assert any("lag" in r.getMessage() and "ledger" in r.getMessage() for r in caplog.records)
    assert any("Broken" in r.getMessage() for r in caplog.records)  # logged, not fatal
    store.close()


class Completions(Middleware):
    """The event types of the messages completed, in order."""

    def __init__(self) -> None:
        self.types: list[str | None] = []

    def after_handle(
        self, context: EventContext, outcome: Outcome, error: BaseException | None, duration: float
    ) -> None:
        if outcome is Outcome.COMPLETED:
            self.types.append(context.event_type)


async def test_a_message_settles_without_waiting_for_the_rest_of_its_batch(
    bus_settings: BusSettings, tmp_path: Path, make_queue: Callable[..., str]
) -> None:
    """Messages received together are applied together, but each one is settled as soon as
    its own handlers are done: a slow handler holds up only its own message."""
    queue = make_queue()
    store = SQLiteProjectionStore(tmp_path / "read.db")
    release = asyncio.Event()

    async def ship(event: OrderShipped) -> None:
        await release.wait()

    completions = Completions()
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    worker.add_handler(OrderShipped, ship, queue=queue)
    worker.use(completions)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        # Published before the worker starts, so its first receive takes both.
        await bus.publish_batch(
            [OrderShipped(OrderId="o-1"), OrderCreated(OrderId="o-1", Amount=5)], queue=queue
        )
        async with running(worker):
            await until(lambda: completions.types, what="the projected message completed")
            assert completions.types == ["OrderCreated"]  # the shipping handler still waits
            release.set()
            await until(lambda: len(completions.types) == 2, what="the slow message completed")
    assert completions.types == ["OrderCreated", "OrderShipped"]
    assert ledger(store) == [("o-1", 5, 0)]
    store.close()


async def test_reset_then_replay_rebuilds(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
) -> None:
    queue = make_queue()
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        for i in range(3):
            await bus.publish(
                OrderCreated(OrderId=f"o-{i}", Amount=i), queue=queue, message_id=f"m{i}"
            )
        async with running(worker):
            await until(lambda: ledger_count(store) == 3)
        reset_projection(LedgerProjection(), store)
        assert ledger_count(store) == 0
        assert store.processed("ledger") == 0
        # Replaying the same message ids applies them again: the inbox was cleared too.
        for i in range(3):
            await bus.publish(
                OrderCreated(OrderId=f"o-{i}", Amount=i), queue=queue, message_id=f"m{i}"
            )
        again = fast_worker(bus_settings)
        again.add_projection(LedgerProjection(), store=store, queue=queue)
        async with running(again):
            await until(lambda: ledger_count(store) == 3)
    assert [row[:2] for row in ledger(store)] == [("o-0", 0), ("o-1", 1), ("o-2", 2)]


def test_inbox_pruning_removes_only_old_rows(store: ProjectionStore) -> None:
    store.open()
    now = datetime.now(timezone.utc)
    with store.transaction() as db:
        assert store.claim(db, "p", "old", now - timedelta(days=8))
        assert store.claim(db, "p", "new", now - timedelta(days=1))
        assert store.claim(db, "q", "old", now - timedelta(days=8))
        assert not store.claim(db, "p", "new", now)  # the key is (projection, message id)
    assert store.prune(now - timedelta(days=7)) == 2
    assert store.processed("p") == 1
    assert store.processed("q") == 0


def test_a_failed_handler_leaves_neither_rows_nor_inbox(store: ProjectionStore) -> None:
    from claimcheck_bus.worker.projection import ProjectionRunner

    runner = ProjectionRunner(LedgerProjection(), store)
    runner.start()
    context = EventContext("m-1", "OrderCreated", 1, "q", 0, None)

    def failing(event: Any, db: Any, context: EventContext) -> None:
        LedgerProjection().on_created(event, db, context)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        runner.apply(failing, OrderCreated(OrderId="o", Amount=1), context)
    assert ledger_count(store) == 0
    assert store.processed("ledger") == 0
    assert runner.apply(LedgerProjection().on_created, OrderCreated(OrderId="o", Amount=1), context)
    assert not runner.apply(
        LedgerProjection().on_created, OrderCreated(OrderId="o", Amount=1), context
    )
    assert ledger_count(store) == 1


async def test_lock_renewal_outlasts_cpu_heavy_handlers(
    bus_settings: BusSettings,
    tmp_path: Path,
    make_queue: Callable[..., str],
) -> None:
    """Three messages received together, each 1.2 s of pure-Python CPU work in one batch's
    transaction: every lock (1 s) is renewed until its message is settled."""
    queue = make_queue(lock=1.0)
    store = SQLiteProjectionStore(tmp_path / "read.db")

    class Heavy(LedgerProjection):
        def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
            deadline = time.monotonic() + 1.2
            total = 0
            while time.monotonic() < deadline:
                total += sum(range(1000))
            super().on_created(event, db, context)

    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(Heavy(), store=store, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish_batch(
            [OrderCreated(OrderId=f"o-{i}", Amount=i) for i in range(3)], queue=queue
        )
        async with running(worker):
            await until(lambda: sum(metrics.outcomes.values()) >= 3, timeout=20)
    # Completed under their first locks: never redelivered, never a settle failure.
    assert dict(metrics.outcomes) == {"completed": 3}
    assert ledger(store) == [("o-0", 0, 0), ("o-1", 1, 0), ("o-2", 2, 0)]
    store.close()


async def test_metrics_reach_opentelemetry(
    bus_settings: BusSettings,
    tmp_path: Path,
    make_queue: Callable[..., str],
) -> None:
    """With a real OpenTelemetry meter: one lag point per commit, one count per settlement."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    queue = make_queue()
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(meter=provider.get_meter("test"))
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish_batch(
            [OrderCreated(OrderId=f"o-{i}", Amount=i) for i in range(3)], queue=queue
        )
        await bus.publish(OrderCreated(OrderId="o-0", Amount=0), queue=queue, message_id="dup")
        await bus.publish(OrderCreated(OrderId="o-0", Amount=0), queue=queue, message_id="dup")
        async with running(worker):
            await until(lambda: sum(metrics.outcomes.values()) >= 5)
    data = reader.get_metrics_data()
    points = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    [lag] = points["claimcheck.projection.lag"]
    assert lag.count == 4  # three events and the first "dup"; the second was skipped
    assert dict(lag.attributes) == {"projection": "ledger"}
    assert 0 <= lag.min <= lag.max < 30
    counted = {
        point.attributes["outcome"]: point.value for point in points["claimcheck.worker.messages"]
    }
    assert counted == {"completed": 4, "duplicate": 1}
    assert {point.attributes["entity"] for point in points["claimcheck.worker.messages"]} == {queue}
    provider.shutdown()
    store.close()
