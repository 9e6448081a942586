"""Which session id an event is published with: session_id_for, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from claimcheck_bus import ConfigurationError
from claimcheck_bus.claim_check.publication import (
    BusCore,
    PublishOptions,
    session_id_for,
)
from claimcheck_bus.claim_check.wire import Route
from claimcheck_bus.settings import BusSettings


class Order(BaseModel):
    __session_key__ = "order_id"
    __event_type__ = "OrderPlaced"

    order_id: str | int | None


@dataclass
class Customer:
    __session_key__ = "customer"

    customer: int


@dataclass
class Plain:
    name: str


class Misdeclared(BaseModel):
    __session_key__ = "missing"

    order_id: str


def by_name(event: object) -> str | None:
    return getattr(event, "name", None)


def test_no_session_without_any_source() -> None:
    assert session_id_for(Plain("a")) is None
    assert session_id_for({"order_id": "1"}) is None
    assert session_id_for(b"bytes", None, lambda event: None) is None


def test_the_class_key_is_read_and_converted_with_str() -> None:
    assert session_id_for(Order(order_id="o-1")) == "o-1"
    assert session_id_for(Order(order_id=42)) == "42"
    assert session_id_for(Customer(7)) == "7"
    # An event whose key is None belongs to no session.
    assert session_id_for(Order(order_id=None)) is None


def test_explicit_beats_the_bus_key_which_beats_the_class_key() -> None:
    def key(event: object) -> str | None:
        return "from-bus"

    assert session_id_for(Order(order_id="o"), "explicit", key) == "explicit"
    assert session_id_for(Order(order_id="o"), None, key) == "from-bus"
    assert session_id_for(Order(order_id="o"), None, lambda event: None) == "o"
    assert session_id_for(Plain("n"), None, by_name) == "n"
    assert session_id_for(Plain("n"), "explicit", by_name) == "explicit"


@pytest.mark.parametrize(
    ("event", "explicit", "key", "match"),
    [
        (Order(order_id="x" * 129), None, None, r"OrderPlaced.*'order_id'.*129 characters"),
        (Order(order_id=""), None, None, r"OrderPlaced.*'order_id'.*empty"),
        (Plain("n"), "x" * 129, None, r"Plain.*session_id argument.*129"),
        (Plain("n"), "", None, r"Plain.*session_id argument.*empty"),
        (Plain("x" * 200), None, by_name, r"Plain.*session_key.*200 characters"),
        (Plain(""), None, by_name, r"Plain.*session_key.*empty"),
    ],
)
def test_invalid_ids_are_refused_never_truncated(
    event: object, explicit: str | None, key: object, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        session_id_for(event, explicit, key)  # type: ignore[arg-type]


def test_exactly_128_characters_is_accepted() -> None:
    assert session_id_for(Order(order_id="x" * 128)) == "x" * 128


def test_a_misdeclared_class_key_names_the_class_and_attribute() -> None:
    with pytest.raises(ConfigurationError, match=r"Misdeclared.__session_key__.*'missing'"):
        session_id_for(Misdeclared(order_id="o"))


def test_a_bus_key_returning_a_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="session_key returned int for Plain"):
        session_id_for(Plain("n"), None, lambda event: 5)  # type: ignore[arg-type,return-value]


def test_the_core_puts_the_session_id_on_the_message_and_the_receipt() -> None:
    settings = BusSettings.model_validate(
        {
            "service_bus": {"fully_qualified_namespace": "example.servicebus.windows.net"},
            "claim_check": {"enabled": False},
        }
    )
    core = BusCore(settings, has_store=False, sas_limit=None, session_key=None)
    publication = core.prepare(Order(order_id="o-9"), "orders", PublishOptions())
    assert publication.inline().session_id == "o-9"
    assert publication.claim_checked("https://a/b", sha256="0" * 64, size=1).session_id == "o-9"
    assert publication.receipt(Route.INLINE, 10).session_id == "o-9"
    plain = core.prepare(Plain("n"), "orders", PublishOptions())
    assert plain.inline().session_id is None
    assert plain.receipt(Route.INLINE, 10).session_id is None
