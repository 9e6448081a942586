"""ClaimCheckBus end to end: the real SDK against the emulator, real blobs in Azurite.

Every test gets its own queue (or topic) and blob container, and settings built by the
``bus_settings`` fixture from environment variables, as an application would get them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import MessageSizeExceededError
from azure.storage.blob import BlobServiceClient

from claimcheck_bus import (
    BatchPublishError,
    BusSettings,
    ClaimCheckBus,
    PascalCaseEvent,
    PayloadTooLargeError,
    PayloadUnavailableError,
    Route,
    rehydrate,
)
from claimcheck_bus.claim_check.publication import Publication, PublishOptions, utc_now
from claimcheck_bus.claim_check.wire import wire_size
from claimcheck_bus.testing.azurite import Azurite

KB = 1024
MB = 1024 * KB


class Product(PascalCaseEvent):
    product_id: str
    name: str
    quantity: int
    price: Decimal


class OrderCreated(PascalCaseEvent):
    order_id: str
    customer_id: str
    payment_method: str
    created_at: datetime
    products: list[Product]
    notes: str = ""


def order(notes_bytes: int = 0, lines: int = 2) -> OrderCreated:
    return OrderCreated(
        order_id=f"o-{random.randrange(10**9)}",
        customer_id="c-1",
        payment_method="card",
        created_at=datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc),
        products=[
            Product(product_id=f"p-{i}", name="Widget", quantity=i + 1, price=Decimal("9.99"))
            for i in range(lines)
        ],
        notes="n" * notes_bytes,
    )


@pytest.fixture
def bus(bus_settings: BusSettings) -> Iterator[ClaimCheckBus]:
    with ClaimCheckBus(bus_settings) as bus:
        yield bus


def receive_one(bus: ClaimCheckBus, **where: str) -> object:
    events = bus.receive(OrderCreated, max_messages=1, max_wait=10, **where)
    assert len(events) == 1, "expected one message"
    return events[0]


def raw_messages(settings: BusSettings, queue: str, count: int = 10) -> list[ServiceBusMessage]:
    assert settings.service_bus.connection_string is not None
    conn = settings.service_bus.connection_string.get_secret_value()
    with (
        ServiceBusClient.from_connection_string(conn) as client,
        client.get_queue_receiver(queue) as receiver,
    ):
        return list(receiver.peek_messages(max_message_count=count))


# -- sizes -------------------------------------------------------------------------------------


def test_a_small_event_travels_inline_untouched(bus: ClaimCheckBus) -> None:
    sent = order(notes_bytes=KB)
    receipt = bus.publish(sent)
    assert receipt.route is Route.INLINE

    [raw] = raw_messages(bus.settings, receipt.entity)
    assert b"".join(raw.body) == sent.model_dump_json(by_alias=True).encode()
    assert raw.content_type == "application/json"
    assert raw.subject == "OrderCreated"
    assert b"IsClaimCheck" not in (raw.application_properties or {})

    event = receive_one(bus)
    assert event.is_claim_check is False
    assert event.event_type == "OrderCreated"
    assert event.message_id == receipt.message_id
    assert event.data == sent
    event.complete()


def _body_for_size(settings: BusSettings, entity: str, target: int, message_id: str) -> bytes:
    """Bytes whose inline message is exactly ``target`` bytes on the wire."""
    probe = Publication.prepare(
        b"", entity, PublishOptions(event_type="Blob", message_id=message_id), now=utc_now()
    )
    envelope = probe.inline_size()
    length = next(n for n in range(target, 0, -1) if wire_size(envelope, n) <= target)
    assert wire_size(envelope, length) == target
    return b"x" * length


@pytest.mark.parametrize("threshold_kb", [64, None])
def test_exactly_at_the_limit_is_inline_and_one_byte_over_is_claim_checked(
    bus_settings: BusSettings, threshold_kb: int | None
) -> None:
    settings = bus_settings.model_copy(
        update={
            "claim_check": bus_settings.claim_check.model_copy(
                update={"max_payload_size_kb": threshold_kb}
            )
        }
    )
    # Unset, the entity's own limit (the emulator's Standard-tier 256 KB) decides, and the
    # server accepts a message of exactly that size: our size accounting matches the wire.
    limit = threshold_kb * KB if threshold_kb else 256 * KB
    with ClaimCheckBus(settings) as bus:
        queue = str(settings.service_bus.default_queue_name)
        at = _body_for_size(settings, queue, limit, "at-limit-1")
        over = at + b"x"
        first = bus.publish(at, event_type="Blob", message_id="at-limit-1")
        second = bus.publish(over, event_type="Blob", message_id="at-limit-2")
        assert (first.route, first.size) == (Route.INLINE, limit)
        assert (second.route, second.size) == (Route.CLAIM_CHECK, limit + 1)
        events = bus.receive(bytes, max_messages=2, max_wait=10)
        events += bus.receive(bytes, max_messages=1, max_wait=5) if len(events) < 2 else []
        by_id = {e.message_id: e for e in events}
        assert by_id["at-limit-1"].data == at
        assert by_id["at-limit-2"].data == over
        assert by_id["at-limit-2"].is_claim_check
        for event in events:
            event.complete()


def test_too_large_with_claim_check_off_raises_and_sends_nothing(
    bus_settings: BusSettings,
) -> None:
    settings = bus_settings.model_copy(
        update={"claim_check": bus_settings.claim_check.model_copy(update={"enabled": False})}
    )
    with ClaimCheckBus(settings) as bus:
        with pytest.raises(PayloadTooLargeError, match="claim-check is disabled") as caught:
            bus.publish(order(notes_bytes=300 * KB), message_id="too-big")
        assert "too-big" in str(caught.value)
        assert raw_messages(settings, str(settings.service_bus.default_queue_name)) == []


@pytest.mark.parametrize("size", [1 * MB, 10 * MB, 100 * MB], ids=["1MB", "10MB", "100MB"])
def test_large_events_are_claim_checked(
    bus: ClaimCheckBus, azurite: Azurite, long_lock_queue: str, size: int
) -> None:
    sent = order(notes_bytes=size)
    receipt = bus.publish(sent, queue=long_lock_queue)
    assert receipt.route is Route.CLAIM_CHECK
    assert receipt.payload_bytes > size

    [raw] = raw_messages(bus.settings, receipt.entity)
    props = {k.decode(): v for k, v in (raw.application_properties or {}).items()}
    assert b"".join(raw.body) == b""
    assert props["IsClaimCheck"] is True
    assert props["ClaimCheckSize"] == receipt.payload_bytes
    blob_name = f"{receipt.entity}/OrderCreated/{receipt.message_id}.json"
    assert props["ClaimCheckBlobUri"].decode().split("?")[0].endswith(blob_name)

    event = receive_one(bus, queue=long_lock_queue)
    assert event.is_claim_check
    assert event.data == sent
    event.complete()


def test_a_streamed_receive_writes_the_payload_to_a_file(
    bus: ClaimCheckBus, tmp_path: Path
) -> None:
    sent = order(notes_bytes=3 * MB)
    bus.publish(sent)
    event = receive_one(bus)
    written = event.save_payload(tmp_path / "payload.json")
    data = (tmp_path / "payload.json").read_bytes()
    assert written == len(data)
    assert OrderCreated.model_validate_json(data) == sent
    event.complete()


def test_a_batch_of_mixed_sizes(bus: ClaimCheckBus) -> None:
    rng = random.Random(7)
    sizes = [rng.choice([10, KB, 50 * KB, 200 * KB, 400 * KB]) for _ in range(100)]
    receipts = bus.publish_batch(order(notes_bytes=n, lines=1) for n in sizes)
    assert len(receipts) == 100
    assert {r.route for r in receipts} == {Route.INLINE, Route.CLAIM_CHECK}
    expected = {r.message_id: r for r in receipts}

    seen: dict[str, int] = {}
    while len(seen) < 100:
        events = bus.receive(OrderCreated, max_messages=50, max_wait=10)
        assert events, f"only {len(seen)} of 100 arrived"
        for event in events:
            seen[str(event.message_id)] = len(event.data.notes)
            assert event.is_claim_check == (
                expected[str(event.message_id)].route is Route.CLAIM_CHECK
            )
            event.complete()
    assert sorted(seen.values()) == sorted(sizes)


def test_a_topic_fans_one_blob_out_to_two_subscriptions(
    bus: ClaimCheckBus, fresh_topic: tuple[str, list[str]]
) -> None:
    topic, subscriptions = fresh_topic
    sent = order(notes_bytes=400 * KB)
    receipt = bus.publish(sent, topic=topic)
    assert receipt.route is Route.CLAIM_CHECK
    for subscription in subscriptions:
        event = receive_one(bus, topic=topic, subscription=subscription)
        assert event.data == sent
        event.complete()


# -- interop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [True, "True"])
def test_a_message_shaped_like_the_dotnet_original_is_rehydrated(
    bus: ClaimCheckBus, azurite: Azurite, blob_container: str, flag: object
) -> None:
    payload = json.dumps(
        {
            "OrderId": "o-net",
            "CustomerId": "c-net",
            "PaymentMethod": "invoice",
            "CreatedAt": "2026-11-23T12:00:00+00:00",
            "Products": [{"ProductId": "p", "Name": "N", "Quantity": 1, "Price": 2.5}],
        }
    ).encode()
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(blob_container, "orders/OrderCreatedEvent/net-1.json")
        blob.upload_blob(payload)
        from azure.storage.blob import BlobSasPermissions, generate_blob_sas

        sas = generate_blob_sas(
            azurite.account_name,
            blob_container,
            "orders/OrderCreatedEvent/net-1.json",
            account_key=azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        url = f"{blob.url}?{sas}"
    queue = str(bus.settings.service_bus.default_queue_name)
    conn = bus.settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_sender(queue) as sender:
            sender.send_messages(
                ServiceBusMessage(
                    b"",
                    message_id="net-1",
                    application_properties={"IsClaimCheck": flag, "ClaimCheckBlobUri": url},
                )
            )
    event = receive_one(bus)
    assert event.data.order_id == "o-net"
    assert event.data.products[0].price == Decimal("2.5")
    # The same message through the standalone rehydrate, as a Functions trigger would use it.
    assert rehydrate(event.message, OrderCreated, settings=bus.settings).order_id == "o-net"
    event.complete()


def test_what_we_publish_is_readable_with_the_raw_sdk_and_plain_http(bus: ClaimCheckBus) -> None:
    sent = order(notes_bytes=500 * KB)
    receipt = bus.publish(sent)
    [raw] = raw_messages(bus.settings, receipt.entity)
    props = raw.application_properties or {}
    assert props[b"IsClaimCheck"] is True
    body = httpx.get(props[b"ClaimCheckBlobUri"].decode()).content
    assert json.loads(body)["OrderId"] == sent.order_id
    assert props[b"ClaimCheckSha256"].decode() == hashlib.sha256(body).hexdigest()
    # Lean by default: the event type travels as the subject, nothing per event beyond it.
    assert raw.subject == "OrderCreated"
    assert raw.message_id == receipt.message_id
    assert not [key for key in props if key.startswith(b"cloudEvents")]


def test_cloud_events_attributes_are_opt_in(bus_settings: BusSettings) -> None:
    settings = bus_settings.model_copy(
        update={"events": bus_settings.events.model_copy(update={"cloud_events": True})}
    )
    with ClaimCheckBus(settings) as bus:
        receipt = bus.publish(order())
        [raw] = raw_messages(bus.settings, receipt.entity)
        props = raw.application_properties or {}
        assert props[b"cloudEvents_type"] == b"OrderCreated"
        assert props[b"cloudEvents_id"].decode() == receipt.message_id
        assert props[b"cloudEvents_specversion"] == b"1.0"
        assert receive_one(bus).data.order_id == receipt_order_id(receipt, raw)


def receipt_order_id(receipt: object, raw: ServiceBusMessage) -> str:
    return str(json.loads(b"".join(raw.body))["OrderId"])


# -- failures ----------------------------------------------------------------------------------


def test_a_failed_send_deletes_the_uploaded_payload(
    bus: ClaimCheckBus, azurite: Azurite, blob_container: str
) -> None:
    # Application properties the entity cannot carry make the send itself fail after upload.
    huge = {"padding": "p" * 300 * KB}
    with pytest.raises(MessageSizeExceededError):
        bus.publish(order(notes_bytes=10), application_properties=huge, message_id="doomed")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        assert list(service.get_container_client(blob_container).list_blobs()) == []
    assert raw_messages(bus.settings, str(bus.settings.service_bus.default_queue_name)) == []


def test_a_failed_batch_says_what_was_published(bus: ClaimCheckBus) -> None:
    events = [order(notes_bytes=10), "not a model but fine", object()]
    with pytest.raises(BatchPublishError) as caught:
        bus.publish_batch(events)
    assert caught.value.published == []
    assert isinstance(caught.value.__cause__, TypeError)


def test_storage_down_during_publish_raises_and_sends_nothing(
    bus_settings: BusSettings,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from claimcheck_bus.testing.azurite import AzuriteProcess, connection_string_for, find_azurite

    node, main_js = find_azurite([Path(str(request.config.rootpath))])
    process = AzuriteProcess(node, main_js, location=tmp_path)
    monkeypatch.setenv(
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING",
        connection_string_for(process.start()),
    )
    # Fail fast instead of the SDK's ~90 s of retries.
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__RETRY_TOTAL", "1")
    settings = BusSettings()
    try:
        with ClaimCheckBus(settings) as bus:
            bus.publish(order(notes_bytes=400 * KB))  # storage up: the container now exists
            process.stop()
            with pytest.raises(PayloadUnavailableError, match=r"payload upload at http.* failed"):
                bus.publish(order(notes_bytes=400 * KB), message_id="while-down")
    finally:
        process.stop()
    ids = [
        m.message_id for m in raw_messages(settings, str(settings.service_bus.default_queue_name))
    ]
    assert len(ids) == 1
    assert "while-down" not in ids
