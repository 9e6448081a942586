"""A bound on the payload bytes a receiver holds, whatever senders send.

Every download reserves, before its body is read, what its body can hold (what storage
declared, else ``max_download_size_mb``), and keeps that reservation until the event it was
for is settled. When the budget is spent, the next download waits for a settlement, up to
its deadline, then fails as :class:`~claimcheck_bus.errors.PayloadUnavailableError` (the
message is retried later). The blocking and ``asyncio`` forms differ only in how they wait,
so both are written here rather than generated.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

_MIB = 1024 * 1024


def default_budget_bytes(max_download_bytes: int) -> int:
    """Twice the largest payload: one can be handled while the next downloads."""
    return 2 * max_download_bytes


@dataclass(eq=False)
class PayloadHold:
    """What one received event holds of its reader's budget (given back once, when settled)."""

    amount: int = 0


class PayloadBudget:
    """The budget of a blocking reader (safe to share between threads)."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a payload budget must be above 0 bytes")
        self.total = total
        self._free = total
        self._changed = threading.Condition()

    @property
    def free(self) -> int:
        """Bytes not reserved now."""
        return self._free

    def take(self, hold: PayloadHold, amount: int, *, wait: float) -> bool:
        """Reserve ``amount`` bytes (at most the whole budget) into ``hold``; False when they
        were not free within ``wait`` seconds."""
        amount = min(amount, self.total)
        deadline = time.monotonic() + wait
        with self._changed:
            while self._free < amount:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            self._free -= amount
            hold.amount += amount
        return True

    def give_back(self, hold: PayloadHold) -> None:
        """Return what ``hold`` reserved (idempotent)."""
        with self._changed:
            self._free += hold.amount
            hold.amount = 0
            self._changed.notify_all()


class AsyncPayloadBudget:
    """The budget of an ``asyncio`` reader (one event loop)."""

    def __init__(self, total: int) -> None:
        if total <= 0:
            raise ValueError("a payload budget must be above 0 bytes")
        self.total = total
        self._free = total
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        """Bytes not reserved now."""
        return self._free

    async def take(self, hold: PayloadHold, amount: int, *, wait: float) -> bool:
        """Reserve ``amount`` bytes (at most the whole budget) into ``hold``; False when they
        were not free within ``wait`` seconds."""
        amount = min(amount, self.total)
        deadline = time.monotonic() + wait
        while self._free < amount:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        self._free -= amount
        hold.amount += amount
        return True

    def give_back(self, hold: PayloadHold) -> None:
        """Return what ``hold`` reserved (idempotent; call it on the budget's event loop)."""
        self._free += hold.amount
        hold.amount = 0
        self._changed.set()
