"""Payloads in Azure Blob Storage: what the async store and its generated sync twin share.

Two ways to sign the read-only links consumers get:

- a connection string with an account key signs account-key SAS (no request needed);
- an account URL and an azure-identity credential sign user-delegation SAS with a key fetched
  from the service, cached, and renewed before it stops covering the links asked for.

Both twins only move bytes; every decision is a function of :mod:`claimcheck_bus.payloads.store`
or of :class:`_BlobStoreCore`. The two classes read line for line alike.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, BinaryIO

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    UserDelegationKey,
    generate_blob_sas,
)

from claimcheck_bus.claim_check.urls import redact_url
from claimcheck_bus.connection_strings import connection_string_pairs
from claimcheck_bus.errors import ConfigurationError, MessageError
from claimcheck_bus.payloads.store import (
    ACCOUNT_KEY_MAX_LIFETIME,
    USER_DELEGATION_MAX_LIFETIME,
    KeyWindow,
    StoredPayload,
    needs_new_delegation_key,
    sas_protocol,
    signed_expiry,
    storage_error,
)

if TYPE_CHECKING:
    pass

_log = logging.getLogger(__name__)

#: Parallel block uploads above the SDK's single-PUT size; 4 was fastest on 2 cores (AZURITE.md).
UPLOAD_CONCURRENCY = 4
DEFAULT_CONTAINER = "claim-check"
#: Largest single-PUT upload of the async twin. aiohttp sends a single PUT's body from copies
#: (measured peak above baseline: +12 MB for 8 MB, +96 MB for 50 MB) while blocks cost about
#: 4 x 4 MiB in flight (+24 MB for 50 or 100 MB); up to 8 MiB one PUT is as lean and faster.
#: The sync twin keeps the SDK's 64 MiB: requests sends the caller's bytes without a copy.
ASYNC_MAX_SINGLE_PUT_SIZE = 8 * 2**20

#: The settings a store built from settings takes its account from (named in errors).
CONNECTION_STRING_SETTING = "claim_check.blob_storage.connection_string"
ACCOUNT_URL_SETTING = "claim_check.blob_storage.account_url"

#: Wait before the first retry of a connection that could not be made, doubled after each.
#: The SDK waits 15 s and more (then 18, 24...): right for a busy service, but a refused or
#: failed connection kept a publish waiting 90 s for an endpoint that is down or wrong.
CONNECT_RETRY_BACKOFF = 0.5

#: The storage SDK's retry options, which a retry policy object takes instead of the client.
RETRY_OPTIONS = (
    "retry_total",
    "retry_connect",
    "retry_read",
    "retry_status",
    "retry_to_secondary",
    "initial_backoff",
    "increment_base",
    "random_jitter_range",
)


def client_options(client_kwargs: dict[str, Any], *, asynchronous: bool) -> dict[str, Any]:
    """The SDK client's options: the caller's, plus our defaults where the caller set none."""
    defaults: dict[str, Any] = (
        {"max_single_put_size": ASYNC_MAX_SINGLE_PUT_SIZE} if asynchronous else {}
    )
    return {**defaults, **client_kwargs}


def split_retry_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as (retry policy options, the rest): a client given a ``retry_policy``
    ignores the retry options, so they go to the policy object."""
    retry = {name: value for name, value in options.items() if name in RETRY_OPTIONS}
    return retry, {name: value for name, value in options.items() if name not in RETRY_OPTIONS}


def retry_backoff(retry_number: int, connection_failed: bool, sdk_backoff: float) -> float:
    """Seconds to wait before retry ``retry_number`` (from 1) of a storage request.

    A request that could not even connect (refused, unresolvable, connect timeout) is retried
    after :data:`CONNECT_RETRY_BACKOFF` doubled each time (0.5, 1, 2 s: a blip passes, an
    endpoint that is down fails within seconds); an HTTP answer asking to back off (5xx, 429)
    keeps the SDK's ``sdk_backoff``.
    """
    if connection_failed:
        return float(CONNECT_RETRY_BACKOFF * 2 ** max(retry_number - 1, 0))
    return sdk_backoff


def connection_failed(retry_settings: dict[str, Any]) -> bool:
    """Whether the storage SDK's last failed attempt (in its retry ``settings``) never got an
    HTTP answer: the SDK raises ``ServiceRequestError`` when it could not send the request."""
    history = retry_settings.get("history") or []
    return bool(history) and isinstance(getattr(history[-1], "error", None), ServiceRequestError)


class BlobStoreCore:
    """What both twins share: the container, the endpoint, signing and error translation."""

    def __init__(
        self,
        container_name: str,
        endpoint: str,
        account_name: str,
        account_key: str | None,
        setting: str | None = None,
    ) -> None:
        self.container_name = container_name
        self._endpoint = endpoint
        self._setting = setting
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
                status_of(error),
                error_code_of(error),
                type(error).__name__,
                blob_path=self._blob_path(blob_name),
                message_id=message_id,
                authentication=isinstance(error, ClientAuthenticationError),
                endpoint=self._endpoint,
                setting=self._setting,
            ) from None


def status_of(error: BaseException) -> int | None:
    return error.status_code if isinstance(error, HttpResponseError) else None


def error_code_of(error: BaseException) -> str | None:
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


def account_key_of(connection_string: str) -> tuple[str, str]:
    pairs = connection_string_pairs(connection_string)
    name, key = pairs.get("accountname"), pairs.get("accountkey")
    if not name or not key:
        raise ConfigurationError(
            "claim_check.blob_storage.connection_string: it has no AccountName and AccountKey, "
            "so read-only links cannot be signed. Use the account's key connection string "
            "(portal: Access keys), or set claim_check.blob_storage.account_url and use "
            "azure-identity (user-delegation SAS)."
        )
    return name, key


def endpoint_of(service_url: str) -> str:
    return redact_url(service_url).rstrip("/")
