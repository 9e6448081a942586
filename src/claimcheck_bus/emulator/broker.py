"""Service Bus entity semantics for the emulator: no sockets, no AMQP encoding, one thread.

The protocol layer parses what it needs out of each bare message into a MessageMeta and passes
the encoded bare message through as bytes; the broker stores those bytes once and hands the same
object back on every delivery. Every method is synchronous and meant for one event loop: drive
``tick()`` at the deadline it returns and after each change.
"""

from __future__ import annotations

import copy
import functools
import heapq
import itertools
import logging
import uuid
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from claimcheck_bus.emulator.config import (
    CorrelationFilter,
    EmulatorConfig,
    EntityOptions,
    QueueConfig,
    Rule,
    TopicConfig,
)
from claimcheck_bus.emulator.sql_filter import SYSTEM_PROPERTIES, Changes, SqlAction

if TYPE_CHECKING:
    from claimcheck_bus.emulator.persistence import Persistence

__all__ = [
    "DEAD_LETTER_QUEUE",
    "MAX_FORWARD_HOPS",
    "TRANSFER_DEAD_LETTER_QUEUE",
    "Broker",
    "BrokerError",
    "BrokerMessage",
    "EntityNotFound",
    "LockLost",
    "MessageMeta",
    "MessageNotFound",
    "MessageState",
    "OperationNotAllowed",
    "Rewrite",
    "SessionCannotBeLocked",
    "SessionInfo",
    "SessionLock",
    "SessionLockLost",
    "effective_ttl",
    "filter_matches",
    "next_available_session",
    "rule_matches",
    "selecting_action",
    "session_lock_valid",
    "sessions_to_list",
    "subscription_accepts",
]

_log = logging.getLogger(__name__)

DEAD_LETTER_QUEUE = "$DeadLetterQueue"
TRANSFER_DEAD_LETTER_QUEUE = "$Transfer/$DeadLetterQueue"
# Service Bus lets a message travel through at most 4 auto-forwarding hops; past that it lands
# in the transfer dead-letter queue, which also keeps a forwarding cycle from spinning forever.
MAX_FORWARD_HOPS = 4
MAX_DELIVERY_REASON = "MaxDeliveryCountExceeded"
TTL_EXPIRED_REASON = "TTLExpiredException"
HOP_LIMIT_REASON = "MaxTransferHopCountExceeded"
# Service Bus's words for a message without a session id: refused when sent to a session queue,
# dead-lettered when a topic fans it out to a session subscription (or it is forwarded to one).
NO_SESSION_ID_DESCRIPTION = (
    "The SessionId was not set on a message, and it cannot be sent to the entity. Entities that "
    "have session support enabled can only receive messages that have the SessionId set to a "
    "valid value."
)
_NOT_SESSIONFUL = (
    "A sessionful message receiver cannot be created on an entity that does not require "
    "sessions ('{}'). Ensure RequiresSession is set to true when creating a Queue or "
    "Subscription to enable sessionful behavior."
)
NULL_SESSION_REASON = "Session id is null."
NULL_SESSION_DESCRIPTION = (
    "Session enabled entity doesn't allow a message whose session identifier is null."
)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class MessageMeta:
    """What the protocol layer parsed out of the bare message; the broker never decodes AMQP."""

    message_id: str | None = None
    correlation_id: str | None = None
    session_id: str | None = None
    reply_to_session_id: str | None = None
    subject: str | None = None
    to: str | None = None
    reply_to: str | None = None
    content_type: str | None = None
    time_to_live: timedelta | None = None  # AMQP header ttl
    scheduled_enqueue_time: datetime | None = None  # annotation x-opt-scheduled-enqueue-time
    application_properties: Mapping[str, object] = field(default_factory=dict)
    # The sender's delivery-annotations section, encoded; Service Bus hands it to receivers.
    delivery_annotations: bytes = b""


# Given a locked message's bare bytes and meta, the same message with changed properties
# (a settlement's properties-to-modify); the protocol layer does the AMQP part.
Rewrite = Callable[[bytes, MessageMeta], tuple[bytes, MessageMeta]]


class MessageState(IntEnum):
    """Service Bus message state, as in annotation x-opt-message-state."""

    ACTIVE = 0
    DEFERRED = 1
    SCHEDULED = 2


@dataclass
class BrokerMessage:
    """A message held by one entity (each subscription and each dead-letter queue has its own)."""

    sequence_number: int
    bare: bytes  # the encoded bare message, passed through byte for byte
    meta: MessageMeta
    enqueued_time: datetime  # aware UTC
    delivery_count: int = 0  # AMQP header delivery-count on the next delivery
    state: MessageState = MessageState.ACTIVE
    expires_at: datetime | None = None
    scheduled_enqueue_time: datetime | None = None
    # The protocol layer renders these three as application properties DeadLetterReason /
    # DeadLetterErrorDescription and annotation x-opt-deadletter-source.
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_letter_source: str | None = None
    lock_token: uuid.UUID | None = None
    locked_until: datetime | None = None


class BrokerError(Exception):
    """A Service Bus error; ``condition`` is the AMQP error symbol to send back."""

    condition: str = "amqp:internal-error"

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class EntityNotFound(BrokerError):
    """No such queue, topic, subscription or dead-letter queue (or not usable that way)."""

    condition = "amqp:not-found"


class LockLost(BrokerError):
    """The lock token is unknown, settled already, or its lock expired."""

    condition = "com.microsoft:message-lock-lost"


class MessageNotFound(BrokerError):
    """No deferred/scheduled message with that sequence number."""

    condition = "com.microsoft:message-not-found"


class OperationNotAllowed(BrokerError):
    """The entity exists but does not allow this (e.g. sending to a subscription)."""

    condition = "amqp:not-allowed"


class SessionCannotBeLocked(BrokerError):
    """Another receiver holds the session (the SDK's SessionCannotBeLockedError)."""

    condition = "com.microsoft:session-cannot-be-locked"


class SessionLockLost(BrokerError):
    """The session lock expired, was released, or is held by another receiver."""

    condition = "com.microsoft:session-lock-lost"


@dataclass(frozen=True)
class SessionLock:
    """A receiver's hold on one session of an entity."""

    session_id: str
    token: uuid.UUID
    locked_until: datetime


@dataclass(frozen=True)
class SessionInfo:
    """What listing sessions looks at: one session of an entity."""

    session_id: str
    message_count: int
    has_state: bool
    state_updated: datetime | None


# ---------------------------------------------------------------------------------------------
# Decisions (pure)


def _same_value(expected: object, actual: object) -> bool:
    if isinstance(actual, (bytes, bytearray)) and isinstance(expected, str):
        try:
            actual = bytes(actual).decode("utf-8")
        except UnicodeDecodeError:
            return False
    # True == 1 in Python; a filter on a boolean must not match an integer property.
    if isinstance(expected, bool) != isinstance(actual, bool):
        return False
    return expected == actual


def filter_matches(rule: CorrelationFilter, meta: MessageMeta) -> bool:
    """True if every field the correlation filter sets equals the message's."""
    for wanted, actual in (
        (rule.correlation_id, meta.correlation_id),
        (rule.message_id, meta.message_id),
        (rule.to, meta.to),
        (rule.reply_to, meta.reply_to),
        (rule.subject, meta.subject),
        (rule.session_id, meta.session_id),
        (rule.reply_to_session_id, meta.reply_to_session_id),
        (rule.content_type, meta.content_type),
    ):
        if wanted is not None and wanted != actual:
            return False
    props = meta.application_properties
    for key, expected in rule.properties.items():
        if key not in props or not _same_value(expected, props[key]):
            return False
    return True


