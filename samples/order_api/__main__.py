"""``python -m samples.order_api --port 0 --database orders.db``: run the order API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from samples.order_api.app import create_app
from samples.serving import bind, serve, stop_on_signals


async def _run(host: str, port: int, database: str) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await serve(create_app(database), bind(host, port), "order API", stop)


def main() -> None:
    """Run the order API until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m samples.order_api")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument(
        "--database",
        default=os.environ.get("ORDER_API_DATABASE", "orders.db"),
        help="the SQLite write store (env ORDER_API_DATABASE)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    asyncio.run(_run(args.host, args.port, args.database))


if __name__ == "__main__":
    main()
