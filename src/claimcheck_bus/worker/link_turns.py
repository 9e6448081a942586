"""Turns on one receive link: settlements share it with each other, a receive has it alone.

The SDK reads a connection's frames one reader at a time. A receive waiting for messages holds
that reader, so a settlement's confirmation sits unread until the receive gives up (0.2 s or
the receive's own wait): settlements crawl while a receive is in flight. Taking turns keeps
both fast. A receive waits for the settlements already started or waiting (at most the
messages in flight); settlements wait for the receive in progress.

Plain counters and events: this runs a few times per message, so no locks or conditions.
"""

from __future__ import annotations

import asyncio


class LinkTurns:
    """Who has a link: one receive, or any number of settlements."""

    def __init__(self) -> None:
        self._receiving = False
        self._settling = 0
        """Settlements running or waiting for their turn."""
        self._receive_over = asyncio.Event()
        self._receive_over.set()
        self._settlements_over = asyncio.Event()
        self._settlements_over.set()

    async def begin_settling(self) -> None:
        """Wait for a turn to settle; pair with :meth:`end_settling`."""
        self._settling += 1
        self._settlements_over.clear()
        try:
            while self._receiving:
                await self._receive_over.wait()
        except BaseException:
            self.end_settling()
            raise

    def end_settling(self) -> None:
        """A settlement finished (or gave up its turn)."""
        self._settling -= 1
        if not self._settling:
            self._settlements_over.set()

    async def begin_receiving(self) -> None:
        """Wait until the link is free, then hold it; pair with :meth:`end_receiving`."""
        while self._settling or self._receiving:
            await (self._settlements_over if self._settling else self._receive_over).wait()
        self._receiving = True
        self._receive_over.clear()

    def end_receiving(self) -> None:
        """The receive returned: waiting settlements go."""
        self._receiving = False
        self._receive_over.set()
