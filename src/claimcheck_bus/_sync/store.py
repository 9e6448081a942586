# Generated from claimcheck_bus/_async/store.py by scripts/unasync.py: do not edit.
"""The payload store interface: keeps claim-checked payloads and signs read-only links."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol

from claimcheck_bus.payloads.store import StoredPayload


class PayloadStore(Protocol):
    """Keeps claim-checked payloads; implementations may be used from one thread (sync) or one
    event loop (async) at a time unless they say otherwise."""

    container_name: str

    @property
    def endpoint(self) -> str:
        """The blob service URL (``scheme://host[:port]/[account]``) payload URLs start with."""
        ...

    @property
    def max_sas_lifetime(self) -> timedelta | None:
        """The longest read-only SAS this store signs (``None``: no limit)."""
        ...

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
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only SAS URL;
        ``content_encoding`` (e.g. ``gzip``) becomes the blob's ``Content-Encoding``.

        Creates the container on first use (once per store instance)."""
        ...

    def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        ...

    def read(self, blob_name: str) -> bytes:
        """The payload's bytes, read with the store's own credentials."""
        ...

    def read_to(self, blob_name: str, sink: BinaryIO) -> int:
        """Stream the payload into ``sink``; returns the number of bytes written."""
        ...

    def close(self) -> None:
        """Release connections (and credentials the store created itself)."""
        ...
