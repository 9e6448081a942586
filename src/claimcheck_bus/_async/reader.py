"""Reads received messages' payloads: inline, through their SAS URL, or with our own store."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from claimcheck_bus._async.downloader import AsyncPayloadDownloader
from claimcheck_bus._async.store import AsyncPayloadStore
from claimcheck_bus.claim_check.rehydration import (
    IncomingMessage,
    ReceivePolicy,
    decode,
    decode_content,
    incoming_from,
    may_use_credentials,
    plan,
    verify_payload,
    where,
)
from claimcheck_bus.errors import MessageError, PayloadAccessDeniedError
from claimcheck_bus.payloads.budget import AsyncPayloadBudget, PayloadHold
from claimcheck_bus.payloads.download import DownloadPolicy, payload_budget_bytes
from claimcheck_bus.settings import BusSettings, ClaimCheckSettings

T = TypeVar("T")
log = logging.getLogger("claimcheck_bus")


def downloader_for(settings: ClaimCheckSettings) -> AsyncPayloadDownloader:
    """A downloader with the timeouts, size limit and payload budget ``settings`` ask for."""
    policy = DownloadPolicy.from_settings(settings)
    return AsyncPayloadDownloader(
        policy, budget=AsyncPayloadBudget(payload_budget_bytes(settings, policy))
    )


def default_store(settings: ClaimCheckSettings, credential: Any) -> AsyncPayloadStore | None:
    """The store ``settings`` describe, or ``None`` when no storage account is configured."""
    storage = settings.blob_storage
    if storage.connection_string is None and not storage.account_url:
        return None
    from claimcheck_bus._async.azure_blob import AsyncAzureBlobPayloadStore

    return AsyncAzureBlobPayloadStore.from_settings(settings, credential=credential)


class AsyncPayloadReader:
    """Reads received messages' payloads: inline, through their SAS URL, or, when that SAS was
    refused and the payload is in our own container, with the store's credentials."""

    def __init__(
        self,
        policy: ReceivePolicy,
        downloader: AsyncPayloadDownloader,
        store: AsyncPayloadStore | None,
    ) -> None:
        self._policy = policy
        self._downloader = downloader
        self._store = store

    @classmethod
    def from_settings(
        cls, settings: ClaimCheckSettings, *, credential: Any = None
    ) -> AsyncPayloadReader:
        """A reader trusting what ``settings`` trust, with its own downloader and store."""
        return cls(
            ReceivePolicy.from_settings(settings),
            downloader_for(settings),
            default_store(settings, credential),
        )

    async def __aenter__(self) -> AsyncPayloadReader:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the downloader and the store."""
        await self._downloader.aclose()
        if self._store is not None:
            await self._store.close()

    async def payload_of(self, incoming: IncomingMessage, hold: PayloadHold | None = None) -> bytes:
        """A received message's payload bytes: inline, or fetched and verified.

        A fetched payload's bytes are reserved in the reader's budget into ``hold``, to be
        given back with :meth:`release` once they are no longer kept (without a ``hold``, as
        soon as they are returned)."""
        fetch = plan(incoming, self._policy)
        if fetch is None:
            return incoming.body
        try:
            return await self._downloader.fetch(
                fetch.location,
                sha256=fetch.ref.sha256,
                size=fetch.ref.size,
                message_id=incoming.message_id,
                entity=incoming.entity,
                content_encoding=fetch.ref.content_encoding,
                hold=hold,
            )
        except PayloadAccessDeniedError:
            if self._store is None or not may_use_credentials(fetch, self._policy, incoming):
                raise
            log.warning(
                "SAS of message %s refused (expired?); reading %s with the store's credentials",
                incoming.message_id,
                fetch.location.blob_path,
            )
            raw = await self._store.read(fetch.blob_name)
            verify_payload(raw, fetch, self._policy, incoming)
        return decode_content(
            raw,
            fetch.ref.content_encoding,
            max_bytes=self._policy.max_bytes,
            where=where(incoming, fetch),
        )

    async def save_payload_of(self, incoming: IncomingMessage, sink: BinaryIO) -> int:
        """Stream a received message's payload into ``sink``; returns the bytes written."""
        fetch = plan(incoming, self._policy)
        if fetch is None:
            sink.write(incoming.body)
            return len(incoming.body)
        return await self._downloader.fetch_to(
            fetch.location,
            sink,
            sha256=fetch.ref.sha256,
            size=fetch.ref.size,
            message_id=incoming.message_id,
            entity=incoming.entity,
            content_encoding=fetch.ref.content_encoding,
        )

    def release(self, hold: PayloadHold) -> None:
        """Give back what ``hold`` reserved of the payload budget (the event was settled)."""
        if self._downloader.budget is not None:
            self._downloader.budget.give_back(hold)

    async def completed(self, incoming: IncomingMessage) -> None:
        """After a complete: delete the payload when ``delete_after_complete`` asks for it."""
        if not self._policy.delete_after_complete or self._store is None:
            return
        try:
            fetch = plan(incoming, self._policy)
        except MessageError:  # settled all the same; there is nothing of ours to delete
            return
        if fetch is not None and may_use_credentials(fetch, self._policy, incoming):
            try:
                await self._store.delete(fetch.blob_name)
            except Exception:  # the message is settled; the blob is only garbage now
                log.warning("could not delete payload %s", fetch.location.blob_path, exc_info=True)


async def rehydrate(
    message: Any,
    as_type: type[T],
    *,
    settings: BusSettings | ClaimCheckSettings | None = None,
    entity: str | None = None,
) -> T:
    """The typed event of a message received by other means (an Azure Functions trigger, your
    own ``ServiceBusReceiver``), inline or claim-checked.

    ``settings`` default to ``BusSettings()``; pass a ``ClaimCheckSettings`` where no Service
    Bus settings exist. For many messages, prefer ``AsyncClaimCheckBus.rehydrate`` (pooled HTTP).
    """
    if settings is None:
        settings = BusSettings()
    claim_check = settings.claim_check if isinstance(settings, BusSettings) else settings
    async with AsyncPayloadReader.from_settings(claim_check) as reader:
        incoming = incoming_from(message, entity=entity)
        return decode(incoming, await reader.payload_of(incoming), as_type)
