"""AsyncClaimCheckBus: the same behaviour as the sync twin, plus continuous ``async for``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from pydantic import BaseModel

from claimcheck_bus import (
    AsyncClaimCheckBus,
    BusSettings,
    PayloadNotFoundError,
    Route,
    rehydrate_async,
)

KB = 1024
MB = 1024 * KB


class Invoice(BaseModel):
    InvoiceId: str
    Document: str


@pytest.fixture
async def bus(bus_settings: BusSettings) -> AsyncIterator[AsyncClaimCheckBus]:
    async with AsyncClaimCheckBus(bus_settings) as bus:
        yield bus


@pytest.mark.parametrize(
    "size", [KB, 1 * MB, 10 * MB, 100 * MB], ids=["1KB", "1MB", "10MB", "100MB"]
)
async def test_publish_and_receive(
    bus: AsyncClaimCheckBus, long_lock_queue: str, size: int
) -> None:
    sent = Invoice(InvoiceId="i-1", Document="d" * size)
    receipt = await bus.publish(sent, queue=long_lock_queue)
    assert receipt.route is (Route.INLINE if size == KB else Route.CLAIM_CHECK)
    [event] = await bus.receive(Invoice, queue=long_lock_queue, max_messages=1, max_wait=10)
    assert event.data == sent
    assert event.is_claim_check == (size > KB)
    await event.complete()


async def test_stream_receives_continuously(bus: AsyncClaimCheckBus) -> None:
    receipts = await bus.publish_batch(
        [
            Invoice(InvoiceId=str(i), Document="x" * (300 * KB if i % 3 == 0 else 10))
            for i in range(9)
        ]
    )
    assert len(receipts) == 9
    seen: set[str] = set()
    async for event in bus.stream(Invoice, batch_size=4, max_wait=2):
        seen.add(event.data.InvoiceId)
        await event.complete()
        if len(seen) == 9:
            break
    assert seen == {str(i) for i in range(9)}


async def test_a_failed_prefetch_is_raised_by_data_and_leaves_the_message(
    bus: AsyncClaimCheckBus,
) -> None:
    receipt = await bus.publish(Invoice(InvoiceId="gone", Document="x" * 300 * KB))
    assert receipt.blob_name is not None
    from azure.storage.blob.aio import BlobServiceClient

    storage = bus.settings.claim_check.blob_storage.connection_string
    assert storage is not None
    async with BlobServiceClient.from_connection_string(storage.get_secret_value()) as service:
        await service.get_blob_client(
            bus.settings.claim_check.container_name, receipt.blob_name
        ).delete_blob()
    [event] = await bus.receive(Invoice, max_messages=1, max_wait=10)
    assert event.message_id == receipt.message_id
    assert event.event_type == "Invoice"
    with pytest.raises(PayloadNotFoundError):
        _ = event.data
    await event.dead_letter("PayloadNotFound", "the blob was deleted by the test")
    [dead] = await bus.receive(
        Invoice, max_messages=1, max_wait=10, dead_letter=True, prefetch=False
    )
    assert dead.message_id == receipt.message_id
    assert dead.properties["DeadLetterReason"] == "PayloadNotFound"
    await dead.complete()


async def test_options_pass_through_and_scheduling(bus: AsyncClaimCheckBus) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=1)
    receipt = await bus.publish(
        Invoice(InvoiceId="s", Document="x"),
        message_id="my-id",
        correlation_id="corr",
        subject="custom-subject",
        time_to_live=timedelta(minutes=5),
        application_properties={"tenant": "contoso", "priority": 3},
        scheduled_enqueue_time=when,
    )
    assert receipt.sequence_number is not None
    events = []
    while not events:
        events = await bus.receive(Invoice, max_messages=1, max_wait=5)
    [event] = events
    assert event.message.correlation_id == "corr"
    assert event.message.subject == "custom-subject"
    assert event.message.time_to_live == timedelta(minutes=5)
    assert event.properties["tenant"] == "contoso"
    assert event.properties["priority"] == 3
    assert event.message_id == "my-id"
    assert event.message.enqueued_time_utc >= when.replace(microsecond=0) - timedelta(seconds=1)
    await event.complete()


async def test_cancel_scheduled(bus: AsyncClaimCheckBus) -> None:
    receipt = await bus.publish(
        Invoice(InvoiceId="never", Document="x"),
        scheduled_enqueue_time=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    assert receipt.sequence_number is not None
    await bus.cancel_scheduled(receipt.sequence_number)
    conn = bus.settings.service_bus.connection_string
    assert conn is not None
    async with AsyncServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        async with client.get_queue_receiver(str(bus.settings.service_bus.default_queue_name)) as r:
            assert await r.peek_messages(max_message_count=5) == []


async def test_defer_and_receive_deferred(bus: AsyncClaimCheckBus) -> None:
    await bus.publish(Invoice(InvoiceId="later", Document="x" * 300 * KB))
    [event] = await bus.receive(Invoice, max_messages=1, max_wait=10)
    await event.defer()
    assert event.sequence_number is not None
    [again] = await bus.receive_deferred(Invoice, [event.sequence_number])
    assert again.data.InvoiceId == "later"
    await again.complete()


async def test_delete_after_complete_is_opt_in(bus_settings: BusSettings) -> None:
    from azure.storage.blob.aio import BlobServiceClient

    storage = bus_settings.claim_check.blob_storage.connection_string
    assert storage is not None
    container = bus_settings.claim_check.container_name

    async def blobs() -> list[str]:
        async with BlobServiceClient.from_connection_string(storage.get_secret_value()) as svc:
            return [b.name async for b in svc.get_container_client(container).list_blobs()]

    for delete in (False, True):
        settings = bus_settings.model_copy(
            update={
                "claim_check": bus_settings.claim_check.model_copy(
                    update={"delete_after_complete": delete}
                )
            }
        )
        async with AsyncClaimCheckBus(settings) as bus:
            receipt = await bus.publish(Invoice(InvoiceId=str(delete), Document="x" * 300 * KB))
            [event] = await bus.receive(Invoice, max_messages=1, max_wait=10)
            await event.complete()
            assert (receipt.blob_name in await blobs()) is not delete


async def test_standalone_rehydrate(bus: AsyncClaimCheckBus) -> None:
    await bus.publish(Invoice(InvoiceId="r", Document="x" * 300 * KB))
    conn = bus.settings.service_bus.connection_string
    assert conn is not None
    async with AsyncServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        async with client.get_queue_receiver(str(bus.settings.service_bus.default_queue_name)) as r:
            [message] = await r.receive_messages(max_message_count=1, max_wait_time=10)
            invoice = await rehydrate_async(message, Invoice, settings=bus.settings.claim_check)
            assert invoice.InvoiceId == "r"
            await r.complete_message(message)


async def test_socket_timeout_bounds_an_empty_receive(bus_settings: BusSettings) -> None:
    # The SDK reads its connection in steps of socket_timeout (0.2 s by default) and looks
    # at the receive's own deadline only between reads: a busy worker must poll shorter.
    async with AsyncClaimCheckBus(bus_settings, socket_timeout=0.05) as bus:
        # Open the link by receiving one message: that returns as soon as it arrives, where
        # a receive on the empty queue would wait out its whole (generous) budget.
        await bus.publish(Invoice(InvoiceId="opener", Document="x"))
        [opener] = await bus.receive(Invoice, max_wait=10)
        await opener.complete()
        durations = []
        for _ in range(3):
            started = time.monotonic()
            assert await bus.receive(bytes, max_wait=0.05) == []
            durations.append(time.monotonic() - started)
    # Load only ever lengthens a receive; the default timeout never goes below 0.2 s.
    assert min(durations) < 0.2
