"""The few places that lean on azure-servicebus details, kept together so an SDK upgrade
touches one file (and the tests in ``tests/test_sdk_contract.py`` say which assumption broke)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.exceptions import OperationTimeoutError

_log = logging.getLogger(__name__)


def amqp_long(value: int) -> Any:
    """``value`` typed so that the SDK's encoder writes an AMQP long (a plain ``int`` becomes an
    AMQP int, which .NET cannot unbox as ``long`` and which overflows above 2 GiB)."""
    # The SDK's encoder honours {"TYPE": ..., "VALUE": ...} for explicitly typed values.
    return {"TYPE": "LONG", "VALUE": value}


# A batch charges 5 bytes of framing per message below 256 bytes, 8 from there on.
_BATCH_OVERHEAD = (5, 8)


def encoded_size(message: ServiceBusMessage) -> int:
    """The size of ``message`` as the SDK encodes it on the wire.

    Measured through the public ``ServiceBusMessageBatch`` (which uses the SDK's own encoder)
    rather than re-implementing AMQP encoding rules that could drift from the SDK's.
    """
    batch = ServiceBusMessageBatch(max_size_in_bytes=2**62)
    before = batch.size_in_bytes
    batch.add_message(message)
    added = batch.size_in_bytes - before
    small = added - _BATCH_OVERHEAD[0]
    return small if small < 256 else added - _BATCH_OVERHEAD[1]


def max_message_size(sender: Any) -> int:
    """The entity's maximum message size, as the sender's link reports it.

    ``create_message_batch`` opens the link (public API); the per-message limit is kept by the
    SDK on the sender. Premium links may advertise a smaller batch limit than message limit,
    hence the attribute first and the batch's limit as the fallback.
    """
    batch = sender.create_message_batch()
    limit = getattr(sender, "_max_message_size_on_link", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else int(batch.max_size_in_bytes)


async def max_message_size_async(sender: Any) -> int:
    """:func:`max_message_size` for an ``aio`` sender."""
    batch = await sender.create_message_batch()
    limit = getattr(sender, "_max_message_size_on_link", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else int(batch.max_size_in_bytes)


async def probe_link_async(sender: Any) -> int:
    """Open ``sender``'s link, return :func:`max_message_size`, and close the sender.

    Bounded by the sender's own ``try_timeout``: the async SDK can interrupt every step of
    opening a link."""
    try:
        return await max_message_size_async(sender)
    finally:
        await sender.close()


def probe_link(sender: Any, timeout: float) -> int:
    """:func:`probe_link_async` for a sync sender, given up after ``timeout`` seconds.

    The sync SDK cannot interrupt the start of a connection (its SASL exchange reads a blocking
    socket without a timeout), so a namespace that accepts connections and never answers would
    hold the caller for good. The probe runs in a helper thread; at the deadline its socket is
    shut down, which ends the helper's read, and ``OperationTimeoutError`` is raised.
    """
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, max_message_size(sender)))
        except BaseException as error:  # handed to the caller below
            outcome.append((False, error))
        finally:
            try:
                sender.close()
            except Exception:  # the outcome above is what counts
                _log.debug("closing a probe sender failed", exc_info=True)

    helper = threading.Thread(target=run, name="claimcheck-bus-link-probe", daemon=True)
    helper.start()
    helper.join(timeout)
    if helper.is_alive():
        _shut_down_socket(sender)
        helper.join(1.0)
        raise OperationTimeoutError(message=f"No answer within {timeout:g} s to opening a link.")
    succeeded, value = outcome[0]
    if succeeded:
        return int(value)
    raise value


def _shut_down_socket(sender: Any) -> None:
    # The SDK keeps the connection's socket three private attributes deep; without it the
    # helper thread stays blocked until the namespace closes the connection.
    connection = getattr(getattr(sender, "_handler", None), "_connection", None)
    sock = getattr(getattr(connection, "_transport", None), "sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):  # already closed by the helper or the namespace
            sock.shutdown(socket.SHUT_RDWR)


def error_condition(error: BaseException) -> str | None:
    """The AMQP error condition an SDK error carries (e.g. ``amqp:unauthorized-access``)."""
    # ServiceBusError keeps it decoded, but only as a private attribute (and in its text).
    condition = getattr(error, "_condition", None)
    return str(condition) if condition else None


def build_message(
    body: bytes,
    *,
    content_type: str,
    message_id: str,
    subject: str,
    application_properties: dict[str, Any],
    correlation_id: str | None = None,
    session_id: str | None = None,
    time_to_live: timedelta | None = None,
    scheduled_enqueue_time: datetime | None = None,
    to: str | None = None,
    reply_to: str | None = None,
) -> ServiceBusMessage:
    """A ``ServiceBusMessage`` with one data section (``body`` may be empty)."""
    return ServiceBusMessage(
        body,
        content_type=content_type,
        message_id=message_id,
        subject=subject,
        # No section at all rather than an empty map: bytes and encoder time on every message.
        application_properties=cast(Any, application_properties or None),
        correlation_id=correlation_id,
        session_id=session_id,
        time_to_live=time_to_live,
        scheduled_enqueue_time_utc=scheduled_enqueue_time,
        to=to,
        reply_to=reply_to,
    )


_BYTES_LIKE = (bytes, bytearray, memoryview)


def body_bytes(message: Any) -> bytes:
    """A received message's body as bytes, or :class:`BodyShapeError` saying why it has none.

    Accepted: data sections (joined) and an AMQP value holding a string or bytes. Every other
    shape (an AMQP sequence, a value holding null, a number, a list or a map) is refused before
    anything is converted: ``bytes(10**9)`` of a 20-byte integer would allocate a gigabyte.
    Works for the SDK's ``ServiceBusReceivedMessage`` (by its ``body_type``), Azure Functions'
    message (``get_body()``) and plain objects with a ``body``.
    """
    kind = getattr(getattr(message, "body_type", None), "value", None)
    if kind is None:
        get_body = getattr(message, "get_body", None)
        body = get_body() if callable(get_body) else getattr(message, "body", None)
    else:
        body = message.body
        if kind == "sequence":
            raise BodyShapeError("an AMQP sequence")
        if kind == "value" and not isinstance(body, (str, *_BYTES_LIKE)):
            raise BodyShapeError(f"an AMQP value holding {_shape(body)}")
    if body is None:
        return b""
    if isinstance(body, _BYTES_LIKE):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    if isinstance(body, (list, tuple)) or (kind == "data" and isinstance(body, Iterable)):
        parts = list(body)
        if all(isinstance(part, _BYTES_LIKE) for part in parts):
            return b"".join(parts)
        raise BodyShapeError("data sections holding something other than bytes")
    raise BodyShapeError(_shape(body))


class BodyShapeError(ValueError):
    """A message body of a shape no event can be read from; the text names the shape."""


_SHAPES = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    list: "a list",
    dict: "a map",
}


def _shape(value: Any) -> str:
    return _SHAPES.get(type(value), f"a value of type {type(value).__name__}")


def text_or_none(value: Any) -> str | None:
    """A received system property (``bytes`` from the SDK, ``str`` elsewhere) as ``str``."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
