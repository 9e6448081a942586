# Generated from claimcheck_bus/_async/reader.py by scripts/unasync.py: do not edit.
"""Reads received messages' payloads: inline, through their SAS URL, or with our own store."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from claimcheck_bus._sync.downloader import PayloadDownloader
from claimcheck_bus._sync.store import PayloadStore
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
from claimcheck_bus.payloads.budget import PayloadBudget, PayloadHold
from claimcheck_bus.payloads.download import DownloadPolicy, payload_budget_bytes
from claimcheck_bus.settings import BusSettings, ClaimCheckSettings

T = TypeVar("T")
log = logging.getLogger("claimcheck_bus")


def downloader_for(settings: ClaimCheckSettings) -> PayloadDownloader:
    """A downloader with the timeouts, size limit and payload budget ``settings`` ask for."""
    policy = DownloadPolicy.from_settings(settings)
    return PayloadDownloader(policy, budget=PayloadBudget(payload_budget_bytes(settings, policy)))


def default_store(settings: ClaimCheckSettings, credential: Any) -> PayloadStore | None:
    """The store ``settings`` describe, or ``None`` when no storage account is configured."""
    storage = settings.blob_storage
    if storage.connection_string is None and not storage.account_url:
        return None
    from claimcheck_bus._sync.azure_blob import AzureBlobPayloadStore

    return AzureBlobPayloadStore.from_settings(settings, credential=credential)


class PayloadReader:
    """Reads received messages' payloads: inline, through their SAS URL, or, when that SAS was
    refused and the payload is in our own container, with the store's credentials."""

    def __init__(
        self,
        policy: ReceivePolicy,
        downloader: PayloadDownloader,
        store: PayloadStore | None,
    ) -> None:
        self._policy = policy
        self._downloader = downloader
        self._store = store

    @classmethod
    def from_settings(
        cls, settings: ClaimCheckSettings, *, credential: Any = None
    ) -> PayloadReader:
        """A reader trusting what ``settings`` trust, with its own downloader and store."""
        return cls(
            ReceivePolicy.from_settings(settings),
            downloader_for(settings),
            default_store(settings, credential),
        )

    def __enter__(self) -> PayloadReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the downloader and the store."""
        self._downloader.close()
        if self._store is not None:
            self._store.close()

    def payload_of(self, incoming: IncomingMessage, hold: PayloadHold | None = None) -> bytes:
        """A received message's payload bytes: inline, or fetched and verified.

        A fetched payload's bytes are reserved in the reader's budget into ``hold``, to be
        given back with :meth:`release` once they are no longer kept (without a ``hold``, as
        soon as they are returned)."""
        fetch = plan(incoming, self._policy)
        if fetch is None:
            return incoming.body
        try:
            return self._downloader.fetch(
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
            raw = self._store.read(fetch.blob_name)
            verify_payload(raw, fetch, self._policy, incoming)
        return decode_content(
            raw,
            fetch.ref.content_encoding,
            max_bytes=self._policy.max_bytes,
            where=where(incoming, fetch),
        )

    def save_payload_of(self, incoming: IncomingMessage, sink: BinaryIO) -> int:
        """Stream a received message's payload into ``sink``; returns the bytes written."""
        fetch = plan(incoming, self._policy)
        if fetch is None:
            sink.write(incoming.body)
            return len(incoming.body)
        return self._downloader.fetch_to(
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

    def completed(self, incoming: IncomingMessage) -> None:
        """After a complete: delete the payload when ``delete_after_complete`` asks for it."""
        if not self._policy.delete_after_complete or self._store is None:
            return
        try:
            fetch = plan(incoming, self._policy)
        except MessageError:  # settled all the same; there is nothing of ours to delete
            return
        if fetch is not None and may_use_credentials(fetch, self._policy, incoming):
            try:
                self._store.delete(fetch.blob_name)
            except Exception:  # the message is settled; the blob is only garbage now
                log.warning("could not delete payload %s", fetch.location.blob_path, exc_info=True)


def rehydrate(
    message: Any,
    as_type: type[T],
    *,
    settings: BusSettings | ClaimCheckSettings | None = None,
    entity: str | None = None,
) -> T:
    """The typed event of a message received by other means (an Azure Functions trigger, your
    own ``ServiceBusReceiver``), inline or claim-checked.

    ``settings`` default to ``BusSettings()``; pass a ``ClaimCheckSettings`` where no Service
    Bus settings exist. For many messages, prefer ``ClaimCheckBus.rehydrate`` (pooled HTTP).
    """
    if settings is None:
        settings = BusSettings()
    claim_check = settings.claim_check if isinstance(settings, BusSettings) else settings
    with PayloadReader.from_settings(claim_check) as reader:
        incoming = incoming_from(message, entity=entity)
        return decode(incoming, reader.payload_of(incoming), as_type)
