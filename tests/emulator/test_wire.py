"""The emulator driven by a raw AMQP client built on our codec: heartbeats, CBS, credit, drain."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from claimcheck_bus.emulator import Emulator, load_config
from claimcheck_bus.emulator.amqp import cbs, framing, message
from claimcheck_bus.emulator.amqp.performatives import (
    Accepted,
    Attach,
    Begin,
    Composite,
    Disposition,
    Flow,
    Open,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    Source,
    Target,
    Transfer,
)
from claimcheck_bus.emulator.broker import MessageMeta
from claimcheck_bus.emulator.server import DEFAULT_KEY, DEFAULT_KEY_NAME

CONFIG = Path(__file__).with_name("Config.json")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with Emulator(load_config(CONFIG)) as emu:
        yield emu


class RawClient:
    """A minimal blocking AMQP 1.0 client: enough to poke at the server's frame handling."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def _read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def send(self, performative: Composite, payload: bytes = b"", frame_type: int = 0) -> None:
        self.sock.sendall(framing.frame(0, performative, payload, frame_type))

    def frame(self) -> tuple[Composite | None, bytes]:
        header = framing.parse_header(self._read(8), 1 << 24)
        performative, payload = framing.parse_body(header, self._read(header.body_size))
        return performative, bytes(payload)

    def expect(self, kind: type[Composite]) -> tuple[Composite, bytes]:
        """The next non-heartbeat frame, which must be a `kind`."""
        while True:
            performative, payload = self.frame()
            if performative is not None:
                assert isinstance(performative, kind), performative
                return performative, payload

    def handshake(self, idle_time_out: int | None = None) -> Open:
        self.sock.sendall(framing.SASL_HEADER)
        assert self._read(8) == framing.SASL_HEADER
        mechanisms, _ = self.expect(SaslMechanisms)
        assert "ANONYMOUS" in list(mechanisms.sasl_server_mechanisms.items)  # type: ignore[attr-defined]
        self.send(SaslInit(mechanism="ANONYMOUS"), frame_type=framing.FRAME_SASL)
        outcome, _ = self.expect(SaslOutcome)
        assert outcome.code == 0  # type: ignore[attr-defined]
        self.sock.sendall(framing.AMQP_HEADER)
        assert self._read(8) == framing.AMQP_HEADER
        self.send(Open(container_id="raw", max_frame_size=65536, idle_time_out=idle_time_out))
        opened, _ = self.expect(Open)
        assert isinstance(opened, Open)
        return opened


@pytest.fixture
def raw(emulator: Emulator) -> Iterator[RawClient]:
    client = RawClient(emulator.port)
    yield client
    client.close()


def test_server_sends_heartbeats_within_the_clients_idle_timeout(raw: RawClient) -> None:
    opened = raw.handshake(idle_time_out=400)
    assert opened.idle_time_out == 240_000
    assert opened.max_frame_size == 1_048_576
    started = time.monotonic()
    beats = 0
    while beats < 3:
        performative, _ = raw.frame()
        assert performative is None
        beats += 1
    # Three empty frames inside 1.2 s: at least one every 400 ms, as the client asked.
    assert time.monotonic() - started < 1.2


def test_cbs_put_token_then_credit_and_drain(emulator: Emulator, raw: RawClient) -> None:
    raw.handshake()
    raw.send(Begin(next_outgoing_id=0, incoming_window=100, outgoing_window=100))
    raw.expect(Begin)
    raw.send(Attach(name="cbs-out", handle=0, role=False, source=Source(address="me"),
                    target=Target(address="$cbs"), initial_delivery_count=0))  # fmt: skip
    raw.send(Attach(name="cbs-in", handle=1, role=True, source=Source(address="$cbs"),
                    target=Target(address="me")))  # fmt: skip
    raw.expect(Attach)
    flow, _ = raw.expect(Flow)
    assert flow.link_credit
    assert flow.link_credit > 0
    raw.expect(Attach)
    raw.send(Flow(incoming_window=100, next_outgoing_id=0, outgoing_window=100, handle=1,
                  delivery_count=0, link_credit=5))  # fmt: skip
    audience = f"sb://127.0.0.1:{emulator.port}/drain"
    token = cbs.make_token(audience, DEFAULT_KEY_NAME, DEFAULT_KEY, int(time.time()) + 60)
    request = message.build_message(
        properties=message.Properties(message_id="req-1", reply_to="me"),
        application_properties={"operation": "put-token", "type": "jwt", "name": audience},
        value=token,
    )
    raw.send(Transfer(handle=0, delivery_id=0, delivery_tag=b"\x00", message_format=0,
                      settled=False), bytes(request))  # fmt: skip
    settled, _ = raw.expect(Disposition)
    assert isinstance(settled.state, Accepted)  # type: ignore[attr-defined]
    _response, payload = raw.expect(Transfer)
    reply = message.parse_message(payload)
    assert reply.application_properties["status-code"] == 202
    assert reply.properties is not None
    assert reply.properties.correlation_id == "req-1"

    emulator.call(lambda b: b.send("drain", b"\x00Sw\xa1\x02hi", MessageMeta()))
    raw.send(Attach(name="rx", handle=2, role=True, snd_settle_mode=0, rcv_settle_mode=1,
                    source=Source(address=f"amqps://127.0.0.1:{emulator.port}/drain"),
                    target=Target(address="me")))  # fmt: skip
    attached, _ = raw.expect(Attach)
    assert attached.initial_delivery_count == 0  # type: ignore[attr-defined]
    assert attached.max_message_size == 262_144  # type: ignore[attr-defined]
    raw.send(Flow(incoming_window=100, next_outgoing_id=1, outgoing_window=100, handle=2,
                  delivery_count=0, link_credit=5, drain=True))  # fmt: skip
    delivery, payload = raw.expect(Transfer)
    assert delivery.settled is False  # type: ignore[attr-defined]
    assert len(delivery.delivery_tag) == 16  # type: ignore[attr-defined]
    assert payload.endswith(b"\x00Sw\xa1\x02hi")  # the bare message, byte for byte
    drained, _ = raw.expect(Flow)
    # One delivery used one credit; drain consumed the other four.
    assert (drained.handle, drained.link_credit, drained.drain) == (  # type: ignore[attr-defined]
        attached.handle,  # type: ignore[attr-defined]
        0,
        True,
    )
    assert drained.delivery_count == 5  # type: ignore[attr-defined]
