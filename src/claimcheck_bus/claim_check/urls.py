"""Where payloads may live: trusted storage endpoints, URL checks and redaction (no I/O).

A ``ClaimCheckBlobUri`` is untrusted input written by whoever sent the message. Before any
request, :func:`check_payload_url` accepts it only when its scheme, host, port and leading path
(account and container) match an endpoint the settings trust.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from claimcheck_bus.errors import UntrustedPayloadUrlError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_AZURITE_ACCOUNT = "devstoreaccount1"


@dataclass(frozen=True)
class TrustedEndpoint:
    """A storage location payloads may come from: ``scheme://host:port/<path prefix>``."""

    scheme: str
    host: str
    port: int
    path: tuple[str, ...]
    """Leading path segments every payload URL must start with (account and/or container)."""

    @classmethod
    def parse(cls, url: str) -> TrustedEndpoint:
        """``https://acct.blob.core.windows.net/container`` or ``http://127.0.0.1:10000/acct``."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not a storage endpoint URL: {redact_url(url)!r}")
        return cls(
            scheme=scheme,
            host=parts.hostname.lower(),
            port=parts.port or _DEFAULT_PORTS[scheme],
            path=_segments(parts.path),
        )

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/" + "/".join(self.path)


@dataclass(frozen=True)
class PayloadLocation:
    """A checked payload URL, split into what storage clients need."""

    url: str
    """The full URL, SAS included: pass it to HTTP only, never to logs or errors."""
    endpoint: TrustedEndpoint
    blob_path: str
    """Container and blob name, e.g. ``claim-check/orders/OrderCreated/<id>.json``."""

    @property
    def redacted(self) -> str:
        """The URL without its query string (the SAS signature), safe for logs and errors."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` without query string or fragment, so that no SAS signature leaks."""
    parts = urlsplit(url)
    # netloc minus user information; the port is kept as written (it may be malformed).
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}"


def blob_path_of(url: str) -> str:
    """The path of a blob URL without the leading slash (for error messages)."""
    return urlsplit(url).path.lstrip("/")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: where plain http is acceptable."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_payload_url(
    url: str,
    trusted: tuple[TrustedEndpoint, ...] | list[TrustedEndpoint],
    *,
    allow_http: bool = False,
    message_id: str | None = None,
    entity: str | None = None,
) -> PayloadLocation:
    """Accept ``url`` only under one of the ``trusted`` endpoints; otherwise raise
    :class:`UntrustedPayloadUrlError` (naming the redacted URL and what to configure)."""

    def refuse(problem: str, hint: str | None = None) -> UntrustedPayloadUrlError:
        return UntrustedPayloadUrlError(
            problem,
            message_id=message_id,
            entity=entity,
            blob_path=redact_url(url) if url else None,
            hint=hint,
        )

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise refuse("payload URL is malformed") from error
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise refuse("payload URL is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise refuse("payload URL carries user information")
    host = parts.hostname.lower()
    if scheme == "http" and not (allow_http or is_loopback(host)):
        raise refuse(
            "payload URL uses http where https is required",
            "Plain http is accepted only for loopback hosts, or with claim_check.allow_http.",
        )
    segments = _segments(parts.path)
    if any(_is_dot_segment(segment) for segment in segments) or "\\" in unquote(parts.path):
        raise refuse("payload URL path has dot segments or backslashes")
    port = port or _DEFAULT_PORTS[scheme]
    for endpoint in trusted:
        if (
            (endpoint.scheme, endpoint.host, endpoint.port) == (scheme, host, port)
            and segments[: len(endpoint.path)] == endpoint.path
            and len(segments) > len(endpoint.path)
        ):
            return PayloadLocation(url=url, endpoint=endpoint, blob_path="/".join(segments))
    raise refuse(
        "payload URL is not under a trusted storage endpoint",
        "Trusted: "
        + (", ".join(str(e) for e in trusted) or "none")
        + ". Add the sender's endpoint to claim_check.trusted_blob_endpoints if it is legitimate.",
    )


def _segments(path: str) -> tuple[str, ...]:
    return tuple(segment for segment in path.split("/") if segment)


def _is_dot_segment(segment: str) -> bool:
    return unquote(segment) in (".", "..")


def parse_connection_string(connection_string: str) -> dict[str, str]:
    """``Key=Value;...`` into a dict with lower-case keys (values may contain ``=``)."""
    pairs: dict[str, str] = {}
    for part in connection_string.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            pairs[key.strip().lower()] = value.strip()
    return pairs


def blob_endpoint_from_connection_string(connection_string: str) -> str:
    """The blob service URL a storage connection string points at (Azure or Azurite)."""
    pairs = parse_connection_string(connection_string)
    if pairs.get("blobendpoint"):
        return pairs["blobendpoint"].rstrip("/")
    if pairs.get("usedevelopmentstorage", "").lower() == "true":
        return f"http://127.0.0.1:10000/{_AZURITE_ACCOUNT}"
    account = pairs.get("accountname")
    if not account:
        raise ValueError(
            "the storage connection string names no AccountName or BlobEndpoint; copy it again "
            "from the portal (Access keys)"
        )
    protocol = pairs.get("defaultendpointsprotocol", "https")
    suffix = pairs.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{account}.blob.{suffix}"


def own_endpoint(account_url: str, container_name: str) -> TrustedEndpoint:
    """The trusted endpoint of our own payload container in the configured account."""
    return TrustedEndpoint.parse(f"{account_url.rstrip('/')}/{container_name}")
