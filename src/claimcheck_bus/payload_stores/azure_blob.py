"""Payloads in Azure Blob Storage: :class:`AzureBlobPayloadStore` and its asyncio twin.

Two ways to sign the read-only links consumers get:

- a connection string with an account key signs account-key SAS (no request needed);
- an account URL and an azure-identity credential sign user-delegation SAS with a key fetched
  from the service, cached, and renewed before it stops covering the links asked for.

Both twins only move bytes; every decision is a function of :mod:`claimcheck_bus.payload_store`
or of :class:`_BlobStoreCore`. The two classes read line for line alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import threading
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContentSettings,
    UserDelegationKey,
    generate_blob_sas,
)
from azure.storage.blob.aio import BlobServiceClient as AsyncBlobServiceClient

from claimcheck_bus.errors import ConfigurationError, MessageError
from claimcheck_bus.payload_store import (
    ACCOUNT_KEY_MAX_LIFETIME,
    USER_DELEGATION_MAX_LIFETIME,
    KeyWindow,
    StoredPayload,
    container_create_is_fatal,
    delegation_key_window,
    digest,
    message_id_of,
    needs_new_delegation_key,
    sas_protocol,
    should_recreate_container,
    signed_expiry,
    storage_error,
    with_sha256,
)
from claimcheck_bus.payload_urls import parse_connection_string, redact_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

    from claimcheck_bus.settings import ClaimCheckSettings

__all__ = ["AsyncAzureBlobPayloadStore", "AzureBlobPayloadStore"]

_log = logging.getLogger(__name__)

#: Parallel block uploads above the SDK's single-PUT size; 4 was fastest on 2 cores (AZURITE.md).
UPLOAD_CONCURRENCY = 4
DEFAULT_CONTAINER = "claim-check"
#: Largest single-PUT upload of the async twin. aiohttp sends a single PUT's body from copies
#: (measured peak above baseline: +12 MB for 8 MB, +96 MB for 50 MB) while blocks cost about
#: 4 x 4 MiB in flight (+24 MB for 50 or 100 MB); up to 8 MiB one PUT is as lean and faster.
#: The sync twin keeps the SDK's 64 MiB: requests sends the caller's bytes without a copy.
ASYNC_MAX_SINGLE_PUT_SIZE = 8 * 2**20


def client_options(client_kwargs: dict[str, Any], *, asynchronous: bool) -> dict[str, Any]:
    """The SDK client's options: the caller's, plus our defaults where the caller set none."""
    defaults: dict[str, Any] = (
        {"max_single_put_size": ASYNC_MAX_SINGLE_PUT_SIZE} if asynchronous else {}
    )
    return {**defaults, **client_kwargs}


class _BlobStoreCore:
    """What both twins share: the container, the endpoint, signing and error translation."""

    def __init__(
        self, container_name: str, endpoint: str, account_name: str, account_key: str | None
    ) -> None:
        self.container_name = container_name
        self._endpoint = endpoint
        self._account_name = account_name
        self._account_key = account_key
        # One tuple, replaced whole, so a reader never pairs a key with another key's window.
        self._delegation: tuple[UserDelegationKey, KeyWindow] | None = None
        self._container_ready = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(endpoint={self._endpoint!r}, container={self.container_name!r})"
        )

    @property
    def endpoint(self) -> str:
        """The blob service URL, e.g. ``https://acct.blob.core.windows.net`` (no credentials)."""
        return self._endpoint

    @property
    def max_sas_lifetime(self) -> timedelta:
        """The longest SAS this store signs: 7 days (delegation key) or 365 (account key)."""
        return (
            USER_DELEGATION_MAX_LIFETIME if self._account_key is None else ACCOUNT_KEY_MAX_LIFETIME
        )

    @property
    def signs_with_account_key(self) -> bool:
        """True for account-key SAS, False for user-delegation SAS."""
        return self._account_key is not None

    def _blob_path(self, blob_name: str) -> str:
        return f"{self.container_name}/{blob_name}"

    def _needs_key(self, now: datetime, sas_expires_on: datetime) -> bool:
        delegation = self._delegation
        return self._account_key is None and needs_new_delegation_key(
            now, sas_expires_on, delegation[1] if delegation else None
        )

    def _keep_key(self, key: UserDelegationKey, window: KeyWindow) -> None:
        self._delegation = (key, window)

    def _stored(
        self, blob_url: str, blob_name: str, size: int, sha256: str, sas_expires_on: datetime
    ) -> StoredPayload:
        key, window = (
            self._delegation if self._account_key is None and self._delegation else (None, None)
        )
        token = generate_blob_sas(
            account_name=self._account_name,
            container_name=self.container_name,
            blob_name=blob_name,
            account_key=self._account_key,
            user_delegation_key=key,
            permission=BlobSasPermissions(read=True),
            expiry=signed_expiry(sas_expires_on, window),
            protocol=sas_protocol(self._endpoint),
        )
        return StoredPayload(
            url=f"{blob_url}?{token}", blob_name=blob_name, size=size, sha256=sha256
        )

    @contextlib.contextmanager
    def _translated(
        self, operation: str, blob_name: str, message_id: str | None = None
    ) -> Iterator[None]:
        # The SDK's exception text can quote URLs and response bodies: keep the class name only,
        # and cut the chain (`from None`) so that no traceback prints the original.
        try:
            yield
        except MessageError:
            raise
        except AzureError as error:
            raise storage_error(
                operation,
                _status_of(error),
                _error_code_of(error),
                type(error).__name__,
                blob_path=self._blob_path(blob_name),
                message_id=message_id,
                authentication=isinstance(error, ClientAuthenticationError),
            ) from None


