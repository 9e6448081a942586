# Generated from claimcheck_bus/_async/bus.py by scripts/unasync.py: do not edit.
"""The claim-check clients: :class:`ClaimCheckBus`, :class:`SessionReceiver` and
:class:`ReceivedEvent`.

Written once for ``asyncio``; ``scripts/unasync.py`` generates the blocking twins
(``ClaimCheckBus``, ``SessionReceiver``, ``ReceivedEvent``) in ``claimcheck_bus/_sync``.
The clients only move bytes: the decisions are in :mod:`claimcheck_bus.claim_check`.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from azure.servicebus import (
    NEXT_AVAILABLE_SESSION,
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceiver,
    ServiceBusSender,
    ServiceBusSubQueue,
)
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    OperationTimeoutError,
    SessionCannotBeLockedError,
)

from claimcheck_bus import _sdk
from claimcheck_bus._sync.reader import PayloadReader, default_store, downloader_for
from claimcheck_bus._sync.store import PayloadStore
from claimcheck_bus.claim_check.entities import Entity, default_credential, resolve_entity
from claimcheck_bus.claim_check.publication import (
    MAX_SESSION_ID,
    BusCore,
    Publication,
    PublishReceipt,
    SessionKey,
    publish_options,
)
from claimcheck_bus.claim_check.rehydration import EventView, decode, incoming_from
from claimcheck_bus.claim_check.send_failures import retry_after_probe, send_failure
from claimcheck_bus.claim_check.wire import Route
from claimcheck_bus.errors import BatchPublishError, NoSessionAvailableError, SessionLockedError
from claimcheck_bus.payloads.budget import PayloadHold
from claimcheck_bus.settings import BusSettings

T = TypeVar("T")
log = logging.getLogger("claimcheck_bus")


class ClaimCheckBus:
    """Publish events to queues and topics and receive them typed, whatever their size.

    Payloads too large for a message (or all of them, with ``claim_check.always``) go to Blob
    Storage and the message carries a read-only SAS URL. Senders and receivers are opened once
    per entity and closed with the bus. Like the SDK clients it wraps, a bus is not safe to
    share: use one per thread (sync) or per task (async).

    ``socket_timeout`` is the SDK receivers' own: how long one read of the connection waits
    for a frame (0.2 s by default), so a receive from an empty entity lasts at least that long.

    Publishing waits at most ``service_bus.send_timeout_seconds`` for the namespace, then
    raises :class:`SendTimeoutError`. The first publish to each entity opens a link once
    without the SDK's retries, so that refused credentials raise :class:`ConfigurationError`
    at once (naming the setting) instead of after about 15 s of retries.

    ``session_key`` gives the session id of every published event (``None``: no opinion);
    see :meth:`publish` for how it combines with ``session_id=`` and ``__session_key__``.
    Receive from session-enabled entities with :meth:`accept_session`.
    """

    def __init__(
        self,
        settings: BusSettings | None = None,
        *,
        credential: Any = None,
        store: PayloadStore | None = None,
        socket_timeout: float | None = None,
        session_key: SessionKey | None = None,
    ) -> None:
        settings = settings if settings is not None else BusSettings()
        if store is None:
            store = default_store(settings.claim_check, credential)
        self._core = BusCore(
            settings,
            has_store=store is not None,
            sas_limit=store.max_sas_lifetime if store is not None else None,
            session_key=session_key,
        )
        self.settings = self._core.settings
        self._store = store
        sb = self.settings.service_bus
        if sb.connection_string is None:
            credential = credential or default_credential()
        self._send_timeout = sb.send_timeout_seconds
        self._client = self._new_client(credential)
        # A client sets its handlers' retries and attempt timeout, so senders get their own:
        # every attempt to open a link or send is bounded by the send timeout, and probes
        # (see _sender) do not retry.
        self._send_client = self._new_client(credential, try_timeout=self._send_timeout)
        self._probe_client = self._new_client(
            credential, try_timeout=self._send_timeout, retry_total=0
        )
        # The SDK retries a refused session lock and an empty wait for a next-available
        # session as transient, which would turn a bounded max_wait into several: session
        # receivers come from a client that does not retry. A session link that fails is lost
        # with its lock anyway, so a retry would not have saved it.
        self._session_client = self._new_client(credential, retry_total=0)
        self._payloads = PayloadReader(
            self._core.policy, downloader_for(self.settings.claim_check), store
        )
        self._senders: dict[str, ServiceBusSender] = {}
        self._limits: dict[str, int] = {}
        self._receivers: dict[tuple[str, bool], ServiceBusReceiver] = {}
        self._socket_timeout = socket_timeout
        self._sessions: set[SessionReceiver] = set()

    def __enter__(self) -> ClaimCheckBus:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every sender, receiver, open session receiver and connection this bus opened."""
        for session in list(self._sessions):
            try:
                session.close()
            except Exception:  # closing must reach every handler
                log.warning("closing a session receiver failed", exc_info=True)
        for handler in [*self._senders.values(), *self._receivers.values()]:
            try:
                handler.close()
            except Exception:  # closing must reach every handler
                log.warning("closing a Service Bus handler failed", exc_info=True)
        self._senders.clear()
        self._receivers.clear()
        for client in (self._client, self._send_client, self._probe_client, self._session_client):
            client.close()
        self._payloads.close()

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        event: object,
        *,
        queue: str | None = None,
        topic: str | None = None,
        event_type: str | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        session_id: str | None = None,
        subject: str | None = None,
        time_to_live: timedelta | None = None,
        scheduled_enqueue_time: datetime | None = None,
        application_properties: dict[str, Any] | None = None,
    ) -> PublishReceipt:
        """Publish one event to ``queue`` or ``topic`` (default: the settings' default queue).

        The session id is ``session_id`` if given, else what the bus's ``session_key`` returns
        for the event if not ``None``, else the attribute named by the event class's
        ``__session_key__`` (``str()`` of its value); an empty id or one over 128 characters
        raises ``ValueError``. The receipt carries it.

        A large payload is uploaded first and the message sent after; if the send fails the
        upload is deleted and the error raised, so no message ever points at a missing blob.
        """
        entity = resolve_entity(self.settings, queue=queue, topic=topic)
        options = publish_options(
            event_type=event_type,
            message_id=message_id,
            correlation_id=correlation_id,
            session_id=session_id,
            subject=subject,
            time_to_live=time_to_live,
            scheduled_enqueue_time=scheduled_enqueue_time,
            application_properties=application_properties,
        )
        publication = self._core.prepare(event, entity.name, options)
        sender = self._sender(entity)
        route, size = self._core.route(publication, self._limits[entity.name])
        if route is Route.INLINE:
            number = self._send(entity, sender, publication.inline(), scheduled_enqueue_time)
            return publication.receipt(route, size, sequence_number=number)
        message = self._upload(publication)
        try:
            number = self._send(entity, sender, message, scheduled_enqueue_time)
        except BaseException:
            self._discard([publication])
            raise
        return publication.receipt(route, size, sequence_number=number)

    def publish_batch(
        self,
        events: Iterable[object],
        *,
        queue: str | None = None,
        topic: str | None = None,
        event_type: str | None = None,
        session_id: str | None = None,
        time_to_live: timedelta | None = None,
        application_properties: dict[str, Any] | None = None,
    ) -> list[PublishReceipt]:
        """Publish many events in as few Service Bus batches as their sizes allow.

        Each event gets its own session id as :meth:`publish` resolves it (``session_id``
        applies to all of them) and is offloaded on its own merits. If anything fails, the
        payloads of unsent events are deleted and :class:`BatchPublishError` lists what was
        already published.
        """
        entity = resolve_entity(self.settings, queue=queue, topic=topic)
        options = publish_options(
            event_type=event_type,
            session_id=session_id,
            time_to_live=time_to_live,
            application_properties=application_properties,
        )
        sender = self._sender(entity)
        limit = self._limits[entity.name]
        published: list[PublishReceipt] = []
        pending: list[tuple[Publication, PublishReceipt]] = []
        batch = sender.create_message_batch()
        try:
            for event in events:
                publication = self._core.prepare(event, entity.name, options)
                route, size = self._core.route(publication, limit)
                message = (
                    publication.inline() if route is Route.INLINE else self._upload(publication)
                )
                pending.append((publication, publication.receipt(route, size)))
                if _fits(batch, message):
                    continue
                pending.pop()
                if len(batch):
                    self._send(entity, sender, batch, None)
                    published.extend(receipt for _, receipt in pending)
                    pending.clear()
                    batch = sender.create_message_batch()
                pending.append((publication, publication.receipt(route, size)))
                if not _fits(batch, message):
                    # Larger than a batch may be (Premium: 1 MB batches, 100 MB messages).
                    self._send(entity, sender, message, None)
                    published.append(pending.pop()[1])
            if len(batch):
                self._send(entity, sender, batch, None)
                published.extend(receipt for _, receipt in pending)
                pending.clear()
        except BaseException as error:
            self._discard([p for p, receipt in pending if receipt.route is Route.CLAIM_CHECK])
            raise BatchPublishError(published, error) from error
        return published

    def cancel_scheduled(
        self, sequence_number: int, *, queue: str | None = None, topic: str | None = None
    ) -> None:
        """Cancel a scheduled message by the sequence number its receipt carries."""
        entity = resolve_entity(self.settings, queue=queue, topic=topic)
        sender = self._sender(entity)
        with self._failures("cancelling a scheduled message on", entity):
            sender.cancel_scheduled_messages(sequence_number, timeout=self._send_timeout)

    def _sender(self, entity: Entity) -> ServiceBusSender:
        """The entity's sender, once a link to it has been opened and its size limit read."""
        sender = self._senders.get(entity.name)
        if sender is None:
            sender = self._senders[entity.name] = self._new_sender(self._send_client, entity)
        if entity.name not in self._limits:
            with self._failures("opening a link to", entity):
                self._limits[entity.name] = self._link_limit(entity, sender)
        return sender

    def _link_limit(self, entity: Entity, sender: ServiceBusSender) -> int:
        """The entity's largest message, read by a probe that opens a link once without
        retries: a refused credential fails now, not after the SDK's retries (which treat it
        as transient), and a silent namespace after the send timeout. After another failure
        the sender itself opens the link, with the SDK's retries."""
        # No keep-alive thread: closing the probe would wait for it to wake up.
        probe = self._new_sender(self._probe_client, entity, keep_alive=0)
        try:
            return _sdk.probe_link(probe, self._send_timeout)
        except Exception as error:
            if not retry_after_probe(error):
                raise
            log.info(
                "opening a link to %s failed (%s); retrying", entity.name, type(error).__name__
            )
        return _sdk.max_message_size(sender)

    @staticmethod
    def _new_sender(client: ServiceBusClient, entity: Entity, **options: Any) -> ServiceBusSender:
        if entity.kind == "topic":
            return client.get_topic_sender(entity.name, **options)
        return client.get_queue_sender(entity.name, **options)

    def _new_client(self, credential: Any, **options: Any) -> ServiceBusClient:
        sb = self.settings.service_bus
        if sb.connection_string is not None:
            return ServiceBusClient.from_connection_string(
                sb.connection_string.get_secret_value(), **options
            )
        return ServiceBusClient(str(sb.fully_qualified_namespace), credential, **options)

    @contextlib.contextmanager
    def _failures(self, action: str, entity: Entity) -> Iterator[None]:
        try:
            yield
        except Exception as error:
            translated = send_failure(
                error,
                action=action,
                entity=entity.name,
                namespace=self._client.fully_qualified_namespace,
                uses_connection_string=self.settings.service_bus.connection_string is not None,
                timeout=self._send_timeout,
            )
            if translated is None:
                raise
            raise translated from error

    def _upload(self, publication: Publication) -> ServiceBusMessage:
        assert self._store is not None  # the core routes to claim-check only with a store
        upload = self._core.upload_arguments(publication)
        stored = self._store.upload(**upload)
        return publication.claim_checked(
            stored.url,
            sha256=stored.sha256,
            size=stored.size,
            content_encoding=upload["content_encoding"],
        )

    def _send(
        self,
        entity: Entity,
        sender: ServiceBusSender,
        message: ServiceBusMessage | ServiceBusMessageBatch,
        scheduled: datetime | None,
    ) -> int | None:
        with self._failures("sending to", entity):
            if scheduled is None or isinstance(message, ServiceBusMessageBatch):
                sender.send_messages(message, timeout=self._send_timeout)
                return None
            numbers = sender.schedule_messages(message, scheduled, timeout=self._send_timeout)
            return int(numbers[0])

    def _discard(self, publications: list[Publication]) -> None:
        for publication in publications:
            try:
                assert self._store is not None
                self._store.delete(publication.blob_name)
                log.info("deleted the payload of unsent message %s", publication.message_id)
            except Exception:  # best effort: the send error is what the caller must see
                log.warning(
                    "could not delete payload %s of unsent message %s; a lifecycle rule must",
                    publication.blob_name,
                    publication.message_id,
                    exc_info=True,
                )

    # -- receiving -------------------------------------------------------------------------

    def receive(
        self,
        as_type: type[T],
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        max_messages: int = 1,
        max_wait: float | None = 5.0,
        dead_letter: bool = False,
    ) -> list[ReceivedEvent[T]]:
        """Receive up to ``max_messages`` events (peek-lock), waiting at most ``max_wait`` s.

        The async client fetches claim-checked payloads concurrently before it returns (unless
        ``prefetch=False``; then ``event.load()``); the sync client fetches a payload on
        first access to ``.data``. Either way nothing renews the messages' locks meanwhile: a
        download (at most ``download_timeout_seconds`` times four) that outlasts the lock
        makes ``complete()`` fail with the SDK's ``MessageLockLostError``. Call
        ``renew_lock()`` for long work, or let a :class:`~claimcheck_bus.worker.Worker` renew
        them. A failed fetch is raised by ``.data``, for that event alone. Settle each event
        with ``complete()``, ``abandon()``, ``dead_letter()`` or ``defer()``.
        ``dead_letter=True`` reads the dead-letter queue.
        """
        entity = resolve_entity(
            self.settings, queue=queue, topic=topic, subscription=subscription, receiving=True
        )
        receiver = self._receiver(entity, dead_letter)
        messages = receiver.receive_messages(max_message_count=max_messages, max_wait_time=max_wait)
        return self._events(
            receiver,
            messages,
            as_type,
            entity.path,
        )

    def _events(
        self,
        receiver: ServiceBusReceiver,
        messages: list[Any],
        as_type: type[T],
        entity: str,
    ) -> list[ReceivedEvent[T]]:
        events = [ReceivedEvent(self._payloads, receiver, m, as_type, entity) for m in messages]
        return events

    def accept_session(
        self,
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        session_id: str | None = None,
        max_wait: float | None = 5.0,
        prefetch_count: int = 10,
    ) -> SessionReceiver:
        """A receiver of one session of a session-enabled queue or subscription.

        Use it as ``with bus.accept_session(queue="orders") as session:``; entering
        locks the session, leaving (or :meth:`SessionReceiver.close`, or closing the
        bus) releases it for the next receiver. ``session_id=None`` takes the next session
        that has messages, waiting up to ``max_wait`` seconds for one (``None``: as long as
        the service waits) before raising :class:`NoSessionAvailableError`. A named session
        held by another receiver raises :class:`SessionLockedError` at once.

        The receiver holds up to ``prefetch_count`` (at least 1) of the session's messages
        ahead of :meth:`SessionReceiver.receive`. Without that buffer the SDK hands back
        a message that arrives while no receive is waiting, and a later message of the
        session, already on its way, can overtake it: order would be lost.
        """
        entity = resolve_entity(
            self.settings, queue=queue, topic=topic, subscription=subscription, receiving=True
        )
        if session_id is not None and not 0 < len(session_id) <= MAX_SESSION_ID:
            raise ValueError(
                f"session_id is {len(session_id)} characters; Service Bus takes 1 to "
                f"{MAX_SESSION_ID}"
            )
        if prefetch_count < 1:
            raise ValueError("prefetch_count must be at least 1: a session keeps its order so")
        return SessionReceiver(self, entity, session_id, max_wait, prefetch_count)

    def _session_receiver(
        self, entity: Entity, session_id: str | None, max_wait: float | None, prefetch: int
    ) -> ServiceBusReceiver:
        wanted = session_id if session_id is not None else NEXT_AVAILABLE_SESSION
        if entity.subscription:
            return self._session_client.get_subscription_receiver(
                entity.name,
                entity.subscription,
                session_id=wanted,
                max_wait_time=max_wait,
                prefetch_count=prefetch,
                socket_timeout=self._socket_timeout,
            )
        return self._session_client.get_queue_receiver(
            entity.name,
            session_id=wanted,
            max_wait_time=max_wait,
            prefetch_count=prefetch,
            socket_timeout=self._socket_timeout,
        )

    def receive_deferred(
        self,
        as_type: type[T],
        sequence_numbers: Iterable[int],
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
    ) -> list[ReceivedEvent[T]]:
        """Receive deferred events by their sequence numbers."""
        entity = resolve_entity(
            self.settings, queue=queue, topic=topic, subscription=subscription, receiving=True
        )
        receiver = self._receiver(entity, False)
        messages = receiver.receive_deferred_messages(list(sequence_numbers))
        events = [
            ReceivedEvent(self._payloads, receiver, m, as_type, entity.path) for m in messages
        ]
        return events

    def stream(
        self,
        as_type: type[T],
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        batch_size: int = 10,
        max_wait: float = 5.0,
    ) -> Iterator[ReceivedEvent[T]]:
        """Receive continuously: ``for event in bus.stream(Order, queue="orders")``.

        Runs until the consumer stops iterating; idle periods simply poll again.
        """
        while True:
            events = self.receive(
                as_type,
                queue=queue,
                topic=topic,
                subscription=subscription,
                max_messages=batch_size,
                max_wait=max_wait,
            )
            yield from events

    def rehydrate(self, message: Any, as_type: type[T], *, entity: str | None = None) -> T:
        """The typed event of a message received by other means (an Azure Functions trigger,
        your own ``ServiceBusReceiver``), its payload fetched with this bus's settings."""
        incoming = incoming_from(message, entity=entity)
        return decode(incoming, self._payloads.payload_of(incoming), as_type)

    def _receiver(self, entity: Entity, dead_letter: bool) -> ServiceBusReceiver:
        key = (entity.path, dead_letter)
        receiver = self._receivers.get(key)
        if receiver is None:
            sub_queue = ServiceBusSubQueue.DEAD_LETTER if dead_letter else None
            if entity.subscription:
                receiver = self._client.get_subscription_receiver(
                    entity.name,
                    entity.subscription,
                    sub_queue=sub_queue,
                    socket_timeout=self._socket_timeout,
                )
            else:
                receiver = self._client.get_queue_receiver(
                    entity.name, sub_queue=sub_queue, socket_timeout=self._socket_timeout
                )
            self._receivers[key] = receiver
        return receiver


