# Generated from claimcheck_bus/_async/memory.py by scripts/unasync.py: do not edit.
"""Payloads in memory, for unit tests: :class:`MemoryPayloadStore` (see
:mod:`claimcheck_bus.payloads.memory` for how its links behave)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import BinaryIO

from claimcheck_bus.payloads.memory import MemoryCore
from claimcheck_bus.payloads.store import StoredPayload


class MemoryPayloadStore(MemoryCore):
    """Payloads in a dict: a stand-in for unit tests (thread-safe)."""

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
        """Store ``data`` as ``blob_name`` (overwriting) and return its read-only link."""
        return self._put(blob_name, data, content_type, metadata, sas_expires_on)

    def delete(self, blob_name: str) -> bool:
        """Delete the payload; False when it was already gone."""
        return self._remove(blob_name)

    def read(self, blob_name: str) -> bytes:
        """The payload's bytes."""
        return self._get(blob_name)

    def read_to(self, blob_name: str, sink: BinaryIO) -> int:
        """Write the payload into ``sink``; returns the number of bytes written."""
        data = self._get(blob_name)
        sink.write(data)
        return len(data)

    def close(self) -> None:
        """Nothing to release; the payloads stay readable."""

    def __enter__(self) -> MemoryPayloadStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
