"""A local HTTP server that stands in for blob storage misbehaving on purpose.

Tests of the receive path need a storage endpoint that is slow, trickles, lies about its
Content-Length or throttles, and a way to prove that a host got no request at all.
:class:`StorageServer` serves each path as told and records every request it receives.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    """How the server answers one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before the status line."""
    trickle: float | None = None
    """Seconds between single bytes of the body (``None``: send it at once)."""
    content_length: int | None = None
    """The Content-Length to declare (default: the body's true length)."""


class StorageServer:
    """Answers GETs on 127.0.0.1 (a free port) from :meth:`serve` replies; 404 otherwise."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        """Paths (with query) of every request received, in order."""
        self._replies: dict[str, Reply] = {}
        requests, replies = self.requests, self._replies

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                requests.append(self.path)
                reply = replies.get(self.path.split("?", 1)[0], Reply(status=404))
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                length = reply.content_length
                self.send_header(
                    "Content-Length", str(len(reply.body) if length is None else length)
                )
                self.end_headers()
                try:
                    if reply.trickle is None:
                        self.wfile.write(reply.body)
                    else:
                        for index in range(len(reply.body)):
                            self.wfile.write(reply.body[index : index + 1])
                            self.wfile.flush()
                            time.sleep(reply.trickle)
                except OSError:
                    pass  # the client gave up: that is what some tests expect
                if length is not None and length != len(reply.body):
                    self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def serve(self, path: str, reply: Reply) -> str:
        """Answer GETs of ``path`` with ``reply``; returns the path's URL."""
        self._replies[path] = reply
        return self.url(path)

    def url(self, path: str) -> str:
        """``http://127.0.0.1:<port><path>``."""
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def storage_server() -> Iterator[StorageServer]:
    """A :class:`StorageServer` for the duration of the block."""
    server = StorageServer()
    try:
        yield server
    finally:
        server.close()
