# Generated from claimcheck_bus/_async/downloader.py by scripts/unasync.py: do not edit.
"""Payload downloads over one pooled httpx client; every decision is :class:`DownloadState`'s."""

from __future__ import annotations

from time import sleep
from types import TracebackType
from typing import BinaryIO

import httpx

from claimcheck_bus.claim_check.urls import PayloadLocation
from claimcheck_bus.payloads.download import (
    REQUEST_HEADERS,
    DownloadPolicy,
    DownloadState,
    MemorySink,
    StreamSink,
    transport_failure,
)


class PayloadDownloader:
    """Downloads payloads over one pooled ``httpx.Client``.

    A client passed in stays the caller's: :meth:`close` closes only the one made here.
    Redirects are never followed and the policy's timeout applies, whatever the client's own
    settings.
    """

    def __init__(self, policy: DownloadPolicy, *, client: httpx.Client | None = None) -> None:
        self.policy = policy
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=policy.http_timeout(), follow_redirects=False)

    def fetch(
        self,
        location: PayloadLocation,
        *,
        sha256: str | None = None,
        size: int | None = None,
        message_id: str | None = None,
        entity: str | None = None,
    ) -> bytes:
        """The payload's bytes, checked against ``size`` and ``sha256`` when given."""
        sink = MemorySink()
        self._download(
            DownloadState(
                self.policy,
                location,
                sink,
                sha256=sha256,
                size=size,
                message_id=message_id,
                entity=entity,
            ),
            location,
        )
        return sink.value()

    def fetch_to(
        self,
        location: PayloadLocation,
        sink: BinaryIO,
        *,
        sha256: str | None = None,
        size: int | None = None,
        message_id: str | None = None,
        entity: str | None = None,
    ) -> int:
        """Stream the payload into ``sink`` (never held whole in memory); the bytes written.

        A retry after part of the body was written rewinds and truncates a seekable ``sink``
        to where it started; a non-seekable one is not retried mid-body
        (:class:`PayloadUnavailableError`). On any error a seekable ``sink`` is left as found.
        """
        return self._download(
            DownloadState(
                self.policy,
                location,
                StreamSink(sink),
                sha256=sha256,
                size=size,
                message_id=message_id,
                entity=entity,
            ),
            location,
        )

    def _download(self, state: DownloadState, location: PayloadLocation) -> int:
        while True:
            state.begin()
            try:
                with self._client.stream(
                    "GET",
                    location.url,
                    headers=REQUEST_HEADERS,
                    timeout=self.policy.http_timeout(),
                    follow_redirects=False,
                ) as response:
                    failure = state.on_response(
                        response.status_code,
                        response.headers.get("content-length"),
                        response.headers.get("retry-after"),
                    )
                    if failure is None:
                        for chunk in response.iter_raw():
                            state.on_chunk(chunk)
                        return state.finish()
            except httpx.TransportError as error:
                failure = transport_failure(error)
            # Outside the except block: the httpx error (and its URL) is not chained.
            sleep(state.delay_after(failure))

    def close(self) -> None:
        """Close the HTTP client if this downloader made it."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> PayloadDownloader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
