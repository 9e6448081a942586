"""The order commands and the events they become (pure), and the write store's outbox order."""

import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import ValidationError
from samples.events import OrderCancelled, OrderCreated
from samples.order_api.commands import (
    CancelOrder,
    CreateOrder,
    message_id_for,
    order_cancelled,
    order_created,
    subtotal,
)
from samples.order_api.store import OrderStore

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


def test_an_orders_events_name_the_order_as_their_session_key() -> None:
    # The bus reads __session_key__: both events of an order travel in its session.
    assert OrderCreated.__session_key__ == "order_id"
    assert OrderCancelled.__session_key__ == "order_id"
    assert "__session_key__" not in OrderCancelled.model_fields  # not part of the JSON


def test_order_cancelled_and_the_message_ids_of_an_orders_events() -> None:
    created = order_created(CreateOrder.model_validate(order_body("cust-7")), "order-1", NOW)
    cancelled = order_cancelled("order-1", "cust-7", CancelOrder(reason="too late"), NOW)
    data = json.loads(cancelled.model_dump_json(by_alias=True))
    assert data == {
        "OrderId": "order-1",
        "CustomerId": "cust-7",
        "CancelledAt": "2026-01-02T03:04:05Z",
        "Reason": "too late",
    }
    # Distinct (both pass the queue's duplicate detection) and stable (a republish does not).
    assert message_id_for(created) == "order-1"
    assert message_id_for(cancelled) == "order-1/cancelled"
    assert CancelOrder.model_validate({"Reason": "r"}).reason == "r"
    with pytest.raises(ValidationError):
        CancelOrder.model_validate({"Reason": "r" * 501})


def test_the_write_store_publishes_an_orders_creation_before_its_cancellation(tmp_path) -> None:
    store = OrderStore(tmp_path / "orders.db")
    try:
        first = order_created(CreateOrder.model_validate(order_body("a")), "o-1", NOW)
        later = order_created(
            CreateOrder.model_validate(order_body("b")), "o-2", NOW.replace(hour=4)
        )
        store.add(first)
        store.add(later)
        cancel = order_cancelled("o-1", "a", CancelOrder(reason="first"), NOW)
        assert store.add_cancellation(cancel) == cancel
        # A second cancellation gets the first back: it is the one that is published.
        again = order_cancelled("o-1", "a", CancelOrder(reason="second"), NOW.replace(hour=5))
        assert store.add_cancellation(again) == cancel

        pending = store.unpublished()
        assert [(type(e).__name__, e.order_id) for e in pending] == [
            ("OrderCreated", "o-1"),
            ("OrderCancelled", "o-1"),
            ("OrderCreated", "o-2"),
        ]
        assert [type(e).__name__ for e in store.unpublished("o-1")] == [
            "OrderCreated",
            "OrderCancelled",
        ]
        store.mark_published(first, at=NOW, route="inline", payload_bytes=10)
        assert [type(e).__name__ for e in store.unpublished("o-1")] == ["OrderCancelled"]
        store.mark_published(cancel, at=NOW, route="inline", payload_bytes=5)
        assert store.unpublished("o-1") == []
        found = store.get("o-1")
        assert found is not None
        assert found.cancelled_at == NOW.isoformat()
        assert found.cancellation_published_at == NOW.isoformat()
        assert found.route == "inline"
        assert found.payload_bytes == 10
        assert store.get("o-2").cancelled_at is None
    finally:
        store.close()
