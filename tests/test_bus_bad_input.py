"""Bad claim-checks give typed errors, make no request they should not, and settle nothing."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas
from pydantic import BaseModel

from claimcheck_bus import (
    BusSettings,
    ClaimCheckBus,
    EventDecodeError,
    InvalidClaimCheckError,
    InvalidEventError,
    MessageError,
    PayloadAccessDeniedError,
    PayloadIntegrityError,
    PayloadNotFoundError,
    PayloadTooLargeError,
    UntrustedPayloadUrlError,
)
from claimcheck_bus.testing.azurite import Azurite


class Order(BaseModel):
    OrderId: str
    Total: float


class RecordingServer:
    """A local HTTP server standing in for a foreign host: it records every request."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        requests: list[str] = []
        self.requests = requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def foreign() -> Iterator[RecordingServer]:
    server = RecordingServer()
    yield server
    server.close()


@pytest.fixture
def bus(bus_settings: BusSettings) -> Iterator[ClaimCheckBus]:
    with ClaimCheckBus(bus_settings) as bus:
        yield bus


def send_raw(settings: BusSettings, body: bytes = b"", **properties: Any) -> None:
    conn = settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_sender(str(settings.service_bus.default_queue_name)) as sender:
            sender.send_messages(
                ServiceBusMessage(body, message_id="bad-1", application_properties=properties)
            )


def upload(azurite: Azurite, container: str, name: str, data: bytes, **sas: Any) -> str:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(container, name)
        blob.upload_blob(data, overwrite=True)
        token = generate_blob_sas(
            azurite.account_name,
            container,
            name,
            account_key=azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=sas.get("expiry", datetime.now(timezone.utc) + timedelta(hours=1)),
        )
        return f"{blob.url}?{token}"


def expect_error(bus: ClaimCheckBus, error: type[MessageError]) -> MessageError:
    """Receive the one message, expect ``error`` from ``.data``, and prove it stayed unsettled:
    abandoned, it comes back with its delivery count raised."""
    [event] = bus.receive(Order, max_messages=1, max_wait=10)
    assert event.event_type is None or isinstance(event.event_type, str)  # metadata is free
    with pytest.raises(error) as caught:
        _ = event.data
    assert caught.value.message_id == "bad-1"
    assert "sig=" not in str(caught.value)
    event.abandon()
    [again] = bus.receive(Order, max_messages=1, max_wait=10)
    assert again.message_id == "bad-1"
    assert again.delivery_count == 1
    again.complete()
    return caught.value


def test_claim_check_without_uri(bus: ClaimCheckBus) -> None:
    send_raw(bus.settings, IsClaimCheck=True)
    error = expect_error(bus, InvalidClaimCheckError)
    assert error.dead_letter_reason == "InvalidClaimCheck"


@pytest.mark.parametrize(
    "variant",
    ["other host", "other port", "other scheme", "other account", "other container"],
)
def test_untrusted_urls_are_refused_without_a_request(
    bus: ClaimCheckBus, foreign: RecordingServer, variant: str, blob_container: str
) -> None:
    own = bus.settings.claim_check
    assert own.blob_storage.connection_string is not None
    endpoint = own.blob_storage.connection_string.get_secret_value().split("BlobEndpoint=")[1]
    endpoint = endpoint.rstrip(";/")
    port = endpoint.rsplit(":", 1)[1].split("/")[0]
    urls = {
        "other host": foreign.url(f"/devstoreaccount1/{blob_container}/b.json"),
        "other port": endpoint.replace(f":{port}", f":{foreign.port}") + f"/{blob_container}/b",
        "other scheme": endpoint.replace("http://", "https://") + f"/{blob_container}/b.json",
        "other account": endpoint.replace("devstoreaccount1", "evil") + f"/{blob_container}/b",
        "other container": f"{endpoint}/not-{blob_container}/b.json",
    }
    send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=urls[variant] + "?sig=SECRET")
    error = expect_error(bus, UntrustedPayloadUrlError)
    assert "SECRET" not in str(error)
    assert foreign.requests == []


def test_http_where_https_is_required(bus: ClaimCheckBus, foreign: RecordingServer) -> None:
    send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri="http://example.com/c/b.json")
    assert "https is required" in str(expect_error(bus, UntrustedPayloadUrlError))


def test_a_redirect_is_not_followed(bus_settings: BusSettings) -> None:
    target = RecordingServer()
    redirector = RecordingServer(302, {"Location": target.url("/x")})
    settings = bus_settings.model_copy(
        update={
            "claim_check": bus_settings.claim_check.model_copy(
                update={"trusted_blob_endpoints": [redirector.url("/trusted")]}
            )
        }
    )
    try:
        with ClaimCheckBus(settings) as bus:
            send_raw(settings, IsClaimCheck=True, ClaimCheckBlobUri=redirector.url("/trusted/b"))
            assert "redirect" in str(expect_error(bus, UntrustedPayloadUrlError))
        assert redirector.requests == ["/trusted/b"]
        assert target.requests == []
    finally:
        target.close()
        redirector.close()


def test_a_missing_payload(bus: ClaimCheckBus, azurite: Azurite, blob_container: str) -> None:
    url = upload(azurite, blob_container, "gone.json", b"{}")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.get_blob_client(blob_container, "gone.json").delete_blob()
    send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
    error = expect_error(bus, PayloadNotFoundError)
    assert error.blob_path == f"devstoreaccount1/{blob_container}/gone.json"


