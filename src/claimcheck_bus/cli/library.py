"""The library internals the commands use, imported here alone.

The public ``claimcheck_bus`` names and ``claimcheck_bus.settings`` are imported directly;
what else the commands need (payload store, blob naming and metadata, wire properties,
receive decisions) comes through this module, so a move inside the library re-points one
import line here."""

from __future__ import annotations

from claimcheck_bus._sdk import amqp_long
from claimcheck_bus.claim_check.rehydration import (
    IncomingMessage,
    ReceivePolicy,
    incoming_from,
    may_use_credentials,
    plan,
)
from claimcheck_bus.claim_check.urls import redact_url
from claimcheck_bus.claim_check.wire import (
    BLOB_URI,
    CONTENT_ENCODING,
    SIZE,
    declares_claim_check,
    normalise_properties,
)
from claimcheck_bus.payloads import AzureBlobPayloadStore
from claimcheck_bus.payloads.store import (
    META_ENTITY,
    META_EXPIRES_AT,
    META_MESSAGE_ID,
    META_PUBLISHED_AT,
    decode_metadata_value,
    message_expiry,
    parse_metadata_time,
    payload_metadata,
    sas_expiry,
)

__all__ = [
    "BLOB_URI",
    "CONTENT_ENCODING",
    "META_ENTITY",
    "META_EXPIRES_AT",
    "META_MESSAGE_ID",
    "META_PUBLISHED_AT",
    "SIZE",
    "AzureBlobPayloadStore",
    "IncomingMessage",
    "ReceivePolicy",
    "amqp_long",
    "declares_claim_check",
    "decode_metadata_value",
    "incoming_from",
    "may_use_credentials",
    "message_expiry",
    "normalise_properties",
    "parse_metadata_time",
    "payload_metadata",
    "plan",
    "redact_url",
    "sas_expiry",
]
