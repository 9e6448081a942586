"""Poison messages are dead-lettered at once with a reason a person can act on, and the
projection is untouched."""

from __future__ import annotations

from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.storage.blob import BlobServiceClient
from worker_testkit import (
    LedgerProjection,
    OrderCreated,
    OrderShipped,
    fast_worker,
    ledger,
    running,
    send_raw,
)

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.azurite import Azurite
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import MetricsMiddleware, SQLiteProjectionStore


def raw(message_id: str, body: bytes = b"", **properties: Any) -> ServiceBusMessage:
    return ServiceBusMessage(
        body,
        message_id=message_id,
        subject="OrderCreated",
        content_type="application/json",
        application_properties=properties or None,
    )


async def test_poison_is_dead_lettered_with_its_reason(
    bus_settings: BusSettings,
    fresh_queue: str,
    azurite: Azurite,
    blob_container: str,
    tmp_path: Any,
) -> None:
    store = SQLiteProjectionStore(tmp_path / "read.db")
    metrics = MetricsMiddleware(use_otel=False)
    worker = fast_worker(bus_settings)
    worker.add_projection(LedgerProjection(), store=store, queue=fresh_queue)
    worker.use(metrics)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        big = await bus.publish(
            OrderCreated(OrderId="big", Amount=1, Blob="x" * 400_000), message_id="missing-blob"
        )
        assert big.blob_name is not None
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            service.get_blob_client(blob_container, big.blob_name).delete_blob()
        await bus.publish(OrderShipped(OrderId="o-1"), message_id="unknown-type")
        await send_raw(
            bus_settings,
            fresh_queue,
            [
                raw("undecodable", b"{not json"),
                raw("invalid", b'{"OrderId": "o-1"}'),
                raw(
                    "untrusted-url",
                    IsClaimCheck=True,
                    ClaimCheckBlobUri="https://evil.example.com/c/b.json?sig=SECRET",
                ),
                raw("future-version", b'{"OrderId": "o-1", "Amount": 1}', EventVersion=9),
            ],
        )
        await bus.publish(OrderCreated(OrderId="good", Amount=3), message_id="good")
        async with running(worker):
            await wait_for_async(
                lambda: _value(metrics.outcomes["dead_lettered"] >= 6),
                timeout=20,
                what="6 dead-letters",
            )
            await wait_for_async(lambda: _value(metrics.outcomes["completed"] >= 1), timeout=10)
        dead = await bus.receive(
            bytes, queue=fresh_queue, dead_letter=True, max_messages=10, max_wait=5, prefetch=False
        )
        reasons = {d.message_id: d.message.dead_letter_reason for d in dead}
        descriptions = {d.message_id: d.message.dead_letter_error_description for d in dead}
        for d in dead:
            await d.complete()
    assert reasons == {
        "missing-blob": "PayloadNotFound",
        "unknown-type": "UnknownEventType",
        "undecodable": "UndecodableEvent",
        "invalid": "InvalidEvent",
        "untrusted-url": "UntrustedPayloadUrl",
        "future-version": "UnsupportedEventVersion",
    }
    assert all(0 < len(text or "") <= 1024 for text in descriptions.values())
    assert "SECRET" not in str(descriptions)
    assert "Amount" in str(descriptions["invalid"])
    assert "OrderShipped" in str(descriptions["unknown-type"])
    assert metrics.outcomes["abandoned"] == 0  # permanent problems are never retried
    assert ledger(store) == [("good", 3, 0)]
    assert store.processed("ledger") == 1
    store.close()


async def _value(value: Any) -> Any:
    return value
