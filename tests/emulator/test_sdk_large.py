"""Message size limits above the Standard tier: --max-message-size, multi-frame transfers."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.exceptions import MessageSizeExceededError

from claimcheck_bus.emulator import Emulator, load_config

CONFIG = Path(__file__).with_name("Config.json")


@pytest.fixture(scope="module")
def big_emulator() -> Iterator[Emulator]:
    with Emulator(load_config(CONFIG), max_message_size=8 * 1024 * 1024) as emu:
        yield emu


@pytest.mark.slow
def test_raised_limit_lets_one_and_five_megabyte_messages_through_both_ways(
    big_emulator: Emulator,
) -> None:
    one_mb = os.urandom(1024 * 1024)
    five_mb = os.urandom(5 * 1024 * 1024)
    with ServiceBusClient.from_connection_string(big_emulator.connection_string) as client:
        with client.get_queue_sender("large", keep_alive=0) as sender:
            sender.send_messages(ServiceBusMessage(one_mb, message_id="one"))
            sender.send_messages(ServiceBusMessage(five_mb, message_id="five"))
            with pytest.raises(MessageSizeExceededError):
                sender.send_messages(ServiceBusMessage(b"x" * (9 * 1024 * 1024)))
            batch = sender.create_message_batch()
            assert batch.max_size_in_bytes == 1024 * 1024  # Premium's batch limit
        # Stored byte for byte (5 MB arrived in several 1 MiB frames).
        stored = big_emulator.call(lambda b: b.peek("large", 0, 10))
        assert [m.meta.message_id for m in stored] == ["one", "five"]
        with client.get_queue_receiver("large", max_wait_time=10) as receiver:
            got: list[object] = []
            while len(got) < 2:
                batch_got = receiver.receive_messages(max_message_count=2, max_wait_time=10)
                assert batch_got, "no message within 10 s"
                got += batch_got
            bodies = {m.message_id: b"".join(m.body) for m in got}  # type: ignore[attr-defined]
            assert hashlib.sha256(bodies["one"]).digest() == hashlib.sha256(one_mb).digest()
            assert hashlib.sha256(bodies["five"]).digest() == hashlib.sha256(five_mb).digest()
            for msg in got:
                receiver.complete_message(msg)  # type: ignore[arg-type]
