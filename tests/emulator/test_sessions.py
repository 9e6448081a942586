"""Service Bus sessions: the real azure-servicebus SDK (sync and aio) against the emulator over a
real socket, in the patterns of Microsoft's session samples (session_send_receive,
session_pool_receive, list_sessions) and the session failure modes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    AutoLockRenewer,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient
from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from claimcheck_bus.emulator import Emulator
from claimcheck_bus.emulator.config import parse_config

QUEUES = (
    "send-receive",
    "send-receive-aio",
    "pool",
    "pool-aio",
    "fifo",
    "exclusive",
    "refuse",
    "listing",
    "defer",
    "waiting",
    "timeout",
    "plain-receiver",
)


def _config_document(short_lock: str = "PT2S") -> dict[str, Any]:
    """A Config.json as Microsoft's emulator reads it, with session entities."""
    session = {"RequiresSession": True, "LockDuration": "PT30S", "MaxDeliveryCount": 10}
    queues = [{"Name": name, "Properties": session} for name in QUEUES]
    for name in ("expiring", "renewed"):
        queues.append(
            {"Name": name, "Properties": {"RequiresSession": True, "LockDuration": short_lock}}
        )
    return {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "sbemulatorns",
                    "Queues": queues,
                    "Topics": [
                        {
                            "Name": "orders",
                            "Subscriptions": [
                                {"Name": "ordered", "Properties": {"RequiresSession": True}},
                                {"Name": "all"},
                            ],
                        }
                    ],
                }
            ]
        }
    }


CONFIG = parse_config(_config_document())


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(CONFIG) as emu:
        yield emu


@pytest.fixture(scope="module")
def client(emulator: Emulator) -> Iterator[ServiceBusClient]:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as sb:
        yield sb


@pytest.fixture(scope="module")
def impatient(emulator: Emulator) -> Iterator[ServiceBusClient]:
    """A client that does not retry, so refusals surface at once."""
    with ServiceBusClient.from_connection_string(emulator.connection_string, retry_total=0) as sb:
        yield sb


def _receive_all(receiver: Any, count: int, timeout: float = 15.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


# ---------------------------------------------------------------------------------------------
# Microsoft's session_send_receive pattern


def test_session_send_receive_with_state_and_lock_renewal(client: ServiceBusClient) -> None:
    session_id = f"s-{uuid.uuid4()}"
    with client.get_queue_sender("send-receive") as sender:
        sender.send_messages(ServiceBusMessage("single", session_id=session_id))
        sender.send_messages(
            [ServiceBusMessage(f"list {i}", session_id=session_id) for i in range(5)]
        )
        batch = sender.create_message_batch()
        for i in range(5):
            batch.add_message(ServiceBusMessage(f"batch {i}", session_id=session_id))
        sender.send_messages(batch)

    with client.get_queue_receiver("send-receive", session_id=session_id) as receiver:
        session = receiver.session
        assert session.session_id == session_id
        assert session.locked_until_utc is not None
        assert session.locked_until_utc > datetime.now(timezone.utc)
        assert session.get_state() is None
        session.set_state("START")
        assert session.get_state() == b"START"
        messages = _receive_all(receiver, 11)
        for msg in messages:
            assert msg.session_id == session_id
            receiver.complete_message(msg)
            renewed = session.renew_lock()
            assert renewed > datetime.now(timezone.utc) + timedelta(seconds=20)
        session.set_state("END")
        assert session.get_state() == b"END"
        session.set_state(None)
        assert session.get_state() is None
    expected = ["single"] + [f"list {i}" for i in range(5)] + [f"batch {i}" for i in range(5)]
    assert [str(m) for m in messages] == expected


def test_session_send_receive_aio(emulator: Emulator) -> None:
    session_id = f"s-{uuid.uuid4()}"

    async def main() -> list[str]:
        async with AsyncServiceBusClient.from_connection_string(emulator.connection_string) as sb:
            async with sb.get_queue_sender("send-receive-aio") as sender:
                await sender.send_messages(
                    [ServiceBusMessage(f"m{i}", session_id=session_id) for i in range(6)]
                )
            async with sb.get_queue_receiver("send-receive-aio", session_id=session_id) as receiver:
                await receiver.session.set_state(b"START")
                assert await receiver.session.get_state() == b"START"
                got: list[Any] = []
                deadline = time.monotonic() + 15
                while len(got) < 6 and time.monotonic() < deadline:
                    got += await receiver.receive_messages(
                        max_message_count=6 - len(got), max_wait_time=1
                    )
                for msg in got:
                    await receiver.complete_message(msg)
                renewed = await receiver.session.renew_lock()
                assert renewed > datetime.now(timezone.utc)
                return [str(m) for m in got]

    assert asyncio.run(main()) == [f"m{i}" for i in range(6)]


# ---------------------------------------------------------------------------------------------
# Microsoft's session_pool_receive pattern: next available session until none is left


def _send_sessions(client: ServiceBusClient, queue: str, sessions: list[str], each: int) -> None:
    with client.get_queue_sender(queue) as sender:
        # Interleaved, as concurrent publishers would.
        sender.send_messages(
            [ServiceBusMessage(f"{s}:{i}", session_id=s) for i in range(each) for s in sessions]
        )


def _check_orders(received: list[tuple[str, str]], sessions: list[str], each: int) -> None:
    by_session: dict[str, list[int]] = {}
    for session_id, body in received:
        prefix, _, index = body.partition(":")
        assert prefix == session_id
        by_session.setdefault(session_id, []).append(int(index))
    assert by_session == {s: list(range(each)) for s in sessions}


def test_session_pool_receives_every_session_in_order(
    client: ServiceBusClient, impatient: ServiceBusClient
) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(6)]
    _send_sessions(client, "pool", sessions, 5)
    received: list[tuple[str, str]] = []
    lock = threading.Lock()

    def worker() -> int:
        sessions_done = 0
        while True:
            try:
                # Without retries the final "no session left" timeout ends the worker at once.
                with impatient.get_queue_receiver(
                    "pool", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
                ) as receiver:
                    renewer = AutoLockRenewer()
                    renewer.register(receiver, receiver.session)
                    receiver.session.set_state("OPEN")
                    for message in receiver:
                        with lock:
                            received.append((receiver.session.session_id, str(message)))
                        receiver.complete_message(message)
                    renewer.close()
                    sessions_done += 1
            except OperationTimeoutError:
                return sessions_done  # no non-empty session left

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        done = [f.result(timeout=120) for f in [pool.submit(worker) for _ in range(3)]]
    assert sum(done) >= len(sessions)
    _check_orders(received, sessions, 5)


