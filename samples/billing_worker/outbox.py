"""Publishes the ``InvoiceIssued`` outbox rows the billing projection commits."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.worker import EventContext, Middleware
from samples.billing_worker.read_model import ReadModel
from samples.events import InvoiceIssued

log = logging.getLogger("samples.billing_worker.outbox")
TOPIC = "invoices"


class OutboxRelay(Middleware):
    """Publishes unpublished outbox rows to the ``invoices`` topic, message id = invoice id.

    As worker middleware it is woken by every projection commit; it also polls, so rows left
    by a crash are published after a restart. A row is marked only after its publish
    succeeded: a crash in between publishes it again with the same message id.
    """

    def __init__(
        self,
        read_model: ReadModel,
        bus: AsyncClaimCheckBus,
        *,
        topic: str = TOPIC,
        poll_seconds: float = 1.0,
    ) -> None:
        self._read_model = read_model
        self._topic = topic
        self._bus = bus
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self.published = 0

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        """A projection committed (maybe an outbox row): publish without waiting for the poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Publish until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.publish_pending()
            except Exception:  # the bus or database is down: retry at the next poll
                log.warning("publishing InvoiceIssued failed; retrying", exc_info=True)
            self._wake.clear()
            waits = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())}
            _, pending = await asyncio.wait(
                waits, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()

    async def publish_pending(self) -> int:
        """Publish every unpublished row; returns how many."""
        count = 0
        while rows := await asyncio.to_thread(self._read_model.unpublished):
            for invoice_id, body in rows:
                event = InvoiceIssued.model_validate_json(body)
                receipt = await self._bus.publish(event, topic=self._topic, message_id=invoice_id)
                at = datetime.now(timezone.utc).isoformat()
                await asyncio.to_thread(self._read_model.mark_published, invoice_id, at)
                log.info(
                    "published InvoiceIssued %s (%d bytes, %s)",
                    invoice_id,
                    receipt.payload_bytes,
                    receipt.route.value,
                )
                count += 1
        self.published += count
        return count
