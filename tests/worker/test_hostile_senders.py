"""Issue 16 through the worker: one bad or slow message never harms its batch, every hostile
or foreign message gets its own outcome, and messages of the original .NET design route."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.amqp import AmqpAnnotatedMessage
from pydantic import BaseModel
from worker_testkit import LedgerProjection, fast_worker, ledger, ledger_count, running

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.testing.storage_server import Reply, storage_server
from claimcheck_bus.worker import MetricsMiddleware, SQLiteProjectionStore


async def send(
    settings: BusSettings, queue: str, messages: list[ServiceBusMessage | AmqpAnnotatedMessage]
) -> None:
    conn = settings.service_bus.connection_string
    assert conn is not None
    async with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        async with client.get_queue_sender(queue) as sender:
            await sender.send_messages(messages)


def order(order_id: str, amount: int = 1) -> bytes:
    return json.dumps({"OrderId": order_id, "Amount": amount}).encode()


def message(message_id: str, body: bytes = b"", **properties: Any) -> ServiceBusMessage:
    return ServiceBusMessage(
        body,
        message_id=message_id,
        subject="OrderCreated",
        application_properties=properties or None,
    )


async def dead_letters(settings: BusSettings, queue: str) -> dict[str, str]:
    """The dead-letter reasons on ``queue`` by message id (the dead letters are completed)."""
    async with AsyncClaimCheckBus(settings) as bus:
        dead = await bus.receive(
            bytes, queue=queue, dead_letter=True, max_messages=20, max_wait=3, prefetch=False
        )
        for letter in dead:
            await letter.complete()
    return {str(d.message_id): str(d.message.dead_letter_reason) for d in dead}


def until(check: Callable[[], bool]) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return check() or None

    return probe


async def test_a_slow_payload_holds_up_nothing_but_its_own_message(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    """Failure 2: a 12 s payload in a batch (lock 5 s, MaxDeliveryCount 2) made the batch's
    valid inline events lose their locks and end as MaxDeliveryCountExceeded, and messages
    that deserved their own reason got that one too. Here the payload takes longer than the
    lock: the inline events are applied before it even arrives, it is applied too (its lock
    renewed meanwhile), and the bad messages are dead-lettered at once with their reasons."""
    queue = make_queue(lock=2.0, max_delivery_count=2)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    with storage_server() as server:
        claim_check = bus_settings.claim_check.model_copy(
            update={"trusted_blob_endpoints": [server.url("/store")]}
        )
        settings = bus_settings.model_copy(update={"claim_check": claim_check})
        slow = server.serve(f"/store/{queue}/OrderCreated/slow.json", Reply(order("slow"), delay=5))
        await send(
            settings,
            queue,
            [
                message("slow", IsClaimCheck=True, ClaimCheckBlobUri=slow),
                *(message(f"good-{n}", order(f"good-{n}")) for n in range(5)),
                message(
                    "untrusted",
                    IsClaimCheck=True,
                    ClaimCheckBlobUri="https://evil.example.com/c/x.json?sig=SECRET",
                ),
                message(
                    "too-large", IsClaimCheck=True, ClaimCheckBlobUri=slow, ClaimCheckSize=2**31 - 1
                ),
                AmqpAnnotatedMessage(
                    sequence_body=[[1, 2]],
                    properties={"message_id": "sequence", "subject": "OrderCreated"},
                ),
            ],
        )
        worker = fast_worker(settings)
        worker.add_projection(LedgerProjection(), store=store, queue=queue)
        worker.use(metrics)
        async with running(worker):
            await wait_for_async(until(lambda: ledger_count(store) >= 5), timeout=20)
            applied_first = {row[0] for row in ledger(store)}
            await wait_for_async(
                until(lambda: metrics.outcomes["completed"] >= 6), timeout=30, what="the slow one"
            )
            await wait_for_async(until(lambda: metrics.outcomes["dead_lettered"] >= 3), timeout=10)
    assert applied_first == {f"good-{n}" for n in range(5)}
    assert {row[0] for row in ledger(store)} == applied_first | {"slow"}
    assert await dead_letters(settings, queue) == {
        "untrusted": "UntrustedPayloadUrl",
        "too-large": "PayloadTooLarge",
        "sequence": "UndecodableEvent",
    }
    assert metrics.outcomes["abandoned"] == 0
    assert metrics.outcomes["settle_failed"] == 0
    store.close()


class OrderCreatedV2(BaseModel):
    """Version 2 of OrderCreated, read from version 1 through an upcaster."""

    __event_type__ = "OrderCreated"
    __event_version__ = 2

    OrderId: str
    Amount: int
    Currency: str


async def test_foreign_and_malformed_messages_get_their_own_outcomes(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    """Failures 6 and 7: JSON nested past the parser's recursion, where an upcaster applies,
    was retried to MaxDeliveryCountExceeded; messages without an event type (the original
    .NET design's) were dead-lettered as UnknownEventType whatever the configuration."""
    legacy = make_queue(max_delivery_count=3)
    versioned = make_queue(max_delivery_count=3)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    handled: list[OrderCreatedV2] = []

    def on_v2(event: OrderCreatedV2) -> None:
        handled.append(event)

    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=legacy)
    worker.route_untyped("OrderCreated", queue=legacy)
    worker.add_handler(OrderCreatedV2, on_v2, queue=versioned)
    worker.add_upcaster("OrderCreated", 1, lambda document: {**document, "Currency": "EUR"})
    worker.route_untyped(lambda context: context.properties.get("Kind"), queue=versioned)
    worker.use(metrics)
    deep = b"[" * 100_000 + b"]" * 100_000
    await send(
        bus_settings,
        legacy,
        [ServiceBusMessage(order("dotnet", 7), message_id="dotnet")],  # no subject at all
    )
    await send(
        bus_settings,
        versioned,
        [
            message("deep", deep),
            message("huge-number", b'{"OrderId": "x", "Amount": ' + b"9" * 10_000 + b"}"),
            ServiceBusMessage(
                order("kind"), message_id="kind", application_properties={"Kind": "OrderCreated"}
            ),
            ServiceBusMessage(order("nothing"), message_id="nothing"),
        ],
    )
    async with running(worker):
        await wait_for_async(until(lambda: metrics.outcomes["completed"] >= 2), timeout=20)
        await wait_for_async(until(lambda: metrics.outcomes["dead_lettered"] >= 3), timeout=20)
    assert ledger(store) == [("dotnet", 7, 0)]
    assert [(e.OrderId, e.Currency) for e in handled] == [("kind", "EUR")]
    assert await dead_letters(bus_settings, versioned) == {
        "deep": "UndecodableEvent",
        "huge-number": "UndecodableEvent",
        "nothing": "UnknownEventType",
    }
    assert metrics.outcomes["abandoned"] == 0
    store.close()