class SessionReceiver:
    """One locked session of a session-enabled queue or subscription, from
    :meth:`ClaimCheckBus.accept_session`.

    Messages of the session arrive in the order they were sent, to this receiver alone, until
    it is closed or its session lock expires (``locked_until``; extend it with
    :meth:`renew_lock`). Settle each received event as from :meth:`ClaimCheckBus.receive`.
    Per-session state (bytes) survives receivers: :meth:`get_state`, :meth:`set_state`.
    """

    def __init__(
        self,
        bus: ClaimCheckBus,
        entity: Entity,
        session_id: str | None,
        max_wait: float | None,
        prefetch: int = 10,
    ) -> None:
        self._bus = bus
        self._entity = entity
        self._requested = session_id
        self._max_wait = max_wait
        self._prefetch = prefetch
        self._receiver: ServiceBusReceiver | None = None
        self._closed = False

    def __enter__(self) -> SessionReceiver:
        self._open()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> None:
        if self._receiver is not None or self._closed:
            raise RuntimeError("a session receiver is entered once: accept_session again")
        receiver = self._bus._session_receiver(
            self._entity, self._requested, self._max_wait, self._prefetch
        )
        try:
            # Opening the link is what locks the session, so its id is known from here on.
            receiver.__enter__()
        except (OperationTimeoutError, SessionCannotBeLockedError) as error:
            _close_quietly(receiver)
            if self._requested is None:
                # A next-available session taken by another receiver in the meantime is, to
                # this caller, no session available either.
                raise NoSessionAvailableError(self._entity.path, self._max_wait) from error
            if isinstance(error, SessionCannotBeLockedError):
                raise SessionLockedError(self._entity.path, self._requested) from error
            raise
        except BaseException:
            _close_quietly(receiver)
            raise
        self._receiver = receiver
        self._bus._sessions.add(self)

    def _open_receiver(self) -> ServiceBusReceiver:
        if self._receiver is None:
            state = "closed" if self._closed else "not open yet: use it in a with block"
            raise RuntimeError(f"the session receiver of {self._entity.path} is {state}")
        return self._receiver

    @property
    def entity(self) -> str:
        """The queue, or ``topic/Subscriptions/subscription``, the session belongs to."""
        return self._entity.path

    @property
    def session_id(self) -> str:
        """The id of the locked session (for a next-available session, known once entered)."""
        if self._receiver is not None:
            return str(self._receiver.session.session_id)
        if self._requested is not None:
            return self._requested
        raise RuntimeError("the next available session is known once the receiver is entered")

    @property
    def locked_until(self) -> datetime | None:
        """When the session lock expires unless renewed (``None`` while not open)."""
        if self._receiver is None:
            return None
        until: datetime | None = self._receiver.session.locked_until_utc
        return until

    def receive(
        self,
        as_type: type[T],
        *,
        max_messages: int = 1,
        max_wait: float | None = 5.0,
    ) -> list[ReceivedEvent[T]]:
        """Receive up to ``max_messages`` events of this session, in order, waiting at most
        ``max_wait`` s; as :meth:`ClaimCheckBus.receive` does (claim-checked payloads
        fetched the same way), but the messages' locks are the session's: renew it with
        :meth:`renew_lock`, not the events'. Once the session lock has expired this raises the
        SDK's ``SessionLockLostError``: accept the session again."""
        receiver = self._open_receiver()
        messages = receiver.receive_messages(max_message_count=max_messages, max_wait_time=max_wait)
        return self._bus._events(
            receiver,
            messages,
            as_type,
            self._entity.path,
        )

    def get_state(self) -> bytes | None:
        """The session's state as last set (``None``: never set, or cleared)."""
        state: bytes | None = self._open_receiver().session.get_state()
        return state

    def set_state(self, state: bytes | str | None) -> None:
        """Replace the session's state (``str`` is stored as UTF-8; ``None`` clears it)."""
        self._open_receiver().session.set_state(state)

    def renew_lock(self) -> datetime:
        """Extend the session lock (and so its messages' locks); returns the new expiry."""
        until: datetime = self._open_receiver().session.renew_lock()
        return until

    def close(self) -> None:
        """Release the session so that another receiver may accept it; idempotent. Unsettled
        messages are delivered again to whoever accepts the session next."""
        self._closed = True
        receiver, self._receiver = self._receiver, None
        self._bus._sessions.discard(self)
        if receiver is not None:
            receiver.close()

    def __repr__(self) -> str:
        if self._receiver is not None:
            session = repr(self.session_id)
        else:
            session = "closed" if self._closed else repr(self._requested or "next available")
        return f"{type(self).__name__}(entity={self._entity.path!r}, session={session})"