def _status_of(error: BaseException) -> int | None:
    return error.status_code if isinstance(error, HttpResponseError) else None


def _error_code_of(error: BaseException) -> str | None:
    code = getattr(error, "error_code", None)
    # StorageErrorCode is a str enum: its value is the service's code.
    return None if code is None else str(getattr(code, "value", code))


class _ViewReader(io.RawIOBase):
    """A seekable, read-only stream over a memoryview: the SDK reads it a block at a time
    instead of copying the whole payload."""

    def __init__(self, view: memoryview) -> None:
        super().__init__()
        self._view = view.cast("B")
        self._position = 0

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable (the SDK seeks to retry and to split blocks)."""
        return True

    def tell(self) -> int:
        """The current offset."""
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` (relative to ``whence``)."""
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative), copied once."""
        end = len(self._view) if size is None or size < 0 else self._position + size
        chunk = bytes(self._view[self._position : end])
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` from the current offset."""
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._position : self._position + len(target)]
        target[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)


def upload_body(data: bytes | memoryview) -> bytes | BinaryIO:
    """What to hand the SDK: bytes as they are (its lowest-memory path: a single PUT sends them
    without a copy, larger ones go in blocks), a memoryview as a stream over the same memory."""
    if isinstance(data, bytes):
        return data
    if isinstance(data.obj, bytes) and data.contiguous and data.nbytes == len(data.obj):
        return data.obj
    return _ViewReader(data)  # type: ignore[return-value]


def _account_key_of(connection_string: str) -> tuple[str, str]:
    pairs = parse_connection_string(connection_string)
    name, key = pairs.get("accountname"), pairs.get("accountkey")
    if not name or not key:
        raise ConfigurationError(
            "claim_check.blob_storage.connection_string: it has no AccountName and AccountKey, "
            "so read-only links cannot be signed. Use the account's key connection string "
            "(portal: Access keys), or set claim_check.blob_storage.account_url and use "
            "azure-identity (user-delegation SAS)."
        )
    return name, key


def _endpoint_of(service_url: str) -> str:
    return redact_url(service_url).rstrip("/")


