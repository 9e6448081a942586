"""``python -m samples.billing_worker --port 0``: the billing worker and its query API.

One process runs the worker (``orders``, one session per order -> invoices read model, exactly
once and in each order's sequence), the outbox relay (invoices -> ``InvoiceIssued`` on the
``invoices`` topic), the archive subscriber (``invoices/archive``) and the query API;
SIGINT/SIGTERM stop them all gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from claimcheck_bus import AsyncClaimCheckBus, BusSettings
from samples.billing_worker.outbox import OutboxRelay
from samples.billing_worker.query_app import create_query_app
from samples.billing_worker.read_model import ReadModel
from samples.billing_worker.service import build_worker
from samples.serving import bind, serve, stop_on_signals


async def _run(host: str, port: int, database: str, archive_dir: str) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    settings = BusSettings()
    read_model = await asyncio.to_thread(ReadModel, database)
    async with AsyncClaimCheckBus(settings) as bus:
        relay = OutboxRelay(read_model, bus)
        worker = build_worker(settings, database, archive_dir, relay)
        tasks = [
            asyncio.create_task(worker.serve(stop)),
            asyncio.create_task(relay.run(stop)),
            asyncio.create_task(
                serve(create_query_app(read_model), bind(host, port), "billing query API", stop)
            ),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a component that failed stops the process with its error
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            read_model.close()


def main() -> None:
    """Run the billing worker and query API until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m samples.billing_worker")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="query API port; 0 picks one")
    parser.add_argument(
        "--database",
        default=os.environ.get("BILLING_DATABASE", "billing.db"),
        help="read model: a SQLite file or postgresql://... (env BILLING_DATABASE)",
    )
    parser.add_argument(
        "--archive-dir",
        default=os.environ.get("BILLING_ARCHIVE_DIR", "invoice-archive"),
        help="where the archive subscriber keeps invoices (env BILLING_ARCHIVE_DIR)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    asyncio.run(_run(args.host, args.port, args.database, args.archive_dir))


if __name__ == "__main__":
    main()
