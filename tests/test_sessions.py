"""Service Bus sessions through ClaimCheckBus, over real sockets: the real azure-servicebus SDK
against the in-process emulator, payloads in Azurite, in the patterns of Microsoft's session
samples (session_send_receive, next-available sessions)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from pydantic import BaseModel
from tests.session_fixtures import session_queue, session_topic

from claimcheck_bus import (
    BusSettings,
    ClaimCheckBus,
    NoSessionAvailableError,
    Route,
    SessionLockedError,
)
from claimcheck_bus.testing.polling import wait_for

__all__ = ["session_queue", "session_topic"]

KB = 1024


class OrderLine(BaseModel):
    __session_key__ = "order_id"

    order_id: str
    line: int
    notes: str = ""


@dataclass
class Untagged:
    order_id: str
    line: int


@pytest.fixture
def bus(bus_settings: BusSettings) -> Iterator[ClaimCheckBus]:
    with ClaimCheckBus(bus_settings) as bus:
        yield bus


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _receive_all(session: object, as_type: type, count: int) -> list:
    got: list = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        got += session.receive(as_type, max_messages=count - len(got), max_wait=1)  # type: ignore[attr-defined]
    assert len(got) == count, f"expected {count} events, got {len(got)}"
    return got


def test_session_send_receive_with_state(bus: ClaimCheckBus, session_queue: str) -> None:
    order = _unique("order")
    receipts = [bus.publish(OrderLine(order_id=order, line=0), queue=session_queue)]
    receipts += bus.publish_batch(
        [OrderLine(order_id=order, line=i) for i in range(1, 5)], queue=session_queue
    )
    assert [r.session_id for r in receipts] == [order] * 5

    with bus.accept_session(queue=session_queue, session_id=order) as session:
        assert session.session_id == order
        assert session.locked_until is not None
        assert session.locked_until > datetime.now(timezone.utc)
        assert session.get_state() is None
        session.set_state("START")
        assert session.get_state() == b"START"
        events = _receive_all(session, OrderLine, 5)
        assert [e.data.line for e in events] == [0, 1, 2, 3, 4]
        assert {e.session_id for e in events} == {order}
        for event in events:
            event.complete()
        session.set_state(b"\x00done")
    # The state outlives the receiver.
    with bus.accept_session(queue=session_queue, session_id=order) as again:
        assert again.get_state() == b"\x00done"
        assert again.receive(OrderLine, max_wait=0.5) == []
        again.set_state(None)
        assert again.get_state() is None


def test_next_available_sessions_are_distinct_and_fifo(
    bus: ClaimCheckBus, session_queue: str
) -> None:
    first, second = _unique("a"), _unique("b")
    for line in range(4):
        for order in (first, second):
            bus.publish(OrderLine(order_id=order, line=line), queue=session_queue)

    with (
        bus.accept_session(queue=session_queue) as one,
        bus.accept_session(queue=session_queue) as two,
    ):
        assert {one.session_id, two.session_id} == {first, second}
        for session in (one, two):
            events = _receive_all(session, OrderLine, 4)
            assert [e.data.order_id for e in events] == [session.session_id] * 4
            assert [e.data.line for e in events] == [0, 1, 2, 3]
            for event in events:
                event.complete()


def test_no_session_available_after_max_wait(bus: ClaimCheckBus, session_queue: str) -> None:
    with pytest.raises(NoSessionAvailableError, match=session_queue) as raised:
        with bus.accept_session(queue=session_queue, max_wait=1):
            pytest.fail("an empty entity has no session to accept")
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.entity == session_queue


def test_a_named_session_held_by_another_receiver_is_refused(
    bus: ClaimCheckBus, bus_settings: BusSettings, session_queue: str
) -> None:
    order = _unique("held")
    bus.publish(OrderLine(order_id=order, line=0), queue=session_queue)
    with (
        ClaimCheckBus(bus_settings) as other,
        bus.accept_session(queue=session_queue, session_id=order),
    ):
        with pytest.raises(SessionLockedError, match=order) as raised:
            with other.accept_session(queue=session_queue, session_id=order):
                pytest.fail("a held session must not be accepted twice")
        assert raised.value.session_id == order


def test_a_large_event_in_a_session_is_claim_checked(
    bus: ClaimCheckBus, session_queue: str
) -> None:
    order = _unique("large")
    big = OrderLine(order_id=order, line=1, notes="n" * (300 * KB))
    receipts = [
        bus.publish(OrderLine(order_id=order, line=0), queue=session_queue),
        bus.publish(big, queue=session_queue),
    ]
    assert [r.route for r in receipts] == [Route.INLINE, Route.CLAIM_CHECK]
    assert receipts[1].session_id == order
    with bus.accept_session(queue=session_queue) as session:
        assert session.session_id == order
        small, large = _receive_all(session, OrderLine, 2)
        assert large.is_claim_check
        assert large.session_id == order
        assert large.message.session_id == order
        assert large.data == big
        small.complete()
        large.complete()


def test_session_id_precedence(bus_settings: BusSettings, session_queue: str) -> None:
    order = _unique("o")

    def keyed(event: object) -> str | None:
        return f"key-{event.line}" if isinstance(event, OrderLine) and event.line else None

    with ClaimCheckBus(bus_settings, session_key=keyed) as bus:
        receipts = [
            bus.publish(OrderLine(order_id=order, line=0), queue=session_queue),  # class
            bus.publish(OrderLine(order_id=order, line=1), queue=session_queue),  # bus key
            bus.publish(
                OrderLine(order_id=order, line=2), queue=session_queue, session_id="explicit"
            ),
        ]
        assert [r.session_id for r in receipts] == [order, "key-1", "explicit"]
        [batched] = bus.publish_batch([Untagged(order, 3)], queue=session_queue, session_id="all")
        assert batched.session_id == "all"
        for session_id, line in ((order, 0), ("key-1", 1), ("explicit", 2)):
            with bus.accept_session(queue=session_queue, session_id=session_id) as session:
                [event] = _receive_all(session, OrderLine, 1)
                assert event.data.line == line
                assert event.session_id == session_id
                event.complete()


def test_renew_lock_extends_the_session_lock(bus: ClaimCheckBus, session_queue: str) -> None:
    order = _unique("renew")
    bus.publish(OrderLine(order_id=order, line=0), queue=session_queue)
    with bus.accept_session(queue=session_queue, session_id=order) as session:
        before = session.locked_until
        assert before is not None
        renewed: list[datetime] = []

        def later() -> bool:
            renewed.append(session.renew_lock())
            return renewed[-1] > before

        wait_for(later, timeout=10, what="a renewed session lock to move forward")
        assert session.locked_until == renewed[-1]
        [event] = _receive_all(session, OrderLine, 1)
        with pytest.raises(TypeError, match=r"session\.renew_lock"):
            event.renew_lock()
        event.complete()


def test_closing_releases_the_session(
    bus: ClaimCheckBus, bus_settings: BusSettings, session_queue: str
) -> None:
    order = _unique("release")
    bus.publish(OrderLine(order_id=order, line=0), queue=session_queue)
    session = bus.accept_session(queue=session_queue, session_id=order)
    with session:
        [unsettled] = _receive_all(session, OrderLine, 1)
        assert unsettled.delivery_count == 0
    with pytest.raises(RuntimeError, match="closed"):
        session.receive(OrderLine)
    with ClaimCheckBus(bus_settings) as other:
        with other.accept_session(queue=session_queue, session_id=order) as again:
            [redelivered] = _receive_all(again, OrderLine, 1)
            assert redelivered.message_id == unsettled.message_id
            # Not settled the first time: it comes back to the session's next receiver.
            assert redelivered.delivery_count is not None
            assert redelivered.delivery_count >= 1
            # Leave it unsettled: closing the bus must release the session too.
            opened = other.accept_session(queue=session_queue, session_id=order)
            with pytest.raises(SessionLockedError):
                opened.__enter__()
    with bus.accept_session(queue=session_queue, session_id=order) as third:
        [event] = _receive_all(third, OrderLine, 1)
        event.complete()


def test_closing_the_bus_closes_its_session_receivers(
    bus_settings: BusSettings, session_queue: str
) -> None:
    order = _unique("bus-close")
    with ClaimCheckBus(bus_settings) as bus:
        bus.publish(OrderLine(order_id=order, line=0), queue=session_queue)
        session = bus.accept_session(queue=session_queue, session_id=order).__enter__()
        assert session.session_id == order
    with pytest.raises(RuntimeError, match="closed"):
        session.get_state()
    with ClaimCheckBus(bus_settings) as other:
        with other.accept_session(queue=session_queue, session_id=order) as again:
            [event] = _receive_all(again, OrderLine, 1)
            event.complete()


def test_a_session_subscription(bus: ClaimCheckBus, session_topic: str) -> None:
    order = _unique("sub")
    for line in range(3):
        bus.publish(OrderLine(order_id=order, line=line), topic=session_topic)
    with bus.accept_session(topic=session_topic, subscription="ordered") as session:
        assert session.session_id == order
        events = _receive_all(session, OrderLine, 3)
        assert [e.data.line for e in events] == [0, 1, 2]
        for event in events:
            event.complete()


def test_an_invalid_session_id_is_refused_before_sending(
    bus: ClaimCheckBus, session_queue: str
) -> None:
    with pytest.raises(ValueError, match=r"OrderLine.*129 characters"):
        bus.publish(OrderLine(order_id="x" * 129, line=0), queue=session_queue)
    with pytest.raises(ValueError, match="empty"):
        bus.publish(OrderLine(order_id="o", line=0), queue=session_queue, session_id="")
    with pytest.raises(ValueError, match="129 characters"):
        bus.accept_session(queue=session_queue, session_id="x" * 129)
    with pytest.raises(NoSessionAvailableError):
        with bus.accept_session(queue=session_queue, max_wait=0.5):
            pass
