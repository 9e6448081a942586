"""The emulator's AMQP 1.0 server: what the azure-servicebus SDK needs from a Service Bus endpoint.

One asyncio task per connection reads frames and dispatches them; the broker (synchronous,
single-threaded) is only ever called from the server's event loop. Outgoing deliveries are
pushed by per-link pumps that honour link credit and the client's session window; broker state
changes wake them through the broker's listener, and `Broker.tick()` is driven by `call_later`
at the deadline it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from .amqp import cbs, codec, framing, message
from .amqp.codec import DecodeError
from .amqp.framing import FramingError
from .amqp.message import Header, ParsedMessage, Properties
from .amqp.performatives import (
    Accepted,
    AmqpError,
    Attach,
    Begin,
    Close,
    Composite,
    Detach,
    Disposition,
    End,
    Flow,
    Modified,
    Open,
    ProtocolError,
    Rejected,
    Released,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    Source,
    Target,
    Transfer,
    composite_or_none,
)
from .amqp.types import Array, Int, Long, Symbol, Timestamp, ULong
from .broker import (
    Broker,
    BrokerError,
    BrokerMessage,
    EntityNotFound,
    LockLost,
    MessageMeta,
    MessageState,
    Rewrite,
    SessionLock,
    SessionLockLost,
)
from .config import EmulatorConfig
from .sql_filter import Changes

_log = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "RootManageSharedAccessKey"
DEFAULT_KEY = "SAS_KEY_VALUE"
# Microsoft's emulator listens on AMQP's 5672, which a local RabbitMQ usually holds (it does on
# this project's machines); one above it is free and is what samples/claimcheck.development.toml
# names. Run Microsoft's emulator with `-p 5673:5672` to use it with the same configuration.
DEFAULT_PORT = 5673
STANDARD_MAX_MESSAGE_SIZE = 262_144
PREMIUM_MAX_BATCH_SIZE = 1_048_576
MAX_MESSAGE_SIZE_LIMIT = 100 * 1024 * 1024

# We accept frames up to 1 MiB (what the SDK itself proposes); a 100 MB message is ~100 frames.
MAX_FRAME_SIZE = 1_048_576
CHANNEL_MAX = 255
SESSION_WINDOW = 5000
LINK_CREDIT = 1000
# Service Bus advertises a 4-minute idle timeout; a peer silent for twice that is gone.
IDLE_TIMEOUT_MS = 240_000
MAX_DELIVERIES_PER_RECEIVE = 64
# A batch may arrive up to this many times its limit (envelope included) before we stop reading.
BATCH_ENVELOPE_ROOM = 2
DISPOSITION_RANGE_LIMIT = 10_000

DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
SESSION_FILTER = "com.microsoft:session-filter"
LOCKED_UNTIL_UTC = "com.microsoft:locked-until-utc"
OPERATION_TIMEOUT = "com.microsoft:timeout"
# What Service Bus waits for a next-available session when the client names no timeout.
DEFAULT_SESSION_WAIT_MS = 60_000
# .NET DateTime ticks (100 ns) at the Unix epoch: locked-until-utc travels as ticks.
DOTNET_TICKS_AT_EPOCH = 621_355_968_000_000_000
LOCK_LOST_CONDITION = "com.microsoft:message-lock-lost"

ROLE_SENDER = False
ROLE_RECEIVER = True
SND_SETTLED = 1
RCV_SECOND = 1


# --------------------------------------------------------------------------------------------
# Pure decisions


def entity_path_of(address: str | None) -> str:
    """The entity path of a link address: 'amqps://h:1/orders' -> 'orders'."""
    if not address:
        return ""
    parsed = urlparse(address)
    path = parsed.path if parsed.scheme else address
    return path.strip("/")


def split_management(path: str) -> tuple[str, bool]:
    """('orders', True) for 'orders/$management'; (path, False) otherwise."""
    suffix = "/$management"
    if path.lower().endswith(suffix):
        return path[: -len(suffix)], True
    return path, False


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _plain(value: object) -> object:
    """A decoded application-property value as a plain Python value for filters."""
    if isinstance(value, Timestamp):
        return value.to_datetime()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def meta_from_message(parsed: ParsedMessage) -> MessageMeta:
    """The broker's view of a message: ids, routing fields, TTL, schedule, app properties."""
    props = parsed.properties or Properties()
    ttl: timedelta | None = None
    if parsed.header is not None and parsed.header.ttl is not None:
        ttl = timedelta(milliseconds=int(parsed.header.ttl))
    scheduled: datetime | None = None
    raw_schedule = parsed.message_annotations.get("x-opt-scheduled-enqueue-time")
    if isinstance(raw_schedule, int):
        scheduled = Timestamp(raw_schedule).to_datetime()
    elif isinstance(raw_schedule, datetime):
        scheduled = raw_schedule
    app = {
        str(k): _plain(v) for k, v in parsed.application_properties.items() if isinstance(k, str)
    }
    return MessageMeta(
        message_id=message.id_to_str(props.message_id),
        correlation_id=message.id_to_str(props.correlation_id),
        session_id=_text(props.group_id),
        reply_to_session_id=_text(props.reply_to_group_id),
        subject=_text(props.subject),
        to=_text(props.to),
        reply_to=_text(props.reply_to),
        content_type=_text(props.content_type),
        time_to_live=ttl,
        scheduled_enqueue_time=scheduled,
        application_properties=app,
        delivery_annotations=parsed.delivery_annotations,
    )


def session_filter(source: Source | None) -> tuple[bool, str | None]:
    """(asks for a session, which one: None = next available) from a receiver's source."""
    if source is None or not isinstance(source.filter, Mapping):
        return False, None
    for key, value in source.filter.items():
        if _text(key) == SESSION_FILTER:
            return True, _text(value)
    return False, None


