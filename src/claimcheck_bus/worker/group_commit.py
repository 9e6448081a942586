"""Group commit: a projection's events, gathered from the worker's received batches into
batches that each cost one transaction and one hop into a handler thread.

While one batch is in its transaction the events that arrive wait, and form the next batch.
An idle worker so applies each event at once; a busy one spreads the commit (an fsync on
PostgreSQL) and the thread hop over every event that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from claimcheck_bus.worker.middleware import Middleware, overriding
from claimcheck_bus.worker.projection import Pending, ProjectionRunner

#: Runs a blocking function off the event loop (the worker's handler threads).
InThread = Callable[..., Awaitable[Any]]


class _Group:
    """The events one caller hands in together, and their outcomes as batches apply them."""

    __slots__ = ("future", "outcomes", "together", "unresolved")

    def __init__(self, size: int, together: bool = False) -> None:
        self.together = together
        self.future: asyncio.Future[list[bool | Exception]] = (
            asyncio.get_running_loop().create_future()
        )
        self.outcomes: list[bool | Exception] = [False] * size
        self.unresolved = size

    def resolve(self, index: int, outcome: bool | Exception) -> None:
        self.outcomes[index] = outcome
        self.unresolved -= 1
        if not self.unresolved and not self.future.done():  # its caller may have gone
            self.future.set_result(self.outcomes)


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
        self._middleware = tuple(overriding(middleware, "before_commit"))
        self._max = max_batch_size
        self._waiting: list[tuple[Pending, _Group, int]] = []
        self._concurrency = concurrency
        self._draining: set[asyncio.Task[None]] = set()

    async def apply(
        self, events: Sequence[Pending], *, together: bool = False
    ) -> list[bool | Exception]:
        """Apply ``events`` with the next batches; each one's outcome, in order: ``True``
        applied, ``False`` a duplicate, or what its handler raised (its writes rolled back,
        the rest of the batch unharmed).

        ``together`` keeps them in one transaction (unless they outnumber a batch): a
        session's events, which must not commit in two transactions running side by side.
        """
        if not events:
            return []
        group = _Group(len(events), together)
        self._waiting.extend((pending, group, index) for index, pending in enumerate(events))
        # Drains already running pick these up when their transaction ends; new ones (a
        # batch's worth each) start at once, as far as the store runs transactions side by side.
        wanted = min(self._concurrency - len(self._draining), math.ceil(len(events) / self._max))
        for _ in range(wanted):
            task = asyncio.create_task(self._drain())
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        return await group.future

    async def _drain(self) -> None:
        while self._waiting:
            cut = batch_cut([g if g.together else None for _, g, _ in self._waiting], self._max)
            batch, self._waiting = self._waiting[:cut], self._waiting[cut:]
            try:
                outcomes: list[bool | Exception] = await self._in_thread(
                    self.runner.apply_batch, [pending for pending, _, _ in batch], self._middleware
                )
            except Exception as error:
                # The runner reports each event's own failure; this is the thread pool
                # failing: no event of the batch is known to be applied.
                outcomes = [error] * len(batch)
            except BaseException:
                # Cancelled with the loop: the events still waiting are given back.
                for _, group, _ in batch + self._waiting:
                    group.future.cancel()
                self._waiting = []
                raise
            for (_, group, index), outcome in zip(batch, outcomes, strict=True):
                group.resolve(index, outcome)


def batch_cut(units: Sequence[object | None], most: int) -> int:
    """How many waiting events the next batch takes: at most ``most``, without splitting the
    events of one unit (given per event, ``None`` for an event on its own) unless that unit
    alone is larger than ``most``. A unit's events wait next to each other."""
    if len(units) <= most:
        return len(units)
    split = units[most]
    if split is None or units[most - 1] is not split:
        return most
    start = most - 1
    while start > 0 and units[start - 1] is split:
        start -= 1
    if start > 0:
        return start  # the unit goes whole into the next batch
    end = most
    while end < len(units) and units[end] is split:
        end += 1
    return end  # larger than a batch: one larger transaction keeps its order
