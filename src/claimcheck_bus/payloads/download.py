"""Fetch claim-checked payloads with plain HTTP GETs of their (already trusted) SAS URLs.

Every decision (status classification, retry delays, size limits, integrity, what to do with a
half-written sink) lives in the I/O-free :class:`DownloadState` and the pure functions it calls.
The downloaders (``claimcheck_bus._async.downloader`` and its generated sync twin) only move
bytes through httpx and feed this state machine.

Secrets: a payload URL carries a SAS signature. Errors name only the blob path, httpx exceptions
are never chained (only their class name is kept), and a filter on the ``httpx`` logger blanks
``sig=`` values in the request lines it logs.
"""

from __future__ import annotations

import enum
import hashlib
import io
import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import BinaryIO, Protocol, TypeVar

import httpx

from claimcheck_bus.claim_check.urls import PayloadLocation
from claimcheck_bus.errors import (
    ConfigurationError,
    InvalidClaimCheckError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadIntegrityError,
    PayloadNotFoundError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.payloads.budget import default_budget_bytes
from claimcheck_bus.payloads.compression import Inflater, check_encoding
from claimcheck_bus.settings import ClaimCheckSettings

__all__ = [
    "REQUEST_HEADERS",
    "BodyCheck",
    "DownloadPolicy",
    "DownloadState",
    "Failure",
    "InflatingSink",
    "MemorySink",
    "PayloadSubject",
    "Sink",
    "StatusKind",
    "StreamSink",
    "backoff_delay",
    "classify_status",
    "expected_sha256",
    "install_log_redaction",
    "parse_content_length",
    "payload_budget_bytes",
    "redact_signatures",
    "retry_after_seconds",
    "status_error",
    "too_large_error",
    "transport_failure",
]

_E = TypeVar("_E", bound=MessageError)
_MIB = 1024 * 1024
_HEX_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
# A SAS signature's value runs to the next parameter, fragment, space or quote.
_SIG_VALUE = re.compile(r"(?i)\b(sig=)[^&#\s\"'<>]*")
# Storage must hand back the bytes exactly as stored (their SHA-256 is what the sender signed
# off), so ask for no transfer compression; the raw stream is read without decoding either.
REQUEST_HEADERS = {"Accept-Encoding": "identity"}


# --------------------------------------------------------------------------- log redaction


def redact_signatures(text: str) -> str:
    """``text`` with the value of every ``sig=`` parameter replaced by ``REDACTED``."""
    return _SIG_VALUE.sub(r"\1REDACTED", text)


class _RedactSasSignatures(logging.Filter):
    """Blanks SAS signatures in records of the logger it is attached to (message and args)."""

    #: Marks our filter so that installing it twice (e.g. a module reload) is detected.
    redacts_sas_signatures = True

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite ``record`` in place; never drops it."""
        if isinstance(record.msg, str) and "sig=" in record.msg.lower():
            record.msg = redact_signatures(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_scrub(arg) for arg in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {key: _scrub(value) for key, value in record.args.items()}
        return True


def _scrub(arg: object) -> object:
    # httpx passes the request URL as an httpx.URL object: stringify only what may hold a URL,
    # so that numbers keep working with %d.
    if isinstance(arg, (str, httpx.URL)):
        text = str(arg)
        return redact_signatures(text) if "sig=" in text.lower() else arg
    return arg


def install_log_redaction() -> None:
    """Attach the SAS-redacting filter to the ``httpx`` logger, once.

    httpx logs every request line at INFO on logger ``httpx`` with the full URL, and a payload
    URL's query string is a bearer credential (anyone holding it can read the blob until the SAS
    expires). Applications commonly run at INFO, so without this the signature lands in their
    logs. A logger filter (not a handler filter) runs before any handler, whoever configured it.
    """
    logger = logging.getLogger("httpx")
    if not any(getattr(f, "redacts_sas_signatures", False) for f in logger.filters):
        logger.addFilter(_RedactSasSignatures())


install_log_redaction()


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class DownloadPolicy:
    """Timeouts, size limit and retries of payload downloads."""

    timeout: float = 30.0
    """Wall time of one attempt, in seconds, from the request to the last byte: a server that
    trickles its body is cut off, not only one that goes silent."""
    max_bytes: int = 256 * _MIB
    attempts: int = 4
    """Total tries for retryable failures (5xx, 429, 408, connection errors and timeouts)."""
    total: float | None = None
    """Wall time of the whole download, backoffs included (default: ``timeout * attempts``)."""
    backoff_initial: float = 0.2
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        problems = [
            name
            for name, ok in (
                ("timeout", self.timeout > 0),
                ("max_bytes", self.max_bytes > 0),
                ("attempts", self.attempts >= 1),
                ("total", self.total is None or self.total > 0),
                ("backoff_initial", self.backoff_initial >= 0),
                ("backoff_max", self.backoff_max >= self.backoff_initial),
            )
            if not ok
        ]
        if problems:
            raise ConfigurationError(
                f"DownloadPolicy: invalid {', '.join(problems)} ({self!r}); timeout and max_bytes "
                "must be above 0, attempts at least 1, 0 <= backoff_initial <= backoff_max."
            )

    def http_timeout(self) -> httpx.Timeout:
        """The httpx timeout of one attempt (each connect, read or write)."""
        return httpx.Timeout(self.timeout)

    @property
    def deadline(self) -> float:
        """Seconds the whole download may take, retries and backoffs included."""
        return self.total if self.total is not None else self.timeout * self.attempts

    @classmethod
    def from_settings(cls, settings: ClaimCheckSettings) -> DownloadPolicy:
        """The policy ``claim_check.download_timeout_seconds`` and ``max_download_size_mb`` ask."""
        return cls(
            timeout=settings.download_timeout_seconds,
            max_bytes=int(settings.max_download_size_mb * _MIB),
        )


def payload_budget_bytes(settings: ClaimCheckSettings, policy: DownloadPolicy) -> int:
    """The bytes of fetched payloads a reader may hold at once: ``payload_budget_mb``, by
    default twice the largest payload (one handled while the next downloads)."""
    if settings.payload_budget_mb is not None:
        return max(int(settings.payload_budget_mb * _MIB), 1)
    return default_budget_bytes(policy.max_bytes)


# --------------------------------------------------------------------------- pure decisions


@dataclass(frozen=True)
class PayloadSubject:
    """What every download error names: message id, entity and the blob path (no SAS)."""

    message_id: str | None
    entity: str | None
    blob_path: str

    def error(self, kind: type[_E], problem: str, hint: str | None = None) -> _E:
        """An error of class ``kind`` about this payload."""
        return kind(
            problem,
            message_id=self.message_id,
            entity=self.entity,
            blob_path=self.blob_path,
            hint=hint,
        )


class StatusKind(enum.Enum):
    """What an HTTP status means for a payload download."""

    OK = "ok"
    REDIRECT = "redirect"
    NOT_FOUND = "not found"
    ACCESS_DENIED = "access denied"
    RETRY = "retry"
    REFUSED = "refused"


def classify_status(status: int) -> StatusKind:
    """Map an HTTP status of a blob GET to what the downloader does with it."""
    if 200 <= status < 300:
        return StatusKind.OK
    if 300 <= status < 400:
        return StatusKind.REDIRECT
    if status in (404, 410):
        return StatusKind.NOT_FOUND
    if status in (401, 403):
        return StatusKind.ACCESS_DENIED
    # 408 and 429 are the service asking to come back later; 5xx are its own failures.
    if status in (408, 429) or 500 <= status < 600:
        return StatusKind.RETRY
    return StatusKind.REFUSED


_ACCESS_HINT = (
    "The SAS in ClaimCheckBlobUri expired, was revoked or is invalid. If messages can wait "
    "longer than the SAS lives, the sender needs a longer claim_check.sas_expiry_hours."
)


def status_error(status: int, subject: PayloadSubject) -> MessageError:
    """The permanent error for a status that :func:`classify_status` does not retry."""
    kind = classify_status(status)
    if kind is StatusKind.REDIRECT:
        return subject.error(
            UntrustedPayloadUrlError,
            "payload URL answered with a redirect",
            f"HTTP {status}; Blob Storage never redirects a blob GET, so the redirect was not "
            "followed.",
        )
    if kind is StatusKind.NOT_FOUND:
        return subject.error(
            PayloadNotFoundError,
            f"payload blob not found (HTTP {status})",
            "It was deleted (delete_after_complete, a lifecycle rule) or never written.",
        )
    if kind is StatusKind.ACCESS_DENIED:
        return subject.error(
            PayloadAccessDeniedError,
            f"storage refused the payload download (HTTP {status})",
            _ACCESS_HINT,
        )
    # Any other client error means storage could not make sense of the URL itself: the
    # claim-check is unusable, and retrying the same URL cannot change that.
    return subject.error(
        InvalidClaimCheckError,
        f"storage rejected the payload URL (HTTP {status})",
        "ClaimCheckBlobUri is not a usable blob URL.",
    )


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


def backoff_delay(
    policy: DownloadPolicy,
    retry: int,
    retry_after: float | None,
    uniform: Callable[[], float],
) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry).

    A ``Retry-After`` is honoured but capped at ``backoff_max``. Otherwise exponential from
    ``backoff_initial``, capped at ``backoff_max``, with "equal jitter": a random point in the
    upper half, so that receivers spread out but the delay still grows. ``uniform`` returns a
    float in [0, 1).
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), policy.backoff_max)
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0 ** min(retry - 1, 60))
    return ceiling / 2 + uniform() * ceiling / 2


def parse_content_length(value: str | None) -> int | None:
    """A ``Content-Length`` header as an int, or None when absent or not a plain number."""
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def too_large_error(
    size: int, max_bytes: int, subject: PayloadSubject, *, source: str
) -> PayloadTooLargeError | None:
    """The error when ``size`` (reported by ``source``) is above ``max_bytes``, else None."""
    if size <= max_bytes:
        return None
    return subject.error(
        PayloadTooLargeError,
        f"{source} says the payload is {size} bytes, above the {max_bytes} bytes this "
        "receiver accepts; nothing was downloaded",
        "Raise claim_check.max_download_size_mb if payloads this large are expected.",
    )


def expected_sha256(value: str | None, subject: PayloadSubject) -> str | None:
    """``value`` lower-cased when it is a hex SHA-256; :class:`InvalidClaimCheckError` if not."""
    if value is None:
        return None
    if not _HEX_SHA256.match(value):
        raise subject.error(InvalidClaimCheckError, "ClaimCheckSha256 is not a hex SHA-256")
    return value.lower()


class BodyCheck:
    """Counts, hashes and limits the body of one attempt as it streams (no I/O)."""

    def __init__(
        self,
        subject: PayloadSubject,
        *,
        max_bytes: int,
        sha256: str | None = None,
        size: int | None = None,
    ) -> None:
        self._subject = subject
        self._max_bytes = max_bytes
        self._sha256 = sha256
        self._size = size
        self._hash = hashlib.sha256() if sha256 is not None else None
        self.received = 0

    def feed(self, chunk: bytes) -> None:
        """Account for ``chunk``; raise before it is kept if it takes the body over a limit."""
        self.received += len(chunk)
        if self.received > self._max_bytes:
            raise self._subject.error(
                PayloadTooLargeError,
                f"payload exceeded the {self._max_bytes} bytes this receiver accepts while "
                "downloading; the download was aborted",
                "Raise claim_check.max_download_size_mb if payloads this large are expected.",
            )
        if self._size is not None and self.received > self._size:
            raise self._size_mismatch()
        if self._hash is not None:
            self._hash.update(chunk)

    def finish(self) -> int:
        """Check the complete body against ClaimCheckSize and ClaimCheckSha256; its length."""
        if self._size is not None and self.received != self._size:
            raise self._size_mismatch()
        if self._hash is not None and self._hash.hexdigest() != self._sha256:
            raise self._subject.error(
                PayloadIntegrityError,
                f"payload SHA-256 {self._hash.hexdigest()} does not match ClaimCheckSha256 "
                f"{self._sha256}",
                "The blob was altered or corrupted after it was sent.",
            )
        return self.received

    def _size_mismatch(self) -> PayloadIntegrityError:
        return self._subject.error(
            PayloadIntegrityError,
            f"payload has {'more than ' if self.received > (self._size or 0) else ''}"
            f"{self.received} bytes where ClaimCheckSize says {self._size}",
            "The blob was altered or truncated after it was sent.",
        )


# --------------------------------------------------------------------------- sinks


class Sink(Protocol):
    """Where the body of the current attempt goes."""

    written: int

    def start(self, content_length: int | None) -> None: ...
    def write(self, chunk: bytes) -> None: ...
    def can_restart(self) -> bool: ...
    def restart(self) -> None: ...
    def discard(self) -> None: ...
    def finish(self) -> None: ...


class MemorySink:
    """Collects a body into one bytes object without ever holding two copies of it.

    ``BytesIO`` keeps its data in a bytes object and ``getvalue()`` shrinks that very object to
    size and hands it out; growing it is a ``realloc`` (``mremap`` for large sizes, no copy).
    Nothing is allocated from a declared length: a 16-byte response declaring 200 MB costs
    16 bytes. ``bytes(bytearray)`` or ``b"".join(chunks)`` would need the payload twice.
    """

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self.written = 0

    def start(self, content_length: int | None) -> None:
        self._buffer = io.BytesIO()
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self._buffer.write(chunk)
        self.written += len(chunk)

    def can_restart(self) -> bool:
        return True

    def restart(self) -> None:
        self.start(None)

    def discard(self) -> None:
        self._buffer = io.BytesIO()

    def finish(self) -> None:
        pass

    def value(self) -> bytes:
        """The body; valid once the body is complete (its length is then the written count)."""
        self._buffer.truncate(self.written)
        data = self._buffer.getvalue()
        self._buffer = io.BytesIO()
        return data


class StreamSink:
    """Writes a body into a caller's binary stream, rewinding it for a retry when it can."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._origin = _position_if_seekable(stream)
        self.written = 0

    def start(self, content_length: int | None) -> None:
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self._stream.write(chunk)
        self.written += len(chunk)

    def can_restart(self) -> bool:
        # A non-seekable stream already holding part of the body cannot be retried without
        # duplicating bytes; before the first body byte, a retry is safe anywhere.
        return self.written == 0 or self._origin is not None

    def restart(self) -> None:
        if self.written and self._origin is not None:
            self._stream.seek(self._origin)
            self._stream.truncate()
        self.written = 0

    def discard(self) -> None:
        # A failed download leaves a seekable stream as it found it, so that nobody mistakes
        # a partial or corrupt body for the payload.
        self.restart()

    def finish(self) -> None:
        pass


