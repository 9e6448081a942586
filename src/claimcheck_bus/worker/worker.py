"""The background worker: one lane per entity, bounded concurrency, lock renewal, settlement
and graceful shutdown. Every decision it takes is a function of ``dispatch``.

A lane is the only task that uses its entity's link: it receives a batch, hands it to a
handling task, and settles each message once that task marks it ready, taking turns (see
``dispatch.next_turn``). One owner keeps the SDK fast: a receive waiting on a connection
holds its socket, so a settlement sent meanwhile sits unconfirmed until the receive returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from claimcheck_bus import AsyncClaimCheckBus, AsyncReceivedEvent
from claimcheck_bus.errors import EventDecodeError, InvalidEventError
from claimcheck_bus.events import deserialize
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import (
    BUSY_RECEIVE_WAIT,
    Decision,
    Route,
    Settle,
    Turn,
    Upcaster,
    decide,
    event_type_of,
    event_version_of,
    lag_seconds,
    next_turn,
    parse_json,
    read_version,
    receive_batch,
    receive_wait,
    refill_size,
    retention_cutoff,
    select_routes,
    should_receive,
    upcast,
    upcast_chain,
)
from claimcheck_bus.worker.group_commit import GroupCommit
from claimcheck_bus.worker.handling import EntityState, Handling, Target, context_of
from claimcheck_bus.worker.lock_renewal import LockRenewal
from claimcheck_bus.worker.middleware import HOOKS, Middleware, Outcome, overriding
from claimcheck_bus.worker.outcome_log import log_outcome, quiet_sdk_chatter
from claimcheck_bus.worker.projection import (
    Pending,
    Projection,
    ProjectionRunner,
    declared_handlers,
)
from claimcheck_bus.worker.session_lane import SessionLane
from claimcheck_bus.worker.stores.base import ProjectionStore

log = logging.getLogger("claimcheck_bus.worker")
T = TypeVar("T")


class Worker:
    """Consumes queues and subscriptions and dispatches each event to its handlers.

    Projections get exactly-once effects through their store's inbox; plain handlers get
    at-least-once delivery. ``max_concurrency`` bounds the messages in flight across all
    entities. A projection's events are applied in batches of at most ``max_batch_size``,
    one transaction each (see ``group_commit``); handlers run in threads so lock renewal
    keeps going while they compute.

    Without sessions there is no order: messages are handled side by side and a redelivery
    comes after later messages. A session entity (``sessions=True`` when adding handlers) is
    consumed in order within each session: up to ``max_concurrent_sessions`` sessions at
    once, each one batch of at most ``max_batch_size`` messages after the other, a session
    let go after ``session_idle_timeout`` seconds without messages, or after holding it for
    ``session_turn`` seconds so that a session that never goes idle cannot keep waiting
    sessions out of the slots (see ``session_lane``).
    ``max_concurrency`` bounds the messages in flight on entities without sessions.

    At INFO it logs one line for each message it dead-letters, abandons or fails to settle
    (see ``outcome_log``). While it serves, the Azure SDKs' INFO chatter (every link's state,
    every HTTP request) is raised to WARNING on the loggers you have not configured yourself;
    ``quiet_sdk_logs=False`` keeps it.
    """

    def __init__(
        self,
        settings: BusSettings | None = None,
        *,
        credential: Any = None,
        max_concurrency: int = 64,
        shutdown_timeout: float = 30.0,
        inbox_retention: timedelta = timedelta(days=7),
        prune_interval: float = 3600.0,
        max_wait: float = 1.0,
        expected_handler_seconds: float = 0.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        refill_fraction: float = 0.5,
        max_batch_size: int = 64,
        quiet_sdk_logs: bool = True,
        max_concurrent_sessions: int = 8,
        session_idle_timeout: float = 1.0,
        session_turn: float = 60.0,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if max_concurrent_sessions < 1:
            raise ValueError("max_concurrent_sessions must be at least 1")
        if session_turn <= 0:
            raise ValueError("session_turn must be above 0")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        retention_cutoff(datetime.now(timezone.utc), inbox_retention)  # validates it
        self.settings = settings if settings is not None else BusSettings()
        self.max_concurrency = max_concurrency
        self.shutdown_timeout = shutdown_timeout
        self.inbox_retention = inbox_retention
        self.prune_interval = prune_interval
        self.max_wait = max_wait
        self.expected_handler_seconds = expected_handler_seconds
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.refill_fraction = refill_fraction
        self.max_batch_size = max_batch_size
        self.quiet_sdk_logs = quiet_sdk_logs
        self.max_concurrent_sessions = max_concurrent_sessions
        self.session_idle_timeout = session_idle_timeout
        self.session_turn = session_turn
        self._credential = credential
        self._entities: dict[tuple[str | None, str | None, str | None], EntityState] = {}
        self._runners: list[ProjectionRunner] = []
        self._commits: dict[int, GroupCommit] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._middleware: list[Middleware] = []
        self._hooks: dict[str, list[Callable[..., None]]] = {name: [] for name in HOOKS}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stop_requested = threading.Event()
        self._active = 0
        self._executor: ThreadPoolExecutor | None = None
        self._handlers_running = 0
        self._counter_lock = threading.Lock()

    # -- registration ----------------------------------------------------------------------

    def _entity(
        self,
        queue: str | None,
        topic: str | None,
        subscription: str | None,
        sessions: bool | None = None,
    ) -> EntityState:
        if topic and not subscription:
            raise ValueError(f"topic {topic!r} needs a subscription to consume from")
        if queue and topic:
            raise ValueError("give a queue or a topic and subscription, not both")
        if not queue and not topic:
            queue = self.settings.service_bus.default_queue_name
            if not queue:
                raise ValueError("name a queue (or topic and subscription): no default queue set")
        key = (queue, topic, subscription)
        entity = self._entities.get(key)
        if entity is None:
            entity = self._entities[key] = EntityState(queue, topic, subscription)
        if sessions is not None:
            if entity.routes and entity.sessions != sessions:
                raise ValueError(
                    f"{entity.path} is already consumed "
                    f"{'with' if entity.sessions else 'without'} sessions=True: an entity "
                    "requires sessions or does not, for all its handlers"
                )
            entity.sessions = sessions
        return entity

    def add_projection(
        self,
        projection: Projection,
        *,
        store: ProjectionStore,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        sessions: bool = False,
    ) -> ProjectionRunner:
        """Feed ``projection`` (stored in ``store``) from a queue or a topic subscription.

        ``sessions=True`` consumes a session entity (``RequiresSession``): each session's
        events are applied strictly in the order they were sent, several sessions at once.
        """
        runner = ProjectionRunner(projection, store)
        if any(r.name == runner.name and r.store is store for r in self._runners):
            raise ValueError(f"projection {runner.name!r} is already registered with this store")
        handlers = declared_handlers(projection)
        if not handlers:
            raise ValueError(f"projection {runner.name!r} has no @handles methods")
        entity = self._entity(queue, topic, subscription, sessions)
        for declared, function in handlers:
            target = Target(function, runner, dict(projection.upcasters), batch=declared.batch)
            entity.routes.append(
                Route(declared.event_type, declared.version, declared.event_class, target)
            )
        self._runners.append(runner)
        return runner

    def add_handler(
        self,
        event_class: type[Any],
        handler: Callable[..., Any],
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
        version: int | None = None,
        event_type: str | None = None,
        sessions: bool = False,
    ) -> None:
        """Call ``handler(event)`` or ``handler(event, context)`` (sync or async) for each
        ``event_class`` event: at-least-once, no inbox (make it idempotent).

        ``sessions=True`` consumes a session entity, in order within each session.
        """
        parameters = inspect.signature(handler).parameters
        target = Target(handler, None, {}, takes_context=len(parameters) >= 2)
        self._entity(queue, topic, subscription, sessions).routes.append(
            Route(
                event_type_of(event_class, event_type),
                event_version_of(event_class, version),
                event_class,
                target,
            )
        )

    def route_untyped(
        self,
        event_type: str | Callable[[EventContext], str | None],
        *,
        queue: str | None = None,
        topic: str | None = None,
        subscription: str | None = None,
    ) -> None:
        """Give messages that name no event type (no subject, no CloudEvents type: those of
        the original .NET design) on this entity an event type, so they reach its handlers.

        ``event_type`` is a name, or a function of the message's :class:`EventContext`
        (properties, message id, ...) returning a name or ``None`` (then the message is
        dead-lettered as ``UnknownEventType``). Messages that name a type keep it.
        """
        resolve = event_type if callable(event_type) else (lambda _context: event_type)
        self._entity(queue, topic, subscription).untyped = resolve

    def add_upcaster(self, event_type: str, from_version: int, upcaster: Upcaster) -> None:
        """Register a pure function turning ``event_type``'s JSON from ``from_version`` to the
        next version, for every handler of this worker."""
        self._upcasters[(event_type, from_version)] = upcaster

    def use(self, middleware: Middleware | type[Middleware]) -> None:
        """Add a middleware (an instance, or a class to instantiate without arguments)."""
        self._middleware.append(middleware() if isinstance(middleware, type) else middleware)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Run until SIGTERM, SIGINT or :meth:`stop`, then shut down gracefully."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            installed = []
            for number in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(number, stop.set)
                    installed.append(number)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread, or not a POSIX loop: stop() still works
            try:
                await self.serve(stop)
            finally:
                for number in installed:
                    loop.remove_signal_handler(number)

        asyncio.run(main())

    def stop(self) -> None:
        """Ask the worker to stop gracefully; safe from any thread."""
        self._stop_requested.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(stop.set)

    async def serve(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or :meth:`stop` is called), then shut down."""
        if not self._entities:
            raise ValueError("nothing to consume: add a projection or a handler first")
        self._loop = asyncio.get_running_loop()
        self._stop = stop if stop is not None else asyncio.Event()
        if self._stop_requested.is_set():
            self._stop.set()
        self._active = 0
        for entity in self._entities.values():  # asyncio primitives belong to one loop
            entity.wake, entity.receiving_over = asyncio.Event(), asyncio.Event()
            entity.inflight = 0
            entity.ready, entity.backing_off = [], {}
        self._hooks = {
            name: [getattr(m, name) for m in overriding(self._middleware, name)] for name in HOOKS
        }
        for runner in self._runners:
            await asyncio.to_thread(runner.start)
        self._commits = {
            id(runner): GroupCommit(
                runner,
                self._in_thread,
                self._middleware,
                max_batch_size=self.max_batch_size,
                concurrency=min(runner.store.concurrent_transactions, self.max_concurrency),
            )
            for runner in self._runners
        }
        handling: set[asyncio.Task[None]] = set()
        restore_sdk_logs = quiet_sdk_chatter() if self.quiet_sdk_logs else None
        try:
            # Its receives poll the link no longer than a busy receive may wait: the SDK's
            # default (0.2 s) would hold the link, and the settlements behind it, that long
            # whenever the entity runs empty.
            async with AsyncClaimCheckBus(
                self.settings, credential=self._credential, socket_timeout=BUSY_RECEIVE_WAIT
            ) as bus:
                log.info("worker consuming %s", ", ".join(e.path for e in self._entities.values()))
                lanes = [
                    asyncio.create_task(
                        SessionLane(self, bus, entity, self._stop).run()
                        if entity.sessions
                        else self._lane(bus, entity, handling)
                    )
                    for entity in self._entities.values()
                ]
                background = [
                    asyncio.create_task(self._prune_loop()),
                    asyncio.create_task(self._wake_on_stop()),
                ]
                try:
                    await self._stop.wait()
                finally:
                    await self._drain(lanes, handling)
                    for task in background:
                        task.cancel()
                    await asyncio.gather(*background, return_exceptions=True)
        finally:
            if restore_sdk_logs is not None:
                restore_sdk_logs()
            executor, self._executor = self._executor, None
            if self._handlers_running:
                # A handler thread outlived the deadline (its message was abandoned): its
                # store stays open for it; the inbox makes its late commit harmless.
                log.warning(
                    "%d handler(s) still running after the shutdown deadline; their "
                    "transactions may still commit (a redelivery will then be skipped)",
                    self._handlers_running,
                )
            else:
                for store in {id(r.store): r.store for r in self._runners}.values():
                    await asyncio.to_thread(store.close)
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)
            self._loop = None
            log.info("worker stopped")

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run a handler in the worker's own threads, counting those still running."""
        assert self._loop is not None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.max_concurrency, thread_name_prefix="claimcheck-worker"
            )
        with self._counter_lock:
            self._handlers_running += 1
        # Count on the thread's own future: the asyncio one is done as soon as it is cancelled.
        thread_future = self._executor.submit(function, *args)
        thread_future.add_done_callback(self._handler_done)
        return await asyncio.wrap_future(thread_future)

    def _handler_done(self, _: Any) -> None:
        with self._counter_lock:
            self._handlers_running -= 1

    async def _wake_on_stop(self) -> None:
        assert self._stop is not None
        await self._stop.wait()
        for entity in self._entities.values():
            entity.end_backoffs()
            entity.wake.set()

    async def _drain(
        self, lanes: list[asyncio.Task[None]], handling: set[asyncio.Task[None]]
    ) -> None:
        """Once the lanes stopped receiving, let them settle what is in flight within the
        deadline; past it, cancel the handlers (their messages are abandoned), then the lanes."""
        await asyncio.gather(*(e.receiving_over.wait() for e in self._entities.values()))
        inflight = sum(entity.inflight for entity in self._entities.values())
        if inflight:
            log.info(
                "waiting up to %.0f s for %d in-flight message(s)", self.shutdown_timeout, inflight
            )
        _, pending = await asyncio.wait(lanes, timeout=self.shutdown_timeout)
        if pending:
            for task in handling:
                task.cancel()  # each makes its unfinished messages ready to abandon
            _, pending = await asyncio.wait(pending, timeout=10.0)
            for task in pending:
                task.cancel()
        await asyncio.gather(*lanes, *handling, return_exceptions=True)

    async def _lane(
        self, bus: AsyncClaimCheckBus, entity: EntityState, handling: set[asyncio.Task[None]]
    ) -> None:
        """Use ``entity``'s link until stopped and settled: receive batches, settle messages."""
        assert self._stop is not None
        stop = self._stop
        failures = 0
        linked = False
        hold_until = 0.0  # receiving paused until then (monotonic)
        lock_seconds: float | None = None  # learnt from the first messages' lock expiry
        try:
            while True:
                if stop.is_set():
                    entity.receiving_over.set()
                hold = time.monotonic() < hold_until
                turn = next_turn(
                    ready=len(entity.ready),
                    free_slots=self.max_concurrency - self._active,
                    capacity=self.max_concurrency,
                    inflight=entity.inflight,
                    refill=self.refill_fraction,
                    stopping=stop.is_set(),
                    hold=hold,
                )
                if turn is Turn.DONE:
                    return
                if turn is Turn.SETTLE:
                    ready, entity.ready = entity.ready, []
                    await self._settle_ready(entity, ready)
                    if not failures:
                        hold_until = 0.0  # a slot freed: worth asking the entity again
                    continue
                if turn is Turn.WAIT:
                    entity.wake.clear()
                    wait = hold_until - time.monotonic() if hold else self.max_wait
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(entity.wake.wait(), max(0.0, wait))
                    continue
                wanted = receive_batch(
                    self.max_concurrency - self._active,
                    lock_seconds=lock_seconds,
                    handler_seconds=self.expected_handler_seconds,
                    most=refill_size(self.max_concurrency, self.refill_fraction),
                )
                self._active += wanted  # reserve the slots while receiving
                try:
                    events = await bus.receive(
                        bytes,
                        queue=entity.queue,
                        topic=entity.topic,
                        subscription=entity.subscription,
                        max_messages=wanted,
                        max_wait=receive_wait(
                            self.max_wait, inflight=entity.inflight, linked=linked
                        ),
                        # Payloads are fetched by the batch's task, under lock renewal: a
                        # slow one must hold neither this link nor its batch's settlements.
                        prefetch=False,
                    )
                except Exception:
                    failures += 1
                    linked = False
                    log.warning("receiving from %s failed; retrying", entity.path, exc_info=True)
                    self._release(wanted)
                    hold_until = time.monotonic() + min(30.0, 0.5 * 2**failures)
                    continue
                failures, linked = 0, True
                self._release(wanted - len(events))
                if not events:
                    if entity.inflight:  # nothing waiting: let the in-flight messages settle first
                        hold_until = time.monotonic() + self.max_wait
                    continue
                entity.inflight += len(events)
                if lock_seconds is None:
                    locked_until = getattr(events[0].message, "locked_until_utc", None)
                    if locked_until is not None:
                        lock_seconds = (locked_until - datetime.now(timezone.utc)).total_seconds()
                task = asyncio.create_task(self._handle_batch(entity, events))
                handling.add(task)
                task.add_done_callback(handling.discard)
        finally:
            entity.receiving_over.set()  # also when the lane failed: shutdown must not wait

    def _may_receive(self, entity: EntityState) -> bool:
        return should_receive(
            self.max_concurrency - self._active,
            self.max_concurrency,
            inflight=entity.inflight,
            refill=self.refill_fraction,
        )

    def _release(self, count: int) -> None:
        """Free ``count`` slots and wake the lanes that may now receive."""
        if count <= 0:
            return
        self._active -= count
        for entity in self._entities.values():
            if self._may_receive(entity):
                entity.wake.set()

    async def _prune_loop(self) -> None:
        assert self._stop is not None
        stores = {id(r.store): r.store for r in self._runners}.values()
        while not self._stop.is_set():
            cutoff = retention_cutoff(datetime.now(timezone.utc), self.inbox_retention)
            for store in stores:
                try:
                    pruned = await asyncio.to_thread(store.prune, cutoff)
                    if pruned:
                        log.info("pruned %d inbox row(s) from %r", pruned, store)
                except Exception:
                    log.warning("pruning the inbox of %r failed", store, exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.prune_interval)

    # -- settling (the lane) -----------------------------------------------------------------

    async def _settle_ready(self, entity: EntityState, ready: list[Handling]) -> None:
        """Settle ``ready`` messages side by side, each by its decision, and free their slots."""
        await self._settle_all(ready)
        entity.inflight -= len(ready)
        self._release(len(ready))

    async def _settle_all(self, ready: list[Handling]) -> list[Outcome]:
        """Settle ``ready`` messages side by side, each by its decision; log and report how."""
        results = await asyncio.gather(
            *(self._settle(handling) for handling in ready), return_exceptions=True
        )
        outcomes = []
        for handling, result in zip(ready, results, strict=True):
            error: BaseException | None = handling.error
            if isinstance(result, Outcome):
                outcome = result
                log_outcome(log, handling.context, outcome, handling.decision, handling.error)
            else:
                outcome, error = Outcome.SETTLE_FAILED, error or result
                log_outcome(log, handling.context, outcome, handling.decision, result)
            if handling.renewal is not None:
                handling.renewal.release(handling.event)
            self._hook(
                "after_handle",
                handling.context,
                outcome,
                error,
                time.monotonic() - handling.started,
            )
            outcomes.append(outcome)
        return outcomes

    async def _settle(self, handling: Handling) -> Outcome:
        decision, event = handling.decision, handling.event
        assert decision is not None
        if decision.settle is Settle.COMPLETE:
            await event.complete()
            return Outcome.COMPLETED if handling.applied else Outcome.DUPLICATE
        if decision.settle is Settle.DEAD_LETTER:
            await event.dead_letter(decision.reason or "HandlerFailed", decision.description)
            return Outcome.DEAD_LETTERED
        await event.abandon()
        return Outcome.ABANDONED

    # -- handling one received batch ---------------------------------------------------------

    async def _handle_batch(
        self, entity: EntityState, events: list[AsyncReceivedEvent[bytes]]
    ) -> None:
        """Run the handlers of one receive's messages: one group commit per projection, and
        each message ready for its lane as soon as its own handlers are done. A task per
        batch rather than per message keeps the worker's bookkeeping small next to the SDK's."""
        assert self._loop is not None
        assert self._stop is not None
        loop, stop = self._loop, self._stop
        started = time.monotonic()
        renewal = LockRenewal(events)
        handlings = [
            Handling(event, context_of(event, entity), renewal, started) for event in events
        ]

        def ready(handling: Handling) -> None:
            if handling.decision is not None:
                return
            # Its handlers are done: the payload's memory (and budget) can serve the next
            # message now rather than when the whole batch's task ends.
            handling.event.release_payload()
            handling.plain.clear()
            decision = decide(
                handling.error,
                delivery_count=handling.context.delivery_count,
                base_delay=self.backoff_base,
                max_delay=self.backoff_max,
            )
            handling.decision = decision
            if decision.settle is Settle.ABANDON and decision.delay > 0 and not stop.is_set():
                # Back off before giving the message back; a shutdown cuts the wait short.
                entity.backing_off[handling] = loop.call_later(
                    decision.delay, entity.make_ready, handling
                )
            else:
                entity.make_ready(handling)

        for handling in handlings:
            self._hook("before_handle", handling.context)
        try:
            inline = [h for h in handlings if not h.event.is_claim_check]
            for handling in inline:
                await handling.event.load(raise_errors=False)  # decodes in place: no I/O
            await asyncio.gather(
                self._dispatch(entity, inline, ready),
                *(
                    self._fetch_and_dispatch(entity, handling, ready)
                    for handling in handlings
                    if handling.event.is_claim_check
                ),
            )
        except asyncio.CancelledError:
            # Shutdown deadline passed: give the messages back rather than lose their locks slowly.
            for handling in handlings:
                if handling.decision is None:
                    handling.decision = Decision(Settle.ABANDON)
                    entity.make_ready(handling)
            raise
        except Exception as failure:  # a bug of ours: never leave a message unsettled
            log.error("handling a batch from %s failed", entity.path, exc_info=True)
            for handling in handlings:
                handling.error = handling.error or failure
                ready(handling)

    async def _fetch_and_dispatch(
        self, entity: EntityState, handling: Handling, ready: Callable[[Handling], None]
    ) -> None:
        """Fetch one claim-checked payload, then run its handlers: each message on its own,
        so a slow or failing payload delays and fails nothing but its message."""
        await handling.event.load(raise_errors=False)  # a failure is raised by .data
        await self._dispatch(entity, [handling], ready)

    async def _dispatch(
        self,
        entity: EntityState,
        handlings: list[Handling],
        ready: Callable[[Handling], None],
        chain: str | None = None,
    ) -> None:
        """Run every handler of the batch's events and call ``ready`` for each event once its
        own handlers are done, noting on it an error, or ``applied`` when some projection
        applied it (or a plain handler ran); neither when every projection had applied it
        before.

        With a ``chain`` (a session id) the events are handled in order and nothing behind a
        failure is: handling stops at an event that cannot be routed, each projection stops
        at its first failure, and plain handlers run one event after the other.
        """
        work: dict[int, list[tuple[Handling, Pending]]] = {}
        plain = []
        for handling in handlings:
            try:
                routed = self._route(entity, handling)
            except Exception as failure:
                handling.error = failure
                ready(handling)
                if chain is not None:
                    break
                continue
            for target, value in routed:
                if target.runner is None:
                    handling.plain.append((target, value))
                else:
                    pending = Pending(target.function, value, handling.context, target.batch, chain)
                    work.setdefault(id(target.runner), []).append((handling, pending))
                    handling.parts += 1
            if handling.plain:
                handling.parts += 1
                plain.append(handling)
        together = chain is not None
        await asyncio.gather(
            *(self._project(key, pairs, ready, together) for key, pairs in work.items()),
            *(
                [self._run_plain_in_order(plain, ready)]
                if together
                else [self._run_plain(handling, ready) for handling in plain]
            ),
        )

    def _route(self, entity: EntityState, handling: Handling) -> list[tuple[Target, Any]]:
        """Each handler of the event with the event decoded (and upcast) for it."""
        event = handling.event
        version = read_version(handling.context.properties)
        body = event.data  # raises the payload's typed error (missing blob, untrusted URL...)
        decoded: dict[tuple[type[Any], int], Any] = {}
        routed = []
        for route in select_routes(entity.routes, handling.context.event_type):
            target: Target = route.target
            key = (route.event_class, route.version)
            if key not in decoded:
                upcasters = {**self._upcasters, **target.upcasters}
                decoded[key] = _decode(body, route, version, upcasters, event)
            routed.append((target, decoded[key]))
        return routed

    async def _project(
        self,
        key: int,
        pairs: list[tuple[Handling, Pending]],
        ready: Callable[[Handling], None],
        together: bool = False,
    ) -> None:
        commit = self._commits[key]
        try:
            outcomes = await commit.apply([pending for _, pending in pairs], together=together)
        except Exception as failure:  # not the handlers' (they come back as outcomes): a bug
            outcomes = [failure] * len(pairs)
        observed = bool(self._hooks["after_commit"]) or log.isEnabledFor(logging.DEBUG)
        committed = datetime.now(timezone.utc)  # the batches of one apply commit together
        for (handling, _), outcome in zip(pairs, outcomes, strict=True):
            if isinstance(outcome, Exception):
                handling.error = handling.error or outcome
            elif outcome:
                handling.applied = True
                if observed:
                    context = handling.context
                    lag = lag_seconds(context.enqueued_time, committed)
                    self._hook("after_commit", context, commit.runner.name, lag)
                    if lag is not None:
                        log.debug("projection %s lag %.3f s", commit.runner.name, lag)
            handling.part_done(ready)

    async def _run_plain(self, handling: Handling, ready: Callable[[Handling], None]) -> None:
        try:
            for target, value in handling.plain:
                args = (value, handling.context) if target.takes_context else (value,)
                if _is_async(target.function):
                    await target.function(*args)
                else:
                    await self._in_thread(target.function, *args)
                handling.applied = True
        except Exception as failure:
            handling.error = handling.error or failure
        handling.part_done(ready)

    async def _run_plain_in_order(
        self, handlings: list[Handling], ready: Callable[[Handling], None]
    ) -> None:
        """The plain handlers of a session's events, one event after the other, stopping at
        the first that fails."""
        for handling in handlings:
            await self._run_plain(handling, ready)
            if handling.error is not None:
                return

    def _hook(self, name: str, *args: Any) -> None:
        for hook in self._hooks[name]:
            try:
                hook(*args)
            except Exception:  # observability must never fail a message
                log.warning("middleware hook %r failed", hook, exc_info=True)


def _is_async(function: Callable[..., Any]) -> bool:
    # An object whose __call__ is async is a coroutine function too: called in a thread, its
    # coroutine would never run and the message would be completed unhandled.
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004
    )


def _decode(
    body: bytes,
    route: Route,
    version: int,
    upcasters: Mapping[tuple[str, int], Upcaster],
    event: AsyncReceivedEvent[bytes],
) -> Any:
    where = {"message_id": event.message_id, "entity": event.incoming.entity}
    chain = upcast_chain(upcasters, route.event_type, version, route.version)
    if not chain:
        return deserialize(
            body, route.event_class, content_type=event.incoming.content_type, **where
        )
    try:
        document = parse_json(body)
    except ValueError as error:
        raise EventDecodeError(
            f"payload is not valid JSON ({str(error)[:200]})",
            **where,
            hint="The sender must publish UTF-8 JSON for typed events.",
        ) from None
    try:
        upgraded = json.dumps(upcast(document, chain)).encode()
    except Exception as failure:
        raise InvalidEventError(
            f"upcasting {route.event_type} v{version} to v{route.version} failed: "
            f"{type(failure).__name__}: {str(failure)[:200]}",
            **where,
        ) from failure
    return deserialize(upgraded, route.event_class, **where)
