"""Payload store implementations: Azure Blob Storage, and in memory for unit tests.

The interface is :mod:`claimcheck_bus.payload_store`.
"""

from claimcheck_bus.payload_stores.azure_blob import (
    AsyncAzureBlobPayloadStore,
    AzureBlobPayloadStore,
)
from claimcheck_bus.payload_stores.memory import AsyncMemoryPayloadStore, MemoryPayloadStore

__all__ = [
    "AsyncAzureBlobPayloadStore",
    "AsyncMemoryPayloadStore",
    "AzureBlobPayloadStore",
    "MemoryPayloadStore",
]
