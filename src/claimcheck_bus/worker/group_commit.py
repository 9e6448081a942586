"""Group commit: a projection's events, gathered from the worker's message tasks into batches
that each cost one transaction and one hop into a handler thread.

While one batch is in its transaction the events that arrive wait, and form the next batch.
An idle worker so applies each event at once; a busy one spreads the commit (an fsync on
PostgreSQL) and the thread hop over every event that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from claimcheck_bus.worker.middleware import Middleware
from claimcheck_bus.worker.projection import Pending, ProjectionRunner

#: Runs a blocking function off the event loop (the worker's handler threads).
InThread = Callable[..., Awaitable[Any]]


class GroupCommit:
    """Applies one projection's events in batches of at most ``max_batch_size``, with up to
    ``concurrency`` batches in their transactions at once (SQLite has one writer; PostgreSQL
    overlaps one batch's round trips with another's)."""

    def __init__(
        self,
        runner: ProjectionRunner,
        in_thread: InThread,
        middleware: Sequence[Middleware],
        *,
        max_batch_size: int,
        concurrency: int = 1,
    ) -> None:
        self.runner = runner
        self._in_thread = in_thread
        self._middleware = tuple(middleware)
        self._max = max_batch_size
        self._waiting: list[tuple[Pending, asyncio.Future[bool | Exception]]] = []
        self._concurrency = concurrency
        self._draining: set[asyncio.Task[None]] = set()

    async def apply(self, pending: Pending) -> bool:
        """Apply one event with the next batch: ``True`` applied, ``False`` a duplicate; raises
        what its handler raised (its writes rolled back, the rest of the batch unharmed)."""
        future: asyncio.Future[bool | Exception] = asyncio.get_running_loop().create_future()
        self._waiting.append((pending, future))
        if len(self._draining) < self._concurrency:
            task = asyncio.create_task(self._drain())
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            try:
                outcomes: list[bool | Exception] = await self._in_thread(
                    self.runner.apply_batch, [pending for pending, _ in batch], self._middleware
                )
            except Exception as error:
                # The runner reports each event's own failure; this is the thread pool
                # failing: no event of the batch is known to be applied.
                outcomes = [error] * len(batch)
            except BaseException:
                # Cancelled with the loop: the events still waiting are given back.
                for _, future in batch + self._waiting:
                    future.cancel()
                self._waiting = []
                raise
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():  # its message task may have been cancelled
                    future.set_result(outcome)
