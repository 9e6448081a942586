"""Every error claimcheck-bus raises, rooted in one base class.

Each message says what happened, to which message (id, entity, blob path) or setting, and what
to do. None ever carries a secret: account keys, connection strings and SAS signatures are
redacted before they reach an error.
"""

from __future__ import annotations


class ClaimCheckBusError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(ClaimCheckBusError, ValueError):
    """The settings are inconsistent or incomplete; the message names the setting and the fix.

    It subclasses ``ValueError`` so that pydantic reports it as a validation error of the
    setting concerned.
    """
