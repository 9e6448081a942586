"""Payloads in memory, for unit tests: :class:`AsyncMemoryPayloadStore` (see
:mod:`claimcheck_bus.payloads.memory` for how its links behave)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import BinaryIO

from claimcheck_bus.payloads.memory import MemoryCore
from claimcheck_bus.payloads.store import StoredPayload


class AsyncMemoryPayloadStore(MemoryCore):
    """Payloads in a dict: a stand-in for unit tests (thread-safe)."""

    async def upload(
        self,
        blob_name: str,
        data: bytes | memoryview,
        *,
        content_type: str,
        metadata: Mapping[str, str],
        sas_expires_on: datetime,
        content_encoding: str | None = None,
    ) -> StoredPayload:
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only link."""
        return self._put(blob_name, data, content_type, metadata, sas_expires_on)

    async def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        return self._remove(blob_name)

    async def read(self, blob_name: str) -> bytes:
        """The payload's bytes."""
        return self._get(blob_name)

    async def read_to(self, blob_name: str, sink: BinaryIO) -> int:
        """Write the payload into ``sink``; returns the number of bytes written."""
        data = self._get(blob_name)
        sink.write(data)
        return len(data)

    async def close(self) -> None:
        """Nothing to release; the payloads stay readable."""

    async def __aenter__(self) -> AsyncMemoryPayloadStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
