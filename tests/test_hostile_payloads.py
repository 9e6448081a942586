"""Issue 16's failures 3-5 through the public clients, over real sockets: a payload that
trickles, a lying Content-Length, a budget of payload bytes, bodies that are not data."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage
from pydantic import BaseModel

from claimcheck_bus import (
    AsyncClaimCheckBus,
    BusSettings,
    ClaimCheckBus,
    EventDecodeError,
    PayloadUnavailableError,
)
from claimcheck_bus.testing.storage_server import Reply, StorageServer, storage_server

PAYLOAD = b'{"OrderId": "slow", "Total": 1}'


class Order(BaseModel):
    OrderId: str
    Total: float


@pytest.fixture
def server() -> Iterator[StorageServer]:
    with storage_server() as server:
        yield server


def trusting(settings: BusSettings, server: StorageServer, **claim_check: Any) -> BusSettings:
    """``settings`` trusting ``server``'s ``/store`` container, with ``claim_check`` changes."""
    updates = {"trusted_blob_endpoints": [server.url("/store")], **claim_check}
    return settings.model_copy(
        update={"claim_check": settings.claim_check.model_copy(update=updates)}
    )


def send(settings: BusSettings, *messages: ServiceBusMessage | AmqpAnnotatedMessage) -> None:
    conn = settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_sender(str(settings.service_bus.default_queue_name)) as sender:
            sender.send_messages(list(messages))


def pointing_at(url: str, message_id: str = "m-1") -> ServiceBusMessage:
    return ServiceBusMessage(
        b"",
        message_id=message_id,
        application_properties={"IsClaimCheck": True, "ClaimCheckBlobUri": url},
    )


def test_a_trickling_payload_is_cut_off_at_the_deadline(
    bus_settings: BusSettings, server: StorageServer
) -> None:
    """Failure 3: the timeout was per read, so one byte a second held a download forever."""
    url = server.serve("/store/q/Order/m-1.json", Reply(PAYLOAD, trickle=0.25))
    settings = trusting(bus_settings, server, download_timeout_seconds=1.0)
    send(settings, pointing_at(url))
    with ClaimCheckBus(settings) as bus:
        [event] = bus.receive(Order, max_wait=10)
        started = time.monotonic()
        with pytest.raises(PayloadUnavailableError, match="gave up after 4 s"):
            _ = event.data
        elapsed = time.monotonic() - started
        event.abandon()
    # Four attempts of one second each, cut mid-body; a full trickle would take 8 s a try.
    assert elapsed < 7.5
    assert len(server.requests) >= 2


def test_a_lying_content_length_costs_nothing_but_what_arrived(
    bus_settings: BusSettings, server: StorageServer
) -> None:
    """Failure 4: the buffer was pre-sized from the declared length (200 MB for 16 bytes)."""
    url = server.serve(
        "/store/q/Order/m-1.json", Reply(b'{"OrderId": "x",', content_length=200_000_000)
    )
    settings = trusting(bus_settings, server, download_timeout_seconds=1.0)
    send(settings, pointing_at(url))
    with ClaimCheckBus(settings) as bus:
        [event] = bus.receive(Order, max_wait=10)
        tracemalloc.start()
        try:
            with pytest.raises(PayloadUnavailableError):
                _ = event.data
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        event.abandon()
    assert peak < 20_000_000


def test_payload_bytes_held_by_unsettled_events_are_bounded(
    bus_settings: BusSettings, server: StorageServer
) -> None:
    """Memory stays bounded whatever senders do: payloads wait for settlements beyond the
    budget, and fail as retryable when none comes before their deadline."""
    body = b'{"OrderId": "big", "Total": 1, "Pad": "' + b"x" * 600_000 + b'"}'
    first = server.serve("/store/q/Order/a.json", Reply(body))
    second = server.serve("/store/q/Order/b.json", Reply(body))
    settings = trusting(
        bus_settings,
        server,
        max_download_size_mb=1,
        payload_budget_mb=1,
        download_timeout_seconds=0.5,
    )
    send(settings, pointing_at(first, "a"), pointing_at(second, "b"))
    with ClaimCheckBus(settings) as bus:
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            events += bus.receive(Order, max_messages=2, max_wait=2)
        a, b = sorted(events, key=lambda e: str(e.message_id))
        assert a.data.OrderId == "big"
        with pytest.raises(PayloadUnavailableError, match="payload budget"):
            _ = b.data
        a.complete()  # gives its share back
        assert b.data.OrderId == "big"
        b.complete()


def test_bodies_that_are_not_data_fail_alone_and_expand_nothing(
    bus_settings: BusSettings,
) -> None:
    """Failure 5: an AMQP sequence or a value holding numbers raised TypeError from receive()
    itself, and a 20-byte list of two large ints became a 400 MB body."""
    good = ServiceBusMessage(b'{"OrderId": "good", "Total": 2}', message_id="good")
    send(
        bus_settings,
        AmqpAnnotatedMessage(sequence_body=[[1, 2]], properties={"message_id": "sequence"}),
        AmqpAnnotatedMessage(
            value_body=[200_000_000, 200_000_000], properties={"message_id": "big-ints"}
        ),
        AmqpAnnotatedMessage(value_body=7, properties={"message_id": "number"}),
        AmqpAnnotatedMessage(
            value_body='{"OrderId": "text", "Total": 3}', properties={"message_id": "text"}
        ),
        good,
    )
    with ClaimCheckBus(bus_settings) as bus:
        events: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        tracemalloc.start()
        try:
            while len(events) < 5 and time.monotonic() < deadline:
                for event in bus.receive(Order, max_messages=5, max_wait=2):
                    events[str(event.message_id)] = event
            outcomes = {}
            for message_id, event in events.items():
                try:
                    outcomes[message_id] = event.data.OrderId
                except EventDecodeError as error:
                    outcomes[message_id] = f"{error.dead_letter_reason}: {error.problem}"
                event.complete()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    refused = "UndecodableEvent: message body is an AMQP"
    assert outcomes == {
        "sequence": f"{refused} sequence, not data sections",
        "big-ints": f"{refused} value holding a list, not data sections",
        "number": f"{refused} value holding a number, not data sections",
        "text": "text",
        "good": "good",
    }
    assert peak < 50_000_000


async def test_the_async_client_delivers_the_rest_of_a_batch_too(
    bus_settings: BusSettings,
) -> None:
    send(
        bus_settings,
        AmqpAnnotatedMessage(sequence_body=[[1]], properties={"message_id": "sequence"}),
        ServiceBusMessage(b'{"OrderId": "good", "Total": 2}', message_id="good"),
    )
    async with AsyncClaimCheckBus(bus_settings) as bus:
        events: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while len(events) < 2 and time.monotonic() < deadline:
            for event in await bus.receive(Order, max_messages=2, max_wait=2):
                events[str(event.message_id)] = event
        assert events["good"].data.OrderId == "good"
        with pytest.raises(EventDecodeError):
            _ = events["sequence"].data
        for event in events.values():
            await event.complete()
