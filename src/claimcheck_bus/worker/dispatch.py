"""The worker's decisions, with no I/O: routing by event type and version, upcasting, the
error policy, lock renewal timing and read-model lag.

The worker only moves messages; every choice it makes about one is a function here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from pydantic import ValidationError

from claimcheck_bus.errors import MessageError

#: The application property carrying an event's schema version (an int; absent means 1).
EVENT_VERSION_PROPERTY = "EventVersion"

#: Service Bus keeps ``DeadLetterErrorDescription`` short; long texts are cut to this.
MAX_DESCRIPTION = 1024
MAX_REASON = 128

#: A pure function turning the JSON of one version of an event into the next version's.
Upcaster = Callable[[Any], Any]


class UnknownEventTypeError(MessageError):
    """No handler on this entity handles the message's event type."""

    dead_letter_reason = "UnknownEventType"


class UnsupportedEventVersionError(MessageError):
    """The message's event version cannot be brought to the version its handler expects."""

    dead_letter_reason = "UnsupportedEventVersion"


class Settle(Enum):
    """What the worker does with a message once its handlers ran (or failed)."""

    COMPLETE = "complete"
    ABANDON = "abandon"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Decision:
    """How to settle a message: after ``delay`` seconds, with a reason for a dead-letter."""

    settle: Settle
    delay: float = 0.0
    reason: str | None = None
    description: str | None = None


_COMPLETE = Decision(Settle.COMPLETE)


def event_type_of(cls: type[Any], explicit: str | None = None) -> str:
    """The wire event type of a class, as ``publish`` names it (``__event_type__`` or name)."""
    if explicit:
        return explicit
    declared = getattr(cls, "__event_type__", None)
    return declared if isinstance(declared, str) and declared else cls.__name__


def event_version_of(cls: type[Any], explicit: int | None = None) -> int:
    """The version of a class's events: ``explicit``, else ``__event_version__``, else 1."""
    if explicit is not None:
        return _positive_version(explicit)
    declared = getattr(cls, "__event_version__", None)
    return _positive_version(declared) if isinstance(declared, int) else 1


def _positive_version(version: int) -> int:
    if isinstance(version, bool) or version < 1:
        raise ValueError(f"an event version is an int >= 1, not {version!r}")
    return version


def read_version(properties: Mapping[str, Any]) -> int:
    """The event version a message carries in ``EventVersion`` (absent: 1).

    Other languages' tools may write it as a string or long; anything that is not a positive
    integer is an :class:`UnsupportedEventVersionError`.
    """
    raw = properties.get(EVENT_VERSION_PROPERTY)
    if raw is None:
        return 1
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(raw, bool):
        raise UnsupportedEventVersionError(f"EventVersion {raw!r} is not an integer")
    if isinstance(raw, str) and re.fullmatch(r"\s*\d{1,9}\s*", raw):
        raw = int(raw)
    if not isinstance(raw, int) or raw < 1:
        raise UnsupportedEventVersionError(f"EventVersion {str(raw)[:40]!r} is not an integer >= 1")
    return raw


@dataclass(frozen=True)
class Route:
    """One handler's interest: an event type at a version, decoded into ``event_class``."""

    event_type: str
    version: int
    event_class: type[Any]
    target: Any
    """What the worker calls (a projection handler, or a plain handler); opaque here."""


def select_routes(routes: Sequence[Route], event_type: str | None) -> list[Route]:
    """The routes that handle ``event_type``; :class:`UnknownEventTypeError` when none does."""
    chosen = [r for r in routes if r.event_type == event_type]
    if not chosen:
        known = sorted({r.event_type for r in routes})
        shown = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "")
        raise UnknownEventTypeError(
            f"no handler for event type {str(event_type)[:100]!r}",
            hint=f"This entity's handlers take: {shown}. Register a handler or filter the "
            "subscription.",
        )
    return chosen


