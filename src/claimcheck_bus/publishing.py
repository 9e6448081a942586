"""A publish before any I/O: the event serialized, its id, properties and both message forms.

The sync and async clients build a :class:`Publication`, ask it for the inline message, measure
it, and either send that or upload the payload and send :meth:`Publication.claim_checked`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.servicebus import ServiceBusMessage

from claimcheck_bus import _sdk
from claimcheck_bus.events import SerializedEvent, serialize
from claimcheck_bus.wire import (
    CLAIM_CHECK_KEYS,
    Route,
    claim_check_properties,
    cloudevent_properties,
    envelope_bound,
    wire_size,
)

#: Service Bus refuses message ids longer than this.
MAX_MESSAGE_ID = 128


@dataclass(frozen=True)
class PublishOptions:
    """What a caller may set on a published message; everything else is derived."""

    event_type: str | None = None
    message_id: str | None = None
    correlation_id: str | None = None
    session_id: str | None = None
    subject: str | None = None
    time_to_live: timedelta | None = None
    scheduled_enqueue_time: datetime | None = None
    application_properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishReceipt:
    """What was published: the message id, how the payload travelled and how big it was."""

    message_id: str
    entity: str
    event_type: str
    route: Route
    size: int
    """The inline message's encoded size, which decided the route (exact near the limit; an
    upper bound for messages far below it, where an exact figure would cost a full encode)."""
    payload_bytes: int
    blob_name: str | None = None
    sequence_number: int | None = None
    """Set for scheduled messages: pass it to ``cancel_scheduled``."""


@dataclass(frozen=True)
class Publication:
    """One event on its way to one entity."""

    entity: str
    event: SerializedEvent
    message_id: str
    options: PublishOptions
    properties: dict[str, Any]

    @classmethod
    def prepare(
        cls, event: object, entity: str, options: PublishOptions, *, now: datetime
    ) -> Publication:
        """Serialize ``event`` and derive its message id and properties."""
        serialized = serialize(event, event_type=options.event_type)
        message_id = options.message_id or str(uuid.uuid4())
        if len(message_id) > MAX_MESSAGE_ID:
            raise ValueError(f"message_id is {len(message_id)} characters; Service Bus allows 128")
        clashing = CLAIM_CHECK_KEYS & set(options.application_properties)
        if clashing:
            raise ValueError(
                f"application_properties may not set {sorted(clashing)}: the claim-check sets them"
            )
        properties = {
            **event_version_property(event),
            **options.application_properties,
            **cloudevent_properties(
                event_type=serialized.event_type,
                message_id=message_id,
                source=f"/{entity}",
                time=now,
            ),
        }
        return cls(entity, serialized, message_id, options, properties)

    @property
    def blob_name(self) -> str:
        """WIRE.md's ``{entity}/{EventTypeName}/{id}.json``: a retried publish reuses its blob."""
        from claimcheck_bus.payload_store import blob_name_for

        return blob_name_for(self.entity, self.event.event_type, self.message_id)

    def _message(self, body: bytes, properties: dict[str, Any]) -> ServiceBusMessage:
        options = self.options
        return _sdk.build_message(
            body,
            content_type=self.event.content_type,
            message_id=self.message_id,
            subject=options.subject or self.event.event_type,
            application_properties=properties,
            correlation_id=options.correlation_id,
            session_id=options.session_id,
            time_to_live=options.time_to_live,
            scheduled_enqueue_time=options.scheduled_enqueue_time,
        )

    def inline(self) -> ServiceBusMessage:
        """The message carrying the payload in its body."""
        return self._message(self.event.body, self.properties)

    def inline_size_within(self, limit: int) -> int:
        """The inline message's size where it matters: exact near or above ``limit``, a cheap
        upper bound when even that is well within it."""
        options = self.options
        bound = envelope_bound(
            self.properties,
            (
                self.message_id,
                self.event.content_type,
                options.subject or self.event.event_type,
                options.correlation_id,
                options.session_id,
                options.time_to_live,
                options.scheduled_enqueue_time,
            ),
        )
        if bound is not None and wire_size(bound, len(self.event.body)) <= limit:
            return wire_size(bound, len(self.event.body))
        return self.inline_size()

    def inline_size(self) -> int:
        """The inline message's encoded size, measured without encoding the payload."""
        envelope = _sdk.encoded_size(self._message(b"", self.properties))
        return wire_size(envelope, len(self.event.body))

    def claim_checked(self, url: str, *, sha256: str) -> ServiceBusMessage:
        """The message pointing at the uploaded payload: empty body, claim-check properties."""
        size = _sdk.amqp_long(len(self.event.body))
        properties = {**self.properties, **claim_check_properties(url, size=size, sha256=sha256)}
        return self._message(b"", properties)

    def receipt(
        self, route: Route, size: int, *, sequence_number: int | None = None
    ) -> PublishReceipt:
        """The caller's record of this publish."""
        return PublishReceipt(
            message_id=self.message_id,
            entity=self.entity,
            event_type=self.event.event_type,
            route=route,
            size=size,
            payload_bytes=len(self.event.body),
            blob_name=self.blob_name if route is Route.CLAIM_CHECK else None,
            sequence_number=sequence_number,
        )


def event_version_property(event: object) -> dict[str, int]:
    """``{"EventVersion": n}`` when the event's class declares ``__event_version__ = n``.

    Absent means version 1 to readers, so unversioned events add nothing to the wire.
    """
    version = getattr(type(event), "__event_version__", None)
    if isinstance(version, int) and not isinstance(version, bool) and version > 1:
        return {"EventVersion": version}
    return {}


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(timezone.utc)
