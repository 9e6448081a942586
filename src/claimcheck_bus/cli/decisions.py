"""What the operators' commands decide, as pure functions: durations, which dead letters a
filter selects, whether a SAS needs re-signing, what the sweep may delete, masked values."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)", re.IGNORECASE)
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w``, or combined (``1d12h``); ValueError otherwise."""
    compact = text.strip().replace(" ", "")
    parts = list(_DURATION_PART.finditer(compact))
    if not compact or "".join(p.group(0) for p in parts).lower() != compact.lower():
        raise ValueError(
            f"{text!r} is not a duration; use a number and a unit: 30s, 15m, 2h, 7d, 1w or 1d12h"
        )
    total = timedelta()
    for part in parts:
        total += timedelta(**{_UNITS[part.group(2).lower()]: float(part.group(1))})
    return total


def describe_duration(span: timedelta) -> str:
    """A short human form of ``span`` (``2d3h``, ``45s``), the inverse of :func:`parse_duration`."""
    seconds = int(span.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return sign + ("".join(out) or "0s")


# --- dead letters --------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which dead letters a command acts on: all of them, or those matching every criterion."""

    ids: frozenset[str] = frozenset()
    reason: str | None = None
    older_than: timedelta | None = None
    everything: bool = False

    @property
    def is_empty(self) -> bool:
        """True when nothing was asked for (a destructive command must refuse this)."""
        return not (self.ids or self.reason or self.older_than or self.everything)


def selects(
    selection: Selection,
    *,
    message_id: str | None,
    reason: str | None,
    enqueued_time: datetime | None,
    now: datetime,
) -> bool:
    """Whether ``selection`` picks a dead letter: every given criterion must hold; ``reason``
    matches case-insensitively; ``older_than`` needs a known enqueue time."""
    if selection.everything:
        return True
    if selection.is_empty:
        return False
    if selection.ids and message_id not in selection.ids:
        return False
    if selection.reason is not None and (reason or "").lower() != selection.reason.lower():
        return False
    too_young = enqueued_time is None or now - enqueued_time < (selection.older_than or timedelta())
    return not (selection.older_than is not None and too_young)


def sas_expires_at(url: str) -> datetime | None:
    """The ``se`` (signed expiry) of a SAS URL, or None when it has none or it is unreadable."""
    values = parse_qs(urlsplit(url).query).get("se")
    if not values:
        return None
    text = values[0].strip().replace("Z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def needs_resign(sas_expiry: datetime | None, now: datetime, must_last: timedelta) -> bool:
    """Whether a claim-check link must be re-signed before its message goes back on the bus:
    when it has expired or would within ``must_last`` (the copy's TTL, at least the operator's
    margin). An unreadable expiry is re-signed too: it cannot be shown to be valid."""
    return sas_expiry is None or sas_expiry - now < must_last


# --- sweep ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepVerdict:
    """Whether the sweep may delete one payload blob, and why (one of a few stable reasons)."""

    delete: bool
    reason: str


#: Reasons, stable for ``--json`` readers.
EXPIRED = "expired"
OLDER_THAN = "older-than"
YOUNG = "message-may-live"
NO_EXPIRY = "no-expiry-recorded"
DEAD_LETTERED = "dead-lettered"


def sweep_verdict(
    *,
    expires_at: datetime | None,
    published_at: datetime | None,
    last_modified: datetime | None,
    now: datetime,
    grace: timedelta,
    older_than: timedelta | None,
) -> SweepVerdict:
    """What the sweep does with one blob, from its metadata and ``now``.

    A recorded expiry (enqueue time plus TTL) is past, plus ``grace`` for clock skew and
    in-flight receives: delete. Its message may still live: keep, whatever ``older_than``
    says. No expiry recorded (a message without TTL, or another publisher's blob): kept unless
    the operator gave ``older_than`` and the blob is older than that (by its publish time, else
    its last write)."""
    if expires_at is not None:
        if now >= expires_at + grace:
            return SweepVerdict(True, EXPIRED)
        return SweepVerdict(False, YOUNG)
    born = published_at or last_modified
    if older_than is not None and born is not None and now - born >= older_than:
        return SweepVerdict(True, OLDER_THAN)
    return SweepVerdict(False, NO_EXPIRY)


def guarded(
    verdict: SweepVerdict, message_id: str | None, dead_letter_ids: Collection[str]
) -> SweepVerdict:
    """A delete verdict turned into a keep when a dead letter still references the message
    (dead letters never expire, whatever their TTL said)."""
    if verdict.delete and message_id is not None and message_id in dead_letter_ids:
        return SweepVerdict(False, DEAD_LETTERED)
    return verdict


# --- showing settings ----------------------------------------------------------------------

#: Connection-string keys that name things without granting access; every other value is
#: masked (an allow-list, so a key we do not know is never shown).
_SHOWN_KEYS = frozenset(
    {
        "endpoint",
        "sharedaccesskeyname",
        "entitypath",
        "usedevelopmentemulator",
        "defaultendpointsprotocol",
        "accountname",
        "blobendpoint",
        "endpointsuffix",
        "usedevelopmentstorage",
    }
)
MASK = "***"


def mask_connection_string(value: str) -> str:
    """A connection string with every value masked except the names of things (endpoint,
    account, key name): enough to tell which namespace or account, never the key."""
    parts = []
    for part in value.split(";"):
        key, sep, item = part.partition("=")
        if not sep:
            continue
        shown = item if key.strip().lower() in _SHOWN_KEYS else MASK
        parts.append(f"{key.strip()}={shown}")
    return ";".join(parts)


def mask_value(name: str, value: Any, *, secret: bool) -> Any:
    """A setting's value as shown: secrets masked (connection strings keep their names),
    URLs without query strings (which could hold a SAS)."""
    if value is None:
        return None
    if secret:
        return mask_connection_string(str(value)) if "=" in str(value) else MASK
    if isinstance(value, str) and "?" in value and "://" in value:
        return value.split("?", 1)[0] + "?" + MASK
    return value


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted names to leaf values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + key
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
