"""Where claim-checked payloads are kept: the store interface and its decisions (no I/O).

A payload store uploads a payload under a name of :func:`blob_name_for`, and returns a URL with a
read-only SAS for that one blob, valid until :func:`sas_expiry`. Consumers fetch that URL with a
plain HTTP GET and need no storage credentials; the publisher's own code can read and delete with
the store's credentials.

Implementations live in :mod:`claimcheck_bus.payloads` (Azure Blob Storage, and an
in-memory store for unit tests). Everything they decide alike (names, metadata, SAS lifetime,
delegation-key refresh, how a storage status maps to an error) is a pure function here, so the
sync and async twins only move bytes.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from urllib.parse import quote, unquote, urlsplit

from claimcheck_bus.claim_check.urls import redact_url
from claimcheck_bus.errors import (
    ConfigurationError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadNotFoundError,
    PayloadUnavailableError,
    TimeToLiveTooLongError,
)
from claimcheck_bus.settings import env_var

#: A user-delegation key, and so any SAS it signs, lives at most 7 days (an Azure limit).
USER_DELEGATION_MAX_LIFETIME = timedelta(days=7)
#: Account-key SAS have no service limit; we refuse to mint read links beyond a year.
ACCOUNT_KEY_MAX_LIFETIME = timedelta(days=365)
#: Azure's longest blob name, in characters of the (unescaped) name.
MAX_BLOB_NAME_LENGTH = 1024
#: Azure refuses names with more path segments than this.
MAX_BLOB_NAME_SEGMENTS = 254
#: Azure's limit on all metadata names and values of one blob together.
MAX_METADATA_BYTES = 8 * 1024
#: Extension of every payload blob (docs/wire-format.md): the blob holds the event's JSON.
PAYLOAD_EXTENSION = ".json"

#: Clock skew tolerated between us and the storage service when asking for a delegation key.
DELEGATION_KEY_CLOCK_SKEW = timedelta(minutes=5)
#: Fetch a fresh delegation key when it would cover a SAS this much longer than the cached one.
DELEGATION_KEY_REFRESH_GAIN = timedelta(hours=1)

# Metadata names are C# identifiers (Azure); these are ours, in one place.
META_MESSAGE_ID = "message_id"
META_EVENT_TYPE = "event_type"
META_ENTITY = "entity"
META_SHA256 = "sha256"
META_CONTENT_ENCODING = "content_encoding"
#: When the payload was uploaded, and the latest time its message can still exist (absent for
#: messages without a time-to-live): what ``claimcheck-bus sweep`` decides on.
META_PUBLISHED_AT = "published_at"
META_EXPIRES_AT = "expires_at"


@dataclass(frozen=True)
class StoredPayload:
    """Where a payload was stored, and the read-only link consumers fetch it with."""

    url: str = field(repr=False)
    """Blob URL plus a read-only SAS for that one blob. Secret: never log it (see ``redacted``)."""
    blob_name: str
    """The name inside the container, e.g. ``orders/OrderCreated/<id>.json``."""
    size: int
    sha256: str
    """Hex SHA-256 of the bytes as stored."""

    @property
    def redacted_url(self) -> str:
        """The URL without its SAS, safe for logs and errors."""
        return redact_url(self.url)


# --- names -------------------------------------------------------------------------------------


def blob_name_for(entity: str, event_type: str, message_id: str) -> str:
    """``{entity}/{EventTypeName}/{id}.json`` (docs/wire-format.md), escaped where needed.

    Readable names stay as they are. Slashes in ``entity`` (Service Bus paths such as
    ``sales/orders``) become folders, empty segments are dropped. Slashes in the event type and
    the message id are escaped, so that an id can never climb into another folder. Escaping
    writes each UTF-8 byte as ``~XX`` (``~`` itself becomes ``~7E``, so distinct inputs keep
    distinct names): ``/``, ``%``, backslashes, control and other non-printable characters,
    lone surrogates, and dot segments (``.``/``..``, which HTTP clients would resolve away).
    ``~`` rather than ``%``: a name holding ``%2F`` would decode to a separator one level
    down, and receivers refuse such payload URLs (:func:`~claimcheck_bus.claim_check.urls.
    segment_problem`).
    """
    if not message_id:
        raise MessageError("a claim-checked message needs a message id", entity=entity or None)
    segments = [_escape(part) for part in entity.split("/") if part]
    if not segments or not event_type:
        raise MessageError(
            "a payload blob name needs an entity and an event type name",
            message_id=message_id,
            entity=entity or None,
            hint="Pass the queue or topic name and the event's type name.",
        )
    segments.append(_escape(event_type, "/"))
    segments.append(_escape(message_id, "/") + PAYLOAD_EXTENSION)
    name = "/".join(segments)
    if len(name) > MAX_BLOB_NAME_LENGTH or len(segments) > MAX_BLOB_NAME_SEGMENTS:
        raise MessageError(
            f"the payload blob name would have {len(name)} characters in {len(segments)} "
            f"segments; Azure allows {MAX_BLOB_NAME_LENGTH} and {MAX_BLOB_NAME_SEGMENTS}",
            message_id=message_id[:128],
            entity=entity[:260],
            hint="Use a shorter entity name, event type name or message id.",
        )
    return name


def _escape(text: str, also: str = "") -> str:
    escaped = "".join(_escape_char(char) if _must_escape(char, also) else char for char in text)
    if escaped in (".", ".."):
        return escaped.replace(".", "~2E")
    return escaped


def _must_escape(char: str, also: str) -> bool:
    # Cc: control characters Azure refuses; Cs: lone surrogates that cannot be UTF-8 encoded;
    # Cn: unassigned code points and non-characters (U+FFFE, U+FFFF) Azure refuses too.
    return char in "%~\\" or char in also or unicodedata.category(char) in ("Cc", "Cs", "Cn")


def _escape_char(char: str) -> str:
    return "".join(f"~{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def unescape_name_segment(segment: str) -> str:
    """The text a :func:`blob_name_for` segment was escaped from."""
    raw = re.sub(rb"~([0-9A-F]{2})", lambda m: bytes([int(m[1], 16)]), segment.encode())
    return raw.decode("utf-8", "surrogatepass")


def is_payload_name_of(blob_name: str, entity: str, message_id: str | None) -> bool:
    """True when ``blob_name`` is :func:`blob_name_for` of ``message_id`` published to
    ``entity`` (a queue, a topic, or a topic's subscription path), for some event type.

    A receiver uses its own credentials (a fallback read, a delete) only for such names, so a
    sender can never point them at another entity's payloads or at another message's.
    """
    if not message_id:
        return False
    published_to = entity.split("/Subscriptions/", 1)[0]
    prefix = [_escape(part) for part in published_to.split("/") if part]
    segments = blob_name.split("/")
    return (
        bool(prefix)
        and len(segments) == len(prefix) + 2
        and segments[: len(prefix)] == prefix
        and bool(segments[-2])
        and segments[-1] == _escape(message_id, "/") + PAYLOAD_EXTENSION
    )


# --- metadata ----------------------------------------------------------------------------------

# Metadata values travel as HTTP header values: printable ASCII only. Everything else, and "%"
# itself, is percent-encoded so that plain values stay readable and any value round-trips.
_METADATA_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%") + " "


def encode_metadata_value(value: str) -> str:
    """``value`` as a valid metadata value: percent-encoded UTF-8 where not printable ASCII."""
    encoded = quote(value, safe=_METADATA_SAFE, errors="surrogatepass")
    # Azure trims leading and trailing whitespace from header values: keep those spaces.
    if encoded.startswith(" "):
        encoded = "%20" + encoded[1:]
    if encoded.endswith(" "):
        encoded = encoded[:-1] + "%20"
    return encoded


def decode_metadata_value(value: str) -> str:
    """The original text of a value written by :func:`encode_metadata_value`."""
    return unquote(value, errors="surrogatepass")


def payload_metadata(
    message_id: str,
    event_type: str,
    entity: str,
    sha256: str | None = None,
    content_encoding: str | None = None,
    *,
    published_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> dict[str, str]:
    """The blob metadata of a payload: who it belongs to, its hash as stored, when it was
    published and the latest time its message can exist (see :func:`message_expiry`).

    Names are C# identifiers (an Azure rule); values are encoded by
    :func:`encode_metadata_value` (decode with :func:`decode_metadata_value`).
    """
    metadata = {
        META_MESSAGE_ID: message_id,
        META_EVENT_TYPE: event_type,
        META_ENTITY: entity,
    }
    if sha256:
        metadata[META_SHA256] = sha256
    if content_encoding:
        metadata[META_CONTENT_ENCODING] = content_encoding
    if published_at is not None:
        metadata[META_PUBLISHED_AT] = metadata_time(published_at)
    if expires_at is not None:
        metadata[META_EXPIRES_AT] = metadata_time(expires_at)
    encoded = {name: encode_metadata_value(value) for name, value in metadata.items()}
    size = sum(len(name) + len(value) for name, value in encoded.items())
    if size > MAX_METADATA_BYTES:
        raise MessageError(
            f"the payload's blob metadata would take {size} bytes; Azure allows "
            f"{MAX_METADATA_BYTES}",
            message_id=message_id[:128],
            entity=entity[:260],
            hint="Use a shorter message id, entity name or event type name.",
        )
    return encoded


def metadata_time(moment: datetime) -> str:
    """A time as metadata holds it: ISO 8601 UTC to the second (``2026-12-04T15:00:00Z``)."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_metadata_time(value: str | None) -> datetime | None:
    """The time :func:`metadata_time` wrote, or None when absent or unreadable."""
    if not value:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def message_expiry(
    now: datetime, time_to_live: timedelta | None, scheduled: datetime | None = None
) -> datetime | None:
    """The latest time a message can exist: its enqueue time (now, or when scheduled) plus its
    time-to-live, rounded up to a second; None without a time-to-live (it may live forever).

    An entity's shorter default TTL only brings the real expiry earlier, so this is a bound."""
    if time_to_live is None:
        return None
    start = scheduled if scheduled is not None and scheduled > now else now
    return _ceil_to_second(start.astimezone(timezone.utc) + time_to_live)


def message_id_of(metadata: Mapping[str, str]) -> str | None:
    """The message id recorded in a payload's metadata, if any (for error messages)."""
    value = metadata.get(META_MESSAGE_ID)
    return decode_metadata_value(value) if value else None


def with_sha256(metadata: Mapping[str, str], sha256: str) -> dict[str, str]:
    """``metadata`` plus the payload's hash, which stores compute while they have the bytes
    (so a publish hashes its payload once)."""
    return {**metadata, META_SHA256: sha256}


def digest(data: bytes | memoryview) -> tuple[int, str]:
    """Size and hex SHA-256 of ``data`` (without copying it)."""
    view = memoryview(data)
    return view.nbytes, hashlib.sha256(view).hexdigest()


# --- SAS lifetime ------------------------------------------------------------------------------


def sas_expiry(
    now: datetime,
    configured_hours: float,
    time_to_live: timedelta | None,
    max_lifetime: timedelta | None,
    *,
    message_id: str | None = None,
    entity: str | None = None,
) -> datetime:
    """When a payload's read-only SAS expires: ``now`` plus the longer of the configured hours
    and the message's time-to-live, rounded up to a whole second (SAS times have no fractions).

    ``max_lifetime`` is what the signing method may cover: :data:`USER_DELEGATION_MAX_LIFETIME`
    (7 days, the delegation key's limit) or :data:`ACCOUNT_KEY_MAX_LIFETIME` (365 days: an
    account key could sign longer, but an unbounded read link is a liability, so we refuse).
    A time-to-live beyond it raises :class:`TimeToLiveTooLongError`: the message could outlive
    its payload's link. Configured hours beyond it raise :class:`ConfigurationError`.
    ``None`` means no limit.
    """
    if now.tzinfo is None:
        raise ValueError("sas_expiry needs a timezone-aware 'now' (use datetime.now(timezone.utc))")
    configured = timedelta(hours=configured_hours)
    if configured <= timedelta(0):
        raise ConfigurationError(
            f"claim_check.sas_expiry_hours: {configured_hours} must be above 0; it is how long "
            "consumers may fetch a payload."
        )
    if max_lifetime is not None and configured > max_lifetime:
        raise ConfigurationError(
            f"claim_check.sas_expiry_hours: {configured_hours} hours is longer than this "
            f"storage credential's SAS may live ({_describe(max_lifetime)}). Lower it to at most "
            f"{max_lifetime / timedelta(hours=1):g} hours."
        )
    if time_to_live is not None and max_lifetime is not None and time_to_live > max_lifetime:
        raise TimeToLiveTooLongError(
            f"the message's time-to-live is {_describe(time_to_live)}, but the read-only SAS of "
            f"its payload may cover at most {_describe(max_lifetime)}",
            message_id=message_id,
            entity=entity,
            hint=(
                f"Give the message a time-to-live of at most {_describe(max_lifetime)}"
                + (
                    ", or configure the storage account with a connection string (account-key "
                    "SAS may live up to 365 days)."
                    if max_lifetime <= USER_DELEGATION_MAX_LIFETIME
                    else "."
                )
            ),
        )
    lifetime = max(configured, time_to_live) if time_to_live is not None else configured
    return _ceil_to_second(now.astimezone(timezone.utc) + lifetime)


def _ceil_to_second(moment: datetime) -> datetime:
    return moment.replace(microsecond=0) + (
        timedelta(seconds=1) if moment.microsecond else timedelta(0)
    )


def _describe(span: timedelta) -> str:
    hours = span / timedelta(hours=1)
    if hours >= 48 and float(hours / 24).is_integer():
        return f"{hours / 24:g} days"
    return f"{math.ceil(hours * 1000) / 1000:g} hours"


def sas_protocol(endpoint: str) -> str:
    """The SAS ``spr`` for a blob endpoint: ``https`` only, unless the endpoint itself is http
    (a local emulator), where the link must work over http too."""
    return "https" if urlsplit(endpoint).scheme.lower() == "https" else "https,http"


# --- user-delegation keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyWindow:
    """The validity of a user-delegation key."""

    start: datetime
    expiry: datetime


def delegation_key_window(now: datetime) -> KeyWindow:
    """The window to ask for a new delegation key: as long as Azure allows (7 days from the
    service's now), started and ended a little early to tolerate clock skew."""
    return KeyWindow(
        start=now - DELEGATION_KEY_CLOCK_SKEW,
        expiry=now + USER_DELEGATION_MAX_LIFETIME - DELEGATION_KEY_CLOCK_SKEW,
    )


def needs_new_delegation_key(
    now: datetime, sas_expires_on: datetime, cached: KeyWindow | None
) -> bool:
    """Whether signing a SAS until ``sas_expires_on`` needs a fresh delegation key.

    A cached key is reused while it is valid now and covers the SAS. When it falls short, a new
    one is fetched only if it would cover noticeably more (``DELEGATION_KEY_REFRESH_GAIN``): a
    SAS asked for the full 7 days can never be covered to the second, and must not cost a key
    request per upload.
    """
    if cached is None or cached.start > now or cached.expiry <= now + DELEGATION_KEY_CLOCK_SKEW:
        return True
    if sas_expires_on <= cached.expiry:
        return False
    return delegation_key_window(now).expiry - cached.expiry > DELEGATION_KEY_REFRESH_GAIN


def signed_expiry(sas_expires_on: datetime, key: KeyWindow | None) -> datetime:
    """The ``se`` to sign: the requested expiry, capped by the delegation key's (if any), since
    a user-delegation SAS stops working when its key does."""
    return sas_expires_on if key is None else min(sas_expires_on, key.expiry)


# --- storage failures --------------------------------------------------------------------------

#: Statuses worth retrying (the Azure SDK's retry policy already did); after that, unavailable.
_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def storage_error(
    operation: str,
    status: int | None,
    error_code: str | None,
    cause: str,
    *,
    blob_path: str,
    message_id: str | None = None,
    authentication: bool = False,
    endpoint: str | None = None,
    setting: str | None = None,
) -> MessageError:
    """The error to raise for a failed storage call (``status`` None: no HTTP answer at all;
    ``authentication``: getting a token failed, before any request).

    Names the operation, the blob path, the status and the storage error code, and only the
    class name of the cause: its text may carry URLs. ``endpoint`` (the blob service URL, no
    credentials) and ``setting`` (the dotted setting it came from) say where to look when
    storage could not be reached or refused the credentials.
    """
    detail = ", ".join(
        part for part in (f"HTTP {status}" if status else None, error_code, cause) if part
    )
    problem = f"payload {operation} failed ({detail})"
    if endpoint and (status is None or status in (401, 403) or authentication):
        problem = f"payload {operation} at {endpoint} failed ({detail})"
    check = f" Check {setting} ({env_var(setting)})." if setting else ""
    if status == 404:
        return PayloadNotFoundError(
            problem,
            blob_path=blob_path,
            message_id=message_id,
            hint="The payload was deleted or never written.",
        )
    if status in (401, 403) or authentication:
        return PayloadAccessDeniedError(
            problem,
            blob_path=blob_path,
            message_id=message_id,
            hint=(
                "Check the storage credentials: the account key, or the identity's "
                "'Storage Blob Data Contributor' role on the account or container." + check
            ),
        )
    if status is None:
        return PayloadUnavailableError(
            problem,
            blob_path=blob_path,
            message_id=message_id,
            hint="Storage could not be reached after retries: is the endpoint right and "
            "running?" + check,
        )
    if status in _TRANSIENT_STATUSES:
        return PayloadUnavailableError(
            problem,
            blob_path=blob_path,
            message_id=message_id,
            hint="Storage was busy after retries; try again later.",
        )
    return MessageError(problem, blob_path=blob_path, message_id=message_id)


def container_create_is_fatal(status: int | None, error_code: str | None) -> bool:
    """Whether a failed container creation must fail the upload.

    409 ``ContainerAlreadyExists`` is the usual answer (another process won the race). 403 means
    an identity that may write blobs but not create containers: the container may well exist,
    so the upload itself decides."""
    if status == 409 and error_code in ("ContainerAlreadyExists", None):
        return False
    return status != 403


def should_recreate_container(status: int | None, error_code: str | None) -> bool:
    """True when an upload failed because the container vanished since we created it."""
    return status == 404 and error_code == "ContainerNotFound"
