"""Where payloads may live: trusted storage endpoints, URL checks and redaction (no I/O).

A ``ClaimCheckBlobUri`` is untrusted input written by whoever sent the message. Before any
request, :func:`check_payload_url` accepts it only when its scheme, host, port and leading path
(account and container) match an endpoint the settings trust.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from claimcheck_bus.errors import UntrustedPayloadUrlError, printable

_DEFAULT_PORTS = {"http": 80, "https": 443}


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
    """The decoded path, e.g. ``devstoreaccount1/claim-check/orders/OrderCreated/<id>.json``."""

    @property
    def blob_name(self) -> str:
        """The blob's name below the trusted endpoint's path (for our own container, the name
        a storage client takes). Every segment was checked, so it cannot leave that path."""
        return "/".join(self.blob_path.split("/")[len(self.endpoint.path) :])

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


#: How many rounds of percent-decoding a path segment is checked through: storage front ends,
#: proxies and SDKs have each been seen to decode once more than the last.
MAX_DECODING_LEVELS = 4


def segment_problem(segment: str) -> str | None:
    """Why a raw URL path segment cannot be part of a blob name, or ``None`` when it can.

    A segment must name one path element at every level of percent-decoding: no ``/`` or
    ``\\`` (encoded separators climb out of the container), no ``.``/``..`` (resolved away by
    HTTP clients), no control characters, valid UTF-8, and stable within
    :data:`MAX_DECODING_LEVELS` rounds.
    """
    if not segment:
        return "an empty path segment"
    level = segment
    for _ in range(MAX_DECODING_LEVELS):
        if "/" in level or "\\" in level:
            return "an encoded path separator"
        if level in (".", ".."):
            return "a dot segment"
        if any(unicodedata.category(char) == "Cc" for char in level):
            return "a control character"
        try:
            decoded = unquote(level, errors="strict")
        except UnicodeDecodeError:
            return "percent-encoding that is not UTF-8"
        if decoded == level:
            return None
        level = decoded
    return "percent-encoding nested too deep"


def check_payload_url(
    url: str,
    trusted: tuple[TrustedEndpoint, ...] | list[TrustedEndpoint],
    *,
    allow_http: bool = False,
    message_id: str | None = None,
    entity: str | None = None,
) -> PayloadLocation:
    """Accept ``url`` only under one of the ``trusted`` endpoints, naming exactly one blob;
    otherwise raise :class:`UntrustedPayloadUrlError` (naming the redacted URL and what to
    configure). Nothing here makes a request.

    The accepted location's :attr:`PayloadLocation.url` is rebuilt from the checked parts
    (no user information, no fragment), so what is fetched is what was checked.
    """

    def refuse(problem: str, hint: str | None = None) -> UntrustedPayloadUrlError:
        return UntrustedPayloadUrlError(
            problem,
            message_id=message_id,
            entity=entity,
            blob_path=printable(redact_url(url)) if url else None,
            hint=hint,
        )

    # urlsplit silently drops tabs and newlines; a URL carrying any is refused whole.
    if any(char.isspace() or unicodedata.category(char) == "Cc" for char in url):
        raise refuse("payload URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise refuse("payload URL is malformed") from error
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise refuse("payload URL is not an http(s) URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise refuse("payload URL carries user information")
    host = parts.hostname.lower()
    if scheme == "http" and not (allow_http or is_loopback(host)):
        raise refuse(
            "payload URL uses http where https is required",
            "Plain http is accepted only for loopback hosts, or with claim_check.allow_http.",
        )
    raw_segments = parts.path.split("/")
    if raw_segments[:1] != [""]:
        raise refuse("payload URL has no absolute path")
    raw_segments = raw_segments[1:]
    for segment in raw_segments:
        problem = segment_problem(segment)
        if problem is not None:
            raise refuse(f"payload URL path has {problem}")
    segments = tuple(unquote(segment) for segment in raw_segments)
    port = port or _DEFAULT_PORTS[scheme]
    for endpoint in trusted:
        if (
            (endpoint.scheme, endpoint.host, endpoint.port) == (scheme, host, port)
            and segments[: len(endpoint.path)] == endpoint.path
            and len(segments) > len(endpoint.path)
        ):
            rebuilt = f"{scheme}://{parts.netloc}{parts.path}"
            return PayloadLocation(
                url=f"{rebuilt}?{parts.query}" if parts.query else rebuilt,
                endpoint=endpoint,
                blob_path="/".join(segments),
            )
    raise refuse(
        "payload URL is not under a trusted storage endpoint",
        "Trusted: "
        + (", ".join(str(e) for e in trusted) or "none")
        + ". Add the sender's endpoint to claim_check.trusted_blob_endpoints if it is legitimate.",
    )


def _segments(path: str) -> tuple[str, ...]:
    return tuple(segment for segment in path.split("/") if segment)


def own_endpoint(account_url: str, container_name: str) -> TrustedEndpoint:
    """The trusted endpoint of our own payload container in the configured account."""
    return TrustedEndpoint.parse(f"{account_url.rstrip('/')}/{container_name}")
