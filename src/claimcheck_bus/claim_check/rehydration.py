"""From a received message to its payload bytes: the decisions, with no I/O.

Both clients and :func:`claimcheck_bus.rehydrate` run the same steps: read the message into an
:class:`IncomingMessage`, :func:`plan` where its payload is (inline, or a checked URL), let the
I/O side fetch it, then :func:`decode_content` and deserialize.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from claimcheck_bus import _sdk
from claimcheck_bus.claim_check.urls import (
    PayloadLocation,
    TrustedEndpoint,
    check_payload_url,
    own_endpoint,
)
from claimcheck_bus.claim_check.wire import (
    ClaimCheckRef,
    cloudevent_attribute,
    declares_claim_check,
    normalise_properties,
    read_claim_check,
)
from claimcheck_bus.connection_strings import blob_endpoint_from_connection_string
from claimcheck_bus.errors import (
    EventDecodeError,
    MessageError,
    PayloadIntegrityError,
    PayloadTooLargeError,
)
from claimcheck_bus.events import deserialize
from claimcheck_bus.payloads.compression import Inflater, check_encoding
from claimcheck_bus.payloads.download import PayloadSubject
from claimcheck_bus.payloads.store import is_payload_name_of
from claimcheck_bus.settings import ClaimCheckSettings

MB = 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class IncomingMessage:
    """A received message reduced to plain values (from the SDK, Azure Functions, or a dict)."""

    message_id: str | None
    content_type: str | None
    subject: str | None
    properties: dict[str, Any]
    body: bytes
    entity: str | None = None
    delivery_count: int | None = None
    sequence_number: int | None = None
    enqueued_time: datetime | None = None
    session_id: str | None = None
    problem: MessageError | None = None
    """Why the message cannot be read at all (its body's shape), raised when reading it."""

    @property
    def event_type(self) -> str | None:
        """The event type: the CloudEvents ``type`` attribute, else the subject."""
        declared = cloudevent_attribute(self.properties, "type")
        return declared if isinstance(declared, str) else self.subject


def incoming_from(message: Any, *, entity: str | None = None) -> IncomingMessage:
    """Read a ``ServiceBusReceivedMessage``, an ``azure.functions.ServiceBusMessage`` or any
    object with the same attribute names into an :class:`IncomingMessage`.

    Never raises: a message whose body or properties cannot be read (the sender decides their
    shape) comes back with :attr:`IncomingMessage.problem` set, which reading its payload raises,
    so one such message never costs the rest of its batch.
    """
    message_id = _attribute_text(message, "message_id")
    problem: MessageError | None = None
    try:
        body = _sdk.body_bytes(message)
    except _sdk.BodyShapeError as error:
        body = b""
        problem = EventDecodeError(
            f"message body is {error}, not data sections",
            message_id=message_id,
            entity=entity,
            hint="Send the event as one AMQP data section (the SDKs' default for bytes or str).",
        )
    try:
        properties = getattr(message, "application_properties", None)
        if properties is None:
            properties = getattr(message, "user_properties", None)
        normalised = normalise_properties(properties)
    except Exception as error:  # a foreign object's properties: nothing we can route on
        normalised = {}
        problem = problem or EventDecodeError(
            f"application properties are unreadable ({type(error).__name__})",
            message_id=message_id,
            entity=entity,
        )
    return IncomingMessage(
        message_id=message_id,
        content_type=_attribute_text(message, "content_type"),
        subject=_attribute_text(message, "subject") or _attribute_text(message, "label"),
        properties=normalised,
        body=body,
        entity=entity,
        delivery_count=_attribute_int(message, "delivery_count"),
        sequence_number=_attribute_int(message, "sequence_number"),
        enqueued_time=_attribute_time(message, "enqueued_time_utc"),
        session_id=_attribute_text(message, "session_id"),
        problem=problem,
    )


def _attribute_text(message: Any, name: str) -> str | None:
    try:
        return _sdk.text_or_none(getattr(message, name, None))
    except Exception:  # a property object that cannot even be printed
        return None


def _attribute_int(message: Any, name: str) -> int | None:
    value = getattr(message, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _attribute_time(message: Any, name: str) -> datetime | None:
    value = getattr(message, name, None)
    return value if isinstance(value, datetime) else None


@dataclass(frozen=True)
class ReceivePolicy:
    """What a receiver trusts and accepts, derived from :class:`ClaimCheckSettings`."""

    trusted: tuple[TrustedEndpoint, ...]
    allow_http: bool = False
    max_bytes: int = 256 * MB
    delete_after_complete: bool = False
    own: TrustedEndpoint | None = field(default=None)
    """Our own payload container, where the store's credentials may read when a SAS expired."""

    @classmethod
    def from_settings(cls, settings: ClaimCheckSettings) -> ReceivePolicy:
        """Trust our own container plus ``trusted_blob_endpoints``."""
        own = _own_endpoint(settings)
        extra = tuple(TrustedEndpoint.parse(url) for url in settings.trusted_blob_endpoints)
        return cls(
            trusted=((own,) if own else ()) + extra,
            allow_http=settings.allow_http,
            max_bytes=int(settings.max_download_size_mb * MB),
            delete_after_complete=settings.delete_after_complete,
            own=own,
        )


def _own_endpoint(settings: ClaimCheckSettings) -> TrustedEndpoint | None:
    storage = settings.blob_storage
    if storage.connection_string is not None:
        account_url = blob_endpoint_from_connection_string(
            storage.connection_string.get_secret_value()
        )
    elif storage.account_url:
        account_url = storage.account_url
    else:
        return None
    return own_endpoint(account_url, settings.container_name)


@dataclass(frozen=True)
class Fetch:
    """The payload is in Blob Storage at a checked location."""

    location: PayloadLocation
    ref: ClaimCheckRef

    @property
    def blob_name(self) -> str:
        """The blob's name below the trusted endpoint (see :attr:`PayloadLocation.blob_name`)."""
        return self.location.blob_name


def plan(incoming: IncomingMessage, policy: ReceivePolicy) -> Fetch | None:
    """Where the payload is: ``None`` for inline (it is ``incoming.body``), else a :class:`Fetch`.

    Refuses (typed errors) an invalid claim-check, an untrusted URL, or a declared size over the
    limit, all before any request.
    """
    if incoming.problem is not None:
        raise incoming.problem
    where = {"message_id": incoming.message_id, "entity": incoming.entity}
    ref = read_claim_check(incoming.properties, **where)
    if ref is None:
        return None
    location = check_payload_url(ref.url, policy.trusted, allow_http=policy.allow_http, **where)
    if ref.size is not None and ref.size > policy.max_bytes:
        raise PayloadTooLargeError(
            f"payload is {ref.size} bytes, above the receiver's limit of {policy.max_bytes}",
            blob_path=location.blob_path,
            hint="Raise claim_check.max_download_size_mb if such payloads are expected.",
            **where,
        )
    return Fetch(location, ref)


def may_use_credentials(fetch: Fetch, policy: ReceivePolicy, incoming: IncomingMessage) -> bool:
    """True when the receiver may read or delete this payload with its own credentials: it is
    in our own container, and its name is this library's layout for this very message on the
    entity it was received from (see :func:`~claimcheck_bus.payloads.store.is_payload_name_of`).
    """
    return (
        policy.own is not None
        and fetch.location.endpoint == policy.own
        and incoming.entity is not None
        and is_payload_name_of(fetch.blob_name, incoming.entity, incoming.message_id)
    )


def where(incoming: IncomingMessage, fetch: Fetch | None = None) -> dict[str, str | None]:
    """The message id, entity and blob path an error about ``incoming`` names."""
    return {
        "message_id": incoming.message_id,
        "entity": incoming.entity,
        "blob_path": fetch.location.blob_path if fetch else None,
    }


def verify_payload(
    data: bytes, fetch: Fetch, policy: ReceivePolicy, incoming: IncomingMessage
) -> None:
    """The checks a download makes, for bytes read another way (the store's credentials)."""
    names = where(incoming, fetch)
    if len(data) > policy.max_bytes:
        raise PayloadTooLargeError(
            f"payload is {len(data)} bytes, above the receiver's limit of {policy.max_bytes}",
            **names,
        )
    expected = fetch.ref.sha256
    if expected and hashlib.sha256(data).hexdigest() != expected.lower():
        raise PayloadIntegrityError("payload does not match its ClaimCheckSha256", **names)


def decode_content(
    body: bytes, encoding: str | None, *, max_bytes: int, where: Mapping[str, str | None]
) -> bytes:
    """Undo ``ClaimCheckContentEncoding`` (absent: raw; ``gzip``), bounded by ``max_bytes``;
    for payloads read whole (with the store's credentials) rather than downloaded."""
    subject = PayloadSubject(
        where.get("message_id"), where.get("entity"), where.get("blob_path") or ""
    )
    check_encoding(encoding, subject)
    if encoding is None:
        return body
    inflater = Inflater(max_bytes, subject)
    data = b"".join(inflater.feed(body))
    inflater.finish()
    return data


def decode(incoming: IncomingMessage, payload: bytes, as_type: type[T]) -> T:
    """The typed event from its payload bytes."""
    return deserialize(payload, as_type, content_type=incoming.content_type, **where(incoming))


class EventView(Generic[T]):
    """A received message's metadata, readable before its payload is fetched."""

    def __init__(self, message: Any, as_type: type[T], entity: str) -> None:
        self.message = message
        """The SDK's ``ServiceBusReceivedMessage``."""
        self.incoming = incoming_from(message, entity=entity)
        self.as_type = as_type

    @property
    def message_id(self) -> str | None:
        """The message id (the publisher's idempotency key)."""
        return self.incoming.message_id

    @property
    def event_type(self) -> str | None:
        """The event type name, read without fetching the payload."""
        return self.incoming.event_type

    @property
    def is_claim_check(self) -> bool:
        """True when the payload travelled through Blob Storage."""
        return declares_claim_check(self.incoming.properties)

    @property
    def properties(self) -> dict[str, Any]:
        """Application properties with ``str`` keys (the SDK's ``bytes`` decoded)."""
        return self.incoming.properties

    @property
    def delivery_count(self) -> int | None:
        """How many times this message was delivered before this delivery."""
        return self.incoming.delivery_count

    @property
    def sequence_number(self) -> int | None:
        """The entity's sequence number (to receive it again after ``defer()``)."""
        return self.incoming.sequence_number

    @property
    def enqueued_time(self) -> datetime | None:
        """When Service Bus accepted the message."""
        return self.incoming.enqueued_time

    @property
    def session_id(self) -> str | None:
        """The session id the message was published with (``None``: no session)."""
        return self.incoming.session_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message_id={self.message_id!r}, "
            f"event_type={self.event_type!r}, claim_check={self.is_claim_check})"
        )