def dotnet_ticks(when: datetime) -> int:
    """A UTC time as .NET DateTime ticks, as Service Bus sends com.microsoft:locked-until-utc."""
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return DOTNET_TICKS_AT_EPOCH + (delta // timedelta(microseconds=1)) * 10


def session_wait(properties: object) -> float:
    """Seconds a next-available receiver waits for a session: its com.microsoft:timeout (ms)."""
    if isinstance(properties, Mapping):
        for key, value in properties.items():
            if _text(key) == OPERATION_TIMEOUT and isinstance(value, int):
                return max(0, int(value)) / 1000
    return DEFAULT_SESSION_WAIT_MS / 1000


def new_message_id() -> str:
    """The id Service Bus gives a message sent without one.

    Undocumented beyond "the service assigns one"; we use a GUID in .NET's "N" form (32 hex
    digits), what the classic BrokeredMessage assigned, so no client's id parser is surprised.
    """
    return uuid.uuid4().hex


def received_message(data: codec.Buffer) -> ParsedMessage:
    """A sent message parsed, then rewritten as Service Bus would store it."""
    parsed = message.parse_message(data)
    message.as_service_bus_stores(parsed, new_message_id)
    return parsed


def render_message(msg: BrokerMessage, *, locked: bool) -> bytearray:
    """The full encoded message a receiver gets: header, Service Bus annotations, the bare bytes."""
    ttl_ms: int | None = None
    if msg.expires_at is not None:
        ttl_ms = int((msg.expires_at - msg.enqueued_time).total_seconds() * 1000)
    elif msg.meta.time_to_live is not None:
        ttl_ms = int(msg.meta.time_to_live.total_seconds() * 1000)
    if ttl_ms is not None and not 0 <= ttl_ms <= 0xFFFFFFFF:
        ttl_ms = None  # "never expires" does not fit the header's uint milliseconds
    header = Header(durable=True, ttl=ttl_ms, delivery_count=msg.delivery_count)
    annotations: dict[Any, object] = {
        Symbol("x-opt-sequence-number"): Long(msg.sequence_number),
        Symbol("x-opt-enqueued-time"): Timestamp.from_datetime(msg.enqueued_time),
    }
    if locked and msg.locked_until is not None:
        annotations[Symbol("x-opt-locked-until")] = Timestamp.from_datetime(msg.locked_until)
    if msg.state != MessageState.ACTIVE:
        annotations[Symbol("x-opt-message-state")] = Int(int(msg.state))
    scheduled = msg.scheduled_enqueue_time or msg.meta.scheduled_enqueue_time
    if scheduled is not None:
        annotations[Symbol("x-opt-scheduled-enqueue-time")] = Timestamp.from_datetime(scheduled)
    if msg.dead_letter_source is not None:
        annotations[Symbol("x-opt-deadletter-source")] = msg.dead_letter_source
    delivery = message.annotations_map(msg.meta.delivery_annotations)
    if locked and msg.lock_token is not None:
        delivery[Symbol("x-opt-lock-token")] = msg.lock_token
    bare: bytes = msg.bare
    extra: dict[str, object] = {}
    if msg.dead_letter_reason is not None:
        extra["DeadLetterReason"] = msg.dead_letter_reason
    if msg.dead_letter_description is not None:
        extra["DeadLetterErrorDescription"] = msg.dead_letter_description
    if extra:
        bare = message.with_application_properties(bare, extra)
    return message.assemble(header, annotations, bare, delivery)


_DEAD_LETTER_INFO = ("DeadLetterReason", "DeadLetterErrorDescription")


@dataclass(frozen=True)
class SettleAction:
    """What a client's delivery state asks the broker to do with a locked message."""

    kind: str  # complete | abandon | defer | dead_letter | release
    reason: str | None = None
    description: str | None = None
    properties: Mapping[str, object] = field(default_factory=dict)  # properties-to-modify


def properties_to_modify(value: object, skip: tuple[str, ...] = ()) -> dict[str, object]:
    """An outcome's map of application properties to set (string or symbol keys)."""
    if not isinstance(value, Mapping):
        return {}
    return {
        str(key): item
        for key, item in value.items()
        if isinstance(key, str) and str(key) not in skip and item is not None
    }


def settle_action(state: object) -> SettleAction | None:
    """Map an AMQP outcome sent by the SDK to the broker operation (None: not an outcome).

    Service Bus counts every `modified` that is not undeliverable-here as an abandon, whatever
    delivery-failed says (the JS SDK leaves it unset, the Python SDK sets it), and applies the
    outcome's message-annotations as application properties. A dead-letter's error info, past
    the reason and description, is applied the same way (the JS SDK puts them there).
    """
    if isinstance(state, Accepted):
        return SettleAction("complete")
    if isinstance(state, Released):
        return SettleAction("release")
    if isinstance(state, Modified):
        kind = "defer" if state.undeliverable_here else "abandon"
        return SettleAction(kind, properties=properties_to_modify(state.message_annotations))
    if isinstance(state, Rejected):
        reason = description = None
        props: dict[str, object] = {}
        error = state.error
        if isinstance(error, AmqpError):
            description = _text(error.description)
            info = error.info if isinstance(error.info, Mapping) else {}
            reason = _text(info.get("DeadLetterReason"))
            description = _text(info.get("DeadLetterErrorDescription", description))
            props = properties_to_modify(info, _DEAD_LETTER_INFO)
        return SettleAction("dead_letter", reason, description, props)
    return None


def _rewrite_for(properties: Mapping[str, object]) -> Rewrite | None:
    if not properties:
        return None

    def rewrite(bare: bytes, meta: MessageMeta) -> tuple[bytes, MessageMeta]:
        new_bare = message.with_application_properties(bare, properties)
        merged = dict(meta.application_properties)
        merged.update({key: _plain(value) for key, value in properties.items()})
        return new_bare, replace(meta, application_properties=merged)

    return rewrite


def apply_settlement(broker: Broker, path: str, token: uuid.UUID, action: SettleAction) -> None:
    """Perform a settlement on the broker (raises the broker's LockLost and friends)."""
    rewrite = _rewrite_for(action.properties)
    if action.kind == "complete":
        broker.complete(path, token)
    elif action.kind == "abandon":
        broker.abandon(path, token, rewrite)
    elif action.kind == "defer":
        broker.defer(path, token, rewrite)
    elif action.kind == "dead_letter":
        broker.dead_letter(path, token, action.reason, action.description, rewrite)
    else:
        broker.release(path, token)


def batch_size(data: codec.Buffer) -> int:
    """A batch's size as the SDKs count it against the limit: its messages' data sections.

    The Python SDK copies the first message's properties into the batch envelope without
    counting them, and fills a batch up to the limit by that count; Service Bus accepts such
    batches (the SDK is built against it), so the envelope is not held against the limit.
    """
    return sum(
        section.end - section.start
        for section in message.split_sections(data)
        if section.code == message.DATA
    )


def sender_credit(remote_delivery_count: int | None, link_credit: int, delivery_count: int) -> int:
    """Credit left to us as sender (AMQP 2.6.7): the receiver's count + its credit - ours.

    A receiver that has not seen our initial delivery-count sends none; it means ours.
    """
    base = delivery_count if remote_delivery_count is None else remote_delivery_count
    return max(0, base + link_credit - delivery_count)


def transfer_room(next_incoming_id: int, incoming_window: int, next_outgoing_id: int) -> int:
    """How many more transfer frames the peer's session window accepts (AMQP 2.5.6)."""
    return next_incoming_id + incoming_window - next_outgoing_id


def frame_slices(size: int, room: int) -> list[tuple[int, int]]:
    """[start, end) of each frame's share of a payload of `size` bytes, `room` per frame."""
    if room <= 0:
        raise ValueError("no room for payload in a frame")
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + room, size)) for start in range(0, size, room)]


def _error(condition: str, description: str) -> AmqpError:
    return AmqpError(condition=condition, description=description)


# --------------------------------------------------------------------------------------------
# Server


@dataclass
class ServerSettings:
    """Knobs of one emulator endpoint."""

    host: str = "127.0.0.1"
    port: int = 0
    max_message_size: int = STANDARD_MAX_MESSAGE_SIZE
    key_name: str = DEFAULT_KEY_NAME
    key: str = DEFAULT_KEY


