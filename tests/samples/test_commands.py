"""The create-order command and the OrderCreated it becomes (pure)."""

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError
from samples.events import OrderCreated
from samples.order_api.commands import CreateOrder, order_created, subtotal

from .factories import order_body

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_order_created_carries_the_command_and_the_assigned_id() -> None:
    command = CreateOrder.model_validate(order_body("cust-7", 3))
    event = order_created(command, "order-1", NOW)
    assert event.order_id == "order-1"
    assert event.customer_id == "cust-7"
    assert event.created_at == NOW
    assert [p.product_id for p in event.products] == ["SKU-0", "SKU-1", "SKU-2"]
    assert subtotal(event.products) == Decimal("61.50")


def test_order_created_json_uses_the_dotnet_names_and_numbers_for_money() -> None:
    event = order_created(CreateOrder.model_validate(order_body()), "order-1", NOW)
    data = json.loads(event.model_dump_json(by_alias=True))
    assert {"OrderId", "CustomerId", "PaymentMethod", "CreatedAt", "Products"} <= set(data)
    assert data["Products"][0] == {
        "ProductId": "SKU-0",
        "Name": "Product 0",
        "Quantity": 2,
        "Price": 10.25,
        "Description": "x" * 100,
    }
    assert data["PaymentMethod"] == "PayPal"
    assert data["Shipping"]["Address"]["PostalCode"] == "3511"
    # And back: what the billing worker reads.
    assert OrderCreated.model_validate_json(event.model_dump_json(by_alias=True)) == event


def test_snake_case_input_is_accepted_too() -> None:
    body = order_body()
    body["customer_id"] = body.pop("CustomerId")
    assert CreateOrder.model_validate(body).customer_id == "cust-1"


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda b: b.update(Products=[]), "Products"),
        (lambda b: b["Products"][0].update(Quantity=0), "Quantity"),
        (lambda b: b["Products"][0].update(Price=-1), "Price"),
        (lambda b: b.pop("BillingAddress"), "BillingAddress"),
        (lambda b: b.update(PaymentMethod="Gold"), "PaymentMethod"),
        (lambda b: b.update(Currency="euro"), "Currency"),
        (lambda b: b.update(Surprise=1), "Surprise"),
        (lambda b: b.update(Discounts=[{"Code": "BIG", "Amount": 1000}]), "discounts"),
    ],
)
def test_invalid_commands_are_refused_naming_the_field(change, where) -> None:
    body = order_body()
    change(body)
    with pytest.raises(ValidationError) as error:
        CreateOrder.model_validate(body)
    assert where in str(error.value)
