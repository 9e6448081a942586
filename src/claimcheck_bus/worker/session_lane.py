"""Session entities: each session held by one task at a time and handled strictly in order.

A session entity gets ``max_concurrent_sessions`` slots. A slot accepts the next available
session, then receives, handles and settles its messages one batch after the other, and lets
the session go once it has been idle for ``session_idle_timeout`` (so other sessions get a
turn) or the worker stops. The session's lock covers its messages and is renewed for as long
as the slot holds it. A session that is never idle is let go after ``session_turn`` seconds
(once nothing is held), so sessions waiting for a slot get one.

When a message fails, the messages behind it in the session are not handled: they stay
locked and held by the slot. A permanent failure is dead-lettered at once and the held
messages are handled next; a transient one is abandoned after its backoff, and the next
receive brings it back first (Service Bus delivers a session in sequence order), followed
by the held messages. Only that session waits; the other slots go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.errors import NoSessionAvailableError, printable
from claimcheck_bus.worker.dispatch import (
    BUSY_RECEIVE_WAIT,
    Decision,
    Settle,
    decide,
    first_failure,
    renew_delay,
    session_receive_size,
)
from claimcheck_bus.worker.handling import EntityState, Handling, context_of
from claimcheck_bus.worker.middleware import Outcome

if TYPE_CHECKING:
    from claimcheck_bus.worker.worker import Worker

log = logging.getLogger("claimcheck_bus.worker")


class _SessionLost(Exception):
    """Settling failed: the session's lock is gone, and with it the held messages' locks."""


class SessionLane:
    """Consumes one session entity for a :class:`~claimcheck_bus.worker.Worker`."""

    def __init__(
        self, worker: Worker, bus: AsyncClaimCheckBus, entity: EntityState, stop: asyncio.Event
    ) -> None:
        self._worker = worker
        self._bus = bus
        self._entity = entity
        self._stop = stop

    async def run(self) -> None:
        """Serve sessions in every slot until the worker stops."""
        slots = [
            asyncio.create_task(self._slot()) for _ in range(self._worker.max_concurrent_sessions)
        ]
        stopping = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([stopping], return_when=asyncio.FIRST_COMPLETED)
            # Slots finish their batch, settle, and give their sessions back.
            self._entity.receiving_over.set()
            await asyncio.gather(*slots)
        finally:
            self._entity.receiving_over.set()
            stopping.cancel()
            for slot in slots:
                slot.cancel()
            await asyncio.gather(*slots, stopping, return_exceptions=True)

    async def _slot(self) -> None:
        entity, failures = self._entity, 0
        while not self._stop.is_set():
            try:
                async with self._bus.accept_session(
                    queue=entity.queue,
                    topic=entity.topic,
                    subscription=entity.subscription,
                    max_wait=self._worker.max_wait,
                    prefetch_count=self._worker.max_batch_size,
                ) as session:
                    failures = 0
                    await self._serve(session)
            except (NoSessionAvailableError, _SessionLost):
                continue
            except Exception:
                failures += 1
                log.warning("serving a session of %s failed; retrying", entity.path, exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), min(30.0, 0.5 * 2**failures))

    async def _serve(self, session: Any) -> None:
        """Handle one accepted session until it is idle, lost, or the worker stops."""
        worker, entity = self._worker, self._entity
        session_id: str = session.session_id
        worker._hook("session_started", entity.path, session_id)
        renewing = asyncio.create_task(self._renew(session))
        held: list[Handling] = []
        idle_since = turn_ends = time.monotonic()
        turn_ends += worker.session_turn
        try:
            while not self._stop.is_set() and not renewing.done():
                # Never wait for messages past the idle timeout: with many short sessions,
                # a slot would otherwise hold each one max_wait after its last message.
                idle_wait = min(
                    worker.max_wait,
                    max(0.05, worker.session_idle_timeout - (time.monotonic() - idle_since)),
                )
                events = await session.receive(
                    bytes,
                    max_messages=session_receive_size(worker.max_batch_size, len(held)),
                    max_wait=BUSY_RECEIVE_WAIT if held else idle_wait,
                    prefetch=False,
                )
                if not events and not held:
                    if time.monotonic() - idle_since >= worker.session_idle_timeout:
                        return
                    continue
                idle_since = time.monotonic()
                entity.inflight += len(events)
                received = []
                for event in events:
                    handling = Handling(event, context_of(event, entity), None, time.monotonic())
                    worker._hook("before_handle", handling.context)
                    received.append(handling)
                batch = sorted([*held, *received], key=lambda h: h.event.sequence_number or 0)
                held = await self._handle(session_id, batch)
                if not held and time.monotonic() >= turn_ends:
                    # Its turn is over: a session that is never idle would otherwise keep
                    # the sessions waiting behind it out of this slot for good.
                    return
        finally:
            lost = renewing.done()  # the renewal ends by itself only when the lock is lost
            renewing.cancel()
            if held and not lost:
                await self._give_back(held)
            entity.inflight -= len(held)
            worker._hook("session_ended", entity.path, session_id)

    async def _handle(self, session_id: str, batch: list[Handling]) -> list[Handling]:
        """Handle ``batch`` (one session's messages, in order) and settle what may be settled;
        the messages held behind a transient failure, to be handled again after it."""
        worker = self._worker
        while batch:
            # At most one payload per round, settled (its budget given back) before the next
            # is fetched: a batch's payloads all held at once could need more than the
            # payload budget, and the last would wait for budget its own batch holds.
            cut = payload_rounds([handling.event.is_claim_check for handling in batch])
            part, rest = batch[:cut], batch[cut:]
            for handling in part:
                try:
                    await handling.event.load()
                except Exception:  # raised again by .data, where dispatching stops
                    break
            await worker._dispatch(self._entity, part, _nothing, chain=session_id)
            failed = first_failure([handling.error for handling in part])
            done = part if failed is None else part[:failed]
            for handling in done:
                handling.decision = Decision(Settle.COMPLETE)
            await self._settle(done)
            if failed is None:
                batch = rest
                continue
            failing, batch = part[failed], part[failed + 1 :] + rest
            for handling in batch:
                handling.retry()
            failing.decision = decide(
                failing.error,
                delivery_count=failing.context.delivery_count,
                base_delay=worker.backoff_base,
                max_delay=worker.backoff_max,
            )
            if failing.decision.settle is Settle.ABANDON:
                # The session waits out the backoff; Service Bus then redelivers the message
                # before the ones held behind it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), failing.decision.delay)
                await self._settle([failing])
                return batch
            await self._settle([failing])  # dead-lettered: the held messages go on now
        return []

    async def _settle(self, ready: list[Handling]) -> None:
        for handling in ready:
            handling.event.release_payload()
        outcomes = await self._worker._settle_all(ready)
        self._entity.inflight -= len(ready)
        if Outcome.SETTLE_FAILED in outcomes:
            raise _SessionLost

    async def _give_back(self, held: list[Handling]) -> None:
        """Abandon the held messages (the worker stops): the session's next holder gets them."""
        for handling in held:
            handling.decision = Decision(Settle.ABANDON)
        with contextlib.suppress(_SessionLost):
            await self._settle(held)
        held.clear()

    async def _renew(self, session: Any) -> None:
        """Renew the session's lock at half its remaining time until cancelled or lost."""
        while True:
            await asyncio.sleep(renew_delay(session.locked_until, datetime.now(timezone.utc)))
            try:
                await session.renew_lock()
            except Exception as error:
                log.warning(
                    "lost the lock of session %s on %s: %s",
                    printable(session.session_id),  # the sender's: no control characters
                    self._entity.path,
                    error,
                )
                return


def payload_rounds(claim_checked: list[bool]) -> int:
    """How many of a session's next messages (``claim_checked``: whether each, in order, has
    a payload to fetch) to handle in one round: the first and the inline ones after it, up
    to the next claim-checked one. A round fetches one payload at most, and inline messages
    ahead of a payload are applied without waiting for it."""
    for index, fetches in enumerate(claim_checked[1:], start=1):
        if fetches:
            return index
    return len(claim_checked)


def _nothing(_: Handling) -> None:
    """A session settles its batch once all of it ran, in order: nothing is ready earlier."""
