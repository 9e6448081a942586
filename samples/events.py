"""The events both services share, in the .NET original's shape (PascalCase JSON)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, ClassVar

from pydantic import Field, PlainSerializer

from claimcheck_bus import PascalCaseEvent

#: Money travels as a JSON number: .NET's System.Text.Json reads ``decimal`` from numbers only by
#: default, and pydantic would write a string. Two decimals below 1e12 survive a float exactly.
Money = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class PaymentMethod(str, Enum):
    """How the customer pays (serialized by name, as the .NET original's enum converter does)."""

    CREDIT_CARD = "CreditCard"
    PAYPAL = "PayPal"
    BANK_TRANSFER = "BankTransfer"
    INVOICE = "Invoice"


class Product(PascalCaseEvent):
    """One order line."""

    product_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    quantity: int = Field(gt=0, le=10_000)
    price: Money = Field(ge=0, max_digits=12, decimal_places=2)
    description: str = Field(default="", max_length=4_000)


class Address(PascalCaseEvent):
    """A postal address."""

    name: str = Field(min_length=1, max_length=200)
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")


class Discount(PascalCaseEvent):
    """A discount applied to the whole order."""

    code: str = Field(min_length=1, max_length=50)
    amount: Money = Field(ge=0, max_digits=12, decimal_places=2)


class ShippingDetails(PascalCaseEvent):
    """How and where the order ships."""

    method: str = Field(default="Standard", max_length=50)
    cost: Money = Field(default=Decimal("0"), ge=0, max_digits=12, decimal_places=2)
    address: Address
    instructions: str = Field(default="", max_length=2_000)


class Attachment(PascalCaseEvent):
    """A document the customer attached (a purchase order scan, a gift note)."""

    file_name: str = Field(min_length=1, max_length=255)
    content_type: str = Field(default="application/octet-stream", max_length=100)
    content_base64: str = Field(max_length=2_000_000)


class OrderCreated(PascalCaseEvent):
    """Published by the order API for every accepted order (``OrderCreatedEvent`` in .NET).

    An order's events share its session (the order id): on the session-enabled ``orders``
    queue, billing receives an order's cancellation after its creation, never before.
    """

    __session_key__: ClassVar[str] = "order_id"

    order_id: str
    customer_id: str
    payment_method: PaymentMethod
    created_at: datetime
    currency: str = "EUR"
    products: list[Product]
    billing_address: Address
    shipping: ShippingDetails
    discounts: list[Discount] = Field(default_factory=list)
    attachments: list[Attachment] = Field(default_factory=list)


class OrderCancelled(PascalCaseEvent):
    """Published by the order API when an order is cancelled, in the order's session."""

    __session_key__: ClassVar[str] = "order_id"

    order_id: str
    customer_id: str
    cancelled_at: datetime
    reason: str = Field(default="", max_length=500)


class InvoiceLine(PascalCaseEvent):
    """One line of an invoice."""

    product_id: str
    name: str
    quantity: int
    unit_price: Money
    amount: Money


class InvoiceIssued(PascalCaseEvent):
    """Published by billing for every invoice: the whole invoice document, archived downstream."""

    invoice_id: str
    order_id: str
    customer_id: str
    issued_at: datetime
    currency: str
    lines: list[InvoiceLine]
    subtotal: Money
    discount_total: Money
    shipping_cost: Money
    total: Money
    billing_address: Address
    document: str
    """The rendered invoice (plain text), which makes invoices of large orders large too."""
