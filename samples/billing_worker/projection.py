"""The billing projection: one invoice per ``OrderCreated``, exactly once, plus its outbox row;
the invoice voided by the order's ``OrderCancelled``.

The worker consumes the ``orders`` queue with sessions (one per order), so an order's
cancellation is applied after its creation, even with several workers: the projection can
void the invoice it knows exists, with no guessing about events that have not arrived yet.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from claimcheck_bus import MessageError
from claimcheck_bus.worker import EventContext, Projection, handles
from samples.billing_worker.invoicing import invoice_for, is_claim_checked, lag_ms
from samples.billing_worker.read_model import SCHEMA, TABLES
from samples.events import OrderCancelled, OrderCreated


class NotInvoicedError(MessageError):
    """A cancellation of an order billing has no invoice for: its ``OrderCreated`` was
    dead-lettered or never sent. Retrying cannot help, so the worker dead-letters it."""

    dead_letter_reason = "OrderNotInvoiced"


class BillingProjection(Projection):
    """Writes the ``invoices`` read model and the ``InvoiceIssued`` outbox from orders."""

    name = "billing"

    def __init__(self, placeholder: str = "?") -> None:
        self.placeholder = placeholder

    def setup(self, db: Any) -> None:
        """Create the read model's tables (idempotent)."""
        for statement in SCHEMA:
            db.execute(statement)

    def reset(self, db: Any) -> None:
        """Empty the read model (for a rebuild)."""
        for table in TABLES:
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names

    @handles(OrderCreated)
    def on_order_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
        """Invoice the order; the runner's inbox row commits in the same transaction."""
        committed = datetime.now(timezone.utc)
        invoice = invoice_for(event, issued_at=committed)
        p = self.placeholder
        db.execute(
            "INSERT INTO invoices (order_id, invoice_id, customer_id, currency, total,"
            " line_count, claim_checked, message_id, enqueued_at, committed_at, lag_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)".replace("?", p),
            (
                event.order_id,
                invoice.invoice_id,
                event.customer_id,
                invoice.currency,
                str(invoice.total),
                len(invoice.lines),
                int(is_claim_checked(dict(context.properties or {}))),
                context.message_id,
                context.enqueued_time.isoformat() if context.enqueued_time else None,
                committed.isoformat(),
                lag_ms(context.enqueued_time, committed),
            ),
        )
        db.execute(
            "INSERT INTO invoice_outbox (invoice_id, body) VALUES (?, ?)".replace("?", p),
            (invoice.invoice_id, invoice.model_dump_json(by_alias=True)),
        )

    @handles(OrderCancelled)
    def on_order_cancelled(self, event: OrderCancelled, db: Any, context: EventContext) -> None:
        """Void the order's invoice (once: the inbox drops a redelivery)."""
        p = self.placeholder
        found = db.execute(
            "SELECT 1 FROM invoices WHERE order_id = ?".replace("?", p), (event.order_id,)
        ).fetchone()
        if found is None:
            raise NotInvoicedError(
                f"order {event.order_id} has no invoice to void",
                message_id=context.message_id,
                entity=context.entity,
                hint="In a session its OrderCreated comes first: look for it in the "
                "dead-letter queue, fix and resubmit it, then resubmit this cancellation",
            )
        db.execute(
            "INSERT INTO invoice_voids (order_id, cancelled_at, reason, message_id, committed_at)"
            " VALUES (?, ?, ?, ?, ?)".replace("?", p),
            (
                event.order_id,
                event.cancelled_at.isoformat(),
                event.reason,
                context.message_id,
                datetime.now(timezone.utc).isoformat(),
            ),
        )
