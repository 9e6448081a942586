"""Messages as the commands list them: one row per message, read without its payload."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from claimcheck_bus.cli.decisions import sas_expires_at
from claimcheck_bus.cli.library import BLOB_URI, SIZE, declares_claim_check, incoming_from

COLUMNS = (
    "seq",
    "message id",
    "event type",
    "reason",
    "description",
    "enqueued",
    "deliveries",
    "route",
    "bytes",
)


@dataclass(frozen=True)
class MessageRow:
    """What an operator sees of one message (never its SAS)."""

    sequence_number: int | None
    message_id: str | None
    event_type: str | None
    reason: str | None
    description: str | None
    enqueued_time: datetime | None
    delivery_count: int | None
    route: str
    payload_size: int | None
    session_id: str | None
    sas_expires_at: datetime | None

    def cells(self) -> tuple[Any, ...]:
        """The table columns of :data:`COLUMNS`."""
        return (
            self.sequence_number,
            self.message_id,
            self.event_type,
            self.reason,
            self.description,
            self.enqueued_time,
            self.delivery_count,
            self.route,
            self.payload_size,
        )

    def as_json(self) -> dict[str, Any]:
        """All fields, JSON-ready."""
        return asdict(self)


def row_of(message: Any) -> MessageRow:
    """The row of an SDK ``ServiceBusReceivedMessage``."""
    incoming = incoming_from(message)
    properties = incoming.properties
    claim_checked = declares_claim_check(properties)
    url = properties.get(BLOB_URI)
    size = properties.get(SIZE) if claim_checked else len(incoming.body)
    return MessageRow(
        sequence_number=incoming.sequence_number,
        message_id=incoming.message_id,
        event_type=incoming.event_type,
        reason=_text(getattr(message, "dead_letter_reason", None)),
        description=_text(getattr(message, "dead_letter_error_description", None)),
        enqueued_time=incoming.enqueued_time,
        delivery_count=incoming.delivery_count,
        route="claim-check" if claim_checked else "inline",
        payload_size=size if isinstance(size, int) else None,
        session_id=_text(getattr(message, "session_id", None)),
        sas_expires_at=sas_expires_at(url) if claim_checked and isinstance(url, str) else None,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
