"""The order API: ``POST /orders`` validates, stores, publishes ``OrderCreated``, answers 202.

The API does nothing special for large orders: the bus decides per message whether the event
travels inline or through Blob Storage (``claim_check.max_payload_size_kb``).
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
from samples.events import OrderCreated
from samples.order_api.commands import CreateOrder, new_order_id, order_created
from samples.order_api.store import OrderStore

log = logging.getLogger("samples.order_api")
QUEUE = "orders"


class OrderAccepted(BaseModel):
    """The 202 answer: the order id and how its event travelled."""

    order_id: str
    message_id: str
    route: str
    """``inline`` or ``claim-check``."""
    payload_bytes: int
    """Size of the ``OrderCreated`` JSON."""


class OrderStatus(BaseModel):
    """``GET /orders/{order_id}``: what the write side knows."""

    order_id: str
    customer_id: str
    published: bool
    route: str | None
    payload_bytes: int | None


class Publisher:
    """Publishes ``OrderCreated``; locked, as an async bus serves one task at a time."""

    def __init__(self, bus: AsyncClaimCheckBus, store: OrderStore, queue: str = QUEUE) -> None:
        self._bus = bus
        self._store = store
        self._queue = queue
        self._lock = asyncio.Lock()

    async def publish(self, event: OrderCreated) -> PublishReceipt:
        """Publish ``event`` (message id = order id) and record it in the write store."""
        async with self._lock:
            receipt = await self._bus.publish(event, queue=self._queue, message_id=event.order_id)
        await asyncio.to_thread(
            self._store.mark_published,
            event.order_id,
            at=datetime.now(timezone.utc),
            route=receipt.route.value,
            payload_bytes=receipt.payload_bytes,
        )
        return receipt

    async def publish_pending(self) -> int:
        """Publish orders stored but never published (a crash or outage between the two)."""
        pending = await asyncio.to_thread(self._store.unpublished)
        for event in pending:
            await self.publish(event)
        return len(pending)


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
                log.info("published %d orders left unpublished by an earlier run", republished)
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
        return OrderAccepted(
            order_id=event.order_id,
            message_id=receipt.message_id,
            route=receipt.route.value,
            payload_bytes=receipt.payload_bytes,
        )

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
            published=found.published_at is not None,
            route=found.route,
            payload_bytes=found.payload_bytes,
        )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness."""
        return {"status": "ok"}

    return app
