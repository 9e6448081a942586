"""Exactly-once effects from at-least-once delivery: duplicates, redeliveries and retries
through the real emulator, Azurite, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from worker_testkit import (
    BatchLedgerProjection,
    LedgerProjection,
    OrderCreated,
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
    MetricsMiddleware,
    Outcome,
    ProjectionStore,
)
from claimcheck_bus.worker.projection import ProjectionRunner


async def settled(metrics: MetricsMiddleware, outcome: Outcome, count: int) -> None:
    """Wait until ``count`` messages were settled with ``outcome``."""
    await wait_for_async(
        lambda: _async_value(metrics.outcomes[outcome.value] >= count),
        timeout=20,
        what=f"{count} {outcome.value}",
    )


async def _async_value(value: Any) -> Any:
    return value


async def test_duplicate_publish_applied_once(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
    left_in: Callable[[str], int],
) -> None:
    queue = make_queue()
    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        # The entity has no duplicate detection: Service Bus delivers both copies.
        for _ in range(2):
            await bus.publish(OrderCreated(OrderId="o-1", Amount=5), queue=queue, message_id="m-1")
        await bus.publish(OrderCreated(OrderId="o-2", Amount=7), queue=queue, message_id="m-2")
        async with running(worker):
            await settled(metrics, Outcome.DUPLICATE, 1)
            await settled(metrics, Outcome.COMPLETED, 2)
        assert sorted(row[:2] for row in ledger(store)) == [("o-1", 5), ("o-2", 7)]
        assert store.processed("ledger") == 2
        assert left_in(queue) == 0


async def test_redelivery_after_abandon_skips_what_was_committed(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
) -> None:
    """The projection commits, a second handler on the same message fails: the message is
    abandoned and redelivered, and the projection skips it the second time."""
    queue = make_queue()
    calls: list[int] = []

    def flaky_audit(event: OrderCreated, context: EventContext) -> None:
        calls.append(context.delivery_count)
        if context.delivery_count == 0:
            raise ConnectionError("audit service unavailable")

    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    worker.add_handler(OrderCreated, flaky_audit, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="o-1", Amount=5), queue=queue)
        async with running(worker):
            await settled(metrics, Outcome.COMPLETED, 1)
    assert calls == [0, 1]
    assert metrics.outcomes["abandoned"] == 1
    assert ledger(store) == [("o-1", 5, 0)]


async def test_redelivery_after_lock_expiry_is_skipped(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
    left_in: Callable[[str], int],
) -> None:
    """A consumer commits and stalls without settling; the lock expires, Service Bus
    redelivers, and the worker completes the message without applying it again."""
    queue = make_queue(lock=1.0)
    projection = LedgerProjection()
    runner = ProjectionRunner(projection, store)
    runner.start()
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="o-1", Amount=5), queue=queue)
        [stalled] = await bus.receive(bytes, queue=queue, max_wait=5)
        context = EventContext(
            message_id=str(stalled.message_id),
            event_type=stalled.event_type,
            event_version=1,
            entity=queue,
            delivery_count=0,
            enqueued_time=stalled.enqueued_time,
        )
        event = OrderCreated.model_validate_json(stalled.data)
        assert runner.apply(projection.on_created, event, context)
        # No settlement: the lock (1 s) expires and the message comes back.
        metrics = MetricsMiddleware(use_otel=False)
        worker = fast_worker(bus_settings)
        worker.add_projection(LedgerProjection(), store=store, queue=queue)
        worker.use(metrics)
        async with running(worker):
            await settled(metrics, Outcome.DUPLICATE, 1)
        assert ledger(store) == [("o-1", 5, 0)]
        assert left_in(queue) == 0


async def test_handler_failing_n_times_applies_once(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
) -> None:
    failures = 3
    queue = make_queue(max_delivery_count=10)

    class Flaky(LedgerProjection):
        def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
            super().on_created(event, db, context)  # written, then rolled back by the raise
            if context.delivery_count < failures:
                raise TimeoutError(f"read model busy (delivery {context.delivery_count})")

    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(Flaky(), store=store, queue=queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(OrderCreated(OrderId="o-1", Amount=5), queue=queue)
        async with running(worker):
            await settled(metrics, Outcome.COMPLETED, 1)
    assert metrics.outcomes["abandoned"] == failures
    assert ledger(store) == [("o-1", 5, failures)]
    assert store.processed("ledger") == 1


async def test_many_events_with_claim_checks_each_applied_once(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
) -> None:
    queue = make_queue()
    events = [
        OrderCreated(OrderId=f"o-{i:03}", Amount=i, Blob="x" * (300_000 if i % 10 == 0 else 0))
        for i in range(60)
    ]
    worker = fast_worker(bus_settings, max_concurrency=8)
    worker.add_projection(LedgerProjection(), store=store, queue=queue)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        receipts = await bus.publish_batch(events, queue=queue)
        assert sum(r.route.value == "claim-check" for r in receipts) == 6
        async with running(worker):
            await wait_for_async(
                lambda: asyncio.to_thread(lambda: ledger_count(store) >= 60), timeout=30
            )
    rows = ledger(store)
    assert len(rows) == 60
    assert sum(row[1] for row in rows) == sum(range(60))
    assert len({uuid.UUID(r.message_id) for r in receipts}) == store.processed("ledger")


async def test_a_batch_handler_applies_each_event_once_and_isolates_a_failure(
    bus_settings: BusSettings,
    store: ProjectionStore,
    make_queue: Callable[..., str],
) -> None:
    """A batch projection (one ``executemany`` per batch) through the worker: a duplicate
    publish is applied once, and the one event its handler refuses is retried alone until
    the entity's max delivery count dead-letters it, while the rest commit."""
    queue = make_queue(max_delivery_count=2)
    projection = BatchLedgerProjection()
    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(projection, store=store, queue=queue)
    worker.use(metrics)
    events = [OrderCreated(OrderId=f"o-{i:02}", Amount=-1 if i == 7 else i) for i in range(30)]
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish_batch(events, queue=queue)
        await bus.publish(events[3], queue=queue, message_id="dup")
        await bus.publish(events[3], queue=queue, message_id="dup")
        async with running(worker):
            await settled(metrics, Outcome.COMPLETED, 30)  # 29 good ones and the first "dup"
            await settled(metrics, Outcome.DUPLICATE, 1)
            await settled(metrics, Outcome.ABANDONED, 2)  # o-07, delivered twice
        dead = await bus.receive(bytes, queue=queue, dead_letter=True, max_messages=5, max_wait=5)
        assert [event.data for event in dead] == [events[7].model_dump_json().encode()]
        for event in dead:
            await event.complete()
    rows = ledger(store)
    assert sorted(row[0] for row in rows) == sorted(
        [f"o-{i:02}" for i in range(30) if i != 7] + ["o-03"]
    )
    assert store.processed("ledger") == 30
    assert any(len(call) > 1 for call in projection.calls)  # the events did travel in batches
