"""The order API against the real emulator and Azurite: validate, store, publish, answer 202;
an order's events in its own session of the demo's session-enabled queue."""

import json

import httpx
import pytest
from samples.events import OrderCancelled, OrderCreated
from samples.order_api import create_app

from claimcheck_bus import BusSettings, ClaimCheckBus

from .factories import order_body
from .served import served


@pytest.fixture
def settings(bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch) -> BusSettings:
    # The samples' threshold (claimcheck.toml), on this test's own queue and container.
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB", "64")
    return BusSettings()


@pytest.fixture
def client(settings: BusSettings, orders_queue: str, tmp_path):
    app = create_app(tmp_path / "orders.db", settings=settings, queue=orders_queue)
    with served(app) as client:
        yield client


def session_of(settings: BusSettings, queue: str, order_id: str) -> list[tuple[str, bytes]]:
    """The (event type, payload) of every message in the order's session, in order; completed."""
    received = []
    with ClaimCheckBus(settings) as bus:
        with bus.accept_session(queue=queue, session_id=order_id, max_wait=5) as session:
            while events := session.receive(bytes, max_messages=10, max_wait=1):
                for event in events:
                    assert event.session_id == order_id
                    assert event.event_type is not None
                    received.append((event.event_type, event.data))
                    event.complete()
    return received


def test_orders_are_published_inline_or_claim_checked_by_size(
    client: httpx.Client, settings: BusSettings, orders_queue: str
) -> None:
    small = client.post("/orders", json=order_body("cust-small", 2))
    large = client.post("/orders", json=order_body("cust-large", 700))
    attached = client.post("/orders", json=order_body("cust-att", 1, attachment_bytes=80_000))
    assert [r.status_code for r in (small, large, attached)] == [202, 202, 202]
    assert small.json()["route"] == "inline"
    assert large.json()["route"] == "claim-check"
    assert attached.json()["route"] == "claim-check"
    assert large.json()["payload_bytes"] > 64 * 1024 > small.json()["payload_bytes"]

    received = {}
    for answer in (small, large, attached):
        order_id = answer.json()["order_id"]
        assert answer.json()["message_id"] == order_id
        assert answer.json()["session_id"] == order_id  # OrderCreated.__session_key__
        [(event_type, payload)] = session_of(settings, orders_queue, order_id)
        assert json.loads(payload)["OrderId"] == order_id  # PascalCase, as .NET reads it
        assert event_type == "OrderCreated"
        assert OrderCreated.model_validate_json(payload).order_id == order_id
        received[order_id] = payload
    assert len(json.loads(received[large.json()["order_id"]])["Products"]) == 700

    status = client.get(f"/orders/{large.json()['order_id']}").json()
    assert status["published"] is True
    assert status["route"] == "claim-check"
    assert status["status"] == "created"


def test_a_cancellation_follows_its_order_in_the_orders_session(
    client: httpx.Client, settings: BusSettings, orders_queue: str
) -> None:
    order_id = client.post("/orders", json=order_body("cust-cancel", 700)).json()["order_id"]
    other = client.post("/orders", json=order_body("cust-other", 1)).json()["order_id"]
    cancelled = client.post(f"/orders/{order_id}/cancel", json={"Reason": "ordered twice"})
    assert cancelled.status_code == 202, cancelled.text
    accepted = cancelled.json()
    assert accepted["order_id"] == order_id
    assert accepted["message_id"] == f"{order_id}/cancelled"
    assert accepted["session_id"] == order_id  # OrderCancelled.__session_key__
    assert accepted["route"] == "inline"
    again = client.post(f"/orders/{order_id}/cancel")  # no body: no reason
    assert again.status_code == 409
    assert "already cancelled" in again.json()["detail"]
    assert client.post("/orders/nope/cancel").status_code == 404
    status = client.get(f"/orders/{order_id}").json()
    assert status["status"] == "cancelled"
    assert status["cancellation_published"] is True

    # The claim-checked creation, then the inline cancellation, alone in the order's session.
    [(first, created), (second, cancellation)] = session_of(settings, orders_queue, order_id)
    assert (first, second) == ("OrderCreated", "OrderCancelled")
    assert OrderCreated.model_validate_json(created).order_id == order_id
    event = OrderCancelled.model_validate_json(cancellation)
    assert (event.order_id, event.customer_id, event.reason) == (
        order_id,
        "cust-cancel",
        "ordered twice",
    )
    assert [t for t, _ in session_of(settings, orders_queue, other)] == ["OrderCreated"]


def test_invalid_order_gets_422_naming_the_problems(client: httpx.Client) -> None:
    body = order_body()
    body["Products"][0]["Quantity"] = 0
    del body["BillingAddress"]
    answer = client.post("/orders", json=body)
    assert answer.status_code == 422
    problems = {(tuple(e["loc"]), e["msg"]) for e in answer.json()["detail"]}
    assert (("body", "Products", 0, "Quantity"), "Input should be greater than 0") in problems
    assert (("body", "BillingAddress"), "Field required") in problems


def test_unknown_order_is_404(client: httpx.Client) -> None:
    assert client.get("/orders/nope").status_code == 404


def test_orders_stored_but_never_published_are_published_at_start(
    settings: BusSettings, orders_queue: str, tmp_path
) -> None:
    from datetime import datetime, timezone

    from samples.order_api.commands import (
        CancelOrder,
        CreateOrder,
        order_cancelled,
        order_created,
    )
    from samples.order_api.store import OrderStore

    # A crash between storing and publishing left this order and its cancellation unpublished.
    now = datetime.now(timezone.utc)
    store = OrderStore(tmp_path / "orders.db")
    store.add(order_created(CreateOrder.model_validate(order_body("cust-crash")), "o-crash", now))
    store.add_cancellation(order_cancelled("o-crash", "cust-crash", CancelOrder(), now))
    store.close()

    app = create_app(tmp_path / "orders.db", settings=settings, queue=orders_queue)
    with served(app) as client:
        status = client.get("/orders/o-crash").json()
        assert status["published"] is True
        assert status["cancellation_published"] is True
    received = session_of(settings, orders_queue, "o-crash")
    assert [event_type for event_type, _ in received] == ["OrderCreated", "OrderCancelled"]
    assert OrderCreated.model_validate_json(received[0][1]).customer_id == "cust-crash"
