"""Run ASGI apps with uvicorn on sockets we bind (so port 0 works and the real URL is known),
stopping on SIGINT/SIGTERM together with whatever else the process runs."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Generator
from typing import Any

import uvicorn


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port chosen by the kernel)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def announce(name: str, url: str) -> None:
    """The line a parent process waits for: ``<name> listening on <url>``."""
    print(f"{name} listening on {url}", flush=True)


class _Server(uvicorn.Server):
    # uvicorn would take over SIGINT/SIGTERM and re-raise them after its shutdown; the process
    # owns its signals instead, so that the worker beside the server stops gracefully too.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def stop_on_signals(stop: asyncio.Event) -> None:
    """Set ``stop`` on SIGINT or SIGTERM (call from inside the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def serve(
    app: Any, sock: socket.socket, name: str, stop: asyncio.Event, log_level: str = "warning"
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set; announce the URL once the app's
    startup (lifespan) has completed."""
    server = _Server(uvicorn.Config(app, log_level=log_level, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task  # startup failed: raise its error
            raise RuntimeError(f"{name} stopped during startup")
        await asyncio.sleep(0.02)
    announce(name, url_of(sock))
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    waiter.cancel()
    await task
