"""The wire format (docs/wire-format.md) as pure functions: sizes, routes, properties.

Nothing here does I/O; the sync and async clients call these and only move bytes.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from claimcheck_bus.errors import InvalidClaimCheckError, PayloadTooLargeError

IS_CLAIM_CHECK = "IsClaimCheck"
BLOB_URI = "ClaimCheckBlobUri"
SIZE = "ClaimCheckSize"
SHA256 = "ClaimCheckSha256"
CONTENT_ENCODING = "ClaimCheckContentEncoding"
#: The CloudEvents AMQP binding's current prefix; readers also accept the older ``cloudEvents:``.
CLOUDEVENTS_PREFIX = "cloudEvents_"
_CLOUDEVENTS_PREFIXES = ("cloudEvents_", "cloudEvents:")
CLAIM_CHECK_KEYS = frozenset({IS_CLAIM_CHECK, BLOB_URI, SIZE, SHA256, CONTENT_ENCODING})

#: Service Bus Standard tier's message limit: what applies when nothing else is known.
STANDARD_TIER_MAX = 256 * 1024


class Route(enum.Enum):
    """How a payload travels."""

    INLINE = "inline"
    CLAIM_CHECK = "claim-check"


def data_section_size(body_length: int) -> int:
    """Encoded size of one AMQP data section holding ``body_length`` bytes.

    Descriptor (3 bytes) plus a vbin8 (2 + n) below 256 bytes, else a vbin32 (5 + n).
    """
    return 3 + (2 if body_length < 256 else 5) + body_length


def wire_size(envelope_size: int, body_length: int) -> int:
    """The encoded size of a message whose envelope (everything but the body, measured with an
    empty data section) is ``envelope_size``, once it carries ``body_length`` bytes.

    This lets a 100 MB payload be measured without encoding it.
    """
    return envelope_size - data_section_size(0) + data_section_size(body_length)


#: Generous room for the header, the properties list (13 fields, nulls included), the
#: section descriptors and the application-properties map framing.
_ENVELOPE_FRAMING = 160


def encoded_size_bound(value: Any) -> int | None:
    """An upper bound of one value's AMQP encoding, ``None`` for types it cannot bound."""
    if value is None or isinstance(value, bool):
        return 2
    if isinstance(value, str):
        return 5 + len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return 5 + len(value)
    if isinstance(value, (int, float, timedelta)):
        return 9
    if isinstance(value, (uuid.UUID, datetime)):
        return 17
    if isinstance(value, Mapping) and set(value) == {"TYPE", "VALUE"}:
        return 17  # an explicitly typed scalar (see _sdk.amqp_long)
    return None


def envelope_bound(
    application_properties: Mapping[str, Any], system_values: Iterable[Any]
) -> int | None:
    """An upper bound of a message's encoded size without its body (``None``: measure it).

    Lets small messages skip an exact measurement that costs a full SDK encode.
    """
    total = _ENVELOPE_FRAMING + data_section_size(0)
    for item in (*application_properties.keys(), *application_properties.values(), *system_values):
        bound = encoded_size_bound(item)
        if bound is None:
            return None
        total += bound
    return total


def offload_limit(threshold_kb: int | None, entity_max_bytes: int | None) -> int:
    """The largest message that may travel inline: the smaller of the configured threshold and
    the entity's own limit (the one the link reports)."""
    limits = [entity_max_bytes or STANDARD_TIER_MAX]
    if threshold_kb is not None:
        limits.append(threshold_kb * 1024)
    return min(limits)


def choose_route(
    size: int,
    *,
    enabled: bool,
    always: bool,
    threshold_kb: int | None,
    entity_max_bytes: int | None,
    message_id: str | None = None,
    entity: str | None = None,
) -> Route:
    """Inline or claim-check for a message of ``size`` encoded bytes.

    With claim-check disabled, a message the entity cannot take raises
    :class:`PayloadTooLargeError` before anything is sent; the threshold is then ignored.
    """
    if not enabled:
        limit = entity_max_bytes or STANDARD_TIER_MAX
        if size > limit:
            raise PayloadTooLargeError(
                f"message is {size} bytes on the wire, above the entity's limit of {limit} bytes, "
                "and claim-check is disabled; nothing was sent",
                message_id=message_id,
                entity=entity,
                hint="Enable claim-check (CLAIMCHECK_CLAIM_CHECK__ENABLED=true) or send less.",
            )
        return Route.INLINE
    if always or size > offload_limit(threshold_kb, entity_max_bytes):
        return Route.CLAIM_CHECK
    return Route.INLINE


