"""The state of what the worker consumes: the entities with their routes and lanes' state, and
each message on its way from receipt through its handlers to its settlement."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from claimcheck_bus import AsyncReceivedEvent
from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import Decision, Route, Upcaster, inbox_key, read_version
from claimcheck_bus.worker.lock_renewal import LockRenewal
from claimcheck_bus.worker.projection import ProjectionRunner

log = logging.getLogger("claimcheck_bus.worker")


@dataclass(frozen=True)
class Target:
    """What a route calls: a projection's handler (through its runner) or a plain handler."""

    function: Callable[..., Any]
    runner: ProjectionRunner | None = None
    upcasters: Mapping[tuple[str, int], Upcaster] = field(default_factory=dict)
    takes_context: bool = True
    batch: bool = False


@dataclass(eq=False, slots=True)
class Handling:
    """One message of a received batch on its way through the handlers to its settlement."""

    event: AsyncReceivedEvent[bytes]
    context: EventContext
    renewal: LockRenewal | None
    """Renews its lock (``None`` in a session: the session's lock covers its messages)."""
    started: float
    error: Exception | None = None
    applied: bool = False
    """Some projection applied it, or a plain handler ran."""
    plain: list[tuple[Target, Any]] = field(default_factory=list)
    """Its plain (at-least-once) handlers, with the event decoded for each."""
    parts: int = 0
    """Its projections and its plain handlers (as one part) still to run."""
    decision: Decision | None = None
    """Set once its handlers are done: how its lane settles it."""

    def part_done(self, ready: Callable[[Handling], None]) -> None:
        """One part ran: the message is ``ready`` once none is left."""
        self.parts -= 1
        if not self.parts:
            ready(self)

    def retry(self) -> None:
        """Forget this round's handling: an earlier message of its session failed, so it is
        held and handled again after that one. It gives its payload (and its share of the
        payload budget) back meanwhile: the message it waits for may need that budget."""
        self.error, self.applied, self.decision, self.parts = None, False, None, 0
        self.plain.clear()
        self.event.release_payload()


@dataclass
class EntityState:
    """A queue or a topic subscription the worker consumes, with its routes and its lane's
    state."""

    queue: str | None
    topic: str | None
    subscription: str | None
    routes: list[Route] = field(default_factory=list)
    inflight: int = 0
    """Messages received and not yet settled."""
    ready: list[Handling] = field(default_factory=list)
    """Messages whose handlers are done, for the lane to settle."""
    backing_off: dict[Handling, asyncio.TimerHandle] = field(default_factory=dict)
    """Messages to abandon once their backoff is over."""
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the lane may have something to do: a message ready, slots freed, stop asked."""
    receiving_over: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the lane has stopped receiving (it still settles)."""
    untyped: Callable[[EventContext], str | None] | None = None
    """The event type of messages that name none (see :meth:`Worker.route_untyped`)."""
    sessions: bool = False
    """A session entity: consumed session by session, in order within each."""

    @property
    def path(self) -> str:
        """``orders`` or ``events/Subscriptions/billing``, for logs and contexts."""
        if self.topic:
            return f"{self.topic}/Subscriptions/{self.subscription}"
        return self.queue or "<default queue>"

    def make_ready(self, handling: Handling) -> None:
        """Queue ``handling`` for settlement and wake the lane."""
        self.backing_off.pop(handling, None)
        self.ready.append(handling)
        self.wake.set()

    def end_backoffs(self) -> None:
        """Abandon now what waits out a backoff (the worker is stopping)."""
        for handling, timer in list(self.backing_off.items()):
            timer.cancel()
            self.make_ready(handling)


def context_of(event: AsyncReceivedEvent[bytes], entity: EntityState) -> EventContext:
    properties = dict(event.properties)
    try:
        version = read_version(properties)
    except Exception:  # reported when dispatching; the context still describes the message
        version = 0
    context = EventContext(
        message_id=inbox_key(event.message_id, event.sequence_number),
        event_type=event.event_type,
        event_version=version,
        entity=entity.path,
        delivery_count=event.delivery_count or 0,
        enqueued_time=event.enqueued_time,
        properties=properties,
        session_id=event.session_id,
    )
    if context.event_type is None and entity.untyped is not None:
        try:
            event_type = entity.untyped(context)
        except Exception:  # the resolver's bug: routed nowhere, so dead-lettered with why
            log.warning("the event type resolver of %s failed", entity.path, exc_info=True)
            event_type = None
        context = dataclasses.replace(context, event_type=event_type)
    return context
