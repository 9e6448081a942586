"""A sample's ASGI app served by uvicorn on a free port, in a thread, with an httpx client to
it: the sample APIs are tested over a real socket, the way their clients reach them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from samples.serving import bind, serve, url_of

from claimcheck_bus.testing.polling import wait_for


def _answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/__started__", timeout=0.5)
    except httpx.TransportError:
        return False  # the socket is bound before startup: requests wait until it is done
    return True


@contextmanager
def served(app: Any) -> Iterator[httpx.Client]:
    """Serve ``app`` (its lifespan included) until the block ends; a client with its URL."""
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    running: dict[str, Any] = {}
    failures: list[BaseException] = []

    async def main() -> None:
        running["loop"], running["stop"] = asyncio.get_running_loop(), asyncio.Event()
        await serve(app, sock, "the app under test", running["stop"])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as failure:  # reported to the test below
            failures.append(failure)

    thread = threading.Thread(target=run, name="served-app", daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: not thread.is_alive() or _answers(url), timeout=30, what="the app to start"
        )
        if failures:
            raise failures[0]
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        wait_for(lambda: "loop" in running or not thread.is_alive(), what="the server's loop")
        if "loop" in running:
            running["loop"].call_soon_threadsafe(running["stop"].set)
        thread.join(30)
        sock.close()
    assert not thread.is_alive(), "the app under test did not stop"
    if failures:
        raise failures[0]