def cloudevent_properties(
    *, event_type: str, message_id: str, source: str, time: datetime
) -> dict[str, str]:
    """CloudEvents binary-mode attributes, so type and id are readable without the body."""
    return {
        f"{CLOUDEVENTS_PREFIX}specversion": "1.0",
        f"{CLOUDEVENTS_PREFIX}type": event_type,
        f"{CLOUDEVENTS_PREFIX}source": source,
        f"{CLOUDEVENTS_PREFIX}id": message_id,
        # RFC 3339 with a fixed width, so equal events measure the same size.
        f"{CLOUDEVENTS_PREFIX}time": time.astimezone(timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        ),
    }


def claim_check_properties(
    url: str, *, size: Any, sha256: str, content_encoding: str | None = None
) -> dict[str, Any]:
    """The application properties of a claim-checked message; ``size`` comes typed by the
    caller so that the SDK encodes it as an AMQP long, as the contract says. ``size`` and
    ``sha256`` describe the bytes as stored (compressed, with a ``content_encoding``)."""
    properties = {IS_CLAIM_CHECK: True, BLOB_URI: url, SIZE: size, SHA256: sha256}
    if content_encoding is not None:
        properties[CONTENT_ENCODING] = content_encoding
    return properties


def normalise_properties(properties: Mapping[Any, Any] | None) -> dict[str, Any]:
    """Application properties with ``str`` keys and UTF-8 ``bytes`` values decoded.

    The SDK hands received keys and string values back as ``bytes``; other tools give ``str``.
    Binary values that are not UTF-8 stay ``bytes``.
    """
    result: dict[str, Any] = {}
    for key, value in (properties or {}).items():
        name = key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else str(key)
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                value = bytes(value)
        result[name] = value
    return result


def is_true_flag(value: object) -> bool:
    """``IsClaimCheck`` semantics: boolean true, or the strings "true"/"True"."""
    return value is True or value in ("true", "True")


def declares_claim_check(properties: Mapping[str, Any]) -> bool:
    """True when a message says it is claim-checked (valid or not)."""
    return is_true_flag(properties.get(IS_CLAIM_CHECK))


@dataclass(frozen=True)
class ClaimCheckRef:
    """What a claim-checked message says about its payload."""

    url: str
    size: int | None = None
    sha256: str | None = None
    content_encoding: str | None = None


def read_claim_check(
    properties: Mapping[str, Any], *, message_id: str | None = None, entity: str | None = None
) -> ClaimCheckRef | None:
    """The claim-check a message carries, ``None`` for an inline message.

    Raises :class:`InvalidClaimCheckError` when ``IsClaimCheck`` is true but the URI is missing
    or not a string, or the optional size/hash are malformed.
    """
    if not declares_claim_check(properties):
        return None

    def invalid(problem: str) -> InvalidClaimCheckError:
        return InvalidClaimCheckError(
            problem,
            message_id=message_id,
            entity=entity,
            hint="The sender must set ClaimCheckBlobUri to the payload's URL with a read SAS.",
        )

    url = properties.get(BLOB_URI)
    if not isinstance(url, str) or not url.strip():
        raise invalid(f"message has {IS_CLAIM_CHECK}=true but no usable {BLOB_URI}")
    size = properties.get(SIZE)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise invalid(f"{SIZE} is not a byte count")
    sha256 = properties.get(SHA256)
    if sha256 is not None and not (isinstance(sha256, str) and _is_sha256_hex(sha256)):
        raise invalid(f"{SHA256} is not a hex SHA-256")
    encoding = properties.get(CONTENT_ENCODING)
    if encoding is not None and not isinstance(encoding, str):
        raise invalid(f"{CONTENT_ENCODING} is not a string")
    return ClaimCheckRef(url=url.strip(), size=size, sha256=sha256, content_encoding=encoding)


def _is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


def cloudevent_attribute(properties: Mapping[str, Any], name: str) -> Any:
    """A CloudEvents attribute under either binding prefix, or ``None``."""
    for prefix in _CLOUDEVENTS_PREFIXES:
        if prefix + name in properties:
            return properties[prefix + name]
    return None
