"""The billing projection: one invoice per ``OrderCreated``, exactly once, plus its outbox row."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from claimcheck_bus.worker import EventContext, Projection, handles
from samples.billing_worker.invoicing import invoice_for, is_claim_checked, lag_ms
from samples.billing_worker.read_model import SCHEMA, TABLES
from samples.events import OrderCreated


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