class InflatingSink:
    """Inflates a gzip body into another sink as it arrives (see :class:`Inflater`).

    ``written`` counts the bytes as stored, which is what retries and errors speak of.
    """

    def __init__(self, inner: Sink, max_bytes: int, subject: PayloadSubject) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._subject = subject
        self._inflater = Inflater(max_bytes, subject)
        self.written = 0

    def start(self, content_length: int | None) -> None:
        self._inner.start(None)
        self._inflater = Inflater(self._max_bytes, self._subject)
        self.written = 0

    def write(self, chunk: bytes) -> None:
        self.written += len(chunk)
        for piece in self._inflater.feed(chunk):
            self._inner.write(piece)

    def can_restart(self) -> bool:
        return self._inner.can_restart()

    def restart(self) -> None:
        self._inner.restart()
        self._inflater = Inflater(self._max_bytes, self._subject)
        self.written = 0

    def discard(self) -> None:
        self._inner.discard()

    def finish(self) -> None:
        self._inflater.finish()


def _position_if_seekable(stream: BinaryIO) -> int | None:
    try:
        return stream.tell() if stream.seekable() else None
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the state machine


@dataclass(frozen=True)
class Failure:
    """A retryable failure of one attempt."""

    reason: str
    """``HTTP 503`` or the transport error's class name (never its message: it holds URLs)."""
    retry_after: float | None = None


