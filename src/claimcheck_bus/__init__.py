"""claimcheck-bus: typed events on Azure Service Bus, whatever their size."""

from claimcheck_bus._version import __version__
from claimcheck_bus.errors import ClaimCheckBusError, ConfigurationError
from claimcheck_bus.settings import BusSettings

__all__ = ["BusSettings", "ClaimCheckBusError", "ConfigurationError", "__version__"]
