"""Publish-side failures are fast and named, over real sockets, for both clients.

A refused key (an emulator with another key), a broker that accepts connections and never
answers (a TCP server of the test's own), storage that refuses connections (a closed port).
Elapsed times are generous upper bounds where the old behaviour took 15 s to forever.
"""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus import (
    AsyncClaimCheckBus,
    BatchPublishError,
    BusSettings,
    ClaimCheckBus,
    ConfigurationError,
    PayloadUnavailableError,
    SendTimeoutError,
)
from claimcheck_bus.emulator import Emulator
from claimcheck_bus.testing.azurite import connection_string_for
from claimcheck_bus.testing.servicebus import default_test_config

RIGHT_KEY = "the-namespace-key-c2VjcmV0"
WRONG_KEY = "a-wrong-key-that-must-not-leak"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No CLAIMCHECK_ variable nor configuration file of the project leaks into the settings."""
    for name in list(os.environ):
        if name.startswith("CLAIMCHECK_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLAIMCHECK_CONFIG_DIR", str(tmp_path))


@pytest.fixture(scope="module")
def keyed_emulator() -> Iterator[Emulator]:
    """An emulator whose key is RIGHT_KEY: any other key is refused."""
    with Emulator(default_test_config(), key=RIGHT_KEY) as emulator:
        yield emulator


@pytest.fixture
def frozen_broker() -> Iterator[str]:
    """``host:port`` of a server that accepts TCP connections and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:  # the server was closed: the test is over
                return
            held.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    host, port = server.getsockname()
    yield f"{host}:{port}"
    server.shutdown(socket.SHUT_RDWR)  # ends the accept() under way
    server.close()
    for connection in held:
        connection.close()
    thread.join(5)


def settings_for(connection_string: str, **service_bus: Any) -> BusSettings:
    return BusSettings(
        service_bus={
            "connection_string": connection_string,
            "default_queue_name": "test-queue",
            **service_bus,
        },
        claim_check={"enabled": False},
    )


def shown(error: BaseException) -> str:
    """Everything a log of this error would show: its text and the whole chain's traceback."""
    return "".join(traceback.format_exception(error))


def wrong_key_settings(emulator: Emulator) -> BusSettings:
    return settings_for(emulator.connection_string.replace(RIGHT_KEY, WRONG_KEY))


def assert_names_the_key_setting(error: ConfigurationError) -> None:
    text = str(error)
    assert "service_bus.connection_string" in text
    assert "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING" in text
    assert "refused its key" in text
    assert WRONG_KEY not in shown(error)
    assert RIGHT_KEY not in shown(error)


# -- a refused key ------------------------------------------------------------------------------


@pytest.mark.usefixtures("clean_env")
def test_a_wrong_key_is_a_configuration_error_within_seconds(keyed_emulator: Emulator) -> None:
    started = time.monotonic()
    with ClaimCheckBus(wrong_key_settings(keyed_emulator)) as bus:
        with pytest.raises(ConfigurationError) as refused:
            bus.publish({"n": 1}, event_type="Ping")
        with pytest.raises(ConfigurationError):
            bus.publish_batch([{"n": 2}], event_type="Ping")
        with pytest.raises(ConfigurationError):
            bus.cancel_scheduled(1)
    assert time.monotonic() - started < 10  # the SDK's retries took 15 s for one publish
    assert_names_the_key_setting(refused.value)
    assert keyed_emulator.call(lambda broker: broker.peek("test-queue", 0, 10)) == []


@pytest.mark.usefixtures("clean_env")
async def test_a_wrong_key_is_a_configuration_error_within_seconds_async(
    keyed_emulator: Emulator,
) -> None:
    started = time.monotonic()
    async with AsyncClaimCheckBus(wrong_key_settings(keyed_emulator)) as bus:
        with pytest.raises(ConfigurationError) as refused:
            await bus.publish({"n": 1}, event_type="Ping")
        with pytest.raises(ConfigurationError):
            await bus.cancel_scheduled(1)
    assert time.monotonic() - started < 10
    assert_names_the_key_setting(refused.value)


@pytest.mark.usefixtures("clean_env")
def test_the_right_key_still_publishes(keyed_emulator: Emulator) -> None:
    ids = [f"right-key-{uuid.uuid4()}" for _ in range(2)]
    with ClaimCheckBus(settings_for(keyed_emulator.connection_string)) as bus:
        for message_id in ids:  # the probe runs once; the sender is kept
            bus.publish({"n": 1}, event_type="Ping", message_id=message_id)
    peeked = keyed_emulator.call(lambda broker: broker.peek("test-queue", 0, 100))
    for message_id in ids:
        assert any(message_id.encode() in m.bare for m in peeked)


