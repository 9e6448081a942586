"""claimcheck-bus: typed events on Azure Service Bus, whatever their size.

Small events travel inline; large ones go to Blob Storage and the message carries a read-only
SAS link (the conditional claim-check of the original .NET design, wire-compatible with it).
"""

from claimcheck_bus._async.bus import AsyncClaimCheckBus, AsyncReceivedEvent, AsyncSessionReceiver
from claimcheck_bus._async.reader import rehydrate as rehydrate_async
from claimcheck_bus._sync.bus import ClaimCheckBus, ReceivedEvent, SessionReceiver
from claimcheck_bus._sync.reader import rehydrate
from claimcheck_bus._version import __version__
from claimcheck_bus.claim_check.publication import PublishReceipt
from claimcheck_bus.claim_check.wire import Route
from claimcheck_bus.errors import (
    BatchPublishError,
    ClaimCheckBusError,
    ConfigurationError,
    EventDecodeError,
    InvalidClaimCheckError,
    InvalidEventError,
    MessageError,
    NoSessionAvailableError,
    PayloadAccessDeniedError,
    PayloadIntegrityError,
    PayloadNotFoundError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    SendTimeoutError,
    SessionLockedError,
    TimeToLiveTooLongError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.events import PascalCaseEvent
from claimcheck_bus.settings import BusSettings

__all__ = [
    "AsyncClaimCheckBus",
    "AsyncReceivedEvent",
    "AsyncSessionReceiver",
    "BatchPublishError",
    "BusSettings",
    "ClaimCheckBus",
    "ClaimCheckBusError",
    "ConfigurationError",
    "EventDecodeError",
    "InvalidClaimCheckError",
    "InvalidEventError",
    "MessageError",
    "NoSessionAvailableError",
    "PascalCaseEvent",
    "PayloadAccessDeniedError",
    "PayloadIntegrityError",
    "PayloadNotFoundError",
    "PayloadTooLargeError",
    "PayloadUnavailableError",
    "PublishReceipt",
    "ReceivedEvent",
    "Route",
    "SendTimeoutError",
    "SessionLockedError",
    "SessionReceiver",
    "TimeToLiveTooLongError",
    "UntrustedPayloadUrlError",
    "__version__",
    "rehydrate",
    "rehydrate_async",
]
