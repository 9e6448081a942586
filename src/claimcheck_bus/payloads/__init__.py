"""Payload storage and download: the stores, and the decisions they and the downloader take.

- :mod:`~claimcheck_bus.payloads.store`: blob names, metadata, SAS lifetimes, storage errors.
- :mod:`~claimcheck_bus.payloads.download`: the download policy and its state machine.
- The stores themselves (Azure Blob Storage, and in memory for unit tests), each in a blocking
  and an ``asyncio`` form, exported here.
"""

from claimcheck_bus._async.azure_blob import AsyncAzureBlobPayloadStore
from claimcheck_bus._async.memory import AsyncMemoryPayloadStore
from claimcheck_bus._async.store import AsyncPayloadStore
from claimcheck_bus._sync.azure_blob import AzureBlobPayloadStore
from claimcheck_bus._sync.memory import MemoryPayloadStore
from claimcheck_bus._sync.store import PayloadStore
from claimcheck_bus.payloads.store import StoredPayload

__all__ = [
    "AsyncAzureBlobPayloadStore",
    "AsyncMemoryPayloadStore",
    "AsyncPayloadStore",
    "AzureBlobPayloadStore",
    "MemoryPayloadStore",
    "PayloadStore",
    "StoredPayload",
]