@pytest.fixture
def flaky_proxy(keyed_emulator: Emulator) -> Iterator[tuple[str, list[str]]]:
    """``host:port`` of a TCP proxy to the emulator that drops the first connection it accepts
    (an injected fault), and the fate of each connection."""
    target = keyed_emulator.connection_string.split("sb://", 1)[1].split(";", 1)[0]
    host, port = target.rsplit(":", 1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    fates: list[str] = []
    sockets: list[socket.socket] = []

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            if not fates:
                fates.append("dropped")
                client.close()
                continue
            fates.append("forwarded")
            upstream = socket.create_connection((host, int(port)))
            sockets.extend((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}", fates
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    for open_socket in sockets:
        open_socket.close()
    thread.join(5)


@pytest.mark.usefixtures("clean_env")
def test_a_transient_failure_of_the_first_link_is_still_retried(
    keyed_emulator: Emulator, flaky_proxy: tuple[str, list[str]]
) -> None:
    address, fates = flaky_proxy
    proxied = keyed_emulator.connection_string.replace(
        keyed_emulator.connection_string.split("sb://", 1)[1].split(";", 1)[0], address
    )
    with ClaimCheckBus(settings_for(proxied)) as bus:
        bus.publish({"n": 1}, event_type="Ping", message_id="after-a-dropped-connection")
    assert fates[0] == "dropped"  # the probe's connection, which does not retry
    peeked = keyed_emulator.call(lambda broker: broker.peek("test-queue", 0, 100))
    assert any(b"after-a-dropped-connection" in m.bare for m in peeked)


# -- a frozen broker ----------------------------------------------------------------------------


def frozen_settings(namespace: str) -> BusSettings:
    return settings_for(
        f"Endpoint=sb://{namespace};SharedAccessKeyName=Root;SharedAccessKey={WRONG_KEY};"
        "UseDevelopmentEmulator=true",
        send_timeout_seconds=1.5,
    )


def assert_names_the_namespace_and_timeout(error: SendTimeoutError, namespace: str) -> None:
    text = str(error)
    assert f"'test-queue' on Service Bus namespace {namespace}" in text
    assert "within 1.5 s" in text
    assert "CLAIMCHECK_SERVICE_BUS__SEND_TIMEOUT_SECONDS" in text
    assert WRONG_KEY not in shown(error)


@pytest.mark.usefixtures("clean_env")
def test_a_frozen_broker_fails_publish_after_the_send_timeout(frozen_broker: str) -> None:
    started = time.monotonic()
    with ClaimCheckBus(frozen_settings(frozen_broker)) as bus:
        with pytest.raises(SendTimeoutError) as timed_out:
            bus.publish({"n": 1}, event_type="Ping")
        publish_took = time.monotonic() - started
        with pytest.raises(SendTimeoutError):
            bus.cancel_scheduled(1)
    assert 1.0 < publish_took < 10  # it blocked for good before
    assert time.monotonic() - started < 20  # closing the bus does not hang either
    assert_names_the_namespace_and_timeout(timed_out.value, frozen_broker)
    # The sync SDK's handshake cannot be interrupted: the probe's socket was shut down instead,
    # so its helper thread is gone although the broker still holds the connection open.
    probes = [t for t in threading.enumerate() if t.name == "claimcheck-bus-link-probe"]
    assert not any(t.is_alive() for t in probes)


@pytest.mark.usefixtures("clean_env")
async def test_a_frozen_broker_fails_publish_after_the_send_timeout_async(
    frozen_broker: str,
) -> None:
    started = time.monotonic()
    async with AsyncClaimCheckBus(frozen_settings(frozen_broker)) as bus:
        with pytest.raises(SendTimeoutError) as timed_out:
            await bus.publish({"n": 1}, event_type="Ping")
        publish_took = time.monotonic() - started
        with pytest.raises((SendTimeoutError, BatchPublishError)):
            await bus.publish_batch([{"n": 2}], event_type="Ping")
    assert 1.0 < publish_took < 10
    assert time.monotonic() - started < 20
    assert_names_the_namespace_and_timeout(timed_out.value, frozen_broker)


# -- storage refusing connections ---------------------------------------------------------------

STORAGE_KEY = base64.b64encode(b"an account key that must not leak" * 2).decode()


@pytest.fixture
def refused_storage(
    servicebus: Any, fresh_queue: str, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> tuple[BusSettings, str]:
    """Settings whose storage endpoint refuses connections (a closed port), and that endpoint."""
    with socket.socket() as probe:  # nothing listens on this port once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    variables = {
        "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING": str(servicebus.connection_string),
        "CLAIMCHECK_SERVICE_BUS__DEFAULT_QUEUE_NAME": fresh_queue,
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING": connection_string_for(
            endpoint, STORAGE_KEY
        ),
        "CLAIMCHECK_CLAIM_CHECK__ALWAYS": "true",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return BusSettings(), endpoint


def assert_names_the_storage_endpoint(error: PayloadUnavailableError, endpoint: str) -> None:
    text = str(error)
    assert f"payload container creation at {endpoint} failed" in text
    assert "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING" in text
    assert STORAGE_KEY not in shown(error)
    assert "sig=" not in shown(error)


def test_storage_refusing_connections_fails_a_publish_within_seconds(
    refused_storage: tuple[BusSettings, str], servicebus: Any
) -> None:
    settings, endpoint = refused_storage
    with ClaimCheckBus(settings) as bus:
        started = time.monotonic()
        with pytest.raises(PayloadUnavailableError) as unavailable:
            bus.publish({"n": 1}, event_type="Ping")
        took = time.monotonic() - started
    assert took < 10  # 81 s before, with the SDK's default retries
    assert_names_the_storage_endpoint(unavailable.value, endpoint)
    queue = str(settings.service_bus.default_queue_name)
    assert servicebus.call(lambda broker: broker.peek(queue, 0, 10)) == []


async def test_storage_refusing_connections_fails_a_publish_within_seconds_async(
    refused_storage: tuple[BusSettings, str],
) -> None:
    settings, endpoint = refused_storage
    async with AsyncClaimCheckBus(settings) as bus:
        started = time.monotonic()
        with pytest.raises(PayloadUnavailableError) as unavailable:
            await bus.publish({"n": 1}, event_type="Ping")
        took = time.monotonic() - started
    assert took < 10
    assert_names_the_storage_endpoint(unavailable.value, endpoint)
