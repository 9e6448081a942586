"""Lock renewal for the messages being handled: the locks of one received batch are renewed at
half their remaining time, until each message is settled.

One timer per received batch rather than a task per message: the messages of a batch were
locked together, most settle long before a renewal is due, and a timer costs next to nothing
to set and cancel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from claimcheck_bus import AsyncReceivedEvent
from claimcheck_bus.worker.dispatch import renew_delay

log = logging.getLogger("claimcheck_bus.worker")


def _locked_until(event: AsyncReceivedEvent[Any]) -> datetime | None:
    return getattr(event.message, "locked_until_utc", None)


class LockRenewal:
    """Keeps the locks of a batch of messages; :meth:`release` each one once it is settled."""

    def __init__(self, events: Iterable[AsyncReceivedEvent[Any]]) -> None:
        self._held = {id(event): event for event in events}
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        if self._held:
            self._schedule(_locked_until(next(iter(self._held.values()))))

    def _schedule(self, locked_until: datetime | None) -> None:
        delay = renew_delay(locked_until, datetime.now(timezone.utc))
        self._timer = self._loop.call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        self._task = self._loop.create_task(self._renew_all())

    async def _renew_all(self) -> None:
        held = list(self._held.values())
        results = await asyncio.gather(*(e.renew_lock() for e in held), return_exceptions=True)
        self._task = None
        for event, result in zip(held, results, strict=True):
            if isinstance(result, Exception) and id(event) in self._held:  # not settled since
                log.warning("lost the lock of %s: %s", event.message_id, result)
                self.release(event)
        if self._held:
            expiries = [_locked_until(event) for event in self._held.values()]
            self._schedule(min((e for e in expiries if e is not None), default=None))

    def release(self, event: AsyncReceivedEvent[Any]) -> None:
        """Stop renewing ``event``'s lock (it is settled, or its handling ended)."""
        if self._held.pop(id(event), None) is not None and not self._held:
            self.cancel()

    def cancel(self) -> None:
        """Stop renewing every lock of the batch."""
        self._held = {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