def test_next_available_session_aio(emulator: Emulator, client: ServiceBusClient) -> None:
    sessions = [str(uuid.uuid4()) for _ in range(3)]
    _send_sessions(client, "pool-aio", sessions, 4)

    async def main() -> list[tuple[str, str]]:
        received: list[tuple[str, str]] = []
        async with AsyncServiceBusClient.from_connection_string(
            emulator.connection_string, retry_total=0
        ) as sb:
            while True:
                try:
                    async with sb.get_queue_receiver(
                        "pool-aio", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
                    ) as receiver:
                        session_id = receiver.session.session_id
                        async for message in receiver:
                            received.append((session_id, str(message)))
                            await receiver.complete_message(message)
                except OperationTimeoutError:
                    return received

    _check_orders(asyncio.run(main()), sessions, 4)


def test_next_available_waits_for_a_session_to_get_messages(
    emulator: Emulator, client: ServiceBusClient
) -> None:
    session_id = str(uuid.uuid4())
    result: dict[str, Any] = {}

    def wait() -> None:
        try:
            with ServiceBusClient.from_connection_string(emulator.connection_string) as own:
                with own.get_queue_receiver(
                    "waiting", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=20
                ) as receiver:
                    result["session"] = receiver.session.session_id
                    got = _receive_all(receiver, 1)
                    result["messages"] = [str(m) for m in got]
                    receiver.complete_message(got[0])
        except Exception as exc:  # reported below
            result["error"] = exc

    thread = threading.Thread(target=wait)
    thread.start()
    # The receiver is parked on the emulator before the message exists.
    deadline = time.monotonic() + 10
    while not emulator.call(lambda _: emulator.server.session_waiters("waiting")):
        assert time.monotonic() < deadline, "the receiver never waited for a session"
        time.sleep(0.05)
    with client.get_queue_sender("waiting") as sender:
        sender.send_messages(ServiceBusMessage("late", session_id=session_id))
    thread.join(30)
    assert "error" not in result, result.get("error")
    assert result == {"session": session_id, "messages": ["late"]}


