"""Serialization: models by alias, dataclasses, dicts, bytes and str; typed errors back."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from pydantic import BaseModel, Field

from claimcheck_bus.errors import EventDecodeError, InvalidEventError
from claimcheck_bus.events import (
    BINARY,
    JSON,
    TEXT,
    PascalCaseEvent,
    deserialize,
    event_type_name,
    serialize,
)


class Line(PascalCaseEvent):
    product_id: str
    quantity: int
    price: Decimal


class OrderCreated(PascalCaseEvent):
    order_id: str
    created_at: datetime
    products: list[Line]


class Aliased(BaseModel):
    name: str = Field(alias="Name")


@dataclasses.dataclass
class Shipped:
    order_id: str
    carrier: str


class Renamed(BaseModel):
    __event_type__ = "orders.renamed.v1"
    x: int


ORDER = OrderCreated(
    order_id="o-1",
    created_at=datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc),
    products=[Line(product_id="p-1", quantity=2, price=Decimal("9.99"))],
)


def test_models_are_written_by_alias_in_pascal_case() -> None:
    serialized = serialize(ORDER)
    assert serialized.content_type == JSON
    assert serialized.event_type == "OrderCreated"
    assert json.loads(serialized.body) == {
        "OrderId": "o-1",
        "CreatedAt": "2026-11-23T10:00:00Z",
        "Products": [{"ProductId": "p-1", "Quantity": 2, "Price": "9.99"}],
    }
    assert deserialize(serialized.body, OrderCreated) == ORDER


def test_explicit_aliases_and_snake_case_input_both_read() -> None:
    assert serialize(Aliased(Name="x")).body == b'{"Name":"x"}'
    assert (
        deserialize(
            b'{"order_id": "o", "created_at": "2026-01-01T00:00:00Z", "products": []}', OrderCreated
        ).order_id
        == "o"
    )


def test_dataclasses_dicts_and_lists() -> None:
    assert json.loads(serialize(Shipped("o-1", "UPS")).body) == {
        "order_id": "o-1",
        "carrier": "UPS",
    }
    assert serialize(Shipped("o", "c")).event_type == "Shipped"
    assert deserialize(b'{"order_id": "o", "carrier": "c"}', Shipped) == Shipped("o", "c")
    assert json.loads(serialize({"a": 1}, event_type="Thing").body) == {"a": 1}
    assert serialize([1, 2]).body == b"[1,2]"
    assert deserialize(b"[1,2]", list[int]) == [1, 2]


def test_bytes_and_str_pass_through() -> None:
    raw = serialize(b"\x00\x01", event_type="Blob")
    assert (raw.body, raw.content_type, raw.event_type) == (b"\x00\x01", BINARY, "Blob")
    text = serialize("héllo")
    assert (text.body, text.content_type) == ("héllo".encode(), TEXT)
    assert deserialize(b"\x00\x01", bytes) == b"\x00\x01"
    assert deserialize("héllo".encode(), str) == "héllo"


def test_event_type_names() -> None:
    assert event_type_name(ORDER) == "OrderCreated"
    assert event_type_name(ORDER, "Custom") == "Custom"
    assert event_type_name(Renamed(x=1)) == "orders.renamed.v1"


def test_unserializable_objects_are_refused_clearly() -> None:
    with pytest.raises(TypeError, match="cannot serialize object"):
        serialize(object())


def test_non_json_is_an_undecodable_event() -> None:
    with pytest.raises(EventDecodeError, match="not valid JSON") as caught:
        deserialize(b"<xml/>", OrderCreated, message_id="m-1", entity="orders", blob_path="c/b")
    assert "message m-1, on orders, blob c/b" in str(caught.value)
    assert caught.value.dead_letter_reason == "UndecodableEvent"


def test_json_of_the_wrong_shape_is_an_invalid_event() -> None:
    with pytest.raises(InvalidEventError) as caught:
        deserialize(b'{"OrderId": 5, "secret": "hunter2"}', OrderCreated, message_id="m-2")
    text = str(caught.value)
    assert "does not fit OrderCreated" in text
    assert "CreatedAt" in text or "created_at" in text
    assert "hunter2" not in text


def test_invalid_utf8_text() -> None:
    with pytest.raises(EventDecodeError, match="not UTF-8"):
        deserialize(b"\xff\xfe", str)
