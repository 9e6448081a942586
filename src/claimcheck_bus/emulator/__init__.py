"""A Docker-free Azure Service Bus emulator that the real azure-servicebus SDK talks to."""

from claimcheck_bus.emulator.config import EmulatorConfig, load_config
from claimcheck_bus.emulator.server import Emulator, serve

__all__ = ["Emulator", "EmulatorConfig", "load_config", "serve"]
