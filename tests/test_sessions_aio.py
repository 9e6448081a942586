"""Sessions through AsyncClaimCheckBus: the same behaviour as the sync twin (tests/test_sessions.py),
over real sockets against the emulator and Azurite."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel
from tests.session_fixtures import session_queue

from claimcheck_bus import (
    AsyncClaimCheckBus,
    AsyncReceivedEvent,
    AsyncSessionReceiver,
    BusSettings,
    NoSessionAvailableError,
    Route,
    SessionLockedError,
)

__all__ = ["session_queue"]

KB = 1024


class Shipment(BaseModel):
    __session_key__ = "parcel"

    parcel: str
    step: int
    manifest: str = ""


@pytest.fixture
async def bus(bus_settings: BusSettings) -> AsyncIterator[AsyncClaimCheckBus]:
    async with AsyncClaimCheckBus(bus_settings) as bus:
        yield bus


async def _receive_all(
    session: AsyncSessionReceiver, count: int, *, prefetch: bool = True
) -> list[AsyncReceivedEvent[Shipment]]:
    got: list[AsyncReceivedEvent[Shipment]] = []
    deadline = time.monotonic() + 20
    while len(got) < count and time.monotonic() < deadline:
        got += await session.receive(
            Shipment, max_messages=count - len(got), max_wait=1, prefetch=prefetch
        )
    assert len(got) == count, f"expected {count} events, got {len(got)}"
    return got


async def test_session_send_receive_with_state(bus: AsyncClaimCheckBus, session_queue: str) -> None:
    parcel = f"p-{uuid.uuid4().hex[:8]}"
    receipts = await bus.publish_batch(
        [Shipment(parcel=parcel, step=i) for i in range(3)], queue=session_queue
    )
    assert {r.session_id for r in receipts} == {parcel}
    async with bus.accept_session(queue=session_queue, session_id=parcel) as session:
        assert session.session_id == parcel
        assert await session.get_state() is None
        await session.set_state(b"step=0")
        assert await session.get_state() == b"step=0"
        events = await _receive_all(session, 3)
        assert [e.data.step for e in events] == [0, 1, 2]
        assert {e.session_id for e in events} == {parcel}
        before = session.locked_until
        assert before is not None
        assert await session.renew_lock() >= before
        with pytest.raises(TypeError, match=r"session\.renew_lock"):
            await events[0].renew_lock()
        for event in events:
            await event.complete()


async def test_next_available_sessions_concurrently(
    bus: AsyncClaimCheckBus, bus_settings: BusSettings, session_queue: str
) -> None:
    parcels = [f"p-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for step in range(3):
        for parcel in parcels:
            await bus.publish(Shipment(parcel=parcel, step=step), queue=session_queue)

    async def drain(client: AsyncClaimCheckBus) -> tuple[str, list[int]]:
        async with client.accept_session(queue=session_queue) as session:
            events = await _receive_all(session, 3)
            for event in events:
                assert event.data.parcel == session.session_id
                await event.complete()
            return session.session_id, [e.data.step for e in events]

    async with AsyncClaimCheckBus(bus_settings) as other:
        results = await asyncio.gather(drain(bus), drain(other))
    assert sorted(results) == sorted((p, [0, 1, 2]) for p in parcels)


async def test_no_session_available_and_a_held_session(
    bus: AsyncClaimCheckBus, bus_settings: BusSettings, session_queue: str
) -> None:
    with pytest.raises(NoSessionAvailableError, match=session_queue):
        async with bus.accept_session(queue=session_queue, max_wait=1):
            pytest.fail("an empty entity has no session to accept")
    parcel = f"p-{uuid.uuid4().hex[:8]}"
    await bus.publish(Shipment(parcel=parcel, step=0), queue=session_queue)
    async with AsyncClaimCheckBus(bus_settings) as other:
        async with bus.accept_session(queue=session_queue) as held:
            assert held.session_id == parcel
            with pytest.raises(SessionLockedError, match=parcel):
                async with other.accept_session(queue=session_queue, session_id=parcel):
                    pytest.fail("a held session must not be accepted twice")
        # Closed: the other receiver gets it at once.
        async with other.accept_session(queue=session_queue, session_id=parcel) as again:
            [event] = await _receive_all(again, 1)
            await event.complete()


@pytest.mark.parametrize("prefetch", [True, False])
async def test_a_large_event_in_a_session_is_claim_checked(
    bus: AsyncClaimCheckBus, session_queue: str, prefetch: bool
) -> None:
    parcel = f"p-{uuid.uuid4().hex[:8]}"
    big = Shipment(parcel=parcel, step=0, manifest="m" * (300 * KB))
    receipt = await bus.publish(big, queue=session_queue)
    assert receipt.route is Route.CLAIM_CHECK
    assert receipt.session_id == parcel
    async with bus.accept_session(queue=session_queue) as session:
        [event] = await _receive_all(session, 1, prefetch=prefetch)
        assert event.is_claim_check
        assert event.session_id == parcel
        if not prefetch:
            with pytest.raises(RuntimeError, match="not loaded"):
                _ = event.data
            await event.load()
        assert event.data == big
        await event.complete()


async def test_closing_the_bus_closes_its_session_receivers(
    bus_settings: BusSettings, session_queue: str
) -> None:
    parcel = f"p-{uuid.uuid4().hex[:8]}"
    async with AsyncClaimCheckBus(bus_settings) as bus:
        await bus.publish(Shipment(parcel=parcel, step=0), queue=session_queue)
        session = await bus.accept_session(queue=session_queue).__aenter__()
        assert session.session_id == parcel
    assert session.locked_until is None
    async with AsyncClaimCheckBus(bus_settings) as other:
        async with other.accept_session(queue=session_queue, session_id=parcel) as again:
            [event] = await _receive_all(again, 1)
            await event.complete()
