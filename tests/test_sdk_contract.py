"""What claimcheck-bus assumes about azure-servicebus, checked against the SDK's own encoder.

If an SDK upgrade breaks one of these, `_sdk.py` is the one file to change.
"""

from __future__ import annotations

from azure.servicebus import ServiceBusMessage

# The SDK's private codec is the oracle here; runtime code never imports it.
from azure.servicebus._pyamqp._decode import decode_payload
from azure.servicebus._pyamqp._encode import encode_payload
from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

from claimcheck_bus import _sdk


def encoded(message: ServiceBusMessage) -> bytes:
    out = bytearray()
    encode_payload(out, PyamqpTransport.to_outgoing_amqp_message(message.raw_amqp_message))
    return bytes(out)


def test_encoded_size_matches_the_sdk_encoder() -> None:
    for body in (b"", b"x", b"x" * 255, b"x" * 256, b"x" * 70_000):
        message = _sdk.build_message(
            body,
            content_type="application/json",
            message_id="m",
            subject="S",
            application_properties={"k": "v" * 300},
        )
        assert _sdk.encoded_size(message) == len(encoded(message))


def test_amqp_long_is_encoded_as_an_amqp_long() -> None:
    big = 5 * 1024**3  # over 2 GiB: a plain int would not even encode
    message = _sdk.build_message(
        b"",
        content_type="application/json",
        message_id="m",
        subject="S",
        application_properties={"ClaimCheckSize": _sdk.amqp_long(big), "small": _sdk.amqp_long(7)},
    )
    data = encoded(message)
    assert b"\x81" + big.to_bytes(8, "big") in data  # long, 8 bytes
    assert b"\x55\x07" in data  # smalllong: still the AMQP long type
    decoded = decode_payload(memoryview(data))
    assert decoded[4][b"ClaimCheckSize"] == big