def test_a_forbidden_payload(
    bus_settings: BusSettings,
    azurite: Azurite,
    blob_container: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = upload(azurite, blob_container, "x.json", b"{}")
    tampered = url.replace("sig=", "sig=AAAA")
    # A consumer without storage credentials (it trusts the sender's container by URL) has
    # nothing to fall back on: a refused SAS is final.
    monkeypatch.delenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING")
    settings = BusSettings(
        service_bus=bus_settings.service_bus,
        claim_check={"enabled": False, "trusted_blob_endpoints": [url.split("/x.json")[0]]},
    )
    with ClaimCheckBus(settings) as bus:
        send_raw(settings, IsClaimCheck=True, ClaimCheckBlobUri=tampered)
        expect_error(bus, PayloadAccessDeniedError)


def test_an_expired_sas_falls_back_to_our_own_credentials(
    bus: ClaimCheckBus, azurite: Azurite, blob_container: str, caplog: pytest.LogCaptureFixture
) -> None:
    data = b'{"OrderId": "late", "Total": 1}'
    url = upload(
        azurite,
        blob_container,
        f"{bus.settings.service_bus.default_queue_name}/Order/bad-1.json",
        data,
        expiry=datetime.now(timezone.utc) - timedelta(minutes=5),
    )
    send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
    [event] = bus.receive(Order, max_messages=1, max_wait=10)
    assert event.data.OrderId == "late"
    assert "reading" in caplog.text
    assert "sig=" not in caplog.text
    event.complete()


def deleting_bus(settings: BusSettings) -> ClaimCheckBus:
    claim_check = settings.claim_check.model_copy(update={"delete_after_complete": True})
    return ClaimCheckBus(settings.model_copy(update={"claim_check": claim_check}))


def blob_exists(azurite: Azurite, container: str, name: str) -> bool:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        return bool(service.get_blob_client(container, name).exists())


def test_an_encoded_traversal_never_reaches_another_container(
    bus_settings: BusSettings, azurite: Azurite, blob_container: str
) -> None:
    """Issue 16, failure 1: one segment decoding to ``../secret/x.json`` passed the URL check,
    the bogus SAS got 403, and the credential fallback read (and deleted) the other blob."""
    secret = f"secret-{blob_container}"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_container(secret)
        service.get_blob_client(secret, "x.json").upload_blob(b'{"OrderId": "s", "Total": 1}')
    own = bus_settings.claim_check
    assert own.blob_storage.connection_string is not None
    base = f"{azurite.blob_endpoint}/{own.container_name}"
    with deleting_bus(bus_settings) as bus:
        for path in (f"..%2F{secret}%2Fx.json", f"..%252F{secret}%252Fx.json"):
            send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=f"{base}/{path}?sig=bogus")
            [event] = bus.receive(Order, max_messages=1, max_wait=10)
            with pytest.raises(UntrustedPayloadUrlError, match="separator"):
                _ = event.data
            event.complete()
    assert blob_exists(azurite, secret, "x.json")
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.delete_container(secret)


def test_a_sender_cannot_make_a_deleting_receiver_delete_another_payload(
    bus_settings: BusSettings, azurite: Azurite, blob_container: str
) -> None:
    """Issue 16, failure 1 (second half): a message pointing at another message's payload in
    our container reads it through the SAS it carries, but its completion deletes nothing."""
    queue = bus_settings.service_bus.default_queue_name
    victim = f"{queue}/Order/someone-else.json"
    url = upload(azurite, blob_container, victim, b'{"OrderId": "v", "Total": 1}')
    with deleting_bus(bus_settings) as bus:
        send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
        [event] = bus.receive(Order, max_messages=1, max_wait=10)
        assert event.data.OrderId == "v"
        event.complete()
        assert blob_exists(azurite, blob_container, victim)
        # Its own payload, by contrast, goes once completed.
        mine = f"{queue}/Order/bad-1.json"
        url = upload(azurite, blob_container, mine, b'{"OrderId": "m", "Total": 1}')
        send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
        [event] = bus.receive(Order, max_messages=1, max_wait=10)
        assert event.data.OrderId == "m"
        event.complete()
        assert not blob_exists(azurite, blob_container, mine)


def test_a_payload_over_the_limit(
    bus_settings: BusSettings, azurite: Azurite, blob_container: str
) -> None:
    settings = bus_settings.model_copy(
        update={
            "claim_check": bus_settings.claim_check.model_copy(
                update={"max_download_size_mb": 0.001}
            )
        }
    )
    url = upload(azurite, blob_container, "big.json", b"{" + b" " * 5000 + b"}")
    with ClaimCheckBus(settings) as bus:
        send_raw(settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
        expect_error(bus, PayloadTooLargeError)


def test_a_hash_mismatch(bus: ClaimCheckBus, azurite: Azurite, blob_container: str) -> None:
    url = upload(azurite, blob_container, "h.json", b'{"OrderId": "1", "Total": 2}')
    send_raw(
        bus.settings,
        IsClaimCheck=True,
        ClaimCheckBlobUri=url,
        ClaimCheckSha256=hashlib.sha256(b"something else").hexdigest(),
    )
    expect_error(bus, PayloadIntegrityError)


def test_non_json_inline_and_claim_checked(
    bus: ClaimCheckBus, azurite: Azurite, blob_container: str
) -> None:
    send_raw(bus.settings, b"<order/>")
    expect_error(bus, EventDecodeError)
    url = upload(azurite, blob_container, "n.json", b"not json")
    send_raw(bus.settings, IsClaimCheck=True, ClaimCheckBlobUri=url)
    expect_error(bus, EventDecodeError)


def test_json_of_the_wrong_shape(bus: ClaimCheckBus) -> None:
    send_raw(bus.settings, b'{"order": 1}')
    error = expect_error(bus, InvalidEventError)
    assert "OrderId" in str(error)
