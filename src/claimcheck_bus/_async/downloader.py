"""Payload downloads over one pooled httpx client; every decision is :class:`DownloadState`'s."""

from __future__ import annotations

from asyncio import sleep
from types import TracebackType
from typing import BinaryIO

import httpx

from claimcheck_bus.claim_check.urls import PayloadLocation
from claimcheck_bus.payloads.budget import AsyncPayloadBudget, PayloadHold
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

    def __init__(
        self,
        policy: DownloadPolicy,
        *,
        client: httpx.AsyncClient | None = None,
        budget: AsyncPayloadBudget | None = None,
    ) -> None:
        """``budget`` bounds the bytes that :meth:`fetch` may hold (see ``payloads.budget``)."""
        self.policy = policy
        self.budget = budget
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
        content_encoding: str | None = None,
        hold: PayloadHold | None = None,
    ) -> bytes:
        """The payload's bytes, checked against ``size`` and ``sha256`` (of the bytes as
        stored) when given, and inflated when ``content_encoding`` is ``gzip``.

        With a budget, the body's bytes are reserved into ``hold`` before it is read (a hold of
        its own, given back at once, when none is passed); the caller gives ``hold`` back once
        it no longer keeps the bytes.
        """
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
                content_encoding=content_encoding,
            ),
            location,
            hold or PayloadHold(),
            own_hold=hold is None,
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
        content_encoding: str | None = None,
    ) -> int:
        """Stream the payload into ``sink`` (never held whole in memory, inflated on the way
        when ``content_encoding`` is ``gzip``); the bytes written.

        A retry after part of the body was written rewinds and truncates a seekable ``sink``
        to where it started; a non-seekable one is not retried mid-body
        (:class:`PayloadUnavailableError`). On any error a seekable ``sink`` is left as found.
        """
        stream = StreamSink(sink)
        await self._download(
            DownloadState(
                self.policy,
                location,
                stream,
                sha256=sha256,
                size=size,
                message_id=message_id,
                entity=entity,
                content_encoding=content_encoding,
            ),
            location,
        )
        return stream.written

    async def _download(
        self,
        state: DownloadState,
        location: PayloadLocation,
        hold: PayloadHold | None = None,
        *,
        own_hold: bool = False,
    ) -> int:
        try:
            while True:
                state.begin()
                try:
                    async with self._client.stream(
                        "GET",
                        location.url,
                        headers=REQUEST_HEADERS,
                        timeout=state.http_timeout(),
                        follow_redirects=False,
                    ) as response:
                        length = response.headers.get("content-length")
                        failure = state.on_response(
                            response.status_code, length, response.headers.get("retry-after")
                        )
                        if failure is None and hold is not None:
                            await self._reserve(state, hold, state.body_limit(length))
                        if failure is None:
                            async for chunk in response.aiter_raw():
                                failure = state.on_chunk(chunk)
                                if failure is not None:
                                    break
                            else:
                                return state.finish()
                except httpx.TransportError as error:
                    failure = transport_failure(error)
                # Outside the except block: the httpx error (and its URL) is not chained.
                await sleep(state.delay_after(failure))
        finally:
            if self.budget is not None and hold is not None and own_hold:
                self.budget.give_back(hold)

    async def _reserve(self, state: DownloadState, hold: PayloadHold, amount: int) -> None:
        # A retry reads the body again into the same hold: reserve only what it lacks.
        if self.budget is None or amount <= hold.amount:
            return
        if not await self.budget.take(hold, amount - hold.amount, wait=state.time_left()):
            raise state.budget_exhausted(self.budget.total)

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