class AmqpServer:
    """An asyncio TCP server speaking AMQP 1.0 to Service Bus clients, backed by a Broker."""

    def __init__(self, broker: Broker, settings: ServerSettings | None = None) -> None:
        self.broker = broker
        self.settings = settings or ServerSettings()
        if not 0 < self.settings.max_message_size <= MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(
                f"max message size {self.settings.max_message_size} is outside 1..100 MB"
            )
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        self._receivers: dict[str, set[OutgoingLink]] = {}
        self._session_holders: dict[uuid.UUID, OutgoingLink] = {}
        self._session_waiters: dict[str, list[OutgoingLink]] = {}  # by entity, oldest first
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_soon = False
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        broker.add_listener(self._on_receivable)
        broker.add_session_listener(self._on_session_lost)

    @property
    def port(self) -> int:
        """The bound TCP port (after start)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("server not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def max_batch_size(self) -> int:
        """The batch limit we advertise: the message limit, but at most 1 MB as in Premium."""
        return min(self.settings.max_message_size, PREMIUM_MAX_BATCH_SIZE)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._accept, self.settings.host, self.settings.port, limit=MAX_FRAME_SIZE * 2
        )
        self.changed()
        self._sweeper = asyncio.create_task(self._sweep())

    async def close(self) -> None:
        """Stop accepting, close every connection, stop the ticker."""
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            conn.detach_all()

    # ----------------------------------------------------------------- broker time and events

    def changed(self) -> None:
        """Something changed in the broker: run tick() soon (coalesced) to reschedule."""
        if self._tick_soon or self._loop is None:
            return
        self._tick_soon = True
        self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_soon = False
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        try:
            deadline = self.broker.tick()
        except Exception:
            _log.exception("broker tick failed")
            deadline = datetime.now(timezone.utc) + timedelta(seconds=1)
        if deadline is not None and self._loop is not None:
            delay = (deadline - datetime.now(timezone.utc)).total_seconds()
            self._tick_handle = self._loop.call_later(max(0.0, delay) + 0.001, self._tick)

    def _on_receivable(self, path: str) -> None:
        for link in list(self._receivers.get(path.lower(), ())):
            link.wake()
        for waiter in list(self._session_waiters.get(path.lower(), ())):
            if not waiter.try_accept_session():
                break  # nothing more to hand out; later waiters keep waiting, in order

    def _on_session_lost(self, path: str, token: uuid.UUID) -> None:
        link = self._session_holders.pop(token, None)
        if link is not None:
            link.session_lost()

    def hold(self, link: OutgoingLink, lock: SessionLock) -> None:
        """Remember which link holds a session lock (to detach it if the lock expires)."""
        self._session_holders[lock.token] = link

    def unhold(self, lock: SessionLock) -> None:
        """Forget a session lock's holder."""
        self._session_holders.pop(lock.token, None)

    def wait_for_session(self, link: OutgoingLink) -> None:
        """Park a next-available receiver until a session frees up or its wait ends."""
        self._session_waiters.setdefault(link.path.lower(), []).append(link)

    def session_waiters(self, path: str) -> int:
        """How many next-available receivers wait for a session of the entity."""
        return len(self._session_waiters.get(path.lower(), ()))

    def stop_waiting(self, link: OutgoingLink) -> None:
        """Unpark a receiver (it got a session, timed out, or went away)."""
        waiters = self._session_waiters.get(link.path.lower())
        if waiters is not None and link in waiters:
            waiters.remove(link)
            if not waiters:
                del self._session_waiters[link.path.lower()]

    async def _sweep(self) -> None:
        # A safety net: wake every receiver with credit once a second, in case a state change
        # (e.g. a lock expiring into a dead-letter queue) was not announced on that path.
        while True:
            await asyncio.sleep(1.0)
            for links in list(self._receivers.values()):
                for link in list(links):
                    if link.credit > 0:
                        link.wake()

    def register(self, link: OutgoingLink) -> None:
        """Start waking `link` when its entity has messages."""
        self._receivers.setdefault(link.path.lower(), set()).add(link)

    def unregister(self, link: OutgoingLink) -> None:
        """Stop waking `link`."""
        links = self._receivers.get(link.path.lower())
        if links is not None:
            links.discard(link)
            if not links:
                del self._receivers[link.path.lower()]


class ConnectionClosed(Exception):
    """The peer closed the connection or violated the protocol badly enough to drop it."""

    def __init__(self, error: AmqpError | None = None) -> None:
        super().__init__(error.description if error else "closed")
        self.error = error


