"""The order commands and the pure decisions that turn them into events."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_pascal

from claimcheck_bus import PascalCaseEvent
from samples.events import (
    Address,
    Attachment,
    Discount,
    OrderCancelled,
    OrderCreated,
    PaymentMethod,
    Product,
    ShippingDetails,
)

#: Above this an order is refused rather than published: 5,000 lines is a warehouse, not a cart.
MAX_LINES = 5_000
MAX_ATTACHMENTS = 10


class CreateOrder(PascalCaseEvent):
    """What a client posts to ``POST /orders`` (snake_case or PascalCase names)."""

    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True, extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64)
    payment_method: PaymentMethod
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    products: list[Product] = Field(min_length=1, max_length=MAX_LINES)
    billing_address: Address
    shipping: ShippingDetails
    discounts: list[Discount] = Field(default_factory=list, max_length=20)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @model_validator(mode="after")
    def _discounts_within_subtotal(self) -> CreateOrder:
        if discount_total(self.discounts) > subtotal(self.products):
            raise ValueError("the discounts add up to more than the order's products cost")
        return self


def subtotal(products: list[Product]) -> Decimal:
    """Sum of quantity times price over the lines."""
    return sum((p.price * p.quantity for p in products), Decimal("0"))


def discount_total(discounts: list[Discount]) -> Decimal:
    """Sum of the discounts."""
    return sum((d.amount for d in discounts), Decimal("0"))


def new_order_id() -> str:
    """A fresh order id (also the message id of its ``OrderCreated``, for duplicate detection)."""
    return str(uuid.uuid4())


def order_created(command: CreateOrder, order_id: str, now: datetime) -> OrderCreated:
    """The event recording that ``command`` was accepted as order ``order_id`` at ``now``."""
    return OrderCreated(
        order_id=order_id,
        customer_id=command.customer_id,
        payment_method=command.payment_method,
        created_at=now,
        currency=command.currency,
        products=command.products,
        billing_address=command.billing_address,
        shipping=command.shipping,
        discounts=command.discounts,
        attachments=command.attachments,
    )


class CancelOrder(PascalCaseEvent):
    """What a client may post to ``POST /orders/{order_id}/cancel`` (the body is optional)."""

    model_config = ConfigDict(alias_generator=to_pascal, populate_by_name=True, extra="forbid")

    reason: str = Field(default="", max_length=500)


def order_cancelled(
    order_id: str, customer_id: str, command: CancelOrder, now: datetime
) -> OrderCancelled:
    """The event recording that order ``order_id`` was cancelled at ``now``."""
    return OrderCancelled(
        order_id=order_id, customer_id=customer_id, cancelled_at=now, reason=command.reason
    )


def message_id_for(event: OrderCreated | OrderCancelled) -> str:
    """The message id of an order's event: the order id for its creation, with a suffix for
    its cancellation. Stable, so a republish after a crash is a duplicate Service Bus and the
    billing inbox recognise."""
    if isinstance(event, OrderCancelled):
        return f"{event.order_id}/cancelled"
    return event.order_id
