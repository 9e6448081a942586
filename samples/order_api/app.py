"""The order API: ``POST /orders`` validates, stores, publishes ``OrderCreated``, answers 202;
``POST /orders/{order_id}/cancel`` does the same with ``OrderCancelled``.

The API does nothing special for large orders: the bus decides per message whether the event
travels inline or through Blob Storage (``claim_check.max_payload_size_kb``). Nor for order:
both events declare ``__session_key__ = "order_id"``, so the bus sends them in the order's
session, and billing (consuming the session-enabled queue) applies a cancellation after the
creation it cancels.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, status
from pydantic import BaseModel

from claimcheck_bus import AsyncClaimCheckBus, BusSettings, PublishReceipt
from samples.order_api.commands import (
    CancelOrder,
    CreateOrder,
    message_id_for,
    new_order_id,
    order_cancelled,
    order_created,
)
from samples.order_api.store import OrderEvent, OrderStore

log = logging.getLogger("samples.order_api")
QUEUE = "orders"


class OrderAccepted(BaseModel):
    """The 202 answer: the order id and how its event travelled."""

    order_id: str
    message_id: str
    session_id: str | None
    """The Service Bus session the event travelled in: the order id."""
    route: str
    """``inline`` or ``claim-check``."""
    payload_bytes: int
    """Size of the event's JSON."""


class OrderStatus(BaseModel):
    """``GET /orders/{order_id}``: what the write side knows."""

    order_id: str
    customer_id: str
    status: str
    """``created`` or ``cancelled``."""
    published: bool
    route: str | None
    payload_bytes: int | None
    cancelled_at: str | None
    cancellation_published: bool


class Publisher:
    """Publishes an order's events; locked, as an async bus serves one task at a time."""

    def __init__(self, bus: AsyncClaimCheckBus, store: OrderStore, queue: str = QUEUE) -> None:
        self._bus = bus
        self._store = store
        self._queue = queue
        self._lock = asyncio.Lock()

    async def publish(self, event: OrderEvent) -> PublishReceipt:
        """Publish ``event`` (its session: the order id, from the event class's
        ``__session_key__``) and record it in the write store."""
        async with self._lock:
            receipt = await self._bus.publish(
                event, queue=self._queue, message_id=message_id_for(event)
            )
        await asyncio.to_thread(
            self._store.mark_published,
            event,
            at=datetime.now(timezone.utc),
            route=receipt.route.value,
            payload_bytes=receipt.payload_bytes,
        )
        return receipt

    async def publish_pending(self, order_id: str | None = None) -> list[PublishReceipt]:
        """Publish the events stored but never published (a crash or outage between the two),
        of one order or of all, each order's creation before its cancellation."""
        pending = await asyncio.to_thread(self._store.unpublished, order_id)
        return [await self.publish(event) for event in pending]


def _accepted(order_id: str, receipt: PublishReceipt) -> OrderAccepted:
    return OrderAccepted(
        order_id=order_id,
        message_id=receipt.message_id,
        session_id=receipt.session_id,
        route=receipt.route.value,
        payload_bytes=receipt.payload_bytes,
    )


def create_app(
    database: str | Path = "orders.db",
    *,
    settings: BusSettings | None = None,
    queue: str = QUEUE,
) -> FastAPI:
    """The order API over a SQLite write store at ``database``; settings default to the files
    and ``CLAIMCHECK_`` variables."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = OrderStore(database)
        bus = AsyncClaimCheckBus(settings or BusSettings())
        publisher = Publisher(bus, store, queue)
        app.state.store = store
        app.state.publisher = publisher
        try:
            republished = await publisher.publish_pending()
            if republished:
                log.info(
                    "published %d order events left unpublished by an earlier run",
                    len(republished),
                )
            yield
        finally:
            await bus.close()
            store.close()

    app = FastAPI(title="Order API (claimcheck-bus sample)", lifespan=lifespan)

    @app.post("/orders", status_code=status.HTTP_202_ACCEPTED)
    async def create_order(command: CreateOrder, request: Request) -> OrderAccepted:
        """Accept an order: store it, publish ``OrderCreated``, answer with its id."""
        event = order_created(command, new_order_id(), datetime.now(timezone.utc))
        store: OrderStore = request.app.state.store
        publisher: Publisher = request.app.state.publisher
        await asyncio.to_thread(store.add, event)
        try:
            receipt = await publisher.publish(event)
        except Exception as error:
            log.exception("publishing order %s failed", event.order_id)
            # Stored but not published: the next start publishes it (same message id).
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"order {event.order_id} was stored but could not be published yet "
                f"({type(error).__name__}); it will be published when the bus is reachable",
            ) from error
        return _accepted(event.order_id, receipt)

    @app.post("/orders/{order_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
    async def cancel_order(
        order_id: str, request: Request, command: CancelOrder | None = None
    ) -> OrderAccepted:
        """Cancel an order: store the cancellation, publish ``OrderCancelled`` in the order's
        session (its creation first, if that never went out), answer 202; 409 when it was
        already cancelled, 404 for an unknown order."""
        store: OrderStore = request.app.state.store
        publisher: Publisher = request.app.state.publisher
        found = await asyncio.to_thread(store.get, order_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no order {order_id}")
        if found.cancellation_published_at is not None:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"order {order_id} was already cancelled at {found.cancelled_at}",
            )
        event = order_cancelled(
            order_id, found.customer_id, command or CancelOrder(), datetime.now(timezone.utc)
        )
        event = await asyncio.to_thread(store.add_cancellation, event)
        try:
            receipts = await publisher.publish_pending(order_id)
        except Exception as error:
            log.exception("publishing the cancellation of order %s failed", order_id)
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                detail=f"the cancellation of order {order_id} was stored but could not be "
                f"published yet ({type(error).__name__}); it will be published when the bus "
                "is reachable",
            ) from error
        cancellation = message_id_for(event)
        receipt = next((r for r in receipts if r.message_id == cancellation), None)
        if receipt is None:  # a concurrent request published it first
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"order {order_id} was already cancelled"
            )
        return _accepted(order_id, receipt)

    @app.get("/orders/{order_id}")
    async def get_order(order_id: str, request: Request) -> OrderStatus:
        """The write side's view of one order."""
        store: OrderStore = request.app.state.store
        found = await asyncio.to_thread(store.get, order_id)
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no order {order_id}")
        return OrderStatus(
            order_id=found.order_id,
            customer_id=found.customer_id,
            status="created" if found.cancelled_at is None else "cancelled",
            published=found.published_at is not None,
            route=found.route,
            payload_bytes=found.payload_bytes,
            cancelled_at=found.cancelled_at,
            cancellation_published=found.cancellation_published_at is not None,
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness."""
        return {"status": "ok"}

    return app