def upcast_chain(
    upcasters: Mapping[tuple[str, int], Upcaster], event_type: str, source: int, target: int
) -> list[Upcaster]:
    """The upcasters taking ``event_type`` from version ``source`` to ``target``, in order.

    ``upcasters[(type, n)]`` turns version n into n + 1. A newer message than the handler
    knows, or a missing step, is an :class:`UnsupportedEventVersionError`.
    """
    if source > target:
        raise UnsupportedEventVersionError(
            f"{event_type} version {source} is newer than the handler's version {target}",
            hint="Deploy a worker that knows this version before publishing it.",
        )
    chain = []
    for version in range(source, target):
        step = upcasters.get((event_type, version))
        if step is None:
            raise UnsupportedEventVersionError(
                f"no upcaster from {event_type} version {version} to {version + 1}",
                hint="Register one with Worker.add_upcaster or Projection.upcasters.",
            )
        chain.append(step)
    return chain


def upcast(document: Any, chain: Sequence[Upcaster]) -> Any:
    """Apply ``chain`` to a decoded JSON document, oldest step first."""
    for step in chain:
        document = step(document)
    return document


def inbox_key(message_id: str | None, sequence_number: int | None) -> str:
    """The id a projection's inbox records a message under: its message id.

    Service Bus gives every message one (the sender's, or its own), so this is the fallback
    for brokers and emulators that do not: ``sequence-<n>``, unique within the entity. A
    redelivery of such a message is then still applied once; a copy sent again is a new
    message, as it would be with distinct message ids.
    """
    return message_id if message_id else f"sequence-{sequence_number}"


def parse_json(body: bytes) -> Any:
    """A payload's JSON document, for upcasting; raises ``ValueError`` when it is not JSON.

    Whatever the sender wrote (nesting deeper than the parser recurses, invalid UTF-8, numbers
    of a million digits) is a ``ValueError``: a property of the payload, never worth a retry.
    """
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decide(
    error: BaseException | None,
    *,
    delivery_count: int,
    base_delay: float = 0.5,
    max_delay: float = 30.0,
) -> Decision:
    """How to settle a message whose handling raised ``error`` (``None``: it succeeded).

    Permanent problems (a :class:`MessageError` with ``permanent``, or an event that does not
    validate) dead-letter at once. Anything else is transient: abandon after an exponential
    backoff, and the entity's max delivery count dead-letters it in the end.
    """
    if error is None:
        return _COMPLETE
    if isinstance(error, MessageError) and error.permanent:
        return Decision(
            Settle.DEAD_LETTER,
            reason=bounded(error.dead_letter_reason, MAX_REASON),
            description=describe(error),
        )
    if isinstance(error, ValidationError):
        return Decision(Settle.DEAD_LETTER, reason="InvalidEvent", description=describe(error))
    return Decision(Settle.ABANDON, delay=backoff(delivery_count, base_delay, max_delay))