def test_a_message_without_an_id_is_recorded_under_its_sequence_number() -> None:
    from claimcheck_bus.worker.dispatch import inbox_key

    assert inbox_key("m-1", 7) == "m-1"
    assert inbox_key(None, 7) == inbox_key("", 7) == "sequence-7"
    assert inbox_key(None, 7) != inbox_key(None, 8)


async def test_a_worker_holds_no_more_payload_bytes_than_its_budget(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    """Payloads of one received batch are fetched side by side, but never more than the
    payload budget at once, and each is let go as soon as its handlers are done (not when
    the whole batch is)."""
    queue = make_queue()
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    payload = json.dumps({"OrderId": "big", "Amount": 1, "Blob": "b" * 5_000_000}).encode()
    with storage_server() as server:
        claim_check = bus_settings.claim_check.model_copy(
            update={
                "trusted_blob_endpoints": [server.url("/store")],
                "max_download_size_mb": 6,
                "payload_budget_mb": 12,
            }
        )
        settings = bus_settings.model_copy(update={"claim_check": claim_check})
        url = server.serve(f"/store/{queue}/OrderCreated/big.json", Reply(payload))
        await send(
            settings,
            queue,
            [message(f"big-{n}", IsClaimCheck=True, ClaimCheckBlobUri=url) for n in range(8)],
        )
        worker = fast_worker(settings)
        worker.add_projection(LedgerProjection(), store=store, queue=queue)
        worker.use(metrics)
        tracemalloc.start()
        try:
            async with running(worker):
                await wait_for_async(until(lambda: metrics.outcomes["completed"] >= 8), timeout=60)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert ledger_count(store) == 8
    # Two 5 MB payloads at a time (the budget), with their decoded events, traced about
    # 22 MB here; keeping each until its batch's task ended traced 46 MB.
    assert peak < 32_000_000, peak
    store.close()
