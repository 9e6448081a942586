"""The real azure-servicebus SDK (sync) against the emulator over a real socket."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import (
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusReceiveMode,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageLockLostError,
    MessageNotFoundError,
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    ServiceBusAuthenticationError,
)

from claimcheck_bus.emulator import Emulator, load_config
from claimcheck_bus.emulator.amqp import message
from claimcheck_bus.emulator.amqp.types import Int, Timestamp

CONFIG = Path(__file__).with_name("Config.json")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(load_config(CONFIG)) as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        yield sb


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def send(client: ServiceBusClient, queue: str, *messages: ServiceBusMessage) -> None:
    with client.get_queue_sender(queue) as sender:
        sender.send_messages(list(messages))


def receive_all(receiver: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Receive until `count` messages arrived (or fail at the deadline)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


def test_properties_round_trip_with_their_amqp_types(
    emulator: Emulator, client: ServiceBusClient
) -> None:
    marker = uuid.uuid4()
    stamp = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone.utc)
    props = {
        "s": "text",
        "i": 42,
        "f": 1.5,
        "b": True,
        "raw": b"\x00\x01",
        "u": marker,
        "t": stamp,
    }
    outgoing = ServiceBusMessage(
        b"body-bytes",
        application_properties=props,  # type: ignore[arg-type]
        message_id="mid-1",
        correlation_id="cid-1",
        subject="subj",
        content_type="application/json",
        time_to_live=timedelta(minutes=5),
        to="somewhere",
        reply_to="replies",
    )
    send(client, "props", outgoing)

    # On the wire (as stored by the broker) every property keeps its AMQP type.
    stored = emulator.call(lambda b: b.peek("props", 0, 10))
    assert len(stored) == 1
    app = message.parse_message(stored[0].bare).application_properties
    assert type(app["s"]) is str
    assert type(app["i"]) is Int
    assert app["i"] == 42
    assert type(app["f"]) is float
    assert app["f"] == 1.5
    assert app["b"] is True
    assert app["raw"] == "\x00\x01"  # the SDK itself sends bytes values as AMQP strings
    assert app["u"] == marker
    assert type(app["t"]) is Timestamp
    assert app["t"].to_datetime() == stamp

    with client.get_queue_receiver("props", max_wait_time=5) as receiver:
        (got,) = receive_all(receiver, 1)
        assert b"".join(got.body) == b"body-bytes"
        assert got.message_id == "mid-1"
        assert got.correlation_id == "cid-1"
        assert got.subject == "subj"
        assert got.content_type == "application/json"
        assert got.time_to_live == timedelta(minutes=5)
        assert got.to == "somewhere"
        assert got.reply_to == "replies"
        assert got.delivery_count == 0
        assert got.sequence_number >= 1
        assert got.enqueued_time_utc is not None
        assert got.locked_until_utc > datetime.now(timezone.utc)
        received = got.application_properties
        assert received[b"s"] == b"text"
        assert received[b"i"] == 42
        assert received[b"f"] == 1.5
        assert received[b"b"] is True
        assert received[b"raw"] == b"\x00\x01"
        assert received[b"u"] == marker
        assert received[b"t"] == Timestamp.from_datetime(stamp)  # the SDK yields epoch ms
        receiver.complete_message(got)
    assert emulator.call(lambda b: b.peek("props", 0, 10)) == []


def test_unknown_entity_raises_entity_not_found(emulator: Emulator) -> None:
    with ServiceBusClient.from_connection_string(emulator.connection_string, retry_total=0) as sb:
        with pytest.raises(MessagingEntityNotFoundError):
            with sb.get_queue_sender("no-such-queue") as sender:
                sender.send_messages(ServiceBusMessage("x"))
        with pytest.raises(MessagingEntityNotFoundError):
            with sb.get_queue_receiver("no-such-queue") as receiver:
                receiver.receive_messages(max_wait_time=1)


def test_wrong_key_raises_authentication_error(emulator: Emulator) -> None:
    wrong = emulator.connection_string.replace("SAS_KEY_VALUE", "not-the-key")
    with ServiceBusClient.from_connection_string(wrong, retry_total=0) as sb:
        with pytest.raises(ServiceBusAuthenticationError):
            with sb.get_queue_sender("wrongkey") as sender:
                sender.send_messages(ServiceBusMessage("x"))
    assert emulator.call(lambda b: b.peek("wrongkey", 0, 10)) == []


def test_single_message_over_the_limit_and_batch_limit(client: ServiceBusClient) -> None:
    with client.get_queue_sender("sizes") as sender:
        with pytest.raises(MessageSizeExceededError):
            sender.send_messages(ServiceBusMessage(b"x" * 300_000))
        batch = sender.create_message_batch()
        assert batch.max_size_in_bytes == 262_144
        added = 0
        while True:
            try:
                batch.add_message(ServiceBusMessage(b"y" * 10_000))
            except MessageSizeExceededError:
                break
            added += 1
        assert 20 <= added <= 26
        sender.send_messages(batch)
        # Just under the limit still passes.
        sender.send_messages(ServiceBusMessage(b"z" * 250_000))
    with client.get_queue_receiver("sizes", max_wait_time=5) as receiver:
        got = receive_all(receiver, added + 1)
        for msg in got:
            receiver.complete_message(msg)


def test_lock_lost_client_side_after_expiry(client: ServiceBusClient) -> None:
    send(client, "locks", ServiceBusMessage("expire-me"))
    with client.get_queue_receiver("locks", max_wait_time=5) as receiver:
        (msg,) = receive_all(receiver, 1)
        wait_for(lambda: datetime.now(timezone.utc) > msg.locked_until_utc, what="lock expiry")
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(msg)
        # The broker redelivers it with the delivery count raised.
        (again,) = receive_all(receiver, 1)
        assert again.delivery_count == 1
        assert again.sequence_number == msg.sequence_number
        receiver.complete_message(again)


def test_lock_lost_server_side(emulator: Emulator, client: ServiceBusClient) -> None:
    send(client, "locks", ServiceBusMessage("settled-elsewhere"))
    with client.get_queue_receiver("locks", max_wait_time=5) as receiver:
        (msg,) = receive_all(receiver, 1)
        token = uuid.UUID(str(msg.lock_token))
        # Someone else settles it on the server while the client still believes it holds the lock.
        emulator.call(lambda b: b.complete("locks", token))
        assert msg.locked_until_utc > datetime.now(timezone.utc)
        with pytest.raises(MessageLockLostError):
            receiver.renew_message_lock(msg)  # through $management: 410 + lock-lost
        with pytest.raises(MessageLockLostError):
            receiver.complete_message(msg)  # through the link: rejected(lock-lost)


def test_lock_renewal_by_hand_and_auto_lock_renewer(client: ServiceBusClient) -> None:
    send(client, "renew", ServiceBusMessage("one"), ServiceBusMessage("two"))
    with client.get_queue_receiver("renew", max_wait_time=5) as receiver:
        first, second = receive_all(receiver, 2)
        before = first.locked_until_utc
        renewed = receiver.renew_message_lock(first)
        assert renewed >= before
        assert first.locked_until_utc == renewed
        receiver.complete_message(first)
        renewer = AutoLockRenewer(max_lock_renewal_duration=10)
        try:
            renewer.register(receiver, second)
            original = second.locked_until_utc
            # Hold the message past its original 3 s lock; the renewer must keep it.
            wait_for(
                lambda: datetime.now(timezone.utc) > original + timedelta(seconds=1),
                what="the original lock to pass",
            )
            assert second.locked_until_utc > original
            receiver.complete_message(second)
        finally:
            renewer.close()


def test_ttl_expiry_dead_letters_or_drops(emulator: Emulator, client: ServiceBusClient) -> None:
    send(client, "ttl", ServiceBusMessage("short", time_to_live=timedelta(milliseconds=300)))
    send(client, "ttl-drop", ServiceBusMessage("short", time_to_live=timedelta(milliseconds=300)))
    with client.get_queue_receiver(
        "ttl", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
    ) as receiver:
        (dead,) = receive_all(receiver, 1)
        assert dead.dead_letter_reason == "TTLExpiredException"
        receiver.complete_message(dead)
    wait_for(lambda: emulator.call(lambda b: b.peek("ttl-drop", 0, 10)) == [], what="drop")
    assert emulator.call(lambda b: b.peek("ttl-drop/$DeadLetterQueue", 0, 10)) == []


def test_schedule_and_cancel(client: ServiceBusClient) -> None:
    at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    with client.get_queue_sender("schedule") as sender:
        (seq,) = sender.schedule_messages(ServiceBusMessage("later"), at)
        (cancelled,) = sender.schedule_messages(
            ServiceBusMessage("never"), datetime.now(timezone.utc) + timedelta(hours=1)
        )
        sender.cancel_scheduled_messages(cancelled)
    with client.get_queue_receiver("schedule", max_wait_time=5) as receiver:
        peeked = receiver.peek_messages(max_message_count=10)
        assert [m.sequence_number for m in peeked] == [seq]
        assert peeked[0].scheduled_enqueue_time_utc is not None
        (msg,) = receive_all(receiver, 1)
        assert datetime.now(timezone.utc) >= at - timedelta(milliseconds=50)
        assert str(msg) == "later"
        assert msg.sequence_number == seq
        receiver.complete_message(msg)
        assert receiver.receive_messages(max_wait_time=0.5) == []


def test_defer_and_receive_deferred(emulator: Emulator, client: ServiceBusClient) -> None:
    send(client, "defer", ServiceBusMessage("put-aside"))
    with client.get_queue_receiver("defer", max_wait_time=5) as receiver:
        (msg,) = receive_all(receiver, 1)
        receiver.defer_message(msg)
        assert receiver.receive_messages(max_wait_time=0.5) == []
        (deferred,) = receiver.receive_deferred_messages([msg.sequence_number])
        assert str(deferred) == "put-aside"
        assert deferred.lock_token is not None
        receiver.complete_message(deferred)
        assert receiver.peek_messages(max_message_count=10) == []
    # The SDK retries message-not-found (as against Service Bus), so ask without retries.
    with ServiceBusClient.from_connection_string(emulator.connection_string, retry_total=0) as sb:
        with sb.get_queue_receiver("defer") as receiver, pytest.raises(MessageNotFoundError):
            receiver.receive_deferred_messages([msg.sequence_number])


def test_duplicate_detection_drops_a_resend(client: ServiceBusClient) -> None:
    send(client, "dedup", ServiceBusMessage("a", message_id="same"))
    send(client, "dedup", ServiceBusMessage("b", message_id="same"))
    send(client, "dedup", ServiceBusMessage("c", message_id="other"))
    with client.get_queue_receiver("dedup", max_wait_time=5) as receiver:
        got = receive_all(receiver, 2)
        assert sorted(str(m) for m in got) == ["a", "c"]
        for msg in got:
            receiver.complete_message(msg)
        assert receiver.receive_messages(max_wait_time=0.5) == []


def test_topic_correlation_filters(client: ServiceBusClient) -> None:
    with client.get_topic_sender("events") as sender:
        sender.send_messages(
            [
                ServiceBusMessage("invoice", subject="invoice"),
                ServiceBusMessage(
                    "eu-urgent", correlation_id="urgent", application_properties={"region": "eu"}
                ),
                ServiceBusMessage(
                    "us-urgent", correlation_id="urgent", application_properties={"region": "us"}
                ),
            ]
        )
    expected = {
        "all": ["eu-urgent", "invoice", "us-urgent"],
        "invoices": ["invoice"],
        "eu-urgent": ["eu-urgent"],
    }
    for name, bodies in expected.items():
        with client.get_subscription_receiver("events", name, max_wait_time=5) as receiver:
            got = receive_all(receiver, len(bodies))
            assert sorted(str(m) for m in got) == bodies, name
            for msg in got:
                receiver.complete_message(msg)
            assert receiver.receive_messages(max_wait_time=0.3) == []


def test_dead_letter_with_reason_and_description(client: ServiceBusClient) -> None:
    send(client, "dlq", ServiceBusMessage("poison", application_properties={"k": "v"}))
    with client.get_queue_receiver("dlq", max_wait_time=5) as receiver:
        (msg,) = receive_all(receiver, 1)
        receiver.dead_letter_message(msg, reason="bad-input", error_description="field x missing")
    with client.get_queue_receiver(
        "dlq", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
    ) as receiver:
        (dead,) = receive_all(receiver, 1)
        assert str(dead) == "poison"
        assert dead.dead_letter_reason == "bad-input"
        assert dead.dead_letter_error_description == "field x missing"
        assert dead.application_properties[b"k"] == b"v"
        receiver.complete_message(dead)


def test_max_delivery_count_moves_to_dead_letter(client: ServiceBusClient) -> None:
    send(client, "maxdelivery", ServiceBusMessage("flaky"))
    with client.get_queue_receiver("maxdelivery", max_wait_time=5) as receiver:
        for attempt in range(2):
            (msg,) = receive_all(receiver, 1)
            assert msg.delivery_count == attempt
            receiver.abandon_message(msg)
        assert receiver.receive_messages(max_wait_time=0.5) == []
    with client.get_queue_receiver(
        "maxdelivery", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
    ) as receiver:
        (dead,) = receive_all(receiver, 1)
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        receiver.complete_message(dead)


def test_receive_and_delete(emulator: Emulator, client: ServiceBusClient) -> None:
    send(client, "rad", ServiceBusMessage("gone-on-receipt"))
    with client.get_queue_receiver(
        "rad", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=5
    ) as receiver:
        (msg,) = receive_all(receiver, 1)
        assert str(msg) == "gone-on-receipt"
    assert emulator.call(lambda b: b.peek("rad", 0, 10)) == []


def test_peek_from_a_sequence_number(client: ServiceBusClient) -> None:
    send(client, "peek", *(ServiceBusMessage(f"p{i}") for i in range(5)))
    with client.get_queue_receiver("peek", max_wait_time=5) as receiver:
        everything = receiver.peek_messages(max_message_count=10)
        assert [str(m) for m in everything] == [f"p{i}" for i in range(5)]
        third = everything[2].sequence_number
        later = receiver.peek_messages(max_message_count=10, sequence_number=third)
        assert [str(m) for m in later] == ["p2", "p3", "p4"]
        # Peeking locks nothing: all five are still receivable.
        for msg in receive_all(receiver, 5):
            receiver.complete_message(msg)


def test_batches_of_one_hundred(client: ServiceBusClient) -> None:
    with client.get_queue_sender("batch") as sender:
        for round_ in range(2):
            batch = sender.create_message_batch()
            for i in range(100):
                batch.add_message(ServiceBusMessage(f"{round_}-{i}"))
            sender.send_messages(batch)
    with client.get_queue_receiver("batch", max_wait_time=5, prefetch_count=50) as receiver:
        got = receive_all(receiver, 200, timeout=20)
        assert sorted(str(m) for m in got) == sorted(
            f"{r}-{i}" for r in range(2) for i in range(100)
        )
        sequence = [m.sequence_number for m in got]
        assert sequence == sorted(sequence)
        for msg in got:
            receiver.complete_message(msg)