def test_next_available_with_nothing_available_times_out_after_max_wait(
    impatient: ServiceBusClient,
) -> None:
    started = time.monotonic()
    with pytest.raises(OperationTimeoutError):
        with impatient.get_queue_receiver(
            "timeout", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=2
        ) as receiver:
            receiver.receive_messages(max_wait_time=1)
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed < 15, elapsed


# ---------------------------------------------------------------------------------------------
# FIFO, exclusivity, lock expiry, refusals


def test_fifo_within_a_session_after_abandon(client: ServiceBusClient) -> None:
    session_id = str(uuid.uuid4())
    with client.get_queue_sender("fifo") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", session_id=session_id) for i in range(4)])
    with client.get_queue_receiver("fifo", session_id=session_id) as receiver:
        first = _receive_all(receiver, 2)
        assert [str(m) for m in first] == ["m0", "m1"]
        receiver.abandon_message(first[0])
        receiver.complete_message(first[1])
        rest = _receive_all(receiver, 3)
        assert [(str(m), m.delivery_count) for m in rest] == [("m0", 1), ("m2", 0), ("m3", 0)]
        for msg in rest:
            receiver.complete_message(msg)


def test_a_second_receiver_on_a_locked_session_is_refused(
    client: ServiceBusClient, impatient: ServiceBusClient
) -> None:
    session_id = str(uuid.uuid4())
    with client.get_queue_sender("exclusive") as sender:
        sender.send_messages(ServiceBusMessage("only", session_id=session_id))
    with client.get_queue_receiver("exclusive", session_id=session_id) as holder:
        (msg,) = _receive_all(holder, 1)
        with pytest.raises(SessionCannotBeLockedError):
            with impatient.get_queue_receiver("exclusive", session_id=session_id) as second:
                second.receive_messages(max_wait_time=1)
        holder.complete_message(msg)  # the holder still holds it


def test_session_lock_expiry_releases_the_session(
    client: ServiceBusClient, impatient: ServiceBusClient
) -> None:
    session_id = str(uuid.uuid4())
    with client.get_queue_sender("expiring") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", session_id=session_id) for i in range(2)])
    stale = client.get_queue_receiver("expiring", session_id=session_id)
    with stale:
        held = _receive_all(stale, 2)
        # Nobody renews: once the 2 s lock expires another receiver gets the session.
        deadline = time.monotonic() + 20
        while True:
            try:
                with impatient.get_queue_receiver(
                    "expiring", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
                ) as fresh:
                    assert fresh.session.session_id == session_id
                    again = _receive_all(fresh, 2)
                    assert [(str(m), m.delivery_count) for m in again] == [("m0", 1), ("m1", 1)]
                    for msg in again:
                        fresh.complete_message(msg)
                break
            except OperationTimeoutError:
                assert time.monotonic() < deadline, "the session lock never expired"
        with pytest.raises(SessionLockLostError):
            stale.complete_message(held[0])


def test_auto_lock_renewer_keeps_a_short_session_lock(client: ServiceBusClient) -> None:
    session_id = str(uuid.uuid4())
    with client.get_queue_sender("renewed") as sender:
        sender.send_messages([ServiceBusMessage(f"m{i}", session_id=session_id) for i in range(2)])
    renewer = AutoLockRenewer(max_lock_renewal_duration=60)
    with client.get_queue_receiver("renewed", session_id=session_id) as receiver:
        renewer.register(receiver, receiver.session)
        held = _receive_all(receiver, 2)
        first_expiry = receiver.session.locked_until_utc
        assert first_expiry is not None
        # Outlive the 2 s lock twice over; the renewer must have moved the expiry on.
        deadline = time.monotonic() + 30
        while receiver.session.locked_until_utc < first_expiry + timedelta(seconds=4):
            assert time.monotonic() < deadline, "the session lock was not renewed"
            time.sleep(0.1)
        for msg in held:
            receiver.complete_message(msg)
        assert receiver.session.auto_renew_error is None
        assert receiver.peek_messages(10, sequence_number=1) == []
    renewer.close()


