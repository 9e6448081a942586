"""A publish before any I/O: the event serialized, its id, properties and both message forms.

The sync and async clients build a :class:`Publication`, ask it for the inline message, measure
it, and either send that or upload the payload and send :meth:`Publication.claim_checked`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.servicebus import ServiceBusMessage

from claimcheck_bus import _sdk
from claimcheck_bus.claim_check.rehydration import ReceivePolicy
from claimcheck_bus.claim_check.wire import (
    CLAIM_CHECK_KEYS,
    Route,
    choose_route,
    claim_check_properties,
    cloudevent_properties,
    envelope_bound,
    offload_limit,
    wire_size,
)
from claimcheck_bus.errors import ConfigurationError
from claimcheck_bus.events import SerializedEvent, event_type_name, serialize
from claimcheck_bus.payloads.compression import GZIP, compressed
from claimcheck_bus.payloads.store import (
    blob_name_for,
    message_expiry,
    payload_metadata,
    sas_expiry,
)
from claimcheck_bus.settings import BusSettings

#: Service Bus refuses message ids longer than this.
MAX_MESSAGE_ID = 128
#: Service Bus refuses session ids longer than this.
MAX_SESSION_ID = 128

#: A bus's ``session_key``: the session id of an event, or ``None`` to leave it to the class.
SessionKey = Callable[[object], "str | None"]


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
    session_id: str | None = None
    """The session the message was published to, if any."""


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
        cls,
        event: object,
        entity: str,
        options: PublishOptions,
        *,
        now: datetime | None = None,
        cloud_events: bool = False,
    ) -> Publication:
        """Serialize ``event`` and derive its message id and properties: what consumers need
        (the event type travels as the subject, ``EventVersion`` above 1), plus the CloudEvents
        attributes with ``cloud_events`` (stamped ``now``, default the current time)."""
        serialized = serialize(event, event_type=options.event_type)
        message_id = options.message_id or str(uuid.uuid4())
        if len(message_id) > MAX_MESSAGE_ID:
            raise ValueError(f"message_id is {len(message_id)} characters; Service Bus allows 128")
        clashing = CLAIM_CHECK_KEYS & set(options.application_properties)
        if clashing:
            raise ValueError(
                f"application_properties may not set {sorted(clashing)}: the claim-check sets them"
            )
        properties = {**event_version_property(event), **options.application_properties}
        if cloud_events:
            properties.update(
                cloudevent_properties(
                    event_type=serialized.event_type,
                    message_id=message_id,
                    source=f"/{entity}",
                    time=now or utc_now(),
                )
            )
        return cls(entity, serialized, message_id, options, properties)

    @property
    def blob_name(self) -> str:
        """``{entity}/{EventTypeName}/{id}.json`` (docs/wire-format.md): a retry reuses its blob."""
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

    def claim_checked(
        self, url: str, *, sha256: str, size: int, content_encoding: str | None = None
    ) -> ServiceBusMessage:
        """The message pointing at the uploaded payload: empty body, claim-check properties
        (``size`` and ``sha256`` of the bytes as stored)."""
        properties = {
            **self.properties,
            **claim_check_properties(
                url,
                size=_sdk.amqp_long(size),
                sha256=sha256,
                content_encoding=content_encoding,
            ),
        }
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
            session_id=self.options.session_id,
        )


def session_id_for(
    event: object, explicit: str | None = None, key: SessionKey | None = None
) -> str | None:
    """The session id ``event`` is published with, or ``None`` for no session.

    The first that gives one wins: ``explicit`` (the ``session_id=`` argument of a publish),
    then ``key(event)`` (a bus's ``session_key``) unless it returns ``None``, then the
    attribute the event's class names in ``__session_key__``, converted with ``str()`` (an
    attribute that is ``None`` means no session). An empty id or one longer than Service Bus
    takes (128 characters) raises ``ValueError`` naming the event type and where the id came
    from; it is never truncated, since a cut id would merge distinct sessions.
    """
    if explicit is not None:
        return _checked_session_id(event, explicit, "the session_id argument")
    if key is not None:
        keyed = key(event)
        if keyed is not None:
            if not isinstance(keyed, str):
                raise TypeError(
                    f"the bus's session_key returned {type(keyed).__name__} for "
                    f"{event_type_name(event)}; it must return str or None"
                )
            return _checked_session_id(event, keyed, "the bus's session_key")
    declared = getattr(type(event), "__session_key__", None)
    if declared is None:
        return None
    name = event_type_name(event)
    if not isinstance(declared, str) or not declared:
        raise ConfigurationError(
            f"{name}.__session_key__ must name an attribute of the event, not {declared!r}"
        )
    if not hasattr(event, declared):
        raise ConfigurationError(
            f"{name}.__session_key__ names {declared!r}, which the event does not have"
        )
    value = getattr(event, declared)
    if value is None:
        return None
    return _checked_session_id(event, str(value), f"{name}.__session_key__ ({declared!r})")


def _checked_session_id(event: object, session_id: str, source: str) -> str:
    name = event_type_name(event)
    if not session_id:
        raise ValueError(f"the session id of {name} from {source} is empty")
    if len(session_id) > MAX_SESSION_ID:
        raise ValueError(
            f"the session id of {name} from {source} is {len(session_id)} characters; "
            f"Service Bus allows {MAX_SESSION_ID}"
        )
    return session_id


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


def publish_options(
    *,
    event_type: str | None = None,
    message_id: str | None = None,
    correlation_id: str | None = None,
    session_id: str | None = None,
    subject: str | None = None,
    time_to_live: timedelta | None = None,
    scheduled_enqueue_time: datetime | None = None,
    application_properties: dict[str, Any] | None = None,
) -> PublishOptions:
    """:class:`PublishOptions` from the clients' keyword arguments."""
    return PublishOptions(
        event_type=event_type,
        message_id=message_id,
        correlation_id=correlation_id,
        session_id=session_id,
        subject=subject,
        time_to_live=time_to_live,
        scheduled_enqueue_time=scheduled_enqueue_time,
        application_properties=application_properties or {},
    )