class Connection:
    """One client connection: SASL, open, sessions, heartbeats."""

    def __init__(
        self, server: AmqpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.broker = server.broker
        self.reader = reader
        self.writer = writer
        self.sessions: dict[int, Session] = {}  # by the client's channel
        self.remote_max_frame_size = MAX_FRAME_SIZE
        self.remote_idle_timeout: float | None = None
        self.authorized: set[str] = set()  # audience paths granted by put-token
        self.opened = False
        self.close_sent = False
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._next_channel = itertools.count()
        self._last_sent = time.monotonic()

    # ------------------------------------------------------------------------------ io

    def send(
        self, channel: int, performative: Composite, payload: bytes | memoryview = b""
    ) -> None:
        """Queue one frame for writing."""
        if self._closed:
            return
        self.writer.write(framing.frame(channel, performative, payload))
        self._last_sent = time.monotonic()

    def send_raw(self, data: bytes | bytearray | memoryview) -> None:
        """Queue raw bytes (protocol headers, pre-built frames)."""
        if self._closed:
            return
        self.writer.write(data)
        self._last_sent = time.monotonic()

    async def drain(self) -> None:
        """Wait until the socket buffer has room (backpressure for large deliveries)."""
        if not self._closed:
            try:
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                self.abort()

    def abort(self) -> None:
        """Drop the socket now."""
        if not self._closed:
            self._closed = True
            self.writer.transport.abort()

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""
        return self._closed

    async def _read_frame(self, max_size: int) -> tuple[framing.FrameHeader, bytes]:
        idle = None
        if self.opened:
            idle = 2 * IDLE_TIMEOUT_MS / 1000
        head = await asyncio.wait_for(self.reader.readexactly(framing.HEADER_SIZE), idle)
        header = framing.parse_header(head, max_size)
        body = await asyncio.wait_for(self.reader.readexactly(header.body_size), idle)
        return header, body

    # ------------------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until the peer closes it or misbehaves."""
        error: AmqpError | None = None
        try:
            await self._handshake()
            while not self._closed:
                header, body = await self._read_frame(MAX_FRAME_SIZE)
                if header.frame_type != framing.FRAME_AMQP:
                    raise ConnectionClosed(_error("amqp:connection:framing-error", "SASL frame"))
                performative, payload = framing.parse_body(header, body)
                if performative is None:
                    continue  # heartbeat
                self.dispatch(header.channel, performative, payload)
        except ConnectionClosed as exc:
            error = exc.error
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except (DecodeError, FramingError, ProtocolError) as exc:
            error = _error("amqp:decode-error", str(exc)[:200])
        except Exception as exc:
            _log.exception("connection failed")
            error = _error("amqp:internal-error", f"{type(exc).__name__}: {exc}"[:200])
        finally:
            if self._heartbeat is not None:
                self._heartbeat.cancel()
            if not self._closed:
                if self.opened and not self.close_sent:
                    with contextlib.suppress(Exception):
                        self.send(0, Close(error=error))
                self._closed = True
                with contextlib.suppress(Exception):
                    self.writer.close()

    async def _handshake(self) -> None:
        proto = await asyncio.wait_for(self.reader.readexactly(8), 30)
        if proto == framing.SASL_HEADER:
            self.send_raw(framing.SASL_HEADER)
            mechanisms = SaslMechanisms(sasl_server_mechanisms=["ANONYMOUS", "MSSBCBS", "PLAIN"])
            self.send_raw(framing.frame(0, mechanisms, frame_type=framing.FRAME_SASL))
            header, body = await asyncio.wait_for(self._read_frame(65536), 30)
            init, _ = framing.parse_body(header, body)
            if not isinstance(init, SaslInit):
                raise ConnectionClosed()
            # Authentication happens per entity through $cbs; the SASL layer is anonymous.
            self.send_raw(framing.frame(0, SaslOutcome(code=0), frame_type=framing.FRAME_SASL))
            proto = await asyncio.wait_for(self.reader.readexactly(8), 30)
        if proto != framing.AMQP_HEADER:
            self.send_raw(framing.AMQP_HEADER)
            raise ConnectionClosed()
        self.send_raw(framing.AMQP_HEADER)
        header, body = await asyncio.wait_for(self._read_frame(MAX_FRAME_SIZE), 30)
        performative, _ = framing.parse_body(header, body)
        if not isinstance(performative, Open):
            raise ConnectionClosed()
        self._on_open(performative)

    def _on_open(self, frame: Open) -> None:
        self.opened = True
        remote_max = int(frame.max_frame_size)
        if remote_max < framing.MIN_MAX_FRAME_SIZE:
            raise ConnectionClosed(_error("amqp:invalid-field", "max-frame-size below 512"))
        self.remote_max_frame_size = min(remote_max, 16 * MAX_FRAME_SIZE)
        if frame.idle_time_out:
            self.remote_idle_timeout = int(frame.idle_time_out) / 1000
            self._heartbeat = asyncio.create_task(self._beat(self.remote_idle_timeout / 2))
        self.send(
            0,
            Open(
                container_id="claimcheck-bus-emulator",
                hostname=None,
                max_frame_size=MAX_FRAME_SIZE,
                channel_max=CHANNEL_MAX,
                idle_time_out=IDLE_TIMEOUT_MS,
            ),
        )

    async def _beat(self, interval: float) -> None:
        interval = max(interval, 0.05)
        while not self._closed:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - self._last_sent >= interval / 2:
                self.send_raw(framing.HEARTBEAT)

    def detach_all(self) -> None:
        """Forget every link; unsettled peek-lock deliveries stay locked until they expire."""
        for session in list(self.sessions.values()):
            session.release_links()
        self.sessions.clear()

    # ------------------------------------------------------------------------------ dispatch

    def dispatch(self, channel: int, frame: Composite, payload: memoryview) -> None:
        """Route a performative to the connection or its session."""
        if isinstance(frame, Begin):
            self._on_begin(channel, frame)
            return
        if isinstance(frame, Close):
            self.send(0, Close())
            self.close_sent = True
            raise ConnectionClosed()
        if isinstance(frame, Open):
            raise ConnectionClosed(_error("amqp:illegal-state", "second open"))
        session = self.sessions.get(channel)
        if session is None:
            raise ConnectionClosed(_error("amqp:connection:framing-error", "unknown channel"))
        if isinstance(frame, End):
            session.release_links()
            del self.sessions[channel]
            self.send(session.channel, End())
        else:
            session.dispatch(frame, payload)

    def _on_begin(self, channel: int, frame: Begin) -> None:
        if channel in self.sessions:
            raise ConnectionClosed(_error("amqp:illegal-state", "channel already in use"))
        if len(self.sessions) > CHANNEL_MAX:
            raise ConnectionClosed(_error("amqp:resource-limit-exceeded", "too many sessions"))
        ours = next(self._next_channel) % (CHANNEL_MAX + 1)
        session = Session(self, ours, channel, frame)
        self.sessions[channel] = session
        self.send(
            ours,
            Begin(
                remote_channel=channel,
                next_outgoing_id=session.next_outgoing_id,
                incoming_window=SESSION_WINDOW,
                outgoing_window=SESSION_WINDOW,
                handle_max=0xFFFF,
            ),
        )


@dataclass
class _Unsettled:
    link: OutgoingLink
    token: uuid.UUID


class Session:
    """One AMQP session: links by handle, transfer windows, unsettled outgoing deliveries."""

    def __init__(self, conn: Connection, channel: int, remote_channel: int, begin: Begin) -> None:
        self.conn = conn
        self.channel = channel
        self.remote_channel = remote_channel
        self.links: dict[int, Link] = {}  # by the client's handle
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.remote_next_incoming_id = 0
        self.remote_incoming_window = int(begin.incoming_window)
        self.next_incoming_id = int(begin.next_outgoing_id)
        self.incoming_left = SESSION_WINDOW
        self.unsettled: dict[int, _Unsettled] = {}
        self._handles = itertools.count()

    def new_handle(self) -> int:
        """A fresh handle for one of our link endpoints."""
        return next(self._handles)

    def send(self, frame: Composite, payload: bytes | memoryview = b"") -> None:
        """Send a frame on this session's channel."""
        self.conn.send(self.channel, frame, payload)

    def session_flow(self, link_fields: dict[str, Any] | None = None) -> Flow:
        """A flow frame carrying the session's window state (plus link fields if given)."""
        return Flow(
            next_incoming_id=self.next_incoming_id,
            incoming_window=SESSION_WINDOW,
            next_outgoing_id=self.next_outgoing_id,
            outgoing_window=SESSION_WINDOW,
            **(link_fields or {}),
        )

    @property
    def can_send(self) -> bool:
        """Whether the client's incoming window has room for another transfer."""
        room = transfer_room(
            self.remote_next_incoming_id, self.remote_incoming_window, self.next_outgoing_id
        )
        return room > 0 and not self.conn.closed

    def release_links(self) -> None:
        """Detach every link locally (connection or session gone)."""
        for link in list(self.links.values()):
            link.closed()
        self.links.clear()

    def dispatch(self, frame: Composite, payload: memoryview) -> None:
        """Handle a session-level performative."""
        if isinstance(frame, Attach):
            self._on_attach(frame)
        elif isinstance(frame, Flow):
            self._on_flow(frame)
        elif isinstance(frame, Transfer):
            self._on_transfer(frame, payload)
        elif isinstance(frame, Disposition):
            self._on_disposition(frame)
        elif isinstance(frame, Detach):
            self._on_detach(frame)
        else:
            raise ConnectionClosed(_error("amqp:not-allowed", f"unexpected {type(frame).__name__}"))

    # --------------------------------------------------------------------------- attach/detach

    def _on_attach(self, frame: Attach) -> None:
        handle = int(frame.handle)
        if handle in self.links:
            raise ConnectionClosed(_error("amqp:session:handle-in-use", f"handle {handle}"))
        source = composite_or_none(frame.source)
        target = composite_or_none(frame.target)
        link: Link
        if frame.role == ROLE_SENDER:
            address = target.address if isinstance(target, Target) else None
            link = IncomingLink(self, frame, entity_path_of(_text(address)))
        else:
            address = source.address if isinstance(source, Source) else None
            link = OutgoingLink(self, frame, entity_path_of(_text(address)))
        self.links[handle] = link
        link.attach(source if isinstance(source, Source) else None, target)

    def _on_detach(self, frame: Detach) -> None:
        link = self.links.pop(int(frame.handle), None)
        if link is None:
            return
        if not link.replied and not link.detached_by_us:
            # The client gave up waiting for a session: answer its attach before the detach.
            link.reply_attach(ROLE_SENDER, None, None, refused=True)
        link.closed()
        if not link.detached_by_us:
            self.send(Detach(handle=link.handle, closed=bool(frame.closed)))

    # --------------------------------------------------------------------------- flow

    def _on_flow(self, frame: Flow) -> None:
        self.remote_next_incoming_id = (
            int(frame.next_incoming_id)
            if frame.next_incoming_id is not None
            else self.next_outgoing_id
        )
        self.remote_incoming_window = int(frame.incoming_window)
        if frame.handle is not None:
            link = self.links.get(int(frame.handle))
            if link is not None:
                link.on_flow(frame)
        elif frame.echo:
            self.send(self.session_flow())
        for other in self.links.values():
            if isinstance(other, OutgoingLink) and self.can_send:
                other.wake()

    # --------------------------------------------------------------------------- transfers

    def _on_transfer(self, frame: Transfer, payload: memoryview) -> None:
        link = self.links.get(int(frame.handle))
        if not isinstance(link, IncomingLink):
            raise ConnectionClosed(_error("amqp:session:unattached-handle", "transfer"))
        if frame.delivery_id is not None:
            self.next_incoming_id = int(frame.delivery_id) + 1
        self.incoming_left -= 1
        if self.incoming_left <= SESSION_WINDOW // 2:
            self.incoming_left = SESSION_WINDOW
            self.send(self.session_flow())
        link.on_transfer(frame, payload)

    def send_delivery(
        self, link: OutgoingLink, data: bytes | bytearray, *, settled: bool, tag: bytes
    ) -> int:
        """Send one message as one or more transfer frames; returns its delivery id."""
        delivery_id = self.next_delivery_id
        self.next_delivery_id += 1
        first = Transfer(
            handle=link.handle,
            delivery_id=delivery_id,
            delivery_tag=tag,
            message_format=0,
            settled=settled,
            more=True,
        )
        # 64 bytes of slack: continuation frames are smaller than the first, never larger.
        room = self.conn.remote_max_frame_size - framing.HEADER_SIZE - 64
        room -= framing.performative_size(first)
        view = memoryview(data)
        slices = frame_slices(len(view), room)
        for index, (start, end) in enumerate(slices):
            more = index < len(slices) - 1
            if index == 0:
                first.more = more
                self.send(first, view[start:end])
            else:
                self.send(Transfer(handle=link.handle, more=more), view[start:end])
            self.next_outgoing_id += 1
        return delivery_id

    # --------------------------------------------------------------------------- dispositions

    def _on_disposition(self, frame: Disposition) -> None:
        if frame.role != ROLE_RECEIVER:
            return  # the client settling our settlements of its transfers: nothing to do
        first = int(frame.first)
        last = int(frame.last) if frame.last is not None else first
        if last < first or last - first > DISPOSITION_RANGE_LIMIT:
            raise ConnectionClosed(_error("amqp:invalid-field", "disposition range"))
        action = settle_action(frame.state)
        for delivery_id in range(first, last + 1):
            entry = self.unsettled.pop(delivery_id, None)
            if entry is None:
                continue
            outcome: Composite | None = frame.state if isinstance(frame.state, Composite) else None
            if action is not None:
                try:
                    apply_settlement(self.conn.broker, entry.link.path, entry.token, action)
                    if action.kind == "dead_letter":
                        # Service Bus echoes a plain `rejected` for a dead-letter that worked.
                        outcome = Rejected()
                except BrokerError as exc:
                    outcome = Rejected(error=_error(exc.condition, exc.description))
                self.conn.server.changed()
            if not frame.settled and outcome is not None:
                self.send(
                    Disposition(role=ROLE_SENDER, first=delivery_id, settled=True, state=outcome)
                )


class Link:
    """Common state of a link endpoint."""

    def __init__(self, session: Session, attach: Attach, path: str) -> None:
        self.session = session
        self.conn = session.conn
        self.broker = session.conn.broker
        self.server = session.conn.server
        self.name = _text(attach.name) or ""
        self.remote_handle = int(attach.handle)
        self.handle = session.new_handle()
        self.path = path
        self.remote_attach = attach
        self.detached_by_us = False
        self.is_closed = False
        self.replied = False  # whether our attach went out (a session wait holds it back)

    def reply_attach(
        self, role: bool, source: Source | None, target: Any, *, refused: bool = False, **extra: Any
    ) -> None:
        """Answer the client's attach, echoing its terminus and settle modes.

        A refused link gets null terminus (then a detach with the error), as Service Bus does:
        the SDK then reports the detach's condition instead of failing later on first use.
        """
        self.replied = True
        self.session.send(
            Attach(
                name=self.name,
                handle=self.handle,
                role=role,
                snd_settle_mode=self.remote_attach.snd_settle_mode,
                rcv_settle_mode=self.remote_attach.rcv_settle_mode,
                source=None if refused else (source or Source(address=None)),
                target=None
                if refused
                else (target if isinstance(target, Target) else Target(address=None)),
                **extra,
            )
        )

    def refuse(self, role: bool, source: Source | None, target: Any, error: AmqpError) -> None:
        """Attach then detach with an error: how Service Bus refuses a link."""
        self.reply_attach(role, source, target, refused=True)
        self.detach(error)

    def detach(self, error: AmqpError | None = None) -> None:
        """Detach (closed) from our side."""
        if self.detached_by_us:
            return
        self.detached_by_us = True
        self.session.send(Detach(handle=self.handle, closed=True, error=error))
        self.closed()

    def authorized(self, entity: str) -> bool:
        """Whether a put-token on this connection covers `entity`."""
        return any(cbs.grants(audience, entity) for audience in self.conn.authorized)

    def attach(self, source: Source | None, target: Any) -> None:
        """Handle the client's attach."""
        raise NotImplementedError

    def on_flow(self, frame: Flow) -> None:
        """A flow frame for this link."""

    def closed(self) -> None:
        """The link is gone (either side detached, or the connection dropped)."""
        self.is_closed = True


class IncomingLink(Link):
    """The client sends to us: an entity, `$cbs` requests, or `$management` requests."""

    def __init__(self, session: Session, attach: Attach, path: str) -> None:
        super().__init__(session, attach, path)
        self.credit = 0
        self.delivery_count = int(attach.initial_delivery_count or 0)
        self._buffer = bytearray()
        self._first: Transfer | None = None
        self._oversize = False
        self.is_batch = False
        self.kind = "entity"
        self.entity = path
        self.limit = self.server.settings.max_message_size

    def attach(self, source: Source | None, target: Any) -> None:
        """Accept the link (or refuse an unknown entity) and grant credit."""
        entity, is_management = split_management(self.path)
        if self.path.lower() == "$cbs":
            self.kind = "cbs"
        elif is_management:
            self.kind = "management"
            self.entity = entity
        if self.kind != "cbs":
            refusal = self._check_entity(self.entity)
            if refusal is not None:
                self.refuse(ROLE_RECEIVER, source, target, refusal)
                return
        extra: dict[str, Any] = {}
        if self.kind == "entity":
            extra["max_message_size"] = self.server.settings.max_message_size
            extra["properties"] = {
                "com.microsoft:max-message-batch-size": ULong(self.server.max_batch_size)
            }
        self.reply_attach(ROLE_RECEIVER, source, target, **extra)
        self._grant()

    def _check_entity(self, entity: str) -> AmqpError | None:
        if not self.broker.has_entity(entity):
            return _error(
                "amqp:not-found",
                f"The messaging entity '{entity}' could not be found. "
                "Check the entity name and the emulator's Config.json.",
            )
        if not self.authorized(entity):
            return _error(
                "amqp:unauthorized-access",
                f"No valid put-token for '{entity}' on this connection.",
            )
        return None

    def _grant(self) -> None:
        self.credit = LINK_CREDIT
        self.session.send(
            self.session.session_flow(
                {
                    "handle": self.handle,
                    "delivery_count": self.delivery_count,
                    "link_credit": self.credit,
                }
            )
        )

    def on_transfer(self, frame: Transfer, payload: memoryview) -> None:
        """Accumulate a (possibly multi-frame) delivery; act on it once complete."""
        if self.is_closed:
            return
        if self._first is None:
            if frame.delivery_id is None:
                raise ConnectionClosed(_error("amqp:invalid-field", "first transfer lacks id"))
            self._first = frame
            self._buffer = bytearray()
            self._oversize = False
            self.is_batch = int(frame.message_format or 0) == message.BATCH_FORMAT
            self.limit = (
                self.server.max_batch_size
                if self.is_batch
                else self.server.settings.max_message_size
            )
        if frame.aborted:
            self._first = None
            self._buffer = bytearray()
            return
        if not self._oversize:
            # A batch's envelope repeats the first message's properties, which the SDKs leave
            # out when they fill a batch up to the limit: buffer room for it, measure later.
            room = BATCH_ENVELOPE_ROOM * self.limit if self.is_batch else self.limit
            if len(self._buffer) + len(payload) > room:
                # Stop buffering: the rest of an oversize message is read and dropped.
                self._oversize = True
                self._buffer = bytearray()
            else:
                self._buffer += payload
        if frame.more:
            return
        first = self._first
        self._first = None
        data = self._buffer
        self._buffer = bytearray()
        self.delivery_count += 1
        self.credit -= 1
        if self.credit <= LINK_CREDIT // 2:
            self._grant()
        if not self._oversize and self.is_batch and self.kind == "entity":
            # A malformed batch is left to _deliver, which rejects it with decode-error.
            with contextlib.suppress(DecodeError):
                self._oversize = batch_size(data) > self.limit
        if self._oversize:
            outcome: Composite = Rejected(
                error=_error(
                    "amqp:link:message-size-exceeded",
                    f"The message exceeds the maximum size of {self.limit} bytes "
                    f"on '{self.entity}' (emulator --max-message-size).",
                )
            )
        elif self.kind == "cbs":
            outcome = self._cbs(data)
        elif self.kind == "management":
            outcome = self._management(data)
        else:
            outcome = self._deliver(data, int(first.message_format or 0))
        if not first.settled:
            self.session.send(
                Disposition(
                    role=ROLE_RECEIVER, first=int(first.delivery_id or 0), settled=True,
                    state=outcome,
                )
            )  # fmt: skip

    def _deliver(self, data: bytearray, message_format: int) -> Composite:
        try:
            payloads: Iterable[codec.Buffer]
            if message_format == message.BATCH_FORMAT:
                payloads = message.batch_payloads(data)
            else:
                payloads = (data,)
            parsed = [received_message(p) for p in payloads]
        except DecodeError as exc:
            return Rejected(error=_error("amqp:decode-error", str(exc)[:200]))
        try:
            metas = [meta_from_message(item) for item in parsed]
            for meta in metas:
                self.broker.check_send(self.entity, meta)  # a batch is all or nothing
            for item, meta in zip(parsed, metas, strict=True):
                self.broker.send(self.entity, item.bare, meta)
            self.broker.flush()
        except BrokerError as exc:
            return Rejected(error=_error(exc.condition, exc.description))
        finally:
            self.server.changed()
        return Accepted()

    # ------------------------------------------------------------------ request/response nodes

    def _respond(
        self, request: ParsedMessage, app: Mapping[str, object], value: object = None
    ) -> None:
        """Send a response on the session's link whose source is this node."""
        props = request.properties or Properties()
        reply = message.build_message(
            properties=Properties(correlation_id=props.message_id, to=props.reply_to),
            application_properties=app,
            value=value,
        )
        for link in self.session.links.values():
            if (
                isinstance(link, OutgoingLink)
                and link.path.lower() == self.path.lower()
                and not link.is_closed
            ):
                link.queue_response(bytes(reply))
                return
        _log.debug("no response link for %s", self.path)

    def _cbs(self, data: bytearray) -> Composite:
        try:
            request = message.parse_message(data, decode_value=True)
        except DecodeError as exc:
            return Rejected(error=_error("amqp:decode-error", str(exc)[:200]))
        operation = _text(request.application_properties.get("operation"))
        token = request.body
        if isinstance(token, bytes):
            token = token.decode("utf-8", errors="replace")
        if operation != "put-token" or not isinstance(token, str):
            self._respond(
                request,
                {"status-code": Int(400), "status-description": "expected put-token"},
            )
            return Accepted()
        settings = self.server.settings
        check = cbs.check_token(
            token, key_name=settings.key_name, key=settings.key, now=time.time()
        )
        if check.ok:
            self.conn.authorized.add(check.audience_path)
            app: dict[str, object] = {"status-code": Int(202), "status-description": "Accepted"}
        else:
            # Like Service Bus: status 401 and a description, no error-condition. The JS SDK
            # maps 401 to amqp:unauthorized-access (UnauthorizedError); the Python SDK keeps the
            # description only when no error-condition is given. Both retry the failure by
            # design (credentials may have been rotated), so a client fails after its retries.
            app = {
                "status-code": Int(401),
                "status-description": f"Unauthorized: {check.reason}. Check the key name "
                "and key in the connection string against the emulator's --key-name/--key.",
            }
        self._respond(request, app)
        return Accepted()

    def _holder(self, link_name: str | None) -> uuid.UUID | None:
        """The session lock held by the named receiver link on this connection.

        A request that names a link holding no session gets a token nothing matches, so
        session operations fail with session-lock-lost rather than act on another's session.
        """
        if not link_name:
            return None
        for session in self.conn.sessions.values():
            for link in session.links.values():
                if (
                    isinstance(link, OutgoingLink)
                    and link.name == link_name
                    and not link.is_closed
                    and link.session_lock is not None
                ):
                    return link.session_lock.token
        return uuid.uuid4()

    def _management(self, data: bytearray) -> Composite:
        try:
            request = message.parse_message(data, decode_value=True)
        except DecodeError as exc:
            return Rejected(error=_error("amqp:decode-error", str(exc)[:200]))
        operation = _text(request.application_properties.get("operation")) or ""
        body = request.body if isinstance(request.body, dict) else {}
        holder = self._holder(_text(request.application_properties.get("associated-link-name")))
        result = Management(self.broker, self.entity, holder).handle(operation, body)
        self.server.changed()
        app: dict[str, object] = {
            "statusCode": Int(result.status),
            "statusDescription": result.description,
        }
        if result.condition:
            app["errorCondition"] = Symbol(result.condition)
        self._respond(request, app, result.body)
        return Accepted()


class OutgoingLink(Link):
    """We send to the client: messages from an entity, or `$cbs`/`$management` responses."""

    def __init__(self, session: Session, attach: Attach, path: str) -> None:
        super().__init__(session, attach, path)
        self.credit = 0
        self.delivery_count = 0
        self.peek_lock = int(attach.snd_settle_mode) != SND_SETTLED
        self.responses: list[bytes] = []
        self.kind = "entity"
        self._pumping = False
        self._drain = False
        self.session_lock: SessionLock | None = None
        self._source: Source | None = None
        self._target: Any = None
        self._wait_handle: asyncio.TimerHandle | None = None

    def attach(self, source: Source | None, target: Any) -> None:
        """Accept the link (or refuse an unknown entity)."""
        entity, is_management = split_management(self.path)
        if self.path.lower() == "$cbs" or is_management:
            self.kind = "responses"
            self.reply_attach(ROLE_SENDER, source, target, initial_delivery_count=0)
            return
        error: AmqpError | None = None
        if not self.broker.has_entity(entity):
            error = _error(
                "amqp:not-found",
                f"The messaging entity '{entity}' could not be found. "
                "Check the entity name and the emulator's Config.json.",
            )
        elif not self.authorized(entity):
            error = _error(
                "amqp:unauthorized-access", f"No valid put-token for '{entity}' on this connection."
            )
        if error is not None:
            self.refuse(ROLE_SENDER, source, target, error)
            return
        wants_session, session_id = session_filter(source)
        if wants_session:
            self._source, self._target = source, target
            try:
                lock = self.broker.accept_session(entity, session_id)
            except BrokerError as exc:
                self.refuse(ROLE_SENDER, source, target, _error(exc.condition, exc.description))
                return
            if lock is None:
                self._wait_for_session()
            else:
                self._attach_session(lock)
            return
        if self.broker.requires_session(entity):
            self.refuse(
                ROLE_SENDER,
                source,
                target,
                _error(
                    "amqp:not-allowed",
                    "It is not possible for an entity that requires sessions to create a "
                    "non-sessionful message receiver.",
                ),
            )
            return
        self._accepted(source, target)

    def _accepted(self, source: Source | None, target: Any, **extra: Any) -> None:
        self.reply_attach(
            ROLE_SENDER,
            source,
            target,
            initial_delivery_count=0,
            max_message_size=self.server.settings.max_message_size,
            **extra,
        )
        self.server.register(self)

    # ------------------------------------------------------------------ sessions

    def _attach_session(self, lock: SessionLock) -> None:
        """Answer the attach for a locked session: its id in the filter, the lock's expiry."""
        self.session_lock = lock
        self.server.hold(self, lock)
        base = self._source or Source(address=None)
        source = replace(base, filter={Symbol(SESSION_FILTER): lock.session_id})
        properties = {Symbol(LOCKED_UNTIL_UTC): Long(dotnet_ticks(lock.locked_until))}
        self._accepted(source, self._target, properties=properties)
        self.server.changed()

    def _wait_for_session(self) -> None:
        wait = session_wait(self.remote_attach.properties)
        self.server.wait_for_session(self)
        loop = asyncio.get_running_loop()
        self._wait_handle = loop.call_later(wait, self._session_wait_over)

    def try_accept_session(self) -> bool:
        """A waiting next-available receiver tries again; True if it got a session."""
        if self.is_closed or self.session_lock is not None:
            self.server.stop_waiting(self)
            return True
        try:
            lock = self.broker.accept_session(self.path, None)
        except BrokerError as exc:
            self._stop_waiting()
            self.refuse(
                ROLE_SENDER, self._source, self._target, _error(exc.condition, exc.description)
            )
            return True
        if lock is None:
            return False
        self._stop_waiting()
        self._attach_session(lock)
        return True

    def _stop_waiting(self) -> None:
        self.server.stop_waiting(self)
        if self._wait_handle is not None:
            self._wait_handle.cancel()
            self._wait_handle = None

    def _session_wait_over(self) -> None:
        self._wait_handle = None
        self.server.stop_waiting(self)
        if self.is_closed or self.session_lock is not None:
            return
        self.refuse(
            ROLE_SENDER,
            self._source,
            self._target,
            _error(
                OPERATION_TIMEOUT,
                "No session with messages became available within the receiver's timeout.",
            ),
        )

    def session_lost(self) -> None:
        """The session lock expired: detach, as Service Bus does, with session-lock-lost."""
        self.detach(
            _error(
                SessionLockLost.condition,
                "The session lock has expired on the session. Accept the session again.",
            )
        )

    def closed(self) -> None:
        """Stop pumping; locks of unsettled deliveries expire on their own, but a session is
        released at once (its unsettled messages return, counted as a delivery)."""
        super().closed()
        self.server.unregister(self)
        self._stop_waiting()
        lock, self.session_lock = self.session_lock, None
        if lock is not None:
            self.server.unhold(lock)
            try:
                self.broker.release_session(self.path, lock)
            except BrokerError:
                _log.debug("releasing session %s on %s failed", lock.session_id, self.path)
            self.server.changed()

    def on_flow(self, frame: Flow) -> None:
        """Update credit from the client's view: delivery-count + link-credit - ours."""
        if frame.link_credit is not None:
            remote_count = None if frame.delivery_count is None else int(frame.delivery_count)
            self.credit = sender_credit(remote_count, int(frame.link_credit), self.delivery_count)
        self._drain = bool(frame.drain)
        if frame.echo:
            self._send_flow()
        self.wake()

    def _send_flow(self) -> None:
        self.session.send(
            self.session.session_flow(
                {
                    "handle": self.handle,
                    "delivery_count": self.delivery_count,
                    "link_credit": self.credit,
                    "drain": self._drain,
                }
            )
        )

    def queue_response(self, data: bytes) -> None:
        """Queue a pre-settled response message for the client."""
        self.responses.append(data)
        self.wake()

    def wake(self) -> None:
        """Schedule the pump if there may be something to send."""
        if self._pumping or self.is_closed or self.conn.closed:
            return
        self._pumping = True
        asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while not self.is_closed and not self.conn.closed:
                sent = self._send_some()
                if sent:
                    await self.conn.drain()
                    continue
                break
            if self._drain and not self.is_closed:
                # Nothing more to send: use up the remaining credit, as AMQP drain requires.
                self.delivery_count += self.credit
                self.credit = 0
                self._send_flow()
                self._drain = False
        except Exception:
            _log.exception("delivery pump failed on %s", self.path)
            self.conn.abort()
        finally:
            self._pumping = False

    def _send_some(self) -> int:
        """Send what credit and window allow now; returns how many deliveries went out."""
        if self.credit <= 0 or not self.session.can_send:
            return 0
        if self.kind == "responses":
            sent = 0
            while self.responses and self.credit > 0 and self.session.can_send:
                data = self.responses.pop(0)
                self.session.send_delivery(
                    self, data, settled=True, tag=self.delivery_count.to_bytes(4, "big")
                )
                self._count()
                sent += 1
            return sent
        count = min(self.credit, MAX_DELIVERIES_PER_RECEIVE)
        try:
            batch = self.broker.receive(
                self.path, count, peek_lock=self.peek_lock, session=self.session_lock
            )
        except BrokerError as exc:
            self.detach(_error(exc.condition, exc.description))
            return 0
        if not batch:
            return 0
        self.server.changed()
        for msg in batch:
            token = msg.lock_token or uuid.uuid4()
            rendered = render_message(msg, locked=self.peek_lock)
            delivery_id = self.session.send_delivery(
                self, rendered, settled=not self.peek_lock, tag=token.bytes_le
            )
            if self.peek_lock and msg.lock_token is not None:
                self.session.unsettled[delivery_id] = _Unsettled(self, msg.lock_token)
            self._count()
        return len(batch)

    def _count(self) -> None:
        self.delivery_count += 1
        self.credit -= 1


# --------------------------------------------------------------------------------------------
# $management


@dataclass
class ManagementResult:
    """A management response: status code, description, optional error condition and body."""

    status: int = 200
    description: str = "OK"
    condition: str | None = None
    body: object = None


def _items(value: object) -> list[Any]:
    if isinstance(value, Array):
        return list(value.items)
    if isinstance(value, list):
        return value
    return []


def _as_uuid(value: object) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, bytes) and len(value) == 16:
        return uuid.UUID(bytes=value)
    return uuid.UUID(str(value))