def backoff(delivery_count: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before abandoning delivery ``delivery_count`` (0-based): doubling, capped."""
    return float(min(cap, base * 2.0 ** min(max(delivery_count, 0), 20)))


_SECRET = re.compile(
    r"(?i)(sig|signature|sharedaccesskey|accountkey|password|pwd|token)=[^&;\s'\"]+"
)


def describe(error: BaseException) -> str:
    """A dead-letter description a person can act on: the error's type and text, secrets
    (``sig=``, ``AccountKey=``, passwords) masked, length bounded."""
    text = f"{type(error).__name__}: {error}"
    return bounded(_SECRET.sub(lambda m: f"{m.group(1)}=***", text), MAX_DESCRIPTION)


def bounded(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def renew_delay(locked_until: datetime | None, now: datetime, *, floor: float = 0.2) -> float:
    """Seconds until a lock should be renewed: half the time it has left (at least ``floor``)."""
    if locked_until is None:
        return 10.0
    return max(floor, (locked_until - now).total_seconds() / 2)


def lag_seconds(enqueued: datetime | None, committed: datetime) -> float | None:
    """Read-model sync lag: from the enqueued time to the projection's commit (never negative)."""
    if enqueued is None:
        return None
    return max(0.0, (committed - enqueued).total_seconds())


def retention_cutoff(now: datetime, retention: timedelta) -> datetime:
    """Inbox rows processed before this time may be pruned."""
    if retention < timedelta(days=7):
        raise ValueError(
            "inbox retention must be at least 7 days (Service Bus duplicate detection and "
            f"redelivery can reach that far back), not {retention}"
        )
    return now - retention


def refill_size(capacity: int, refill: float) -> int:
    """The most messages one receive takes: a ``refill`` share of the worker's capacity.

    Below the whole capacity, the next batch is received while the previous one is still
    being handled, so the link and the read model are busy at the same time.
    """
    return max(1, math.ceil(capacity * refill))


def receive_batch(
    free_slots: int,
    *,
    lock_seconds: float | None,
    handler_seconds: float,
    most: int | None = None,
) -> int:
    """How many messages to take in one receive (the worker's prefetch).

    Never more than free handler slots, so no received message waits for a slot while its lock
    runs, nor more than ``most`` (see :func:`refill_size`); and, when handlers are known to be
    slow, no more than one lock duration of work, so a crash leaves few messages locked until
    their locks expire.
    """
    if free_slots <= 0:
        return 0
    wanted = free_slots if most is None else max(1, min(free_slots, most))
    if lock_seconds is None or handler_seconds <= 0:
        return wanted
    return max(1, min(wanted, int(lock_seconds / handler_seconds)))


def should_receive(free_slots: int, capacity: int, *, inflight: int, refill: float) -> bool:
    """Whether to receive now: when the entity has nothing in flight and a slot is free, or
    once a :func:`refill_size` batch fits (batched receives amortise the round trip and keep
    the link free for settlements in between)."""
    if free_slots <= 0:
        return False
    if inflight == 0:
        return True
    return free_slots >= refill_size(capacity, refill)


class Turn(Enum):
    """What a lane (the one task that uses an entity's link) does next."""

    SETTLE = "settle"
    RECEIVE = "receive"
    WAIT = "wait"
    DONE = "done"


def next_turn(
    *,
    ready: int,
    free_slots: int,
    capacity: int,
    inflight: int,
    refill: float,
    stopping: bool,
    hold: bool,
) -> Turn:
    """A lane's next use of its link: settle whatever is ready, else receive when a batch fits
    (:func:`should_receive`), else wait for a message to become ready or a slot to free.

    Settling goes first: it frees slots and ends locks, and the SDK confirms settlements
    quickly only while no receive is waiting on the same connection. ``hold`` pauses
    receiving (the entity came back empty while messages are in flight, or receiving
    failed). A stopping lane only settles, and is done once nothing is in flight.
    """
    if ready:
        return Turn.SETTLE
    if stopping:
        return Turn.WAIT if inflight else Turn.DONE
    if hold:
        return Turn.WAIT
    if should_receive(free_slots, capacity, inflight=inflight, refill=refill):
        return Turn.RECEIVE
    return Turn.WAIT


#: Seconds a receive may wait while its link opens (the SDK counts the open against the wait).
LINK_OPEN_WAIT = 10.0
#: How long a receive may hold the link while messages of the entity are in flight.
BUSY_RECEIVE_WAIT = 0.05


def receive_wait(idle_wait: float, *, inflight: int, linked: bool) -> float:
    """How long one receive may wait for messages.

    The first receive opens the link within its wait, so it gets longer. While messages of the
    entity are in flight the receive only picks up what is already there: their settlements
    wait for it (one link), and a long wait on an empty queue would hold them up.
    """
    if not linked:
        return max(idle_wait, LINK_OPEN_WAIT)
    return min(idle_wait, BUSY_RECEIVE_WAIT) if inflight else idle_wait


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile (nearest rank) of ``values``; ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[rank]


def first_failure(errors: Sequence[BaseException | None]) -> int | None:
    """The position of a session batch's first failed message: it and everything behind it
    wait (order first); ``None`` when all succeeded."""
    return next((index for index, error in enumerate(errors) if error is not None), None)


def session_receive_size(batch_size: int, held: int) -> int:
    """How many messages a session's next receive asks for: a batch, less the messages held
    behind a failure (at least one, so the failed message can come back)."""
    return max(1, batch_size - held)
