# Generated from claimcheck_bus/_async/azure_blob.py by scripts/unasync.py: do not edit.
"""Payloads in an Azure Blob Storage container: :class:`AzureBlobPayloadStore`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from threading import Lock
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContentSettings, ExponentialRetry

from claimcheck_bus.errors import ConfigurationError
from claimcheck_bus.payloads.azure_blob import (
    ACCOUNT_URL_SETTING,
    CONNECTION_STRING_SETTING,
    DEFAULT_CONTAINER,
    UPLOAD_CONCURRENCY,
    BlobStoreCore,
    account_key_of,
    client_options,
    connection_failed,
    endpoint_of,
    error_code_of,
    retry_backoff,
    split_retry_options,
    status_of,
    upload_body,
)
from claimcheck_bus.payloads.store import (
    StoredPayload,
    container_create_is_fatal,
    delegation_key_window,
    digest,
    message_id_of,
    should_recreate_container,
    with_sha256,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from claimcheck_bus.settings import ClaimCheckSettings

_log = logging.getLogger("claimcheck_bus.payloads")


class StorageRetry(ExponentialRetry):
    """The storage SDK's exponential retry, with short waits after failed connections
    (:func:`~claimcheck_bus.payloads.azure_blob.retry_backoff`)."""

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        """The SDK's backoff, or a short one when the last attempt could not connect."""
        return retry_backoff(
            settings["count"], connection_failed(settings), super().get_backoff_time(settings)
        )


def _sdk_options(client_kwargs: dict[str, Any]) -> dict[str, Any]:
    options = client_options(client_kwargs, asynchronous=False)
    if "retry_policy" in options:
        return options
    retry, rest = split_retry_options(options)
    return {**rest, "retry_policy": StorageRetry(**retry)}


class AzureBlobPayloadStore(BlobStoreCore):
    """Payloads in an Azure Blob Storage container (safe to share between threads in sync
    code, and between tasks of one event loop in async code)."""

    def __init__(
        self,
        service: BlobServiceClient,
        container_name: str = DEFAULT_CONTAINER,
        *,
        account_key: str | None = None,
        owned_credential: Any = None,
        setting: str | None = None,
    ) -> None:
        """Use ``service``; ``account_key`` signs account-key SAS, without it the service's
        token credential gets user-delegation keys. ``owned_credential`` is closed with us.
        ``setting`` names where the account came from, for errors."""
        super().__init__(
            container_name,
            endpoint_of(service.url),
            service.account_name or "",
            account_key,
            setting,
        )
        self._service = service
        self._container = service.get_container_client(container_name)
        self._owned_credential = owned_credential
        self._container_lock = Lock()
        self._key_lock = Lock()

    @classmethod
    def from_connection_string(
        cls, connection_string: str, container_name: str = DEFAULT_CONTAINER, **client_kwargs: Any
    ) -> AzureBlobPayloadStore:
        """A store that signs account-key SAS; ``client_kwargs`` go to the SDK client."""
        _, account_key = account_key_of(connection_string)
        service = BlobServiceClient.from_connection_string(
            connection_string, **_sdk_options(client_kwargs)
        )
        return cls(
            service, container_name, account_key=account_key, setting=CONNECTION_STRING_SETTING
        )

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
            account_url, credential=credential, **_sdk_options(client_kwargs)
        )
        return cls(service, container_name, owned_credential=owned, setting=ACCOUNT_URL_SETTING)

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
        content_encoding: str | None = None,
    ) -> StoredPayload:
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only SAS URL."""
        message_id = message_id_of(metadata)
        self._ensure_container(blob_name, message_id)
        # The signing key first: if it cannot be had, no blob is left behind without a link.
        self._ensure_key(sas_expires_on, blob_name, message_id)
        size, sha256 = digest(data)
        metadata = with_sha256(metadata, sha256)
        blob = self._container.get_blob_client(blob_name)
        content = ContentSettings(content_type=content_type, content_encoding=content_encoding)
        with self._translated("upload", blob_name, message_id):
            try:
                self._put(blob, data, size, content, metadata)
            except HttpResponseError as error:
                if not should_recreate_container(status_of(error), error_code_of(error)):
                    raise
                # Deleted since we created it (a cleanup job, a test): create it and retry once.
                self._create_container(blob_name, message_id)
                self._put(blob, data, size, content, metadata)
        _log.debug("uploaded payload %s (%d bytes)", self._blob_path(blob_name), size)
        return self._stored(blob.url, blob_name, size, sha256, sas_expires_on)

    def _put(
        self,
        blob: Any,
        data: bytes | memoryview,
        size: int,
        content: ContentSettings,
        metadata: Mapping[str, str],
    ) -> None:
        blob.upload_blob(
            upload_body(data),
            length=size,
            overwrite=True,
            content_settings=content,
            metadata=dict(metadata),
            max_concurrency=UPLOAD_CONCURRENCY,
        )

    def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        with self._translated("delete", blob_name):
            try:
                self._container.get_blob_client(blob_name).delete_blob()
            except HttpResponseError as error:
                if status_of(error) != 404:
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
                if container_create_is_fatal(status_of(error), error_code_of(error)):
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