# get-message-sessions without a cutoff sends DateTime.MaxValue (year 10000) as milliseconds.
NO_CUTOFF_MS = 253_402_300_800_000
MAX_SESSIONS_PAGE = 1000


def state_cutoff(value: object) -> datetime | None:
    """get-message-sessions' last-updated-time: None for the "no cutoff" sentinel."""
    if value is None:
        return None
    millis = int(value) if isinstance(value, int) else Timestamp.from_datetime(value)  # type: ignore[arg-type]
    if millis >= NO_CUTOFF_MS - 1:
        return None
    return Timestamp(millis).to_datetime()


@dataclass
class Management:
    """The `$management` operations of one entity, as request map -> ManagementResult.

    ``holder`` is the session lock of the receiver link the request names
    (associated-link-name); None when it names none, and then any holder will do.
    """

    broker: Broker
    path: str
    holder: uuid.UUID | None = None
    handlers: dict[str, Callable[[dict[Any, Any]], ManagementResult]] = field(
        init=False, repr=False
    )

    def __post_init__(self) -> None:
        self.handlers = {
            "com.microsoft:renew-lock": self.renew_lock,
            "com.microsoft:peek-message": self.peek,
            "com.microsoft:schedule-message": self.schedule,
            "com.microsoft:cancel-scheduled-message": self.cancel,
            "com.microsoft:update-disposition": self.update_disposition,
            "com.microsoft:receive-by-sequence-number": self.receive_by_sequence_number,
            "com.microsoft:renew-session-lock": self.renew_session_lock,
            "com.microsoft:get-session-state": self.get_session_state,
            "com.microsoft:set-session-state": self.set_session_state,
            "com.microsoft:get-message-sessions": self.get_message_sessions,
        }

    def handle(self, operation: str, body: dict[Any, Any]) -> ManagementResult:
        """Run one operation; broker errors become error responses."""
        handler = self.handlers.get(operation)
        if handler is None:
            return ManagementResult(
                501, f"Operation '{operation}' is not supported by the emulator.",
                "amqp:not-implemented",
            )  # fmt: skip
        try:
            return handler(body)
        except (LockLost, SessionLockLost) as exc:
            return ManagementResult(410, exc.description, exc.condition)
        except EntityNotFound as exc:
            return ManagementResult(404, exc.description, exc.condition)
        except BrokerError as exc:
            status = 404 if "not-found" in exc.condition else 400
            return ManagementResult(status, exc.description, exc.condition)
        except (KeyError, TypeError, ValueError, DecodeError) as exc:
            return ManagementResult(
                400, f"Malformed request: {exc}", "com.microsoft:argument-error"
            )

    def renew_lock(self, body: dict[Any, Any]) -> ManagementResult:
        """Renew each lock token; any lost lock fails the request (410)."""
        expirations = [
            Timestamp.from_datetime(self.broker.renew_lock(self.path, _as_uuid(t)))
            for t in _items(body["lock-tokens"])
        ]
        return ManagementResult(body={"expirations": Array(0x83, expirations)})

    def peek(self, body: dict[Any, Any]) -> ManagementResult:
        """Browse messages from a sequence number without locking them."""
        start = int(body.get("from-sequence-number", 0))
        count = max(0, min(int(body.get("message-count", 1)), 1000))
        found = self.broker.peek(self.path, start, count, _text(body.get("session-id")))
        if not found:
            return ManagementResult(204, "No messages")
        rendered = [{"message": bytes(render_message(m, locked=False))} for m in found]
        return ManagementResult(body={"messages": rendered})

    def schedule(self, body: dict[Any, Any]) -> ManagementResult:
        """Schedule each message at its x-opt-scheduled-enqueue-time."""
        numbers: list[Long] = []
        for entry in _items(body["messages"]):
            parsed = received_message(bytes(entry["message"]))
            meta = meta_from_message(parsed)
            at = meta.scheduled_enqueue_time or datetime.now(timezone.utc)
            numbers.append(Long(self.broker.schedule(self.path, parsed.bare, meta, at)))
        self.broker.flush()
        return ManagementResult(body={"sequence-numbers": Array(0x81, numbers)})

    def cancel(self, body: dict[Any, Any]) -> ManagementResult:
        """Cancel scheduled messages by sequence number."""
        for number in _items(body["sequence-numbers"]):
            self.broker.cancel_scheduled(self.path, int(number))
        self.broker.flush()
        return ManagementResult(body={})

    def update_disposition(self, body: dict[Any, Any]) -> ManagementResult:
        """Settle messages received through management (deferred ones) by lock token."""
        status = _text(body["disposition-status"])
        kinds = {
            "completed": "complete",
            "abandoned": "abandon",
            "suspended": "dead_letter",
            "defered": "defer",
            "deferred": "defer",
        }
        kind = kinds.get(status or "")
        if kind is None:
            raise ValueError(f"unknown disposition-status {status!r}")
        action = SettleAction(
            kind,
            _text(body.get("deadletter-reason")),
            _text(body.get("deadletter-description")),
            properties_to_modify(body.get("properties-to-modify")),
        )
        session_id = _text(body.get("session-id"))
        if session_id is not None:
            # Settling in a session takes holding it (the receiver the request names).
            self.broker.check_session(self.path, session_id, self.holder)
        for token in _items(body["lock-tokens"]):
            apply_settlement(self.broker, self.path, _as_uuid(token), action)
        return ManagementResult(body={})

    def receive_by_sequence_number(self, body: dict[Any, Any]) -> ManagementResult:
        """Receive deferred messages by sequence number (peek-lock when settle mode is 1)."""
        numbers = [int(n) for n in _items(body["sequence-numbers"])]
        peek_lock = int(body.get("receiver-settle-mode", 1)) == 1
        found = self.broker.receive_deferred(
            self.path,
            numbers,
            peek_lock=peek_lock,
            session_id=_text(body.get("session-id")),
            token=self.holder,
        )
        rendered: list[dict[str, object]] = []
        for m in found:
            entry: dict[str, object] = {"message": bytes(render_message(m, locked=peek_lock))}
            if peek_lock and m.lock_token is not None:
                entry["lock-token"] = m.lock_token
            rendered.append(entry)
        return ManagementResult(body={"messages": rendered})

    def _session_id(self, body: dict[Any, Any]) -> str:
        session_id = _text(body["session-id"])
        if session_id is None:
            raise ValueError("session-id is required")
        return session_id

    def renew_session_lock(self, body: dict[Any, Any]) -> ManagementResult:
        """Extend the held session's lock; lost: 410 session-lock-lost."""
        until = self.broker.renew_session_lock(self.path, self._session_id(body), self.holder)
        return ManagementResult(body={"expiration": Timestamp.from_datetime(until)})

    def get_session_state(self, body: dict[Any, Any]) -> ManagementResult:
        """The held session's state (null when none was set)."""
        state = self.broker.session_state(self.path, self._session_id(body), self.holder)
        return ManagementResult(body={"session-state": state})

    def set_session_state(self, body: dict[Any, Any]) -> ManagementResult:
        """Set (null: clear) the held session's state."""
        raw = body.get("session-state")
        state = None if raw is None else bytes(raw) if not isinstance(raw, str) else raw.encode()
        self.broker.set_session_state(self.path, self._session_id(body), self.holder, state)
        self.broker.flush()
        return ManagementResult(body={})

    def get_message_sessions(self, body: dict[Any, Any]) -> ManagementResult:
        """A page of the entity's session ids; none: 204."""
        skip = max(0, int(body.get("skip", 0)))
        top = max(0, min(int(body.get("top", 100)), MAX_SESSIONS_PAGE))
        cutoff = state_cutoff(body.get("last-updated-time"))
        ids = self.broker.list_sessions(self.path, cutoff, skip, top)
        if not ids:
            return ManagementResult(204, "No sessions", "com.microsoft:session-not-found")
        return ManagementResult(body={"skip": Int(skip), "sessions-ids": ids})