def test_a_message_without_session_id_is_refused(client: ServiceBusClient) -> None:
    with client.get_queue_sender("refuse") as sender:
        with pytest.raises(ServiceBusError, match="SessionId was not set") as info:
            sender.send_messages(ServiceBusMessage("no session"))
        assert "amqp:not-allowed" in str(info.value)
        # A batch with one such message is refused whole.
        with pytest.raises(ServiceBusError, match="SessionId was not set"):
            sender.send_messages(
                [ServiceBusMessage("ok", session_id="s"), ServiceBusMessage("no session")]
            )
    with client.get_queue_receiver("refuse", session_id="s", max_wait_time=1) as receiver:
        assert receiver.peek_messages(10, sequence_number=1) == []


def test_a_plain_receiver_on_a_session_queue_is_refused(impatient: ServiceBusClient) -> None:
    with pytest.raises(ServiceBusError, match="requires sessions"):
        with impatient.get_queue_receiver("plain-receiver") as receiver:
            receiver.receive_messages(max_wait_time=1)


def test_topic_copy_without_session_id_is_dead_lettered(client: ServiceBusClient) -> None:
    marker = str(uuid.uuid4())
    with client.get_topic_sender("orders") as sender:
        sender.send_messages(ServiceBusMessage(marker))
        sender.send_messages(ServiceBusMessage(marker, session_id="order-1"))
    with client.get_subscription_receiver(
        "orders", "ordered", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        (dead,) = _receive_all(dlq, 1)
        assert str(dead) == marker
        assert dead.dead_letter_reason == "Session id is null."
        dlq.complete_message(dead)
    with client.get_subscription_receiver("orders", "ordered", session_id="order-1") as ordered:
        (msg,) = _receive_all(ordered, 1)
        assert str(msg) == marker
        ordered.complete_message(msg)


# ---------------------------------------------------------------------------------------------
# $management inside a session: listing, peeking, deferral


def test_list_sessions_peek_and_deferral_in_a_session(client: ServiceBusClient) -> None:
    a, b = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"
    with client.get_queue_sender("listing") as sender:
        sender.send_messages([ServiceBusMessage(f"{a}:{i}", session_id=a) for i in range(3)])
        sender.send_messages(ServiceBusMessage(f"{b}:0", session_id=b))
    assert sorted(client.list_queue_sessions("listing")) == sorted([a, b])
    assert list(client.list_subscription_sessions("orders", "all")) == []

    with client.get_queue_receiver("listing", session_id=a) as receiver:
        peeked = receiver.peek_messages(10, sequence_number=1)
        assert [str(m) for m in peeked] == [f"{a}:{i}" for i in range(3)]
        first = _receive_all(receiver, 1)[0]
        receiver.defer_message(first)
        rest = _receive_all(receiver, 2)
        assert [str(m) for m in rest] == [f"{a}:1", f"{a}:2"]
        for msg in rest:
            receiver.complete_message(msg)
        (deferred,) = receiver.receive_deferred_messages([first.sequence_number])
        assert str(deferred) == f"{a}:0"
        receiver.complete_message(deferred)
        receiver.session.set_state("kept")
    cutoff = datetime.now(timezone.utc) - timedelta(minutes=1)
    # a: state only; b: a message. Recently updated: only a.
    assert sorted(client.list_queue_sessions("listing")) == sorted([a, b])
    assert list(client.list_queue_sessions("listing", state_updated_after=cutoff)) == [a]


# ---------------------------------------------------------------------------------------------
# durability


def test_sessions_survive_an_emulator_restart_with_data_dir(tmp_path: Path) -> None:
    session_id = str(uuid.uuid4())
    with Emulator(CONFIG, data_dir=tmp_path) as first:
        with ServiceBusClient.from_connection_string(first.connection_string) as sb:
            with sb.get_queue_sender("fifo") as sender:
                sender.send_messages(
                    [ServiceBusMessage(f"m{i}", session_id=session_id) for i in range(3)]
                )
            with sb.get_queue_receiver("fifo", session_id=session_id) as receiver:
                receiver.session.set_state("after m0")
                (m0,) = _receive_all(receiver, 1)
                receiver.complete_message(m0)
    with Emulator(CONFIG, data_dir=tmp_path) as second:
        with ServiceBusClient.from_connection_string(second.connection_string) as sb:
            with sb.get_queue_receiver(
                "fifo", session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
            ) as receiver:
                assert receiver.session.session_id == session_id
                assert receiver.session.get_state() == b"after m0"
                rest = _receive_all(receiver, 2)
                assert [str(m) for m in rest] == ["m1", "m2"]
                for msg in rest:
                    receiver.complete_message(msg)
            assert list(sb.list_queue_sessions("fifo")) == [session_id]
