"""Every error claimcheck-bus raises, rooted in one base class.

Each message says what happened, to which message (id, entity, blob path) or setting, and what
to do. None ever carries a secret: account keys, connection strings and SAS signatures are
redacted before they reach an error.

Receive-side errors say whether retrying can help (``permanent``) and carry the
``dead_letter_reason`` a worker records when it dead-letters the message.
"""

from __future__ import annotations

from typing import Any


def printable(text: str, limit: int = 300) -> str:
    """``text`` from a sender (a URL, a session id, an event type) made safe for logs and error
    messages: control characters become ``?`` (no forged log lines or terminal escapes), and
    it is cut to ``limit`` characters."""
    return "".join(char if char.isprintable() else "?" for char in text)[:limit]


class ClaimCheckBusError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(ClaimCheckBusError, ValueError):
    """The settings are inconsistent or incomplete; the message names the setting and the fix.

    It subclasses ``ValueError`` so that pydantic reports it as a validation error of the
    setting concerned.
    """


class SendTimeoutError(ClaimCheckBusError, TimeoutError):
    """Service Bus did not answer a send within ``service_bus.send_timeout_seconds``.

    The message names the namespace and the entity. A message whose send timed out may still
    have been enqueued: retry with the same message id where consumers are idempotent.
    """


class NoSessionAvailableError(ClaimCheckBusError, TimeoutError):
    """No session of the entity had messages for ``accept_session(session_id=None)`` within
    its ``max_wait``; the message names the entity. Try again later, or wait longer."""

    def __init__(self, entity: str, max_wait: float | None) -> None:
        self.entity = entity
        self.max_wait = max_wait
        waited = f" within {max_wait:g} s" if max_wait is not None else ""
        super().__init__(f"no session of {entity} became available{waited}")


class SessionLockedError(ClaimCheckBusError):
    """``accept_session(session_id=...)`` named a session another receiver holds.

    Only one receiver at a time holds a session; it becomes available when that receiver
    closes it or its session lock expires.
    """

    def __init__(self, entity: str, session_id: str) -> None:
        self.entity = entity
        self.session_id = session_id
        super().__init__(
            f"session {session_id!r} of {entity} is held by another receiver; it can be "
            "accepted once that receiver closes it or its session lock expires"
        )


class BatchPublishError(ClaimCheckBusError):
    """A batch publish stopped part-way; ``published`` lists what was sent before it failed.

    The failed batch's payloads were deleted. Retrying the rest with the same message ids is
    safe for consumers that are idempotent on message id (as the worker's projections are).
    """

    def __init__(self, published: list[Any], cause: BaseException) -> None:
        self.published = published
        super().__init__(
            f"publish_batch sent {len(published)} event(s) before failing with "
            f"{type(cause).__name__}: {cause}"
        )


class MessageError(ClaimCheckBusError):
    """An error about one message; names its id, entity and blob path (never a signature)."""

    #: Retrying the same message cannot succeed: dead-letter it.
    permanent: bool = True
    #: The ``DeadLetterReason`` a worker records for this error.
    dead_letter_reason: str = "ClaimCheckError"

    def __init__(
        self,
        problem: str,
        *,
        message_id: str | None = None,
        entity: str | None = None,
        blob_path: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.problem = problem
        self.message_id = message_id
        self.entity = entity
        self.blob_path = blob_path
        self.hint = hint
        super().__init__(self._text())

    def _text(self) -> str:
        where = [
            f"{label} {value}"
            for label, value in (
                ("message", self.message_id),
                ("on", self.entity),
                ("blob", self.blob_path),
            )
            if value
        ]
        text = self.problem + (f" ({', '.join(where)})" if where else "")
        return f"{text}. {self.hint}" if self.hint else text


class PayloadTooLargeError(MessageError):
    """A payload is larger than allowed: too large to send inline with claim-check off, or
    larger than a receiver's ``claim_check.max_download_size_mb``."""

    dead_letter_reason = "PayloadTooLarge"


class TimeToLiveTooLongError(MessageError):
    """A message's time-to-live outlives what its payload's SAS may cover."""

    dead_letter_reason = "TimeToLiveTooLong"


class InvalidClaimCheckError(MessageError):
    """A message says it is claim-checked but has no usable ``ClaimCheckBlobUri``."""

    dead_letter_reason = "InvalidClaimCheck"


class UntrustedPayloadUrlError(MessageError):
    """A payload URL is outside the storage endpoints the settings allow; nothing was fetched."""

    dead_letter_reason = "UntrustedPayloadUrl"


class PayloadNotFoundError(MessageError):
    """The payload blob does not exist (HTTP 404): deleted, or never written."""

    dead_letter_reason = "PayloadNotFound"


class PayloadAccessDeniedError(MessageError):
    """Storage refused the download (HTTP 403): the SAS expired, was revoked or is invalid."""

    dead_letter_reason = "PayloadAccessDenied"


class PayloadIntegrityError(MessageError):
    """The downloaded bytes do not match ``ClaimCheckSha256``: the payload is corrupt."""

    dead_letter_reason = "PayloadCorrupt"


class PayloadUnavailableError(MessageError):
    """Storage could not be reached or kept failing (5xx, 429, timeouts) after retries."""

    permanent = False
    dead_letter_reason = "PayloadUnavailable"


class EventDecodeError(MessageError):
    """The payload is not the JSON (or text) its content type says."""

    dead_letter_reason = "UndecodableEvent"


class InvalidEventError(MessageError):
    """The payload decoded but does not fit the requested event type."""

    dead_letter_reason = "InvalidEvent"
