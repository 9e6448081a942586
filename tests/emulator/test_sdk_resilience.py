"""Failure modes: hostile bytes, many clients, a killed client, a killed and restarted emulator."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient as AsyncServiceBusClient

from claimcheck_bus.emulator import Emulator, load_config
from claimcheck_bus.emulator.amqp import framing

CONFIG = Path(__file__).with_name("Config.json")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(load_config(CONFIG)) as emu:
        yield emu


def receive_all(receiver: Any, count: int, timeout: float = 15.0) -> list[Any]:
    """Receive until `count` messages arrived (or fail at the deadline)."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_messages(max_message_count=count - len(got), max_wait_time=1)
    assert len(got) == count, f"expected {count} messages, got {len(got)}"
    return got


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes the socket (fails if it does not)."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return bytes(data)
        data += chunk


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        framing.AMQP_HEADER + b"\x00\x00\x00\x10\x02\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff",
        framing.AMQP_HEADER + b"\xff\xff\xff\xff\x02\x00\x00\x00",  # 4 GB frame
        framing.AMQP_HEADER + b"\x00\x00\x00\x0c\x02\x00\x00\x00\x00\x53\x10\xd0",  # truncated
    ],
    ids=["http", "unknown-constructor", "huge-frame", "truncated-open"],
)
def test_malformed_bytes_close_only_that_connection(emulator: Emulator, garbage: bytes) -> None:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        with client.get_queue_sender("garbage", keep_alive=0) as sender:
            with socket.create_connection(("127.0.0.1", emulator.port)) as raw:
                raw.sendall(garbage)
                reply = read_until_closed(raw)
                assert reply[:4] == b"AMQP"
            # The SDK's connection, opened before the garbage, keeps working.
            sender.send_messages(ServiceBusMessage("still-fine"))
        with client.get_queue_receiver("garbage", max_wait_time=5) as receiver:
            (msg,) = receive_all(receiver, 1)
            assert str(msg) == "still-fine"
            receiver.complete_message(msg)


@pytest.mark.slow
async def test_fifty_concurrent_clients(emulator: Emulator) -> None:
    clients = 50
    conn = emulator.connection_string

    async def one(index: int, opened: asyncio.Barrier) -> None:
        async with AsyncServiceBusClient.from_connection_string(conn) as client:
            # Entering the sender connects it, so all 50 are connected at the barrier.
            async with client.get_queue_sender("concurrent") as sender:
                await opened.wait()
                await sender.send_messages([ServiceBusMessage(f"{index}-{i}") for i in range(2)])

    barrier = asyncio.Barrier(clients + 1)
    tasks = [asyncio.create_task(one(i, barrier)) for i in range(clients)]
    await asyncio.wait_for(barrier.wait(), 60)
    assert len(emulator.server.connections) >= clients
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    async with AsyncServiceBusClient.from_connection_string(conn) as client:
        async with client.get_queue_receiver("concurrent", max_wait_time=5) as receiver:
            got: list[Any] = []
            deadline = time.monotonic() + 20
            while len(got) < 2 * clients and time.monotonic() < deadline:
                got += await receiver.receive_messages(max_message_count=100, max_wait_time=1)
            assert sorted(str(m) for m in got) == sorted(
                f"{c}-{i}" for c in range(clients) for i in range(2)
            )
            for msg in got:
                await receiver.complete_message(msg)


HOLDER = textwrap.dedent(
    """
    import sys, time
    from azure.servicebus import ServiceBusClient
    with ServiceBusClient.from_connection_string(sys.argv[1]) as client:
        with client.get_queue_receiver("killed", max_wait_time=5) as receiver:
            got = []
            deadline = time.monotonic() + 15
            while len(got) < 3 and time.monotonic() < deadline:
                got += receiver.receive_messages(max_message_count=3, max_wait_time=1)
            print(f"holding {len(got)}", flush=True)
            time.sleep(600)
    """
)


@pytest.mark.slow
def test_client_killed_mid_delivery_gets_its_messages_redelivered(emulator: Emulator) -> None:
    with ServiceBusClient.from_connection_string(emulator.connection_string) as client:
        with client.get_queue_sender("killed", keep_alive=0) as sender:
            sender.send_messages([ServiceBusMessage(f"k{i}") for i in range(3)])
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, emulator.connection_string],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "holding 3"
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(10)
        # Nothing is receivable while the dead client's locks (2 s) last; then all come back.
        with client.get_queue_receiver("killed", max_wait_time=5) as receiver:
            got = receive_all(receiver, 3)
            assert sorted(str(m) for m in got) == ["k0", "k1", "k2"]
            assert {m.delivery_count for m in got} == {1}
            for msg in got:
                receiver.complete_message(msg)


def start_emulator_process(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Run the CLI as a subprocess on a free port; returns it and its connection string."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "claimcheck_bus.emulator", "--config", str(CONFIG),
            "--port", "0", "--data-dir", str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    assert line.startswith("Endpoint=sb://127.0.0.1:"), line
    return process, line


@pytest.mark.slow
def test_durable_restart_keeps_unsettled_messages(tmp_path: Path) -> None:
    first, conn = start_emulator_process(tmp_path)
    try:
        with ServiceBusClient.from_connection_string(conn) as client:
            with client.get_queue_sender("durable", keep_alive=0) as sender:
                sender.send_messages([ServiceBusMessage(f"d{i}") for i in range(3)])
            with client.get_queue_receiver("durable", max_wait_time=5) as receiver:
                done, locked = receive_all(receiver, 2)
                receiver.complete_message(done)
                settled_body = str(done)
                locked_body = str(locked)
                first.kill()  # SIGKILL while `locked` is still locked
                first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    second, conn = start_emulator_process(tmp_path)
    try:
        with ServiceBusClient.from_connection_string(conn) as client:
            with client.get_queue_receiver("durable", max_wait_time=5) as receiver:
                got = receive_all(receiver, 2)
                bodies = sorted(str(m) for m in got)
                assert settled_body not in bodies
                assert locked_body in bodies
                assert bodies == sorted({"d0", "d1", "d2"} - {settled_body})
                for msg in got:
                    receiver.complete_message(msg)
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        if second.poll() is None:
            second.kill()