class BusCore:
    """Settings-driven decisions of a bus: routes, upload arguments, receive policy."""

    def __init__(
        self,
        settings: BusSettings,
        *,
        has_store: bool,
        sas_limit: timedelta | None,
        session_key: SessionKey | None = None,
    ) -> None:
        """``sas_limit``: the longest SAS the store signs (``None``: no limit);
        ``session_key``: see :func:`session_id_for`."""
        self.settings = settings
        self.session_key = session_key
        self.policy = ReceivePolicy.from_settings(self.settings.claim_check)
        self._has_store = has_store
        self._sas_limit = sas_limit

    def route(self, publication: Publication, entity_limit: int) -> tuple[Route, int]:
        """Inline or claim-check for ``publication`` on an entity taking ``entity_limit`` bytes."""
        cc = self.settings.claim_check
        size = publication.inline_size_within(offload_limit(cc.max_payload_size_kb, entity_limit))
        route = choose_route(
            size,
            enabled=cc.enabled and self._has_store,
            always=cc.always,
            threshold_kb=cc.max_payload_size_kb,
            entity_max_bytes=entity_limit,
            message_id=publication.message_id,
            entity=publication.entity,
        )
        return route, size

    def prepare(self, event: object, entity: str, options: PublishOptions) -> Publication:
        """:meth:`Publication.prepare` with this bus's settings and the event's session id
        (:func:`session_id_for`)."""
        session_id = session_id_for(event, options.session_id, self.session_key)
        if session_id != options.session_id:
            options = replace(options, session_id=session_id)
        return Publication.prepare(
            event, entity, options, cloud_events=self.settings.events.cloud_events
        )

    def upload_arguments(self, publication: Publication) -> dict[str, Any]:
        """Keyword arguments of ``PayloadStore.upload`` for ``publication``: its payload as
        stored (gzip-compressed when ``claim_check.compression`` asks and it pays)."""
        cc = self.settings.claim_check
        packed = compressed(publication.event.body, cc.compression)
        encoding = GZIP if packed is not None else None
        now = utc_now()
        options = publication.options
        return {
            "blob_name": publication.blob_name,
            "data": packed if packed is not None else publication.event.body,
            "content_type": publication.event.content_type,
            "content_encoding": encoding,
            "metadata": payload_metadata(
                publication.message_id,
                publication.event.event_type,
                publication.entity,
                content_encoding=encoding,
                # What `claimcheck-bus sweep` needs to know when no message can reference it.
                published_at=now,
                expires_at=message_expiry(
                    now, options.time_to_live, options.scheduled_enqueue_time
                ),
            ),
            "sas_expires_on": sas_expiry(
                now,
                cc.sas_expiry_hours,
                publication.options.time_to_live,
                self._sas_limit,
                message_id=publication.message_id,
                entity=publication.entity,
            ),
        }
