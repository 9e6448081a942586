"""The real azure-servicebus SDK (asyncio flavour) against the emulator over a real socket."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import MessageLockLostError, MessageSizeExceededError

from claimcheck_bus.emulator import Emulator, load_config

CONFIG = Path(__file__).with_name("Config.json")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(load_config(CONFIG)) as emu:
        yield emu


async def receive_all(receiver: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Receive until `count` messages arrived (or fail at the deadline)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


async def test_aio_properties_settlement_and_lock_loss(emulator: Emulator) -> None:
    marker = uuid.uuid4()
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        async with client.get_queue_sender("aio-props") as sender:
            await sender.send_messages(
                ServiceBusMessage(
                    "hello",
                    application_properties={"n": 7, "f": 0.25, "ok": False, "u": marker},
                    message_id="aio-1",
                    correlation_id="c",
                    subject="s",
                    content_type="text/plain",
                    time_to_live=timedelta(seconds=90),
                    to="t",
                    reply_to="r",
                )
            )
            with pytest.raises(MessageSizeExceededError):
                await sender.send_messages(ServiceBusMessage(b"x" * 270_000))
        async with client.get_queue_receiver("aio-props", max_wait_time=5) as receiver:
            (msg,) = await receive_all(receiver, 1)
            assert (msg.message_id, msg.correlation_id, msg.subject) == ("aio-1", "c", "s")
            assert (msg.content_type, msg.to, msg.reply_to) == ("text/plain", "t", "r")
            assert msg.time_to_live == timedelta(seconds=90)
            props = msg.application_properties
            assert (props[b"n"], props[b"f"], props[b"ok"], props[b"u"]) == (7, 0.25, False, marker)
            token = uuid.UUID(str(msg.lock_token))
            emulator.call(lambda b: b.complete("aio-props", token))
            with pytest.raises(MessageLockLostError):
                await receiver.complete_message(msg)


async def test_aio_batch_peek_and_receive_and_delete(emulator: Emulator) -> None:
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        async with client.get_queue_sender("aio-batch") as sender:
            batch = await sender.create_message_batch()
            for i in range(100):
                batch.add_message(ServiceBusMessage(f"m{i}"))
            await sender.send_messages(batch)
        async with client.get_queue_receiver("aio-batch", max_wait_time=5) as receiver:
            peeked = await receiver.peek_messages(max_message_count=100)
            assert [str(m) for m in peeked] == [f"m{i}" for i in range(100)]
            later = await receiver.peek_messages(
                max_message_count=5, sequence_number=peeked[95].sequence_number
            )
            assert [str(m) for m in later] == [f"m{i}" for i in range(95, 100)]
        async with client.get_queue_receiver(
            "aio-batch", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE, max_wait_time=5
        ) as receiver:
            got = await receive_all(receiver, 100)
            assert sorted(str(m) for m in got) == sorted(f"m{i}" for i in range(100))
    assert emulator.call(lambda b: b.peek("aio-batch", 0, 10)) == []


async def test_aio_renew_schedule_defer_dead_letter(emulator: Emulator) -> None:
    async with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        async with client.get_queue_sender("aio-renew") as sender:
            await sender.send_messages(ServiceBusMessage("hold"))
        async with client.get_queue_receiver("aio-renew", max_wait_time=5) as receiver:
            (msg,) = await receive_all(receiver, 1)
            before = msg.locked_until_utc
            renewed = await receiver.renew_message_lock(msg)
            assert renewed >= before
            assert msg.locked_until_utc == renewed
            await receiver.complete_message(msg)

        async with client.get_queue_sender("aio-schedule") as sender:
            soon = datetime.now(timezone.utc) + timedelta(seconds=1)
            (seq,) = await sender.schedule_messages(ServiceBusMessage("soon"), soon)
            (gone,) = await sender.schedule_messages(
                ServiceBusMessage("never"), soon + timedelta(hours=1)
            )
            await sender.cancel_scheduled_messages(gone)
        async with client.get_queue_receiver("aio-schedule", max_wait_time=5) as receiver:
            (msg,) = await receive_all(receiver, 1)
            assert msg.sequence_number == seq
            await receiver.complete_message(msg)
            assert await receiver.peek_messages(max_message_count=5) == []

        async with client.get_queue_sender("aio-defer") as sender:
            await sender.send_messages(ServiceBusMessage("later"))
        async with client.get_queue_receiver("aio-defer", max_wait_time=5) as receiver:
            (msg,) = await receive_all(receiver, 1)
            await receiver.defer_message(msg)
            (deferred,) = await receiver.receive_deferred_messages([msg.sequence_number])
            await receiver.dead_letter_message(deferred, reason="r", error_description="d")
        async with client.get_queue_receiver(
            "aio-defer", sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=5
        ) as receiver:
            (dead,) = await receive_all(receiver, 1)
            assert (str(dead), dead.dead_letter_reason) == ("later", "r")
            assert dead.dead_letter_error_description == "d"
            await receiver.complete_message(dead)
