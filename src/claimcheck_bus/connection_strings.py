"""Connection strings (no I/O): reading them, and whether one is well-formed.

Checked when settings load, so that a pasted fragment fails at ``BusSettings()`` naming the
setting, instead of at the first publish with the SDK's ``Invalid Endpoint``. The rules follow
what the SDKs themselves accept. Each problem says what is missing or wrong and how to fix it,
and never quotes the value: every part of a connection string may be, or hold, a key.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import urlsplit

#: The account Azurite serves with its well-known development key.
AZURITE_ACCOUNT = "devstoreaccount1"

_SERVICE_BUS_FORM = (
    "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<policy>;"
    "SharedAccessKey=<key> (portal: the namespace's Shared access policies)"
)
_STORAGE_FORM = (
    "DefaultEndpointsProtocol=https;AccountName=<account>;AccountKey=<key>;"
    "EndpointSuffix=core.windows.net (portal: the account's Access keys)"
)


def service_bus_connection_string_problems(text: str) -> list[str]:
    """What is wrong with a namespace connection string (empty when it is well-formed)."""
    pairs, problems = _pairs(text)
    if problems:
        return [*problems, f"Expected {_SERVICE_BUS_FORM}."]
    endpoint = pairs.get("endpoint") or pairs.get("hostname")
    if not endpoint:
        problems.append("it has no Endpoint.")
    elif not _is_url(endpoint):
        problems.append(
            "its Endpoint is not a URL with a host: write sb://<namespace>.servicebus.windows.net/."
        )
    key_name, key = pairs.get("sharedaccesskeyname"), pairs.get("sharedaccesskey")
    signature = pairs.get("sharedaccesssignature")
    if bool(key_name) != bool(key):
        problems.append("it needs both SharedAccessKeyName and SharedAccessKey.")
    if key and signature:
        problems.append("it has both SharedAccessKey and SharedAccessSignature; keep one.")
    if not key and not key_name and not signature:
        problems.append("it has no SharedAccessKey (or SharedAccessSignature).")
    return [*problems, f"Expected {_SERVICE_BUS_FORM}."] if problems else []


def storage_connection_string_problems(text: str) -> list[str]:
    """What is wrong with a storage account connection string (empty when it is well-formed).

    The account key is required: it signs the read-only links consumers fetch payloads with.
    """
    pairs, problems = _pairs(text)
    if problems:
        return [*problems, f"Expected {_STORAGE_FORM}."]
    if pairs.get("usedevelopmentstorage", "").lower() == "true":
        return [
            "UseDevelopmentStorage=true carries no account key to sign read-only links with: use "
            "Azurite's full connection string (AccountName=devstoreaccount1;AccountKey=...;"
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1)."
        ]
    key = pairs.get("accountkey")
    if not pairs.get("accountname") or not key:
        problems.append(
            "it has no AccountName and AccountKey, so read-only links cannot be signed "
            "(a SAS-only connection string cannot sign them)."
        )
    elif not _is_base64(key):
        problems.append("its AccountKey is not base64: copy the key again.")
    protocol = pairs.get("defaultendpointsprotocol")
    if protocol is not None and protocol.lower() not in ("http", "https"):
        problems.append("its DefaultEndpointsProtocol must be https (or http for Azurite).")
    blob_endpoint = pairs.get("blobendpoint")
    if blob_endpoint is not None and not _is_url(blob_endpoint, schemes=("http", "https")):
        problems.append(
            "its BlobEndpoint is not an http(s) URL with a host: write "
            "https://<account>.blob.core.windows.net."
        )
    return [*problems, f"Expected {_STORAGE_FORM}."] if problems else []


def connection_string_pairs(text: str) -> dict[str, str]:
    """``Key=Value;...`` into a dict with lower-case keys, skipping what is not a pair (for
    reading a string the settings already validated)."""
    return _pairs(text)[0]


def blob_endpoint_from_connection_string(connection_string: str) -> str:
    """The blob service URL a storage connection string points at (Azure or Azurite)."""
    pairs = connection_string_pairs(connection_string)
    if pairs.get("blobendpoint"):
        return pairs["blobendpoint"].rstrip("/")
    if pairs.get("usedevelopmentstorage", "").lower() == "true":
        return f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}"
    account = pairs.get("accountname")
    if not account:
        raise ValueError(
            "the storage connection string names no AccountName or BlobEndpoint; copy it again "
            "from the portal (Access keys)"
        )
    protocol = pairs.get("defaultendpointsprotocol", "https")
    suffix = pairs.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{account}.blob.{suffix}"


def _pairs(text: str) -> tuple[dict[str, str], list[str]]:
    """The pairs, and what keeps the text from being only ``Key=Value`` pairs."""
    # The SDKs split on ';' and then on the first '=' (keys and SAS values may hold '=').
    pairs: dict[str, str] = {}
    problems: list[str] = []
    parts = [part.strip() for part in text.strip().rstrip(";").split(";")]
    if parts == [""]:
        return pairs, ["it is empty."]
    for index, part in enumerate(parts, start=1):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            problems = problems or [f"part {index} of {len(parts)} is not a Key=Value pair."]
            continue
        pairs[key.strip().lower()] = value.strip()
    return pairs, problems


def _is_url(value: str, schemes: tuple[str, ...] | None = None) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    if schemes is not None and parts.scheme.lower() not in schemes:
        return False
    return bool(parts.scheme) and bool(parts.hostname)


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