def _close_quietly(receiver: ServiceBusReceiver) -> None:
    try:
        receiver.close()
    except Exception:  # the open's failure is what the caller must see
        log.debug("closing a session receiver that failed to open failed", exc_info=True)


class ReceivedEvent(EventView[T]):
    """A received event: metadata at once, the typed payload on first access to ``.data``."""

    def __init__(
        self,
        payloads: PayloadReader,
        receiver: ServiceBusReceiver,
        message: Any,
        as_type: type[T],
        entity: str,
    ) -> None:
        super().__init__(message, as_type, entity)
        self._payloads = payloads
        self._receiver = receiver
        self._data: tuple[T] | None = None
        self._error: Exception | None = None
        # Its payload's share of the reader's budget, given back once settled (or, for an
        # event dropped unsettled, once collected). Inline payloads take none of it.
        self._hold = PayloadHold()
        if self.is_claim_check:
            weakref.finalize(self, payloads.release, self._hold)

    def load(self, *, raise_errors: bool = True) -> None:
        """Fetch and decode the payload, so that ``.data`` is available."""
        if self._data is not None:
            return
        try:
            payload = self._payloads.payload_of(self.incoming, self._hold)
            self._data = (decode(self.incoming, payload, self.as_type),)
            self._error = None
        except Exception as error:
            self._error = error
            if raise_errors:
                raise

    def release_payload(self) -> None:
        """Forget the fetched payload and give back its share of the reader's payload budget
        before settling, once nothing needs it any more (settling gives the share back too).
        ``.data`` then fetches it again if asked."""
        self._data = None
        self._payloads.release(self._hold)

    @property
    def data(self) -> T:
        """The typed event; raises the typed error its fetch or decoding met."""
        self.load(raise_errors=False)
        if self._data is None:
            if self._error is not None:
                raise self._error
            raise RuntimeError("payload not loaded yet: event.load() first")
        return self._data[0]

    def payload(self) -> bytes:
        """The raw payload bytes, inline or fetched."""
        return self._payloads.payload_of(self.incoming)

    def save_payload(self, destination: str | Path | BinaryIO) -> int:
        """Stream the payload to a file path or binary file object without holding it all."""
        if isinstance(destination, (str, Path)):
            # Local file writes are short; the download awaits between its chunks.
            with open(destination, "wb") as sink:
                return self._payloads.save_payload_of(self.incoming, sink)
        return self._payloads.save_payload_of(self.incoming, destination)

    def complete(self) -> None:
        """Settle as handled: Service Bus removes the message."""
        self._receiver.complete_message(self.message)
        self._payloads.release(self._hold)
        self._payloads.completed(self.incoming)

    def abandon(self) -> None:
        """Give the message back for redelivery (its delivery count goes up)."""
        self._receiver.abandon_message(self.message)
        self._payloads.release(self._hold)

    def dead_letter(self, reason: str, description: str | None = None) -> None:
        """Move the message to the dead-letter queue with a reason a person can act on."""
        self._receiver.dead_letter_message(
            self.message, reason=reason, error_description=description
        )
        self._payloads.release(self._hold)

    def defer(self) -> None:
        """Set the message aside; receive it later with ``receive_deferred``."""
        self._receiver.defer_message(self.message)
        self._payloads.release(self._hold)

    def renew_lock(self) -> datetime:
        """Extend the message's lock; returns the new expiry.

        An event from a session has no lock of its own: renew the session's lock with
        :meth:`SessionReceiver.renew_lock` (this raises ``TypeError`` saying so).
        """
        if self._receiver.session is not None:
            raise TypeError(
                f"message {self.message_id} belongs to session {self.session_id!r}, whose lock "
                "covers its messages: renew it with session.renew_lock()"
            )
        return self._receiver.renew_message_lock(self.message)


def _fits(batch: Any, message: ServiceBusMessage) -> bool:
    try:
        batch.add_message(message)
    except MessageSizeExceededError:
        return False
    return True
