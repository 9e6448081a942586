"""What a failed Service Bus call on the publish path becomes (no I/O).

The SDK treats a refused credential as transient (about 15 s of retries, then a bare
``amqp:client-error``) and waits for a silent namespace as long as it is not given a timeout.
The bus opens each entity's first link once without retries, bounds every send by
``service_bus.send_timeout_seconds``, and raises what these functions decide: errors that name
the namespace, the entity and the setting to look at.
"""

from __future__ import annotations

from azure.servicebus.exceptions import (
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusError,
)

from claimcheck_bus._sdk import error_condition
from claimcheck_bus.errors import ClaimCheckBusError, ConfigurationError, SendTimeoutError
from claimcheck_bus.settings import env_var, redact_secrets

CONNECTION_STRING = "service_bus.connection_string"
NAMESPACE = "service_bus.fully_qualified_namespace"
SEND_TIMEOUT = "service_bus.send_timeout_seconds"

#: Conditions that refuse a credential, whichever SDK error class carries them (a connection
#: closed with one of them becomes a ServiceBusConnectionError, for instance).
CREDENTIAL_REFUSALS = frozenset({"amqp:unauthorized-access", "com.microsoft:auth-failed"})


def is_credential_refusal(error: BaseException) -> bool:
    """Whether Service Bus refused the credentials (wrong key, expired SAS, no Send rights).

    ``ServiceBusAuthenticationError`` is the SDK's error for a refused put-token (a key or token
    the namespace does not accept, whatever the condition: real namespaces and the emulator
    answer 401, which the SDK reports as ``amqp:client-error``); ``ServiceBusAuthorizationError``
    for ``amqp:unauthorized-access`` (a valid token without the rights the link needs). Any
    SDK error carrying one of :data:`CREDENTIAL_REFUSALS` counts too.
    """
    if isinstance(error, (ServiceBusAuthenticationError, ServiceBusAuthorizationError)):
        return True
    return isinstance(error, ServiceBusError) and error_condition(error) in CREDENTIAL_REFUSALS


def is_timeout(error: BaseException) -> bool:
    """Whether a Service Bus call gave up waiting (the SDK's own or the socket's timeout)."""
    return isinstance(error, (OperationTimeoutError, TimeoutError))


def retry_after_probe(error: BaseException) -> bool:
    """Whether a link that a probe (one attempt, no retries) failed to open is worth opening
    again with the SDK's retries: a transient SDK error, not a refused credential nor a
    namespace that stayed silent for the whole send timeout."""
    return (
        isinstance(error, ServiceBusError)
        and not is_credential_refusal(error)
        and not is_timeout(error)
    )


def send_failure(
    error: BaseException,
    *,
    action: str,
    entity: str,
    namespace: str,
    uses_connection_string: bool,
    timeout: float,
) -> ClaimCheckBusError | None:
    """The error to raise instead of ``error`` from ``action`` on ``entity``; ``None`` when the
    SDK's own error says enough (a message too large, an entity that does not exist...).

    ``uses_connection_string``: the bus authenticates with ``service_bus.connection_string``
    (else with azure-identity for ``service_bus.fully_qualified_namespace``).
    """
    where = f"'{entity}' on Service Bus namespace {namespace}"
    if is_credential_refusal(error):
        detail = f"{type(error).__name__}: {redact_secrets(str(error))}"
        if uses_connection_string:
            return ConfigurationError(
                f"{CONNECTION_STRING} ({env_var(CONNECTION_STRING)}): {where} refused its key "
                f"({detail}). Check that SharedAccessKeyName names a shared access policy of "
                "this namespace with Send rights and that SharedAccessKey is its current key "
                "(portal: the namespace's Shared access policies)."
            )
        return ConfigurationError(
            f"{NAMESPACE} ({env_var(NAMESPACE)}): {where} refused the azure-identity credential "
            f"({detail}). Give the identity the 'Azure Service Bus Data Sender' role on the "
            "namespace or the entity, and check which identity the credential picked up."
        )
    if is_timeout(error):
        return SendTimeoutError(
            f"{action} {where} got no answer within {timeout:g} s ({SEND_TIMEOUT}, "
            f"{env_var(SEND_TIMEOUT)}). Check that the namespace is reachable from here; a "
            "message whose send timed out may still have been enqueued, so retry with the same "
            "message id."
        )
    return None