# --------------------------------------------------------------------------------------------
# Running it


def connection_string(host: str, port: int, key_name: str, key: str) -> str:
    """The connection string the SDK needs for this endpoint (TLS off via the emulator flag)."""
    return (
        f"Endpoint=sb://{host}:{port};SharedAccessKeyName={key_name};"
        f"SharedAccessKey={key};UseDevelopmentEmulator=true;"
    )


# MessageMeta names of the system properties an action can set -> AMQP properties fields.
_PROPERTIES_FIELD = {"session_id": "group_id", "reply_to_session_id": "reply_to_group_id"}


def _restamp(bare: bytes, changes: Changes) -> bytes:
    system = {_PROPERTIES_FIELD.get(k, k): v for k, v in changes.system.items()}
    return message.with_changes(bare, system, changes.user)


def _make_broker(config: EmulatorConfig | None, data_dir: str | Path | None) -> Broker:
    config = config or EmulatorConfig.default()
    if data_dir is None:
        return Broker(config, restamp=_restamp)
    from .persistence import Persistence

    return Broker(config, persistence=Persistence(data_dir), restamp=_restamp)


async def serve(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_message_size: int = STANDARD_MAX_MESSAGE_SIZE,
    data_dir: str | Path | None = None,
    key_name: str = DEFAULT_KEY_NAME,
    key: str = DEFAULT_KEY,
    ready: Callable[[AmqpServer], None] | None = None,
) -> None:
    """Run an emulator inside the current event loop until cancelled."""
    broker = _make_broker(config, data_dir)
    server = AmqpServer(broker, ServerSettings(host, port, max_message_size, key_name, key))
    try:
        await server.start()
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        await server.close()
        broker.close()


