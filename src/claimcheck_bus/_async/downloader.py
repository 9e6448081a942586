"""Payload downloads over one pooled httpx client; every decision is :class:`DownloadState`'s."""

from __future__ import annotations

from asyncio import sleep
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


class AsyncPayloadDownloader:
    """Downloads payloads over one pooled ``httpx.AsyncClient``.

    A client passed in stays the caller's: :meth:`aclose` closes only the one made here.
    Redirects are never followed and the policy's timeout applies, whatever the client's own
    settings.
    """

    def __init__(self, policy: DownloadPolicy, *, client: httpx.AsyncClient | None = None) -> None:
        self.policy = policy
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=policy.http_timeout(), follow_redirects=False
        )

    async def fetch(
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
        await self._download(
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

    async def fetch_to(
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
        return await self._download(
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

    async def _download(self, state: DownloadState, location: PayloadLocation) -> int:
        while True:
            state.begin()
            try:
                async with self._client.stream(
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
                        async for chunk in response.aiter_raw():
                            state.on_chunk(chunk)
                        return state.finish()
            except httpx.TransportError as error:
                failure = transport_failure(error)
            # Outside the except block: the httpx error (and its URL) is not chained.
            await sleep(state.delay_after(failure))

    async def aclose(self) -> None:
        """Close the HTTP client if this downloader made it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncPayloadDownloader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
