"""Payloads in memory, for unit tests: :class:`MemoryPayloadStore` and its asyncio twin.

They behave as the Azure store does where a caller can observe it: overwrite on upload, delete
returns False when the payload was already gone, a missing payload raises
:class:`~claimcheck_bus.errors.PayloadNotFoundError`, and each upload returns a read-only link
signed for that one blob until the requested expiry. The links answer plain HTTP through
:meth:`MemoryPayloadStore.transport` (an ``httpx`` transport): 200 with the bytes and content
type, 403 for a tampered, expired, other-blob or non-GET request, 404 for a valid link to a
deleted payload. Their host is under ``.invalid``, so no real request can ever leave the process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import httpx

from claimcheck_bus.payloads.store import (
    ACCOUNT_KEY_MAX_LIFETIME,
    StoredPayload,
    digest,
    storage_error,
    with_sha256,
)

MEMORY_ENDPOINT = "https://payloads.memory.invalid/memoryaccount"
_SAS_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class MemoryBlob:
    """One stored payload, as a test may inspect it."""

    data: bytes = field(repr=False)
    content_type: str
    metadata: Mapping[str, str]


class MemoryCore:
    """The blobs, the signing secret and the HTTP face, shared by both twins (no I/O)."""

    def __init__(
        self,
        container_name: str = "claim-check",
        *,
        endpoint: str = MEMORY_ENDPOINT,
        clock: Callable[[], datetime] = _utc_now,
        max_sas_lifetime: timedelta | None = ACCOUNT_KEY_MAX_LIFETIME,
    ) -> None:
        self.container_name = container_name
        self._endpoint = endpoint.rstrip("/")
        self._clock = clock
        self._max_sas_lifetime = max_sas_lifetime
        self._blobs: dict[str, MemoryBlob] = {}
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(container={self.container_name!r}, blobs={len(self._blobs)})"

    @property
    def endpoint(self) -> str:
        """The fake blob service URL payload links start with (under ``.invalid``)."""
        return self._endpoint

    @property
    def max_sas_lifetime(self) -> timedelta | None:
        """The longest link this store signs (as the Azure store with an account key)."""
        return self._max_sas_lifetime

    def blobs(self) -> dict[str, MemoryBlob]:
        """A snapshot of every stored payload, by blob name."""
        with self._lock:
            return dict(self._blobs)

    def transport(self) -> httpx.MockTransport:
        """An httpx transport answering this store's links as Blob Storage would (sync/async)."""
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        """Answer one HTTP request for a payload link."""
        url = urlsplit(str(request.url))
        prefix = urlsplit(f"{self._endpoint}/{self.container_name}/")
        if (url.scheme, url.netloc) != (prefix.scheme, prefix.netloc) or not url.path.startswith(
            prefix.path
        ):
            return _refusal(400, "InvalidUri")
        blob_name = unquote(url.path[len(prefix.path) :])
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        if request.method not in ("GET", "HEAD"):
            return _refusal(403, "AuthorizationPermissionMismatch")
        expiry = query.get("se", "")
        expected = self._signature(blob_name, expiry, query.get("sp", ""))
        if query.get("sp") != "r" or not hmac.compare_digest(query.get("sig", ""), expected):
            return _refusal(403, "AuthenticationFailed")
        try:
            expires_on = datetime.strptime(expiry, _SAS_TIME_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            return _refusal(403, "AuthenticationFailed")
        if self._clock() >= expires_on:
            return _refusal(403, "AuthenticationFailed")
        with self._lock:
            blob = self._blobs.get(blob_name)
        if blob is None:
            return _refusal(404, "BlobNotFound")
        headers = {"content-type": blob.content_type, "content-length": str(len(blob.data))}
        headers.update({f"x-ms-meta-{name}": value for name, value in blob.metadata.items()})
        return httpx.Response(200, headers=headers, content=blob.data)

    def _signature(self, blob_name: str, expiry: str, permission: str) -> str:
        text = f"{self.container_name}/{blob_name}\n{expiry}\n{permission}".encode()
        mac = hmac.new(self._secret, text, hashlib.sha256).digest()
        return base64.b64encode(mac).decode()

    def _put(
        self,
        blob_name: str,
        data: bytes | memoryview,
        content_type: str,
        metadata: Mapping[str, str],
        sas_expires_on: datetime,
    ) -> StoredPayload:
        size, sha256 = digest(data)
        metadata = with_sha256(metadata, sha256)
        with self._lock:
            self._blobs[blob_name] = MemoryBlob(bytes(data), content_type, dict(metadata))
        expiry = sas_expires_on.astimezone(timezone.utc).strftime(_SAS_TIME_FORMAT)
        query = urlencode(
            {"sp": "r", "se": expiry, "sr": "b", "sig": self._signature(blob_name, expiry, "r")}
        )
        url = f"{self._endpoint}/{self.container_name}/{quote(blob_name, safe='/~')}?{query}"
        return StoredPayload(url=url, blob_name=blob_name, size=size, sha256=sha256)

    def _remove(self, blob_name: str) -> bool:
        with self._lock:
            return self._blobs.pop(blob_name, None) is not None

    def _get(self, blob_name: str) -> bytes:
        with self._lock:
            blob = self._blobs.get(blob_name)
        if blob is None:
            raise storage_error(
                "read",
                404,
                "BlobNotFound",
                "",
                blob_path=f"{self.container_name}/{blob_name}",
                message_id=None,
            )
        return blob.data


def _refusal(status: int, code: str) -> httpx.Response:
    return httpx.Response(status, headers={"x-ms-error-code": code})