def system_fields(meta: MessageMeta) -> dict[str, object]:
    """The system properties a SQL filter or action can read (sys.*), by MessageMeta name."""
    return {name: getattr(meta, name) for name in SYSTEM_PROPERTIES.values()}


def rule_matches(rule: Rule, meta: MessageMeta) -> bool:
    """Whether one rule's filter (correlation or SQL) selects the message."""
    if isinstance(rule, CorrelationFilter):
        return filter_matches(rule, meta)
    return rule.filter.matches(system_fields(meta), meta.application_properties)


def subscription_accepts(rules: Sequence[Rule], meta: MessageMeta) -> bool:
    """A subscription takes a message if any rule matches; without rules it takes every one."""
    return not rules or any(rule_matches(rule, meta) for rule in rules)


def selecting_action(rules: Sequence[Rule], meta: MessageMeta) -> SqlAction | None:
    """The action to run on the subscription's copy: that of the first matching rule with one.

    Service Bus makes one more copy per matching rule that has an action; the emulator keeps
    one copy per subscription and runs the first such action on it.
    """
    for rule in rules:
        if rule.action is not None and rule_matches(rule, meta):
            return rule.action
    return None


def changed_meta(meta: MessageMeta, changes: Changes) -> MessageMeta:
    """The message's meta after a rule action."""
    props = dict(meta.application_properties)
    for name, value in changes.user.items():
        if value is None:
            props.pop(name, None)
        else:
            props[name] = value
    fields = {name: None if v is None else str(v) for name, v in changes.system.items()}
    return replace(meta, application_properties=props, **fields)  # type: ignore[arg-type]


def session_lock_valid(
    holder: uuid.UUID | None, locked_until: datetime | None, token: uuid.UUID | None, now: datetime
) -> bool:
    """Whether ``token`` holds the session now (token None: whether anyone holds it)."""
    if holder is None or locked_until is None or locked_until <= now:
        return False
    return token is None or token == holder


def next_available_session(candidates: Iterable[tuple[str, int | None, bool]]) -> str | None:
    """The session a next-available receiver gets, from (session id, sequence number of its
    oldest receivable message or None, locked).

    Only an unlocked session with a receivable message qualifies; among those the one whose
    oldest message has waited longest, so no session starves while others keep arriving.
    """
    best: tuple[int, str] | None = None
    for session_id, head, locked in candidates:
        if locked or head is None:
            continue
        if best is None or (head, session_id) < best:
            best = (head, session_id)
    return None if best is None else best[1]


def sessions_to_list(
    sessions: Iterable[SessionInfo], updated_after: datetime | None, skip: int, top: int
) -> list[str]:
    """One page of get-message-sessions, ordered by session id.

    Without a cutoff: sessions holding messages or a state. With one: sessions whose state was
    set after it.
    """
    if updated_after is None:
        chosen = [s for s in sessions if s.message_count > 0 or s.has_state]
    else:
        chosen = [
            s for s in sessions if s.state_updated is not None and s.state_updated > updated_after
        ]
    ids = sorted(s.session_id for s in chosen)
    return ids[max(0, skip) : max(0, skip) + max(0, top)]


def effective_ttl(*limits: timedelta | None) -> timedelta | None:
    """The shortest of the message's TTL and the entities' defaults; None = never expires."""
    present = [limit for limit in limits if limit is not None]
    return min(present) if present else None


def _dead_letter_options(options: EntityOptions) -> EntityOptions:
    # A dead-letter queue shares its parent's lock settings and nothing else.
    return EntityOptions(
        lock_duration=options.lock_duration, max_delivery_count=options.max_delivery_count
    )


# ---------------------------------------------------------------------------------------------
# Entities


class _SeqIndex:
    """Sequence numbers of one entity in order, for peeking from a sequence number in O(log n).

    Numbers are only ever appended in increasing order; removals are lazy and the list is
    rebuilt when more than half of it is dead, so each removal costs O(1) amortised.
    """

    __slots__ = ("dead", "seqs")

    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.dead = 0

    def add(self, seq: int) -> None:
        if self.seqs and seq <= self.seqs[-1]:
            # Only on recovery of out-of-order input; keep the list sorted regardless.
            self.seqs.insert(bisect_left(self.seqs, seq), seq)
        else:
            self.seqs.append(seq)

    def removed(self, live: Mapping[int, object]) -> None:
        self.dead += 1
        if self.dead > 1024 and self.dead * 2 > len(self.seqs):
            self.seqs = [s for s in self.seqs if s in live]
            self.dead = 0

    def from_seq(self, start: int) -> Iterable[int]:
        return itertools.islice(self.seqs, bisect_left(self.seqs, start), None)


class _DedupHistory:
    """Message ids seen within the duplicate detection window, oldest first."""

    __slots__ = ("seen", "window")

    def __init__(self, window: timedelta) -> None:
        self.window = window
        self.seen: OrderedDict[str, datetime] = OrderedDict()

    def prune(self, now: datetime) -> None:
        while self.seen:
            first_id, first_at = next(iter(self.seen.items()))
            if now - first_at < self.window:
                break
            del self.seen[first_id]

    def is_duplicate(self, message_id: str, now: datetime) -> bool:
        """True if the id was seen inside the window; otherwise record it."""
        self.prune(now)
        if message_id in self.seen:
            return True
        self.seen[message_id] = now
        return False


class _Session:
    """One session of a session entity: its receivable messages in order, lock and state."""

    __slots__ = ("available", "count", "held", "lock_token", "locked_until", "state", "updated")

    def __init__(self) -> None:
        self.available: list[int] = []  # heap of seqs; stale entries skipped on pop
        self.count = 0  # messages of this session the entity holds, in any state
        self.held: set[int] = set()  # seqs handed out under the current lock
        self.lock_token: uuid.UUID | None = None
        self.locked_until: datetime | None = None
        self.state: bytes | None = None
        self.updated: datetime | None = None

    @property
    def idle(self) -> bool:
        return not self.count and self.state is None and self.lock_token is None


class _Kind(IntEnum):
    QUEUE = 0
    SUBSCRIPTION = 1
    DEAD_LETTER = 2
    TRANSFER_DEAD_LETTER = 3


class _Receivable:
    """A queue, subscription or dead-letter queue: something messages are received from."""

    def __init__(
        self,
        path: str,
        options: EntityOptions,
        kind: _Kind,
        rules: tuple[Rule, ...] = (),
        topic: _Topic | None = None,
    ) -> None:
        self.path = path  # canonical, as configured
        self.key = path.lower()
        self.options = options
        self.kind = kind
        self.rules = rules
        self.topic = topic
        self.next_seq = 1
        self.messages: dict[int, BrokerMessage] = {}
        self.blob_ids: dict[int, int] = {}  # seq -> journal blob (durable mode only)
        self.available: list[int] = []  # heap of seqs; stale entries skipped on pop
        self.locks: dict[uuid.UUID, int] = {}
        self.order = _SeqIndex()
        self.dedup = (
            _DedupHistory(options.duplicate_detection_history_time_window)
            if kind is _Kind.QUEUE and options.requires_duplicate_detection
            else None
        )
        self.dead_letter: _Receivable | None = None
        self.transfer_dead_letter: _Receivable | None = None
        # Dead-letter queues never require sessions, whatever their parent does.
        self.requires_session = options.requires_session and kind in (
            _Kind.QUEUE,
            _Kind.SUBSCRIPTION,
        )
        self.sessions: dict[str, _Session] = {}
        self.session_locks: dict[uuid.UUID, str] = {}

    @property
    def is_dead_letter(self) -> bool:
        return self.kind in (_Kind.DEAD_LETTER, _Kind.TRANSFER_DEAD_LETTER)


