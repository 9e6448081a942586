"""The few places that lean on azure-servicebus details, kept together so an SDK upgrade
touches one file (and the tests in ``tests/test_sdk_contract.py`` say which assumption broke)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch


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
        application_properties=cast(Any, application_properties),
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

    Accepted: data sections (joined), an AMQP value holding a string or bytes, no body. Every
    other shape (an AMQP sequence, a value holding a number, list or map) is refused before
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
        if kind == "value" and not isinstance(body, (str, *_BYTES_LIKE)) and body is not None:
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


_SHAPES = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "a map"}


def _shape(value: Any) -> str:
    return _SHAPES.get(type(value), f"a value of type {type(value).__name__}")


def text_or_none(value: Any) -> str | None:
    """A received system property (``bytes`` from the SDK, ``str`` elsewhere) as ``str``."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
