"""The order API against the real emulator and Azurite: validate, store, publish, answer 202."""

import json

import httpx
import pytest
from samples.events import OrderCreated
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
def client(settings: BusSettings, fresh_queue: str, tmp_path):
    app = create_app(tmp_path / "orders.db", settings=settings, queue=fresh_queue)
    with served(app) as client:
        yield client


def test_orders_are_published_inline_or_claim_checked_by_size(
    client: httpx.Client, settings: BusSettings, fresh_queue: str
) -> None:
    small = client.post("/orders", json=order_body("cust-small", 2))
    large = client.post("/orders", json=order_body("cust-large", 700))
    attached = client.post("/orders", json=order_body("cust-att", 1, attachment_bytes=80_000))
    assert [r.status_code for r in (small, large, attached)] == [202, 202, 202]
    assert small.json()["route"] == "inline"
    assert large.json()["route"] == "claim-check"
    assert attached.json()["route"] == "claim-check"
    assert large.json()["payload_bytes"] > 64 * 1024 > small.json()["payload_bytes"]

    with ClaimCheckBus(settings) as bus:
        received = {}
        while len(received) < 3:
            events = bus.receive(bytes, queue=fresh_queue, max_messages=10, max_wait=5)
            assert events, "the published orders did not all arrive"
            for event in events:
                received[event.message_id] = (event.event_type, event.data)
                event.complete()
    for answer in (small, large, attached):
        order_id = answer.json()["order_id"]
        event_type, payload = received[order_id]  # the message id is the order id
        assert json.loads(payload)["OrderId"] == order_id  # PascalCase, as .NET reads it
        assert event_type == "OrderCreated"
        assert OrderCreated.model_validate_json(payload).order_id == order_id
    assert len(json.loads(received[large.json()["order_id"]][1])["Products"]) == 700

    status = client.get(f"/orders/{large.json()['order_id']}").json()
    assert status["published"] is True
    assert status["route"] == "claim-check"


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
    settings: BusSettings, fresh_queue: str, tmp_path
) -> None:
    from datetime import datetime, timezone

    from samples.order_api.commands import CreateOrder, order_created
    from samples.order_api.store import OrderStore

    # A crash between storing and publishing left this order unpublished.
    store = OrderStore(tmp_path / "orders.db")
    event = order_created(
        CreateOrder.model_validate(order_body("cust-crash")), "o-crash", datetime.now(timezone.utc)
    )
    store.add(event)
    store.close()

    app = create_app(tmp_path / "orders.db", settings=settings, queue=fresh_queue)
    with served(app) as client:
        assert client.get("/orders/o-crash").json()["published"] is True
    with ClaimCheckBus(settings) as bus:
        received = bus.receive(OrderCreated, queue=fresh_queue, max_wait=5)
        assert [e.message_id for e in received] == ["o-crash"]
        assert received[0].data.customer_id == "cust-crash"
        received[0].complete()
