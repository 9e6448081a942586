"""Billing's decisions, without I/O: the invoice of an order, its status, its lag, the rendered
document."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from samples.events import InvoiceIssued, InvoiceLine, OrderCreated

CENT = Decimal("0.01")


def invoice_id_for(order_id: str) -> str:
    """One invoice per order, so the id derives from the order's (a redelivery cannot fork it)."""
    return f"INV-{order_id}"


def invoice_for(order: OrderCreated, issued_at: datetime) -> InvoiceIssued:
    """The invoice of ``order``: lines, subtotal, discounts, shipping, total (never below 0)."""
    lines = [
        InvoiceLine(
            product_id=p.product_id,
            name=p.name,
            quantity=p.quantity,
            unit_price=p.price,
            amount=_money(p.price * p.quantity),
        )
        for p in order.products
    ]
    subtotal = _money(sum((line.amount for line in lines), Decimal("0")))
    discounts = _money(sum((d.amount for d in order.discounts), Decimal("0")))
    shipping = _money(order.shipping.cost)
    total = max(Decimal("0.00"), _money(subtotal - discounts + shipping))
    invoice = InvoiceIssued(
        invoice_id=invoice_id_for(order.order_id),
        order_id=order.order_id,
        customer_id=order.customer_id,
        issued_at=issued_at,
        currency=order.currency,
        lines=lines,
        subtotal=subtotal,
        discount_total=discounts,
        shipping_cost=shipping,
        total=total,
        billing_address=order.billing_address,
        document="",
    )
    return invoice.model_copy(update={"document": render(invoice)})


def invoice_status(total: str, voided: bool) -> tuple[str, str]:
    """An invoice's status and amount due: ``issued`` and its total, or ``void`` and 0 once
    its order was cancelled."""
    return ("void", "0.00") if voided else ("issued", total)


def render(invoice: InvoiceIssued) -> str:
    """The invoice as a printable text document."""
    a = invoice.billing_address
    out = [
        f"INVOICE {invoice.invoice_id}",
        f"Order {invoice.order_id}  Customer {invoice.customer_id}",
        f"Issued {invoice.issued_at.isoformat()}",
        "",
        a.name,
        a.street,
        f"{a.postal_code} {a.city}",
        a.country,
        "",
        f"{'Product':<20} {'Description':<40} {'Qty':>6} {'Unit':>12} {'Amount':>14}",
    ]
    out += [
        f"{line.product_id[:20]:<20} {line.name[:40]:<40} {line.quantity:>6} "
        f"{line.unit_price:>12} {line.amount:>14}"
        for line in invoice.lines
    ]
    out += [
        "",
        f"{'Subtotal':>80} {invoice.subtotal:>14}",
        f"{'Discounts':>80} {-invoice.discount_total:>14}",
        f"{'Shipping':>80} {invoice.shipping_cost:>14}",
        f"{'Total ' + invoice.currency:>80} {invoice.total:>14}",
    ]
    return "\n".join(out)


def lag_ms(enqueued: datetime | None, committed: datetime) -> float | None:
    """Milliseconds from the message's enqueue to the invoice's commit (None if unknown)."""
    if enqueued is None:
        return None
    return max(0.0, (committed - enqueued).total_seconds() * 1000.0)


def is_claim_checked(properties: dict[Any, Any]) -> bool:
    """Whether a message's application properties mark it as claim-checked (wire rules)."""
    for key, value in properties.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name == "IsClaimCheck":
            if isinstance(value, bytes):
                value = value.decode()
            return value is True or value in ("true", "True")
    return False


def _money(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)