class DownloadState:
    """The decisions of one download across its attempts; the I/O loops feed it events."""

    def __init__(
        self,
        policy: DownloadPolicy,
        location: PayloadLocation,
        sink: Sink,
        *,
        sha256: str | None = None,
        size: int | None = None,
        message_id: str | None = None,
        entity: str | None = None,
        content_encoding: str | None = None,
        uniform: Callable[[], float] = random.random,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``content_encoding`` (``ClaimCheckContentEncoding``): ``gzip`` bodies are inflated
        into ``sink`` as they arrive; the checks of size and hash cover the stored bytes."""
        self.policy = policy
        self.subject = PayloadSubject(message_id, entity, location.blob_path)
        check_encoding(content_encoding, self.subject)
        self._inflating = content_encoding is not None
        self._sink = (
            InflatingSink(sink, policy.max_bytes, self.subject) if self._inflating else sink
        )
        self._size = size
        self._uniform = uniform
        self._clock = clock
        self._monotonic = monotonic
        self._gives_up_at = monotonic() + policy.deadline
        self._attempt_ends_at = self._gives_up_at
        self.attempt = 0
        self._body: BodyCheck | None = None
        self._sha256 = expected_sha256(sha256, self.subject)
        if size is not None:
            if size < 0:
                raise self.subject.error(InvalidClaimCheckError, "ClaimCheckSize is negative")
            error = too_large_error(size, policy.max_bytes, self.subject, source="ClaimCheckSize")
            if error is not None:
                raise error

    def begin(self) -> None:
        """A new attempt starts."""
        self.attempt += 1
        self._body = None
        self._attempt_ends_at = min(self._monotonic() + self.policy.timeout, self._gives_up_at)

    def http_timeout(self) -> httpx.Timeout:
        """The httpx timeout for this attempt: no single wait may outlast what is left of it."""
        return httpx.Timeout(max(0.001, self._attempt_ends_at - self._monotonic()))

    def time_left(self) -> float:
        """Seconds until the whole download gives up."""
        return max(0.0, self._gives_up_at - self._monotonic())

    def budget_exhausted(self, budget: int) -> PayloadUnavailableError:
        """The error when the reader's payload budget stayed spent until the deadline."""
        return self._failed(
            self.subject.error(
                PayloadUnavailableError,
                f"the receiver's payload budget ({budget} bytes) stayed in use by other "
                f"messages for {self.policy.deadline:g} s",
                "The message can be retried later; raise claim_check.payload_budget_mb if "
                "large payloads are usual.",
            )
        )

    def body_limit(self, content_length: str | None) -> int:
        """The most bytes this attempt's body can hold: what storage declared (HTTP framing
        holds it to that), else the policy's limit. What a memory budget reserves."""
        length = parse_content_length(content_length)
        if length is None or self._inflating:
            return self.policy.max_bytes
        return min(length, self.policy.max_bytes)

    def on_response(
        self, status: int, content_length: str | None, retry_after: str | None
    ) -> Failure | None:
        """Headers arrived: None to read the body, a :class:`Failure` to retry, or raise."""
        kind = classify_status(status)
        if kind is StatusKind.RETRY:
            return Failure(f"HTTP {status}", retry_after_seconds(retry_after, self._clock()))
        if kind is not StatusKind.OK:
            raise self._failed(status_error(status, self.subject))
        length = parse_content_length(content_length)
        if length is not None:
            error = too_large_error(
                length, self.policy.max_bytes, self.subject, source="storage (Content-Length)"
            )
            if error is not None:
                raise self._failed(error)
            if self._size is not None and length != self._size:
                raise self._failed(
                    self.subject.error(
                        PayloadIntegrityError,
                        f"storage holds {length} bytes where ClaimCheckSize says {self._size}",
                        "The blob was altered or replaced after it was sent.",
                    )
                )
        self._body = BodyCheck(
            self.subject, max_bytes=self.policy.max_bytes, sha256=self._sha256, size=self._size
        )
        self._sink.start(length)
        return None

    def on_chunk(self, chunk: bytes) -> Failure | None:
        """A piece of the body arrived: None to read on, a :class:`Failure` when the attempt
        ran out of time (a trickling server), or raise."""
        assert self._body is not None, "on_chunk before on_response"
        try:
            self._body.feed(chunk)
            self._sink.write(chunk)  # an inflating sink refuses a bomb here
        except MessageError:
            self._sink.discard()
            raise
        if self._monotonic() > self._attempt_ends_at:
            return Failure(f"attempt took over {self.policy.timeout:g} s")
        return None

    def finish(self) -> int:
        """The body ended: check it; the number of bytes delivered."""
        assert self._body is not None, "finish before on_response"
        try:
            received = self._body.finish()
            self._sink.finish()
            return received
        except MessageError:
            self._sink.discard()
            raise

    def delay_after(self, failure: Failure) -> float:
        """Seconds to wait before the next attempt, with the sink rewound; or raise
        :class:`PayloadUnavailableError` when attempts are spent or the sink cannot rewind."""
        if not self._sink.can_restart():
            raise self._failed(
                self.subject.error(
                    PayloadUnavailableError,
                    f"payload download was interrupted ({failure.reason}) after "
                    f"{self._sink.written} bytes were written to a stream that cannot be "
                    "rewound, so it was not retried",
                    "Download into a seekable stream (e.g. a file) to let retries start over.",
                )
            )
        delay = backoff_delay(self.policy, self.attempt, failure.retry_after, self._uniform)
        if self._monotonic() + delay >= self._gives_up_at:
            raise self._failed(
                self.subject.error(
                    PayloadUnavailableError,
                    f"payload download gave up after {self.policy.deadline:g} s and "
                    f"{self.attempt} attempt{'s' if self.attempt > 1 else ''} "
                    f"(last: {failure.reason})",
                    "Storage is slow, throttling or failing; the message can be retried later.",
                )
            )
        if self.attempt >= self.policy.attempts:
            raise self._failed(
                self.subject.error(
                    PayloadUnavailableError,
                    f"payload download failed after {self.attempt} attempt"
                    f"{'s' if self.attempt > 1 else ''} (last: {failure.reason})",
                    "Storage is unreachable, throttling or failing; the message can be retried "
                    "later.",
                )
            )
        self._sink.restart()
        return delay

    def _failed(self, error: _E) -> _E:
        self._sink.discard()
        return error


def transport_failure(error: httpx.TransportError) -> Failure:
    """A retryable failure naming only the class of ``error`` (its text may hold the URL)."""
    return Failure(type(error).__name__)
