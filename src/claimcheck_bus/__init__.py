"""claimcheck-bus: typed events on Azure Service Bus, whatever their size."""

from claimcheck_bus._version import __version__

__all__ = ["__version__"]