_T = TypeVar("_T")


class Emulator:
    """An in-process emulator running its asyncio server in a daemon thread."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_message_size: int = STANDARD_MAX_MESSAGE_SIZE,
        data_dir: str | Path | None = None,
        key_name: str = DEFAULT_KEY_NAME,
        key: str = DEFAULT_KEY,
    ) -> None:
        if not 0 < max_message_size <= MAX_MESSAGE_SIZE_LIMIT:
            raise ValueError(f"max_message_size {max_message_size} is outside 1 byte..100 MB")
        self.config = config or EmulatorConfig.default()
        self.host = host
        self.key_name = key_name
        self.key = key
        self._requested_port = port
        self._max_message_size = max_message_size
        self._data_dir = data_dir
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._server: AmqpServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> Emulator:
        """Start serving; returns once the port is bound (raises if start-up failed)."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="servicebus-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Service Bus emulator did not start within 30 s")
        if self._error is not None:
            raise RuntimeError(f"the Service Bus emulator failed to start: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        def on_ready(server: AmqpServer) -> None:
            self._server = server
            self._ready.set()

        async def main() -> None:
            self._task = asyncio.current_task()
            await serve(
                self.config,
                host=self.host,
                port=self._requested_port,
                max_message_size=self._max_message_size,
                data_dir=self._data_dir,
                key_name=self.key_name,
                key=self.key,
                ready=on_ready,
            )

        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            loop.close()

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        loop, task, thread = self._loop, self._task, self._thread
        if loop is not None and task is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join(10)
        self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> AmqpServer:
        """The running AMQP server."""
        if self._server is None:
            raise RuntimeError("the emulator is not running")
        return self._server

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return self.server.port

    @property
    def broker(self) -> Broker:
        """The broker (for tests: prefer `call` to read it from the server's thread)."""
        return self.server.broker

    @property
    def connection_string(self) -> str:
        """The connection string for the azure-servicebus SDK."""
        return connection_string(self.host, self.port, self.key_name, self.key)

    def call(self, fn: Callable[[Broker], _T], timeout: float = 10) -> _T:
        """Run `fn(broker)` on the server's event loop thread and return its result."""
        if self._loop is None:
            raise RuntimeError("the emulator is not running")

        async def run() -> _T:
            result = fn(self.broker)
            self.server.changed()
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)
