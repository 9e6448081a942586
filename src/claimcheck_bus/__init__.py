"""claimcheck-bus: typed events on Azure Service Bus, whatever their size.

Small events travel inline; large ones go to Blob Storage and the message carries a read-only
SAS link (the conditional claim-check of the original .NET design, wire-compatible with it).
"""

from claimcheck_bus._version import __version__
from claimcheck_bus.aio import AsyncClaimCheckBus, AsyncReceivedEvent
from claimcheck_bus.aio import rehydrate as rehydrate_async
from claimcheck_bus.bus import ClaimCheckBus, ReceivedEvent, rehydrate
from claimcheck_bus.errors import (
    BatchPublishError,
    ClaimCheckBusError,
    ConfigurationError,
    EventDecodeError,
    InvalidClaimCheckError,
    InvalidEventError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadIntegrityError,
    PayloadNotFoundError,
    PayloadTooLargeError,
    PayloadUnavailableError,
    TimeToLiveTooLongError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.events import PascalCaseEvent
from claimcheck_bus.publishing import PublishReceipt
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.wire import Route

__all__ = [
    "AsyncClaimCheckBus",
    "AsyncReceivedEvent",
    "BatchPublishError",
    "BusSettings",
    "ClaimCheckBus",
    "ClaimCheckBusError",
    "ConfigurationError",
    "EventDecodeError",
    "InvalidClaimCheckError",
    "InvalidEventError",
    "MessageError",
    "PascalCaseEvent",
    "PayloadAccessDeniedError",
    "PayloadIntegrityError",
    "PayloadNotFoundError",
    "PayloadTooLargeError",
    "PayloadUnavailableError",
    "PublishReceipt",
    "ReceivedEvent",
    "Route",
    "TimeToLiveTooLongError",
    "UntrustedPayloadUrlError",
    "__version__",
    "rehydrate",
    "rehydrate_async",
]
