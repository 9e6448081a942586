"""What the sync and async clients share: every step of theirs that does no I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from claimcheck_bus.events import deserialize
from claimcheck_bus.payload_store import message_expiry, payload_metadata, sas_expiry
from claimcheck_bus.publishing import Publication, PublishOptions, utc_now
from claimcheck_bus.rehydration import IncomingMessage, ReceivePolicy, incoming_from, where
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.wire import Route, choose_route, declares_claim_check, offload_limit

T = TypeVar("T")


class BusCore:
    """Settings-driven decisions of a bus: routes, upload arguments, receive policy."""

    def __init__(
        self, settings: BusSettings, *, has_store: bool, sas_limit: timedelta | None
    ) -> None:
        """``sas_limit``: the longest SAS the store signs (``None``: no limit)."""
        self.settings = settings
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

    def upload_arguments(self, publication: Publication) -> dict[str, Any]:
        """Keyword arguments of ``PayloadStore.upload`` for ``publication``."""
        cc = self.settings.claim_check
        now = utc_now()
        options = publication.options
        return {
            "blob_name": publication.blob_name,
            "data": publication.event.body,
            "content_type": publication.event.content_type,
            "metadata": payload_metadata(
                publication.message_id,
                publication.event.event_type,
                publication.entity,
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

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message_id={self.message_id!r}, "
            f"event_type={self.event_type!r}, claim_check={self.is_claim_check})"
        )
