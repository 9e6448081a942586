"""The billing worker on the real emulator and Azurite: invoices exactly once, voided by a
cancellation in the order's session, the query API, and InvoiceIssued published through the
outbox and archived by the subscriber."""

import asyncio
import json
import sqlite3
from datetime import datetime, timezone

import httpx
import pytest
from samples.billing_worker.outbox import OutboxRelay
from samples.billing_worker.query_app import create_query_app
from samples.billing_worker.read_model import ReadModel
from samples.billing_worker.service import build_worker
from samples.order_api.commands import (
    CancelOrder,
    CreateOrder,
    message_id_for,
    order_cancelled,
    order_created,
)

from claimcheck_bus import AsyncClaimCheckBus, BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import Middleware, Outcome

from .factories import order_body


@pytest.fixture
def settings(bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch) -> BusSettings:
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__MAX_PAYLOAD_SIZE_KB", "64")
    return BusSettings()


class Outcomes(Middleware):
    """Records how each message left the worker."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []

    def after_handle(self, context, outcome, error, duration) -> None:
        self.seen.append((context.message_id, outcome))


def _event(order_id: str, customer: str, lines: int):
    command = CreateOrder.model_validate(order_body(customer, lines))
    return order_created(command, order_id, datetime.now(timezone.utc))


def _cancellation(order_id: str, customer: str, reason: str = "changed my mind"):
    return order_cancelled(
        order_id, customer, CancelOrder(reason=reason), datetime.now(timezone.utc)
    )


async def test_orders_become_invoices_once_and_invoices_are_archived(
    settings: BusSettings, make_orders_queue, fresh_topic, tmp_path
) -> None:
    # Without duplicate detection, so that a publisher's retry reaches the worker.
    orders_queue = make_orders_queue(duplicate_detection=False)
    topic, _ = fresh_topic
    database = str(tmp_path / "billing.db")
    archive = tmp_path / "archive"
    small, large = _event("o-small", "cust-9", 2), _event("o-large", "cust-9", 700)
    cancel = _cancellation("o-small", "cust-9")
    async with AsyncClaimCheckBus(settings) as bus:
        receipts = [
            await bus.publish(event, queue=orders_queue, message_id=message_id_for(event))
            # The cancellation right behind its order: both wait when the worker starts, and
            # the session hands them over in this order.
            for event in (small, large, cancel)
        ]
        assert [r.route.value for r in receipts] == ["inline", "claim-check", "inline"]
        assert [r.session_id for r in receipts] == ["o-small", "o-large", "o-small"]

        read_model = ReadModel(database)
        relay = OutboxRelay(read_model, bus, topic=topic, poll_seconds=0.2)
        worker = build_worker(settings, database, archive, relay, queue=orders_queue, topic=topic)
        outcomes = Outcomes()
        worker.use(outcomes)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(worker.serve(stop)), asyncio.create_task(relay.run(stop))]
        try:
            for order_id in ("o-small", "o-large"):
                await wait_for_async(
                    lambda o=order_id: asyncio.to_thread(
                        lambda: (archive / f"INV-{o}.json").exists()
                    ),
                    timeout=30,
                    what=f"archived invoice of {order_id}",
                )
            await wait_for_async(
                lambda: asyncio.to_thread(
                    lambda: (found := read_model.invoice("o-small")) and found.status == "void"
                ),
                timeout=30,
                what="the cancelled order's invoice to be void",
            )
            # A duplicate of the creation (a publisher's retry), behind the cancellation: the
            # inbox makes it a no-op, and the invoice stays void.
            await bus.publish(small, queue=orders_queue, message_id=small.order_id)
            await wait_for_async(
                lambda: asyncio.sleep(0, result=("o-small", Outcome.DUPLICATE) in outcomes.seen),
                timeout=30,
                what="the duplicate to be skipped",
            )
            app = create_query_app(read_model)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://billing"
            ) as client:
                invoice = (await client.get("/invoices/o-large")).json()
                voided = (await client.get("/invoices/o-small")).json()
                listed = (await client.get("/customers/cust-9/invoices")).json()
                missing = await client.get("/invoices/o-none")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            read_model.close()

    orders = sorted((m, o.value) for m, o in outcomes.seen if m.startswith("o-"))
    assert orders == [
        ("o-large", "completed"),
        ("o-small", "completed"),
        ("o-small", "duplicate"),
        ("o-small/cancelled", "completed"),
    ]
    assert invoice["invoice_id"] == "INV-o-large"
    assert invoice["claim_checked"] is True
    assert invoice["line_count"] == 700
    assert invoice["lag_ms"] >= 0
    assert (invoice["status"], invoice["amount_due"]) == ("issued", invoice["total"])
    assert (voided["status"], voided["amount_due"], voided["total"]) == ("void", "0.00", "44.45")
    assert voided["cancel_reason"] == "changed my mind"
    assert voided["cancelled_at"] == cancel.cancelled_at.isoformat()
    assert sorted(i["order_id"] for i in listed) == ["o-large", "o-small"]
    assert missing.status_code == 404

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM invoices").fetchone() == (2,)
        assert db.execute("SELECT order_id FROM invoice_voids").fetchall() == [("o-small",)]
        assert db.execute(
            "SELECT COUNT(*) FROM invoice_outbox WHERE published_at IS NOT NULL"
        ).fetchone() == (2,)
        small_row = db.execute(
            "SELECT claim_checked, total FROM invoices WHERE order_id = 'o-small'"
        ).fetchone()
    # 2 x 2 x 10.25 - 1.50 + 4.95
    assert small_row == (0, "44.45")
    archived = json.loads((archive / "INV-o-large.json").read_text())
    assert len(archived["Lines"]) == 700
    assert "Total EUR" in (archive / "INV-o-large.txt").read_text()


async def test_a_cancellation_of_an_order_never_invoiced_is_dead_lettered_and_its_session_goes_on(
    settings: BusSettings, orders_queue: str, fresh_topic, tmp_path
) -> None:
    topic, _ = fresh_topic
    database = str(tmp_path / "billing.db")
    # Out of order in one session (a sender bug, or a creation dead-lettered and resubmitted):
    # the cancellation cannot be applied, and must not hold up the order's later events.
    cancel, created = _cancellation("o-ghost", "cust-1"), _event("o-ghost", "cust-1", 1)
    async with AsyncClaimCheckBus(settings) as bus:
        for event in (cancel, created):
            await bus.publish(event, queue=orders_queue, message_id=message_id_for(event))
        worker = build_worker(
            settings, database, tmp_path / "archive", None, queue=orders_queue, topic=topic
        )
        outcomes = Outcomes()
        worker.use(outcomes)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.serve(stop))
        try:
            await wait_for_async(
                lambda: asyncio.sleep(0, result=len(outcomes.seen) >= 2),
                timeout=30,
                what="both events handled",
            )
        finally:
            stop.set()
            await task
        dead = await bus.receive(
            bytes, queue=orders_queue, dead_letter=True, max_messages=10, max_wait=5
        )
        for letter in dead:
            await letter.complete()

    assert outcomes.seen == [
        ("o-ghost/cancelled", Outcome.DEAD_LETTERED),
        ("o-ghost", Outcome.COMPLETED),
    ]
    assert [d.message_id for d in dead] == ["o-ghost/cancelled"]
    assert dead[0].message.dead_letter_reason == "OrderNotInvoiced"
    description = dead[0].message.dead_letter_error_description
    assert "order o-ghost has no invoice to void" in description
    assert "resubmit" in description
    read_model = ReadModel(database)
    try:
        found = read_model.invoice("o-ghost")
    finally:
        read_model.close()
    assert found is not None
    assert found.status == "issued"
