"""What failed Service Bus calls on the publish path become (decisions only, no I/O)."""

from __future__ import annotations

import pytest
from azure.servicebus.exceptions import (
    MessageSizeExceededError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusAuthenticationError,
    ServiceBusAuthorizationError,
    ServiceBusConnectionError,
    ServiceBusError,
)

from claimcheck_bus.claim_check.send_failures import (
    is_credential_refusal,
    retry_after_probe,
    send_failure,
)
from claimcheck_bus.errors import ConfigurationError, SendTimeoutError


def failure(error: BaseException, *, uses_connection_string: bool = True) -> object:
    return send_failure(
        error,
        action="sending to",
        entity="orders",
        namespace="contoso.servicebus.windows.net",
        uses_connection_string=uses_connection_string,
        timeout=2.5,
    )


@pytest.mark.parametrize(
    "error",
    [
        # What the SDK raises today for a put-token answered 401 (real namespaces, the emulator).
        ServiceBusAuthenticationError(message=None, condition=b"amqp:client-error"),
        # What it raises for a link refused with amqp:unauthorized-access.
        ServiceBusAuthorizationError(message="Unauthorized", condition=b"amqp:unauthorized-access"),
        # A connection closed with that condition, or with Service Bus's own auth-failed.
        ServiceBusConnectionError(message="closed", condition=b"amqp:unauthorized-access"),
        ServiceBusError(message="refused", condition=b"com.microsoft:auth-failed"),
    ],
)
def test_a_refused_credential_is_a_configuration_error_naming_the_setting(
    error: ServiceBusError,
) -> None:
    assert is_credential_refusal(error)
    translated = failure(error)
    assert isinstance(translated, ConfigurationError)
    text = str(translated)
    assert text.startswith(
        "service_bus.connection_string (CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING): "
        "'orders' on Service Bus namespace contoso.servicebus.windows.net refused its key"
    )
    assert type(error).__name__ in text


def test_with_azure_identity_the_namespace_setting_and_the_role_are_named() -> None:
    translated = failure(ServiceBusAuthenticationError(), uses_connection_string=False)
    assert isinstance(translated, ConfigurationError)
    text = str(translated)
    assert "service_bus.fully_qualified_namespace" in text
    assert "CLAIMCHECK_SERVICE_BUS__FULLY_QUALIFIED_NAMESPACE" in text
    assert "Azure Service Bus Data Sender" in text


def test_a_signature_in_the_sdks_text_is_redacted() -> None:
    error = ServiceBusAuthenticationError(message="token SharedAccessSignature sr=x&sig=S3CRET")
    assert "S3CRET" not in str(failure(error))


@pytest.mark.parametrize(
    "error",
    [OperationTimeoutError(message="Timed out waiting for the AMQP link to open."), TimeoutError()],
)
def test_a_timeout_names_the_namespace_the_entity_and_the_setting(error: BaseException) -> None:
    translated = failure(error)
    assert isinstance(translated, SendTimeoutError)
    assert isinstance(translated, TimeoutError)
    text = str(translated)
    assert "'orders' on Service Bus namespace contoso.servicebus.windows.net" in text
    assert "within 2.5 s" in text
    assert "service_bus.send_timeout_seconds" in text
    assert "CLAIMCHECK_SERVICE_BUS__SEND_TIMEOUT_SECONDS" in text


@pytest.mark.parametrize(
    "error",
    [
        MessageSizeExceededError(message="too large"),
        MessagingEntityNotFoundError(message="no such queue"),
        ServiceBusConnectionError(message="connection lost"),
        ValueError("not an SDK error"),
    ],
)
def test_other_errors_are_left_as_the_sdk_raised_them(error: BaseException) -> None:
    assert not is_credential_refusal(error)
    assert failure(error) is None


def test_only_transient_sdk_errors_open_the_link_again_after_a_probe() -> None:
    assert retry_after_probe(ServiceBusConnectionError(message="connection reset"))
    assert retry_after_probe(ServiceBusError(message="server busy"))
    assert not retry_after_probe(ServiceBusAuthenticationError())
    assert not retry_after_probe(ServiceBusConnectionError(condition=b"amqp:unauthorized-access"))
    assert not retry_after_probe(OperationTimeoutError())
    assert not retry_after_probe(TimeoutError())
    assert not retry_after_probe(ValueError("a bug, not the network"))
