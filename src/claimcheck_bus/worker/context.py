"""What a handler knows about the message it handles, besides the event itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class EventContext:
    """A received message's metadata, handed to handlers and middleware."""

    message_id: str
    event_type: str | None
    event_version: int
    entity: str
    delivery_count: int
    """How many deliveries came before this one (0 on the first)."""
    enqueued_time: datetime | None
    properties: dict[str, Any] = field(default_factory=dict)
    session_id: str | None = None
    """The message's session (on a session entity, every message has one)."""