class AzureBlobPayloadStore(_BlobStoreCore):
    """Payloads in an Azure Blob Storage container (blocking calls; thread-safe)."""

    def __init__(
        self,
        service: BlobServiceClient,
        container_name: str = DEFAULT_CONTAINER,
        *,
        account_key: str | None = None,
        owned_credential: Any = None,
    ) -> None:
        """Use ``service``; ``account_key`` signs account-key SAS, without it the service's
        token credential gets user-delegation keys. ``owned_credential`` is closed with us."""
        super().__init__(
            container_name, _endpoint_of(service.url), service.account_name or "", account_key
        )
        self._service = service
        self._container = service.get_container_client(container_name)
        self._owned_credential = owned_credential
        self._container_lock = threading.Lock()
        self._key_lock = threading.Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, container_name: str = DEFAULT_CONTAINER, **client_kwargs: Any
    ) -> AzureBlobPayloadStore:
        """A store that signs account-key SAS; ``client_kwargs`` go to the SDK client."""
        _, account_key = _account_key_of(connection_string)
        service = BlobServiceClient.from_connection_string(
            connection_string, **client_options(client_kwargs, asynchronous=False)
        )
        return cls(service, container_name, account_key=account_key)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container_name: str = DEFAULT_CONTAINER,
        *,
        credential: TokenCredential | None = None,
        **client_kwargs: Any,
    ) -> AzureBlobPayloadStore:
        """A store that signs user-delegation SAS with ``credential`` (``DefaultAzureCredential``
        when none is given; the store then owns and closes it)."""
        owned = None
        if credential is None:
            from azure.identity import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        service = BlobServiceClient(
            account_url, credential=credential, **client_options(client_kwargs, asynchronous=False)
        )
        return cls(service, container_name, owned_credential=owned)

    @classmethod
    def from_settings(
        cls,
        settings: ClaimCheckSettings,
        *,
        credential: TokenCredential | None = None,
        **client_kwargs: Any,
    ) -> AzureBlobPayloadStore:
        """The store ``claim_check.blob_storage`` describes (connection string or account URL)."""
        storage = settings.blob_storage
        if storage.retry_total is not None:
            client_kwargs.setdefault("retry_total", storage.retry_total)
        if storage.connection_string is not None:
            return cls.from_connection_string(
                storage.connection_string.get_secret_value(),
                settings.container_name,
                **client_kwargs,
            )
        if storage.account_url:
            return cls.from_account_url(
                storage.account_url,
                settings.container_name,
                credential=credential,
                **client_kwargs,
            )
        raise ConfigurationError(
            "claim_check.blob_storage: no storage account configured; set connection_string "
            "or account_url."
        )

    def upload(
        self,
        blob_name: str,
        data: bytes | memoryview,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        sas_expires_on: datetime,
    ) -> StoredPayload:
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only SAS URL."""
        message_id = message_id_of(metadata)
        self._ensure_container(blob_name, message_id)
        # The signing key first: if it cannot be had, no blob is left behind without a link.
        self._ensure_key(sas_expires_on, blob_name, message_id)
        size, sha256 = digest(data)
        metadata = with_sha256(metadata, sha256)
        blob = self._container.get_blob_client(blob_name)
        with self._translated("upload", blob_name, message_id):
            try:
                self._put(blob, data, size, content_type, metadata)
            except HttpResponseError as error:
                if not should_recreate_container(_status_of(error), _error_code_of(error)):
                    raise
                # Deleted since we created it (a cleanup job, a test): create it and retry once.
                self._create_container(blob_name, message_id)
                self._put(blob, data, size, content_type, metadata)
        _log.debug("uploaded payload %s (%d bytes)", self._blob_path(blob_name), size)
        return self._stored(blob.url, blob_name, size, sha256, sas_expires_on)

    def _put(
        self,
        blob: Any,
        data: bytes | memoryview,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        blob.upload_blob(
            upload_body(data),
            length=size,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
            metadata=dict(metadata),
            max_concurrency=UPLOAD_CONCURRENCY,
        )

    def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        with self._translated("delete", blob_name):
            try:
                self._container.get_blob_client(blob_name).delete_blob()
            except HttpResponseError as error:
                if _status_of(error) != 404:
                    raise
                return False
        return True

    def read(self, blob_name: str) -> bytes:
        """The payload's bytes, read with the store's own credentials."""
        with self._translated("read", blob_name):
            downloader = self._container.get_blob_client(blob_name).download_blob()
            return downloader.readall()

    def read_to(self, blob_name: str, sink: BinaryIO) -> int:
        """Stream the payload into ``sink``; returns the number of bytes written."""
        with self._translated("read", blob_name):
            downloader = self._container.get_blob_client(blob_name).download_blob()
            return downloader.readinto(sink)

    def close(self) -> None:
        """Close the SDK client, and the credential if the store created it."""
        self._service.close()
        if self._owned_credential is not None:
            self._owned_credential.close()

    def __enter__(self) -> AzureBlobPayloadStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _ensure_container(self, blob_name: str, message_id: str | None) -> None:
        if self._container_ready:
            return
        with self._container_lock:
            if not self._container_ready:
                self._create_container(blob_name, message_id)
                self._container_ready = True

    def _create_container(self, blob_name: str, message_id: str | None) -> None:
        with self._translated("container creation", blob_name, message_id):
            try:
                self._container.create_container()
            except HttpResponseError as error:
                if container_create_is_fatal(_status_of(error), _error_code_of(error)):
                    raise

    def _ensure_key(self, sas_expires_on: datetime, blob_name: str, message_id: str | None) -> None:
        now = datetime.now(timezone.utc)
        if not self._needs_key(now, sas_expires_on):
            return
        with self._key_lock:
            if self._needs_key(now, sas_expires_on):
                window = delegation_key_window(now)
                with self._translated("user-delegation key request", blob_name, message_id):
                    key = self._service.get_user_delegation_key(window.start, window.expiry)
                self._keep_key(key, window)


class AsyncAzureBlobPayloadStore(_BlobStoreCore):
    """Payloads in an Azure Blob Storage container (``asyncio``; one event loop)."""

    def __init__(
        self,
        service: AsyncBlobServiceClient,
        container_name: str = DEFAULT_CONTAINER,
        *,
        account_key: str | None = None,
        owned_credential: Any = None,
    ) -> None:
        """Use ``service``; ``account_key`` signs account-key SAS, without it the service's
        token credential gets user-delegation keys. ``owned_credential`` is closed with us."""
        super().__init__(
            container_name, _endpoint_of(service.url), service.account_name or "", account_key
        )
        self._service = service
        self._container = service.get_container_client(container_name)
        self._owned_credential = owned_credential
        self._container_lock = asyncio.Lock()
        self._key_lock = asyncio.Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, container_name: str = DEFAULT_CONTAINER, **client_kwargs: Any
    ) -> AsyncAzureBlobPayloadStore:
        """A store that signs account-key SAS; ``client_kwargs`` go to the SDK client."""
        _, account_key = _account_key_of(connection_string)
        service = AsyncBlobServiceClient.from_connection_string(
            connection_string, **client_options(client_kwargs, asynchronous=True)
        )
        return cls(service, container_name, account_key=account_key)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container_name: str = DEFAULT_CONTAINER,
        *,
        credential: AsyncTokenCredential | None = None,
        **client_kwargs: Any,
    ) -> AsyncAzureBlobPayloadStore:
        """A store that signs user-delegation SAS with ``credential`` (``DefaultAzureCredential``
        when none is given; the store then owns and closes it)."""
        owned = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = owned = DefaultAzureCredential()
        service = AsyncBlobServiceClient(
            account_url, credential=credential, **client_options(client_kwargs, asynchronous=True)
        )
        return cls(service, container_name, owned_credential=owned)

    @classmethod
    def from_settings(
        cls,
        settings: ClaimCheckSettings,
        *,
        credential: AsyncTokenCredential | None = None,
        **client_kwargs: Any,
    ) -> AsyncAzureBlobPayloadStore:
        """The store ``claim_check.blob_storage`` describes (connection string or account URL)."""
        storage = settings.blob_storage
        if storage.retry_total is not None:
            client_kwargs.setdefault("retry_total", storage.retry_total)
        if storage.connection_string is not None:
            return cls.from_connection_string(
                storage.connection_string.get_secret_value(),
                settings.container_name,
                **client_kwargs,
            )
        if storage.account_url:
            return cls.from_account_url(
                storage.account_url,
                settings.container_name,
                credential=credential,
                **client_kwargs,
            )
        raise ConfigurationError(
            "claim_check.blob_storage: no storage account configured; set connection_string "
            "or account_url."
        )

    async def upload(
        self,
        blob_name: str,
        data: bytes | memoryview,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        sas_expires_on: datetime,
    ) -> StoredPayload:
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only SAS URL."""
        message_id = message_id_of(metadata)
        await self._ensure_container(blob_name, message_id)
        # The signing key first: if it cannot be had, no blob is left behind without a link.
        await self._ensure_key(sas_expires_on, blob_name, message_id)
        size, sha256 = digest(data)
        metadata = with_sha256(metadata, sha256)
        blob = self._container.get_blob_client(blob_name)
        with self._translated("upload", blob_name, message_id):
            try:
                await self._put(blob, data, size, content_type, metadata)
            except HttpResponseError as error:
                if not should_recreate_container(_status_of(error), _error_code_of(error)):
                    raise
                # Deleted since we created it (a cleanup job, a test): create it and retry once.
                await self._create_container(blob_name, message_id)
                await self._put(blob, data, size, content_type, metadata)
        _log.debug("uploaded payload %s (%d bytes)", self._blob_path(blob_name), size)
        return self._stored(blob.url, blob_name, size, sha256, sas_expires_on)

    async def _put(
        self,
        blob: Any,
        data: bytes | memoryview,
        size: int,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        await blob.upload_blob(
            upload_body(data),
            length=size,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
            metadata=dict(metadata),
            max_concurrency=UPLOAD_CONCURRENCY,
        )

    async def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        with self._translated("delete", blob_name):
            try:
                await self._container.get_blob_client(blob_name).delete_blob()
            except HttpResponseError as error:
                if _status_of(error) != 404:
                    raise
                return False
        return True

    async def read(self, blob_name: str) -> bytes:
        """The payload's bytes, read with the store's own credentials."""
        with self._translated("read", blob_name):
            downloader = await self._container.get_blob_client(blob_name).download_blob()
            return await downloader.readall()

    async def read_to(self, blob_name: str, sink: BinaryIO) -> int:
        """Stream the payload into ``sink``; returns the number of bytes written."""
        with self._translated("read", blob_name):
            downloader = await self._container.get_blob_client(blob_name).download_blob()
            return await downloader.readinto(sink)

    async def close(self) -> None:
        """Close the SDK client, and the credential if the store created it."""
        await self._service.close()
        if self._owned_credential is not None:
            await self._owned_credential.close()

    async def __aenter__(self) -> AsyncAzureBlobPayloadStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _ensure_container(self, blob_name: str, message_id: str | None) -> None:
        if self._container_ready:
            return
        async with self._container_lock:
            if not self._container_ready:
                await self._create_container(blob_name, message_id)
                self._container_ready = True

    async def _create_container(self, blob_name: str, message_id: str | None) -> None:
        with self._translated("container creation", blob_name, message_id):
            try:
                await self._container.create_container()
            except HttpResponseError as error:
                if container_create_is_fatal(_status_of(error), _error_code_of(error)):
                    raise

    async def _ensure_key(
        self, sas_expires_on: datetime, blob_name: str, message_id: str | None
    ) -> None:
        now = datetime.now(timezone.utc)
        if not self._needs_key(now, sas_expires_on):
            return
        async with self._key_lock:
            if self._needs_key(now, sas_expires_on):
                window = delegation_key_window(now)
                with self._translated("user-delegation key request", blob_name, message_id):
                    key = await self._service.get_user_delegation_key(window.start, window.expiry)
                self._keep_key(key, window)