class _Topic:
    """A topic: only sent to; it numbers messages and fans them out to its subscriptions."""

    def __init__(self, path: str, options: EntityOptions) -> None:
        self.path = path
        self.key = path.lower()
        self.options = options
        self.next_seq = 1
        self.subscriptions: list[_Receivable] = []
        self.dedup = (
            _DedupHistory(options.duplicate_detection_history_time_window)
            if options.requires_duplicate_detection
            else None
        )


_Sendable = _Receivable | _Topic


class _Payload:
    """The bare bytes of one sent message, shared by every copy (fan-out, DLQ, forwarding)."""

    __slots__ = ("blob_id", "data")

    def __init__(self, data: bytes, blob_id: int | None = None) -> None:
        self.data = data
        self.blob_id = blob_id


@dataclass(frozen=True)
class _DeadLetterInfo:
    reason: str | None
    description: str | None
    source: str | None


class _Due(IntEnum):
    LOCK = 0
    TTL = 1
    SCHEDULED = 2
    SESSION_LOCK = 3


_Deadline = tuple[datetime, int, _Due, _Receivable, int, "uuid.UUID | None"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _notifying(
    method: Callable[Concatenate[Broker, _P], _R],
) -> Callable[Concatenate[Broker, _P], _R]:
    """Commit the journal and run listeners once the outermost public call is done."""

    @functools.wraps(method)
    def wrapper(self: Broker, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        self._depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if self._depth == 0:
                if self._journal is not None:
                    # One write (and fsync) per operation, before anyone hears of its effects.
                    self._journal.commit()
                    if self._journal.wants_compaction():
                        self._compact(self._journal)
                if self._pending or self._lost:
                    self._fire()

    return wrapper


class Broker:
    """All entities of one emulator namespace, with Service Bus semantics."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        clock: Callable[[], datetime] = _utc_now,
        persistence: Persistence | None = None,
        restamp: Callable[[bytes, Changes], bytes] | None = None,
    ) -> None:
        """``restamp`` re-encodes a bare message after a rule action (the protocol layer's job;
        without it only the meta changes)."""
        self._clock = clock
        self._restamp = restamp
        self._journal = persistence
        self._sendables: dict[str, _Sendable] = {}
        self._receivables: dict[str, _Receivable] = {}
        self._deadlines: list[_Deadline] = []
        self._tiebreak = itertools.count()
        self._listeners: list[Callable[[str], None]] = []
        self._pending: dict[str, None] = {}  # paths to announce, in order, without repeats
        self._session_listeners: list[Callable[[str, uuid.UUID], None]] = []
        self._lost: list[tuple[str, uuid.UUID]] = []  # session locks that expired, to announce
        self._depth = 0
        for queue in config.queues:
            self._create_queue(queue)
        for topic_config in config.topics:
            self._create_topic(topic_config)
        for entity in list(self._receivables.values()):
            # Now that every entity exists, targets resolve to their configured spelling.
            self._check_forwards(entity.path, entity.options)
            entity.options = self._canonical_forwards(entity.options)
        if persistence is not None:
            self._restore(persistence)

    def add_queue(self, queue: QueueConfig) -> None:
        """Create a queue at run time (test fixtures); its forward targets must exist already.

        Entities added this way are not in the configuration, so a durable restart does not
        serve them (their messages stay on disk).
        """
        self._check_new(queue.name, (queue.options,))
        self._create_queue(replace(queue, options=self._canonical_forwards(queue.options)))

    def add_topic(self, topic: TopicConfig) -> None:
        """Create a topic with its subscriptions at run time (see add_queue)."""
        names = [sub.name.lower() for sub in topic.subscriptions]
        if len(set(names)) != len(names):
            raise ValueError(f"topic '{topic.name}' names a subscription twice")
        self._check_new(topic.name, tuple(sub.options for sub in topic.subscriptions))
        subscriptions = tuple(
            replace(sub, options=self._canonical_forwards(sub.options))
            for sub in topic.subscriptions
        )
        self._create_topic(replace(topic, subscriptions=subscriptions))

    def _check_new(self, name: str, options: tuple[EntityOptions, ...]) -> None:
        if self.has_entity(name):
            raise ValueError(f"an entity named '{name}' exists already")
        for option in options:
            self._check_forwards(name, option)

    def _check_forwards(self, name: str, options: EntityOptions) -> None:
        for target in (options.forward_to, options.forward_dead_lettered_messages_to):
            if target is not None and _key(target) not in self._sendables:
                raise ValueError(f"'{name}' forwards to '{target}', which is not a queue or topic")

    def _canonical_forwards(self, options: EntityOptions) -> EntityOptions:
        # Forward targets are looked up case-insensitively; keep them as configured.
        def canonical(target: str | None) -> str | None:
            entity = self._sendables.get(_key(target)) if target is not None else None
            return entity.path if entity is not None else target

        return replace(
            options,
            forward_to=canonical(options.forward_to),
            forward_dead_lettered_messages_to=canonical(options.forward_dead_lettered_messages_to),
        )

    def _create_queue(self, queue: QueueConfig) -> None:
        entity = _Receivable(queue.name, queue.options, _Kind.QUEUE)
        self._sendables[entity.key] = entity
        self._add_receivable(entity)

    def _create_topic(self, topic_config: TopicConfig) -> None:
        topic = _Topic(topic_config.name, topic_config.options)
        self._sendables[topic.key] = topic
        for sub in topic_config.subscriptions:
            entity = _Receivable(
                f"{topic.path}/Subscriptions/{sub.name}",
                sub.options,
                _Kind.SUBSCRIPTION,
                sub.rules,
                topic,
            )
            topic.subscriptions.append(entity)
            self._add_receivable(entity)

    def _add_receivable(self, entity: _Receivable) -> None:
        self._receivables[entity.key] = entity
        dlq_options = _dead_letter_options(entity.options)
        entity.dead_letter = _Receivable(
            f"{entity.path}/{DEAD_LETTER_QUEUE}", dlq_options, _Kind.DEAD_LETTER
        )
        entity.transfer_dead_letter = _Receivable(
            f"{entity.path}/{TRANSFER_DEAD_LETTER_QUEUE}", dlq_options, _Kind.TRANSFER_DEAD_LETTER
        )
        self._receivables[entity.dead_letter.key] = entity.dead_letter
        self._receivables[entity.transfer_dead_letter.key] = entity.transfer_dead_letter

    # -----------------------------------------------------------------------------------------
    # Entities

    def has_entity(self, path: str) -> bool:
        """True for a queue, topic, subscription or one of their dead-letter queues."""
        key = _key(path)
        return key in self._sendables or key in self._receivables

    def entity_path(self, path: str) -> str:
        """The path as configured (canonical case); EntityNotFound if there is none."""
        key = _key(path)
        entity = self._sendables.get(key) or self._receivables.get(key)
        if entity is None:
            raise EntityNotFound(f"The messaging entity '{path}' could not be found.")
        return entity.path

    def options(self, path: str) -> EntityOptions:
        """The entity's settings (a dead-letter queue's are its parent's lock settings only)."""
        key = _key(path)
        entity = self._sendables.get(key) or self._receivables.get(key)
        if entity is None:
            raise EntityNotFound(f"The messaging entity '{path}' could not be found.")
        return entity.options

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """callback(path) whenever messages become receivable on path (canonical spelling)."""
        self._listeners.append(callback)

    def add_session_listener(self, callback: Callable[[str, uuid.UUID], None]) -> None:
        """callback(path, lock token) when a session lock expires (the holder has lost it)."""
        self._session_listeners.append(callback)

    def requires_session(self, path: str) -> bool:
        """Whether receiving from the entity takes a session receiver."""
        entity = self._receivables.get(_key(path))
        return entity is not None and entity.requires_session

    # -----------------------------------------------------------------------------------------
    # Sending

    @_notifying
    def send(self, path: str, bare: bytes, meta: MessageMeta) -> list[int]:
        """Enqueue (queue) or fan out (topic -> matching subscriptions); scheduled if meta says so.

        Returns the sequence numbers assigned ([] when dropped as a duplicate). A topic numbers
        the message once and every subscription's copy carries that number, as in Service Bus.
        Raises EntityNotFound.
        """
        now = self._clock()
        target = self._sendable(path)
        self._check_session_id(target, meta)
        if meta.message_id is not None and target.dedup is not None:
            if target.dedup.is_duplicate(meta.message_id, now):
                return []
            if self._journal is not None:
                self._journal.dedup(target.key, meta.message_id, now)
        seq = self._accept(target, _Payload(bare), meta, now, meta.scheduled_enqueue_time, 0, None)
        return [seq]

    @_notifying
    def schedule(self, path: str, bare: bytes, meta: MessageMeta, at: datetime) -> int:
        """Enqueue a message that becomes receivable at ``at``; returns its sequence number."""
        now = self._clock()
        target = self._sendable(path)
        self._check_session_id(target, meta)
        return self._accept(target, _Payload(bare), meta, now, at, 0, None)

    def check_send(self, path: str, meta: MessageMeta) -> None:
        """Raise what send() would refuse the message for, without sending it (batches are
        all-or-nothing)."""
        self._check_session_id(self._sendable(path), meta)

    def _check_session_id(self, target: _Sendable, meta: MessageMeta) -> None:
        if isinstance(target, _Receivable) and target.requires_session and meta.session_id is None:
            raise OperationNotAllowed(NO_SESSION_ID_DESCRIPTION)

    @_notifying
    def cancel_scheduled(self, path: str, sequence_number: int) -> None:
        """Remove a scheduled message before it activates; MessageNotFound if there is none."""
        target = self._sendable(path)
        holders = target.subscriptions if isinstance(target, _Topic) else [target]
        found = False
        for entity in holders:
            msg = entity.messages.get(sequence_number)
            if msg is not None and msg.state is MessageState.SCHEDULED:
                self._discard(entity, msg)
                found = True
        if not found:
            raise MessageNotFound(
                f"No scheduled message with sequence number {sequence_number} in '{target.path}'."
            )

    # -----------------------------------------------------------------------------------------
    # Receiving

    @_notifying
    def receive(
        self,
        path: str,
        max_count: int,
        *,
        peek_lock: bool,
        session: SessionLock | None = None,
    ) -> list[BrokerMessage]:
        """Up to max_count active messages in sequence order (ready now).

        Peek-lock: each gets a fresh lock_token/locked_until and stays until settled;
        receive-and-delete: removed at once. A session entity hands out only the held
        ``session``'s messages, in order, locked by the session lock (SessionLockLost if it is
        not held). Returns copies: the caller may not mutate broker state through them.
        """
        now = self._clock()
        self._run_due(now)
        entity = self._receivable(path)
        held: _Session | None = None
        if entity.requires_session:
            if session is None:
                raise OperationNotAllowed(
                    "It is not possible for an entity that requires sessions to create a "
                    "non-sessionful message receiver."
                )
            held = self._held(entity, session.session_id, session.token, now)
            heap = held.available
        elif session is not None:
            raise OperationNotAllowed(_NOT_SESSIONFUL.format(entity.path))
        else:
            heap = entity.available
        out: list[BrokerMessage] = []
        while len(out) < max_count and heap:
            seq = heapq.heappop(heap)
            msg = entity.messages.get(seq)
            if msg is None or msg.state is not MessageState.ACTIVE or msg.lock_token is not None:
                continue  # stale heap entry: settled, deferred or handed out meanwhile
            if self._expired(entity, msg, now):
                self._expire(entity, msg, now)
                continue
            out.append(self._hand_out(entity, msg, now, peek_lock, held))
        return out

    # -----------------------------------------------------------------------------------------
    # Sessions

    @_notifying
    def accept_session(self, path: str, session_id: str | None) -> SessionLock | None:
        """Lock a named session, or the next available one (None when no session has a
        receivable message right now). SessionCannotBeLocked if another receiver holds it."""
        now = self._clock()
        self._run_due(now)
        entity = self._receivable(path)
        if not entity.requires_session:
            raise OperationNotAllowed(_NOT_SESSIONFUL.format(entity.path))
        if session_id is None:
            session_id = next_available_session(
                (sid, self._session_head(entity, s), s.lock_token is not None)
                for sid, s in entity.sessions.items()
            )
            if session_id is None:
                return None
        session = self._session(entity, session_id)
        if session.lock_token is not None:
            raise SessionCannotBeLocked(
                f"The requested session '{session_id}' cannot be accepted. It may be locked by "
                "another receiver."
            )
        token = uuid.uuid4()
        session.lock_token = token
        session.locked_until = now + entity.options.lock_duration
        entity.session_locks[token] = session_id
        self._push(session.locked_until, _Due.SESSION_LOCK, entity, 0, token)
        return SessionLock(session_id, token, session.locked_until)

    @_notifying
    def release_session(self, path: str, lock: SessionLock) -> None:
        """The holder lets go (its link closed): messages it still held return, counted as a
        delivery, and the session is free for the next receiver. A lost lock: nothing to do."""
        entity = self._receivable(path)
        session = entity.sessions.get(lock.session_id)
        if session is not None and session.lock_token == lock.token:
            self._release(entity, lock.session_id, session, self._clock())

    @_notifying
    def renew_session_lock(self, path: str, session_id: str, token: uuid.UUID | None) -> datetime:
        """Extend the session lock by the lock duration from now; returns the new expiry.

        ``token`` None accepts any holder (a request that names no receiver link)."""
        now = self._clock()
        entity = self._receivable(path)
        session = self._held(entity, session_id, token, now)
        session.locked_until = now + entity.options.lock_duration
        assert session.lock_token is not None
        self._push(session.locked_until, _Due.SESSION_LOCK, entity, 0, session.lock_token)
        for seq in session.held:
            msg = entity.messages.get(seq)
            if msg is not None:
                msg.locked_until = session.locked_until
        return session.locked_until

    @_notifying
    def check_session(self, path: str, session_id: str, token: uuid.UUID | None) -> None:
        """SessionLockLost unless ``token`` (None: anyone) holds the session now."""
        self._held(self._receivable(path), session_id, token, self._clock())

    @_notifying
    def session_state(self, path: str, session_id: str, token: uuid.UUID | None) -> bytes | None:
        """The held session's state (None if never set or cleared)."""
        entity = self._receivable(path)
        return self._held(entity, session_id, token, self._clock()).state

    @_notifying
    def set_session_state(
        self, path: str, session_id: str, token: uuid.UUID | None, state: bytes | None
    ) -> None:
        """Set (None: clear) the held session's state; durable like messages."""
        now = self._clock()
        entity = self._receivable(path)
        session = self._held(entity, session_id, token, now)
        session.state = None if state is None else bytes(state)
        session.updated = now
        if self._journal is not None:
            self._journal.session_state(entity.key, session_id, session.state, now)

    def list_sessions(
        self, path: str, updated_after: datetime | None, skip: int, top: int
    ) -> list[str]:
        """Session ids holding messages or state (or with state set after ``updated_after``)."""
        entity = self._receivable(path)
        if not entity.requires_session:
            return []
        infos = (
            SessionInfo(sid, s.count, s.state is not None, s.updated)
            for sid, s in entity.sessions.items()
        )
        return sessions_to_list(infos, updated_after, skip, top)

    @_notifying
    def receive_deferred(
        self,
        path: str,
        sequence_numbers: Sequence[int],
        *,
        peek_lock: bool,
        session_id: str | None = None,
        token: uuid.UUID | None = None,
    ) -> list[BrokerMessage]:
        """The deferred messages with these numbers, locked or removed; MessageNotFound if any is
        missing (then nothing is handed out). In a session entity only the held session's."""
        now = self._clock()
        self._run_due(now)
        entity = self._receivable(path)
        held: _Session | None = None
        if entity.requires_session:
            if session_id is None:
                raise OperationNotAllowed(
                    "Receiving deferred messages from a session entity takes a session receiver."
                )
            held = self._held(entity, session_id, token, now)
        wanted = list(dict.fromkeys(sequence_numbers))
        found: list[BrokerMessage] = []
        for seq in wanted:
            msg = entity.messages.get(seq)
            if msg is not None and self._expired(entity, msg, now) and msg.lock_token is None:
                self._expire(entity, msg, now)
                msg = None
            if msg is not None and held is not None and msg.meta.session_id != session_id:
                msg = None
            if msg is None or msg.state is not MessageState.DEFERRED:
                raise MessageNotFound(
                    f"No deferred message with sequence number {seq} in '{entity.path}'."
                )
            if msg.lock_token is not None:
                raise MessageNotFound(
                    f"The deferred message with sequence number {seq} in '{entity.path}' "
                    "is locked by another receiver."
                )
            found.append(msg)
        return [self._hand_out(entity, msg, now, peek_lock, held) for msg in found]

    @_notifying
    def peek(
        self,
        path: str,
        from_sequence_number: int,
        max_count: int,
        session_id: str | None = None,
    ) -> list[BrokerMessage]:
        """Active, deferred and scheduled messages from a sequence number on (of one session if
        given); no lock taken."""
        now = self._clock()
        self._run_due(now)
        entity = self._receivable(path)
        out: list[BrokerMessage] = []
        if max_count <= 0:
            return out
        for seq in entity.order.from_seq(from_sequence_number):
            msg = entity.messages.get(seq)
            if msg is None or (session_id is not None and msg.meta.session_id != session_id):
                continue
            peeked = copy.copy(msg)
            peeked.lock_token = None
            peeked.locked_until = None
            out.append(peeked)
            if len(out) >= max_count:
                break
        return out

    # -----------------------------------------------------------------------------------------
    # Settling

    @_notifying
    def complete(self, path: str, lock_token: uuid.UUID) -> None:
        """Remove a locked message for good; LockLost if the lock is unknown or expired."""
        entity, msg = self._locked(path, lock_token)
        self._unlock(entity, msg)
        self._discard(entity, msg)

    @_notifying
    def abandon(self, path: str, lock_token: uuid.UUID, rewrite: Rewrite | None = None) -> None:
        """Unlock with delivery_count + 1; past the max delivery count it is dead-lettered.

        ``rewrite`` applies the settlement's properties-to-modify first.
        """
        entity, msg = self._locked(path, lock_token)
        self._rewrite(entity, msg, rewrite)
        self._unlock(entity, msg)
        self._failed_delivery(entity, msg, self._clock())

    @_notifying
    def release(self, path: str, lock_token: uuid.UUID) -> None:
        """Unlock without counting a delivery (a client closing or returning prefetched ones)."""
        entity, msg = self._locked(path, lock_token)
        self._unlock(entity, msg)
        self._returned(entity, msg, self._clock())

    @_notifying
    def defer(self, path: str, lock_token: uuid.UUID, rewrite: Rewrite | None = None) -> None:
        """Set the message aside: only receive_deferred by sequence number gets it again."""
        entity, msg = self._locked(path, lock_token)
        self._rewrite(entity, msg, rewrite)
        self._unlock(entity, msg)
        msg.state = MessageState.DEFERRED
        now = self._clock()
        if self._expired(entity, msg, now):
            self._expire(entity, msg, now)  # its TTL deadline passed while it was locked
            return
        self._journal_update(entity, msg)

    @_notifying
    def dead_letter(
        self,
        path: str,
        lock_token: uuid.UUID,
        reason: str | None,
        description: str | None,
        rewrite: Rewrite | None = None,
    ) -> None:
        """Move a locked message to the entity's dead-letter queue with reason and description."""
        entity, msg = self._locked(path, lock_token)
        if entity.is_dead_letter:
            raise OperationNotAllowed(
                f"'{entity.path}' is a dead-letter queue: its messages cannot be dead-lettered "
                "again; complete them instead."
            )
        self._rewrite(entity, msg, rewrite)
        self._unlock(entity, msg)
        self._dead_letter(entity, msg, _DeadLetterInfo(reason, description, None), self._clock())

    @_notifying
    def renew_lock(self, path: str, lock_token: uuid.UUID) -> datetime:
        """Extend the lock by the entity's lock duration from now; returns the new locked_until."""
        entity, msg = self._locked(path, lock_token)
        if entity.requires_session:
            raise OperationNotAllowed(
                "Renewing a message lock is not valid in a session entity: renew the session lock."
            )
        now = self._clock()
        msg.locked_until = now + entity.options.lock_duration
        self._push(msg.locked_until, _Due.LOCK, entity, msg.sequence_number, lock_token)
        return msg.locked_until

    # -----------------------------------------------------------------------------------------
    # Time

    @_notifying
    def tick(self) -> datetime | None:
        """Apply everything due at clock(): lock expiry (redeliver, delivery_count+1, max -> DLQ),
        TTL expiry (drop, or DLQ 'TTLExpiredException' when configured; never inside a DLQ),
        scheduled activation, dedup-window pruning. Returns when the next thing falls due."""
        now = self._clock()
        self._run_due(now)
        for entity in self._sendables.values():
            if entity.dedup is not None:
                entity.dedup.prune(now)
        return self._next_deadline()

    def flush(self) -> None:
        """Make every change so far durable (group commit); a no-op in memory-only mode."""
        if self._journal is not None:
            self._journal.sync()

    def close(self) -> None:
        """Release the data directory (durable mode)."""
        if self._journal is not None:
            self._journal.close()

    # -----------------------------------------------------------------------------------------
    # Internals: lookup

    def _sendable(self, path: str) -> _Sendable:
        key = _key(path)
        target = self._sendables.get(key)
        if target is not None:
            return target
        if key in self._receivables:
            raise OperationNotAllowed(
                f"Cannot send to '{self._receivables[key].path}': send to its queue or topic."
            )
        raise EntityNotFound(f"The messaging entity '{path}' could not be found.")

    def _receivable(self, path: str) -> _Receivable:
        key = _key(path)
        entity = self._receivables.get(key)
        if entity is not None:
            return entity
        if key in self._sendables:
            raise OperationNotAllowed(
                f"'{self._sendables[key].path}' is a topic: receive from "
                f"'{self._sendables[key].path}/Subscriptions/<name>'."
            )
        raise EntityNotFound(f"The messaging entity '{path}' could not be found.")

    def _locked(self, path: str, token: uuid.UUID) -> tuple[_Receivable, BrokerMessage]:
        entity = self._receivable(path)
        seq = entity.locks.get(token)
        msg = entity.messages.get(seq) if seq is not None else None
        if entity.requires_session:
            # A session message has no lock of its own: it is held by the session lock.
            if msg is None:
                raise SessionLockLost(
                    f"The lock supplied ({token}) is invalid on '{entity.path}': the session "
                    "lock was lost or released, or the message was already settled."
                )
            self._held(entity, msg.meta.session_id or "", None, self._clock())
            return entity, msg
        if msg is None or msg.locked_until is None:
            raise LockLost(
                f"The lock supplied ({token}) is invalid on '{entity.path}': the lock expired, "
                "or the message was already settled or received by another receiver."
            )
        now = self._clock()
        if msg.locked_until <= now:
            self._lock_expired(entity, msg, now)
            raise LockLost(f"The lock {token} on '{entity.path}' expired at {msg.locked_until}.")
        return entity, msg

    # -----------------------------------------------------------------------------------------
    # Internals: sessions

    def _session(self, entity: _Receivable, session_id: str) -> _Session:
        session = entity.sessions.get(session_id)
        if session is None:
            session = entity.sessions[session_id] = _Session()
        return session

    def _forget_if_idle(self, entity: _Receivable, session_id: str) -> None:
        session = entity.sessions.get(session_id)
        if session is not None and session.idle:
            del entity.sessions[session_id]

    def _session_head(self, entity: _Receivable, session: _Session) -> int | None:
        """The sequence number of the session's oldest receivable message (drops stale ones)."""
        heap = session.available
        while heap:
            msg = entity.messages.get(heap[0])
            if msg is not None and msg.state is MessageState.ACTIVE and msg.lock_token is None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _held(
        self, entity: _Receivable, session_id: str, token: uuid.UUID | None, now: datetime
    ) -> _Session:
        """The session if ``token`` (None: anyone) holds its lock now; else SessionLockLost."""
        if not entity.requires_session:
            raise OperationNotAllowed(_NOT_SESSIONFUL.format(entity.path))
        session = entity.sessions.get(session_id)
        if session is not None and session_lock_valid(
            session.lock_token, session.locked_until, token, now
        ):
            return session
        if (
            session is not None
            and session.lock_token is not None
            and session.locked_until is not None
            and session.locked_until <= now
        ):
            self._session_expired(entity, session_id, session, now)
        raise SessionLockLost(
            f"The session lock on session '{session_id}' of '{entity.path}' is not held by this "
            "receiver: it expired or was released. Accept the session again."
        )

    def _session_expired(
        self, entity: _Receivable, session_id: str, session: _Session, now: datetime
    ) -> None:
        assert session.lock_token is not None
        self._lost.append((entity.path, session.lock_token))
        self._release(entity, session_id, session, now)

    def _release(
        self, entity: _Receivable, session_id: str, session: _Session, now: datetime
    ) -> None:
        """Free the session; what its holder had not settled counts as a failed delivery."""
        if session.lock_token is not None:
            entity.session_locks.pop(session.lock_token, None)
        session.lock_token = None
        session.locked_until = None
        for seq in sorted(session.held):
            msg = entity.messages.get(seq)
            if msg is not None:
                self._unlock(entity, msg)
                self._failed_delivery(entity, msg, now)
        session.held.clear()
        self._pending[entity.path] = None  # free for a next-available receiver
        self._forget_if_idle(entity, session_id)

    # -----------------------------------------------------------------------------------------
    # Internals: message movement

    def _accept(
        self,
        target: _Sendable,
        payload: _Payload,
        meta: MessageMeta,
        now: datetime,
        scheduled_at: datetime | None,
        hops: int,
        dead_letter: _DeadLetterInfo | None,
    ) -> int:
        """Number a message in the addressed entity and place it (fanning out for a topic)."""
        seq = target.next_seq
        target.next_seq += 1
        if isinstance(target, _Topic):
            placed = False
            for sub in target.subscriptions:
                if subscription_accepts(sub.rules, meta):
                    copy_payload, copy_meta = self._after_action(sub.rules, payload, meta)
                    self._place(
                        sub, seq, copy_payload, copy_meta, now, scheduled_at, hops, dead_letter
                    )
                    placed = True
            if not placed and self._journal is not None:
                self._journal.sequence(target.key, seq)  # keep the counter across restarts
        else:
            self._place(target, seq, payload, meta, now, scheduled_at, hops, dead_letter)
        return seq

    def _after_action(
        self, rules: Sequence[Rule], payload: _Payload, meta: MessageMeta
    ) -> tuple[_Payload, MessageMeta]:
        """The subscription's own copy when a matching rule has an action, else the shared one."""
        action = selecting_action(rules, meta)
        if action is None:
            return payload, meta
        changes = action.apply(system_fields(meta), meta.application_properties)
        data = payload.data if self._restamp is None else self._restamp(payload.data, changes)
        return _Payload(data), changed_meta(meta, changes)

    def _place(
        self,
        entity: _Receivable,
        seq: int,
        payload: _Payload,
        meta: MessageMeta,
        now: datetime,
        scheduled_at: datetime | None,
        hops: int,
        dead_letter: _DeadLetterInfo | None,
    ) -> None:
        if scheduled_at is not None and scheduled_at > now:
            msg = self._new_message(entity, seq, payload, meta, now, dead_letter)
            msg.state = MessageState.SCHEDULED
            msg.scheduled_enqueue_time = scheduled_at
            self._store(entity, msg, payload)
            self._push(scheduled_at, _Due.SCHEDULED, entity, seq, None)
            return
        if entity.options.forward_to is not None and not entity.is_dead_letter:
            if self._journal is not None:
                self._journal.sequence(entity.key, seq)
            self._forward(entity, payload, meta, now, hops, dead_letter)
            return
        if entity.requires_session and meta.session_id is None:
            # A fan-out or forwarded copy cannot be refused to the sender: it is dead-lettered.
            msg = self._new_message(entity, seq, payload, meta, now, None)
            self._store(entity, msg, payload)
            info = _DeadLetterInfo(NULL_SESSION_REASON, NULL_SESSION_DESCRIPTION, None)
            self._dead_letter(entity, msg, info, now)
            return
        msg = self._new_message(entity, seq, payload, meta, now, dead_letter)
        if scheduled_at is not None:
            msg.scheduled_enqueue_time = scheduled_at
        msg.expires_at = self._expiry(entity, meta, now)
        self._store(entity, msg, payload)
        self._became_active(entity, msg)

    def _forward(
        self,
        entity: _Receivable,
        payload: _Payload,
        meta: MessageMeta,
        now: datetime,
        hops: int,
        dead_letter: _DeadLetterInfo | None,
    ) -> None:
        assert entity.options.forward_to is not None
        if hops >= MAX_FORWARD_HOPS:
            self._to_transfer_dead_letter(entity, payload, meta, now, dead_letter)
            return
        target = self._sendables[entity.options.forward_to.lower()]
        self._accept(target, payload, meta, now, None, hops + 1, dead_letter)

    def _to_transfer_dead_letter(
        self,
        entity: _Receivable,
        payload: _Payload,
        meta: MessageMeta,
        now: datetime,
        previous: _DeadLetterInfo | None,
    ) -> None:
        tdlq = entity.transfer_dead_letter
        assert tdlq is not None
        seq = tdlq.next_seq
        tdlq.next_seq += 1
        info = _DeadLetterInfo(
            HOP_LIMIT_REASON,
            f"The message passed {MAX_FORWARD_HOPS} auto-forwarding hops.",
            previous.source if previous is not None else entity.path,
        )
        msg = self._new_message(tdlq, seq, payload, meta, now, info)
        self._store(tdlq, msg, payload)
        self._became_active(tdlq, msg)

    def _new_message(
        self,
        entity: _Receivable,
        seq: int,
        payload: _Payload,
        meta: MessageMeta,
        now: datetime,
        dead_letter: _DeadLetterInfo | None,
    ) -> BrokerMessage:
        msg = BrokerMessage(sequence_number=seq, bare=payload.data, meta=meta, enqueued_time=now)
        if dead_letter is not None:
            msg.dead_letter_reason = dead_letter.reason
            msg.dead_letter_description = dead_letter.description
            msg.dead_letter_source = dead_letter.source
        return msg

    def _expiry(self, entity: _Receivable, meta: MessageMeta, now: datetime) -> datetime | None:
        if entity.is_dead_letter:
            return None
        ttl = effective_ttl(
            meta.time_to_live,
            entity.options.default_message_time_to_live,
            entity.topic.options.default_message_time_to_live if entity.topic else None,
        )
        return None if ttl is None else now + ttl

    def _store(self, entity: _Receivable, msg: BrokerMessage, payload: _Payload) -> None:
        entity.messages[msg.sequence_number] = msg
        entity.order.add(msg.sequence_number)
        if entity.requires_session:
            self._session(entity, msg.meta.session_id or "").count += 1
        if self._journal is not None:
            if payload.blob_id is None:
                payload.blob_id = self._journal.add_blob(payload.data)
            entity.blob_ids[msg.sequence_number] = payload.blob_id
            self._journal.put(entity.key, msg, payload.blob_id)

    def _became_active(self, entity: _Receivable, msg: BrokerMessage) -> None:
        """A newly active message: receivable now, and expiring at its TTL."""
        self._make_available(entity, msg)
        if msg.expires_at is not None:
            self._push(msg.expires_at, _Due.TTL, entity, msg.sequence_number, None)

    def _make_available(self, entity: _Receivable, msg: BrokerMessage) -> None:
        # In a session entity each session keeps its own order: FIFO per session, by number.
        if entity.requires_session:
            session = self._session(entity, msg.meta.session_id or "")
            heapq.heappush(session.available, msg.sequence_number)
        else:
            heapq.heappush(entity.available, msg.sequence_number)
        self._pending[entity.path] = None

    def _discard(self, entity: _Receivable, msg: BrokerMessage) -> None:
        """Remove a message for good (completed, received-and-deleted, expired, moved)."""
        seq = msg.sequence_number
        del entity.messages[seq]
        entity.order.removed(entity.messages)
        if msg.lock_token is not None:
            entity.locks.pop(msg.lock_token, None)
        if entity.requires_session:
            session_id = msg.meta.session_id or ""
            session = entity.sessions.get(session_id)
            if session is not None:
                session.count -= 1
                session.held.discard(seq)
                self._forget_if_idle(entity, session_id)
        if self._journal is not None:
            entity.blob_ids.pop(seq, None)
            self._journal.delete(entity.key, seq)

    def _payload_of(self, entity: _Receivable, msg: BrokerMessage) -> _Payload:
        return _Payload(msg.bare, entity.blob_ids.get(msg.sequence_number))

    def _hand_out(
        self,
        entity: _Receivable,
        msg: BrokerMessage,
        now: datetime,
        peek_lock: bool,
        session: _Session | None = None,
    ) -> BrokerMessage:
        if not peek_lock:
            self._discard(entity, msg)
            return copy.copy(msg)
        token = uuid.uuid4()
        msg.lock_token = token
        if session is not None:
            # Held by the session lock: it ends (and is renewed) with the session's.
            msg.locked_until = session.locked_until
            entity.locks[token] = msg.sequence_number
            session.held.add(msg.sequence_number)
            return copy.copy(msg)
        msg.locked_until = now + entity.options.lock_duration
        entity.locks[token] = msg.sequence_number
        self._push(msg.locked_until, _Due.LOCK, entity, msg.sequence_number, token)
        return copy.copy(msg)

    def _rewrite(self, entity: _Receivable, msg: BrokerMessage, rewrite: Rewrite | None) -> None:
        """Give this one copy new bytes (other subscriptions' copies keep theirs)."""
        if rewrite is None:
            return
        msg.bare, msg.meta = rewrite(msg.bare, msg.meta)
        if self._journal is not None:
            self._journal.delete(entity.key, msg.sequence_number)
            blob_id = self._journal.add_blob(msg.bare)
            entity.blob_ids[msg.sequence_number] = blob_id
            self._journal.put(entity.key, msg, blob_id)

    def _unlock(self, entity: _Receivable, msg: BrokerMessage) -> None:
        if msg.lock_token is not None:
            entity.locks.pop(msg.lock_token, None)
        if entity.requires_session:
            session = entity.sessions.get(msg.meta.session_id or "")
            if session is not None:
                session.held.discard(msg.sequence_number)
        msg.lock_token = None
        msg.locked_until = None

    def _lock_expired(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> None:
        self._unlock(entity, msg)
        self._failed_delivery(entity, msg, now)

    def _failed_delivery(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> None:
        """An abandon or lost lock: count the delivery, dead-letter past the maximum."""
        msg.delivery_count += 1
        max_count = entity.options.max_delivery_count
        if not entity.is_dead_letter and msg.delivery_count >= max_count:
            info = _DeadLetterInfo(
                MAX_DELIVERY_REASON,
                f"Message could not be consumed after {max_count} delivery attempts.",
                None,
            )
            self._dead_letter(entity, msg, info, now)
            return
        if self._expired(entity, msg, now):
            self._expire(entity, msg, now)
            return
        self._journal_update(entity, msg)
        self._returned(entity, msg, now)

    def _returned(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> None:
        """An unlocked message goes back where receivers find it (unless it expired meanwhile)."""
        if self._expired(entity, msg, now):
            self._expire(entity, msg, now)
            return
        if msg.state is MessageState.ACTIVE:
            self._make_available(entity, msg)

    def _expired(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> bool:
        return (
            msg.expires_at is not None
            and msg.expires_at <= now
            and not entity.is_dead_letter
            and msg.state is not MessageState.SCHEDULED
        )

    def _expire(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> None:
        if entity.options.dead_lettering_on_message_expiration:
            info = _DeadLetterInfo(
                TTL_EXPIRED_REASON, "The message expired and was dead lettered.", None
            )
            self._dead_letter(entity, msg, info, now)
        else:
            self._discard(entity, msg)

    def _dead_letter(
        self, entity: _Receivable, msg: BrokerMessage, info: _DeadLetterInfo, now: datetime
    ) -> None:
        """Move a message (not locked) into the entity's DLQ, or where its DLQ forwards to."""
        payload = self._payload_of(entity, msg)
        source = entity.path if entity.kind is _Kind.SUBSCRIPTION else msg.dead_letter_source
        forward = entity.options.forward_dead_lettered_messages_to
        if forward is not None:
            # Place the copy before removing the original: a crash in between duplicates
            # rather than loses.
            forwarded = _DeadLetterInfo(info.reason, info.description, entity.path)
            target = self._sendables[forward.lower()]
            self._accept(target, payload, msg.meta, now, None, 1, forwarded)
        else:
            dlq = entity.dead_letter
            assert dlq is not None
            seq = dlq.next_seq
            dlq.next_seq += 1
            moved = BrokerMessage(
                sequence_number=seq,
                bare=msg.bare,
                meta=msg.meta,
                enqueued_time=msg.enqueued_time,
                delivery_count=msg.delivery_count,
                scheduled_enqueue_time=msg.scheduled_enqueue_time,
                dead_letter_reason=info.reason,
                dead_letter_description=info.description,
                dead_letter_source=source,
            )
            self._store(dlq, moved, payload)
            self._became_active(dlq, moved)
        self._discard(entity, msg)

    def _activate(self, entity: _Receivable, msg: BrokerMessage, now: datetime) -> None:
        """A scheduled message falls due: it arrives now (and may be forwarded on)."""
        if entity.options.forward_to is not None and not entity.is_dead_letter:
            payload = self._payload_of(entity, msg)
            info = (
                _DeadLetterInfo(
                    msg.dead_letter_reason, msg.dead_letter_description, msg.dead_letter_source
                )
                if msg.dead_letter_reason is not None
                else None
            )
            self._forward(entity, payload, msg.meta, now, 0, info)
            self._discard(entity, msg)
            return
        msg.state = MessageState.ACTIVE
        msg.enqueued_time = now
        msg.expires_at = self._expiry(entity, msg.meta, now)
        self._journal_update(entity, msg)
        self._became_active(entity, msg)

    def _journal_update(self, entity: _Receivable, msg: BrokerMessage) -> None:
        if self._journal is not None:
            self._journal.update(entity.key, msg)

    # -----------------------------------------------------------------------------------------
    # Internals: deadlines

    def _push(
        self, when: datetime, due: _Due, entity: _Receivable, seq: int, token: uuid.UUID | None
    ) -> None:
        heapq.heappush(self._deadlines, (when, next(self._tiebreak), due, entity, seq, token))

    def _live(self, deadline: _Deadline) -> BrokerMessage | _Session | None:
        """The message (or session) a deadline still applies to, or None if it went stale."""
        when, _, due, entity, seq, token = deadline
        if due is _Due.SESSION_LOCK:
            session_id = entity.session_locks.get(token) if token is not None else None
            session = entity.sessions.get(session_id) if session_id is not None else None
            if session is not None and session.lock_token == token and session.locked_until == when:
                return session
            return None
        msg = entity.messages.get(seq)
        if msg is None:
            return None
        if due is _Due.LOCK:
            live = msg.lock_token == token and msg.locked_until == when
        elif due is _Due.TTL:
            live = (
                msg.expires_at == when
                and msg.lock_token is None
                and msg.state is not MessageState.SCHEDULED
            )
        else:
            live = msg.state is MessageState.SCHEDULED and msg.scheduled_enqueue_time == when
        return msg if live else None

    def _run_due(self, now: datetime) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline = heapq.heappop(heap)
            msg = self._live(deadline)
            if msg is None:
                continue
            _, _, due, entity, _, token = deadline
            if isinstance(msg, _Session):
                assert token is not None
                self._session_expired(entity, entity.session_locks[token], msg, now)
            elif due is _Due.LOCK:
                self._lock_expired(entity, msg, now)
            elif due is _Due.TTL:
                if not entity.is_dead_letter:
                    self._expire(entity, msg, now)
            else:
                self._activate(entity, msg, now)

    def _next_deadline(self) -> datetime | None:
        heap = self._deadlines
        while heap and self._live(heap[0]) is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -----------------------------------------------------------------------------------------
    # Internals: listeners and recovery

    def _fire(self) -> None:
        while self._lost:
            path, token = self._lost.pop(0)
            for lost_callback in list(self._session_listeners):
                try:
                    lost_callback(path, token)
                except Exception:
                    _log.exception("broker session listener failed for %s", path)
        while self._pending:
            paths = list(self._pending)
            self._pending.clear()
            for path in paths:
                for callback in list(self._listeners):
                    try:
                        callback(path)
                    except Exception:
                        # A faulty listener must not undo a state change that already happened.
                        _log.exception("broker listener failed for %s", path)

    def _compact(self, journal: Persistence) -> None:
        """Rewrite the journal with only the live state (amortised: it halves dead space)."""
        messages: dict[str, list[tuple[BrokerMessage, int]]] = {}
        counters: dict[str, int] = {}
        dedup: dict[str, dict[str, datetime]] = {}
        states: dict[str, dict[str, tuple[bytes, datetime]]] = {}
        for entity in self._receivables.values():
            for session_id, session in entity.sessions.items():
                if session.state is not None and session.updated is not None:
                    states.setdefault(entity.key, {})[session_id] = (session.state, session.updated)
            if entity.messages:
                messages[entity.key] = [
                    (msg, entity.blob_ids[seq]) for seq, msg in entity.messages.items()
                ]
            if entity.next_seq > 1:
                counters[entity.key] = entity.next_seq - 1
        for target in self._sendables.values():
            if target.next_seq > 1:
                counters[target.key] = target.next_seq - 1
            if target.dedup is not None and target.dedup.seen:
                dedup[target.key] = dict(target.dedup.seen)
        journal.rewrite(messages, counters, dedup, states)

    def _restore(self, persistence: Persistence) -> None:
        recovered = persistence.recover()
        for key, counter in recovered.counters.items():
            entity = self._sendables.get(key) or self._receivables.get(key)
            if entity is not None:
                entity.next_seq = max(entity.next_seq, counter + 1)
            if isinstance(entity, _Receivable) and entity.topic is not None:
                # Subscription copies carry the topic's numbers.
                entity.topic.next_seq = max(entity.topic.next_seq, counter + 1)
        for key, stored in recovered.messages.items():
            entity = self._receivables.get(key)
            if entity is None:
                _log.warning(
                    "data directory holds %d message(s) for '%s', which the configuration no "
                    "longer has; they are kept on disk but not served",
                    len(stored),
                    key,
                )
                continue
            for msg, blob_id in sorted(stored, key=lambda item: item[0].sequence_number):
                # Locks are not durable: a message locked before the restart is available again.
                msg.lock_token = None
                msg.locked_until = None
                entity.messages[msg.sequence_number] = msg
                entity.order.add(msg.sequence_number)
                entity.blob_ids[msg.sequence_number] = blob_id
                if msg.state is MessageState.SCHEDULED:
                    assert msg.scheduled_enqueue_time is not None
                    self._push(
                        msg.scheduled_enqueue_time,
                        _Due.SCHEDULED,
                        entity,
                        msg.sequence_number,
                        None,
                    )
                    continue
                if msg.expires_at is not None and not entity.is_dead_letter:
                    self._push(msg.expires_at, _Due.TTL, entity, msg.sequence_number, None)
                if entity.requires_session:
                    session = self._session(entity, msg.meta.session_id or "")
                    session.count += 1
                    if msg.state is MessageState.ACTIVE:
                        session.available.append(msg.sequence_number)
                elif msg.state is MessageState.ACTIVE:
                    entity.available.append(msg.sequence_number)
            heapq.heapify(entity.available)
            for session in entity.sessions.values():
                heapq.heapify(session.available)
        for key, states in recovered.session_states.items():
            entity = self._receivables.get(key)
            if entity is None or not entity.requires_session:
                continue
            for session_id, (state, updated) in states.items():
                session = self._session(entity, session_id)
                session.state, session.updated = state, updated
        for key, seen in recovered.dedup.items():
            target = self._sendables.get(key)
            if target is not None and target.dedup is not None:
                for message_id, when in sorted(seen.items(), key=lambda item: item[1]):
                    target.dedup.seen[message_id] = when


def _key(path: str) -> str:
    """Service Bus entity paths are case-insensitive."""
    return path.strip("/").lower()
