"""The billing query API: reads only the read model."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException, status

from samples.billing_worker.read_model import ReadModel


def create_query_app(read_model: ReadModel) -> FastAPI:
    """``GET /invoices/{order_id}`` and ``GET /customers/{customer_id}/invoices``."""
    app = FastAPI(title="Billing queries (claimcheck-bus sample)")

    @app.get("/invoices/{order_id}")
    async def invoice(order_id: str) -> dict[str, Any]:
        """The invoice of an order (``status`` ``void`` once the order was cancelled); 404
        until the worker has billed it."""
        found = await asyncio.to_thread(read_model.invoice, order_id)
        if found is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND,
                detail=f"no invoice for order {order_id} (yet: billing is asynchronous)",
            )
        return asdict(found)

    @app.get("/customers/{customer_id}/invoices")
    async def customer_invoices(customer_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """A customer's invoices, newest first."""
        rows = await asyncio.to_thread(read_model.customer_invoices, customer_id, min(limit, 1000))
        return [asdict(row) for row in rows]

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok"}

    return app
