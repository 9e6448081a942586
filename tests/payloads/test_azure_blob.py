"""The Azure Blob payload store on a real Azurite: SAS, container, metadata, secrets, OAuth.

The behaviour shared with the memory store (links, overwrite, delete, reads) is tested against
both in ``test_memory.py``; this file covers what only the Azure store does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.core.pipeline.policies import RequestHistory
from azure.core.rest import HttpRequest
from azure.storage.blob import BlobServiceClient

from claimcheck_bus.errors import (
    ConfigurationError,
    PayloadAccessDeniedError,
    PayloadNotFoundError,
    PayloadUnavailableError,
)
from claimcheck_bus.payloads import AsyncAzureBlobPayloadStore, AzureBlobPayloadStore
from claimcheck_bus.payloads.azure_blob import (
    ASYNC_MAX_SINGLE_PUT_SIZE,
    client_options,
    connection_failed,
    retry_backoff,
    split_retry_options,
    upload_body,
)
from claimcheck_bus.payloads.store import (
    ACCOUNT_KEY_MAX_LIFETIME,
    USER_DELEGATION_MAX_LIFETIME,
    blob_name_for,
    decode_metadata_value,
    payload_metadata,
    sas_expiry,
)
from claimcheck_bus.settings import ClaimCheckSettings
from claimcheck_bus.testing.azurite import Azurite, AzuriteOAuth, connection_string_for
from claimcheck_bus.testing.credentials import AsyncFakeTokenCredential, FakeTokenCredential

PAYLOAD = b'{"OrderId": "42", "Lines": [' + b"7," * 3000 + b"7]}"
JSON = "application/json"


def later(hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=hours)


def sas_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def tampered(url: str) -> str:
    head, sig = url.split("sig=", 1)
    return f"{head}sig={'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


class CountingStore(AzureBlobPayloadStore):
    """Counts container creations and delegation-key requests."""

    creates = 0
    keys = 0

    def _create_container(self, blob_name: str, message_id: str | None) -> None:
        self.creates += 1
        super()._create_container(blob_name, message_id)

    def _keep_key(self, key: Any, window: Any) -> None:
        self.keys += 1
        super()._keep_key(key, window)


class AsyncCountingStore(AsyncAzureBlobPayloadStore):
    """Counts container creations and delegation-key requests."""

    creates = 0
    keys = 0

    async def _create_container(self, blob_name: str, message_id: str | None) -> None:
        self.creates += 1
        await asyncio.sleep(0)  # let racing uploads pile up on the lock
        await super()._create_container(blob_name, message_id)

    def _keep_key(self, key: Any, window: Any) -> None:
        self.keys += 1
        super()._keep_key(key, window)


@pytest.fixture
def service(azurite: Azurite) -> Iterator[BlobServiceClient]:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        yield client


@pytest.fixture
def new_container(service: BlobServiceClient) -> Iterator[str]:
    """A container name that does not exist yet; deleted afterwards if a test created it."""
    name = f"new-{uuid.uuid4().hex[:20]}"
    yield name
    if service.get_container_client(name).exists():
        service.delete_container(name)


# --- upload body (pure) -------------------------------------------------------------------------


def test_bytes_go_to_the_sdk_as_they_are() -> None:
    data = b"abc" * 10
    assert upload_body(data) is data
    assert upload_body(memoryview(data)) is data


def test_a_partial_memoryview_becomes_a_seekable_stream_over_the_same_memory() -> None:
    buffer = bytearray(b"0123456789")
    stream: Any = upload_body(memoryview(buffer)[2:8])
    assert stream.seekable()
    assert stream.read(2) == b"23"
    assert stream.read() == b"4567"
    stream.seek(1)
    target = bytearray(3)
    assert stream.readinto(target) == 3
    assert bytes(target) == b"345"
    assert stream.seek(0, io.SEEK_END) == 6
    assert stream.read(5) == b""


def test_the_async_client_sends_larger_payloads_in_blocks_unless_told_otherwise() -> None:
    assert client_options({}, asynchronous=True) == {
        "max_single_put_size": ASYNC_MAX_SINGLE_PUT_SIZE
    }
    assert client_options({"max_single_put_size": 1}, asynchronous=True) == {
        "max_single_put_size": 1
    }
    assert client_options({"retry_total": 0}, asynchronous=False) == {"retry_total": 0}


def test_failed_connections_are_retried_within_seconds_and_busy_answers_as_the_sdk_says() -> None:
    waits = [retry_backoff(n, True, sdk_backoff=15.0) for n in (1, 2, 3)]
    assert waits == [0.5, 1.0, 2.0]
    assert sum(waits) < 4  # the SDK's own waits added up to about 84 s
    assert retry_backoff(2, False, sdk_backoff=18.0) == 18.0


def test_a_failed_connection_is_told_from_an_http_answer_by_the_last_attempt() -> None:
    request = HttpRequest("GET", "http://127.0.0.1:1/")
    refused = RequestHistory(request, error=ServiceRequestError("refused"))
    answered = RequestHistory(request, error=ServiceResponseError("reset mid-answer"))
    assert connection_failed({"history": [answered, refused]})
    assert not connection_failed({"history": [refused, answered]})
    assert not connection_failed({"history": []})


def test_retry_options_go_to_the_retry_policy() -> None:
    retry, rest = split_retry_options({"retry_total": 2, "max_single_put_size": 1})
    assert retry == {"retry_total": 2}
    assert rest == {"max_single_put_size": 1}


# --- container ----------------------------------------------------------------------------------


def test_the_container_is_created_once_per_store(
    azurite: Azurite, service: BlobServiceClient, new_container: str
) -> None:
    with CountingStore.from_connection_string(azurite.connection_string, new_container) as store:
        for index in range(3):
            store.upload(
                f"q/E/{index}.json", b"{}", content_type=JSON, metadata={}, sas_expires_on=later()
            )
        assert store.creates == 1
    assert service.get_container_client(new_container).exists()


def test_an_existing_container_is_fine(azurite: Azurite, blob_container: str) -> None:
    with CountingStore.from_connection_string(azurite.connection_string, blob_container) as store:
        stored = store.upload(
            "q/E/1.json", b"{}", content_type=JSON, metadata={}, sas_expires_on=later()
        )
        assert store.creates == 1
        assert store.read(stored.blob_name) == b"{}"


def test_a_container_deleted_behind_the_stores_back_is_created_again(
    azurite: Azurite, service: BlobServiceClient, new_container: str
) -> None:
    with CountingStore.from_connection_string(azurite.connection_string, new_container) as store:
        store.upload("q/E/1.json", b"1", content_type=JSON, metadata={}, sas_expires_on=later())
        service.delete_container(new_container)
        store.upload("q/E/2.json", b"2", content_type=JSON, metadata={}, sas_expires_on=later())
        assert store.creates == 2
        assert store.read("q/E/2.json") == b"2"


async def test_concurrent_async_uploads_create_the_container_once(
    azurite: Azurite, service: BlobServiceClient, new_container: str
) -> None:
    async with AsyncCountingStore.from_connection_string(
        azurite.connection_string, new_container
    ) as store:
        results = await asyncio.gather(
            *(
                store.upload(
                    f"q/E/{i}.json", b"{}", content_type=JSON, metadata={}, sas_expires_on=later()
                )
                for i in range(5)
            )
        )
        assert store.creates == 1
        assert len({result.blob_name for result in results}) == 5
    assert len(list(service.get_container_client(new_container).list_blobs())) == 5


# --- what is stored -----------------------------------------------------------------------------


def test_blob_name_content_type_and_metadata_follow_the_wire_contract(
    azurite: Azurite, blob_container: str, service: BlobServiceClient
) -> None:
    message_id = str(uuid.uuid4())
    name = blob_name_for("orders", "OrderCreated", message_id)
    sha256 = hashlib.sha256(PAYLOAD).hexdigest()
    metadata = payload_metadata(message_id, "OrderCreated", "orders", sha256)
    with AzureBlobPayloadStore.from_connection_string(
        azurite.connection_string, blob_container
    ) as store:
        stored = store.upload(
            name, PAYLOAD, content_type=JSON, metadata=metadata, sas_expires_on=later()
        )
    assert stored.sha256 == sha256
    assert urlsplit(stored.url).path == (
        f"/devstoreaccount1/{blob_container}/orders/OrderCreated/{message_id}.json"
    )
    properties = service.get_blob_client(blob_container, name).get_blob_properties()
    assert properties.content_settings.content_type == JSON
    assert properties.size == len(PAYLOAD)
    assert properties.metadata == metadata
    assert decode_metadata_value(properties.metadata["sha256"]) == sha256


def test_non_ascii_metadata_values_survive_storage(
    azurite: Azurite, blob_container: str, service: BlobServiceClient
) -> None:
    metadata = payload_metadata(" m\u00e9 ", "Bestellung\u00c4", "orders", "00")
    with AzureBlobPayloadStore.from_connection_string(
        azurite.connection_string, blob_container
    ) as store:
        store.upload(
            "q/E/m.json", b"{}", content_type=JSON, metadata=metadata, sas_expires_on=later()
        )
    stored = service.get_blob_client(blob_container, "q/E/m.json").get_blob_properties().metadata
    assert decode_metadata_value(stored["message_id"]) == " m\u00e9 "
    assert decode_metadata_value(stored["event_type"]) == "Bestellung\u00c4"


def test_the_account_key_sas_is_read_only_for_one_blob_until_the_expiry(
    azurite: Azurite, blob_container: str
) -> None:
    expires = sas_expiry(datetime.now(timezone.utc), 2, None, ACCOUNT_KEY_MAX_LIFETIME)
    with AzureBlobPayloadStore.from_connection_string(
        azurite.connection_string, blob_container
    ) as store:
        stored = store.upload(
            "q/E/1.json", b"{}", content_type=JSON, metadata={}, sas_expires_on=expires
        )
        assert store.endpoint == azurite.blob_endpoint
        assert store.max_sas_lifetime == ACCOUNT_KEY_MAX_LIFETIME
        assert store.signs_with_account_key
    sas = sas_of(stored.url)
    assert (sas["sp"], sas["sr"], sas["spr"]) == ("r", "b", "https,http")
    assert sas["se"] == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "st" not in sas  # valid at once, whatever the clock skew


def test_a_link_expiring_shortly_stops_working_while_reads_go_on(
    azurite: Azurite, blob_container: str
) -> None:
    with AzureBlobPayloadStore.from_connection_string(
        azurite.connection_string, blob_container
    ) as store:
        expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
        stored = store.upload(
            "q/E/s.json", PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=expires
        )
        deadline = datetime.now(timezone.utc) + timedelta(seconds=10)
        statuses = []
        while datetime.now(timezone.utc) < deadline:
            statuses.append(httpx.get(stored.url).status_code)
            if statuses[-1] == 403:
                break
            time.sleep(0.05)  # poll interval, not synchronisation: the deadline bounds the wait
        assert statuses[0] == 200
        assert statuses[-1] == 403
        assert store.read("q/E/s.json") == PAYLOAD


@pytest.mark.parametrize("store_class", [AzureBlobPayloadStore, AsyncAzureBlobPayloadStore])
async def test_large_payloads_go_in_parallel_blocks_from_a_memoryview(
    azurite: Azurite, blob_container: str, store_class: Any
) -> None:
    data = bytearray(os.urandom(10 * 2**20 + 123))
    view = memoryview(data)[100:]
    # Small blocks make a 10 MB test take the block path that 100 MB payloads take.
    store = store_class.from_connection_string(
        azurite.connection_string, blob_container, max_single_put_size=2**20, max_block_size=2**20
    )
    result = store.upload(
        "q/E/big.bin",
        view,
        content_type="application/octet-stream",
        metadata={},
        sas_expires_on=later(),
    )
    if asyncio.iscoroutine(result):
        result = await result
    read = store.read("q/E/big.bin")
    if asyncio.iscoroutine(read):
        read = await read
    closing = store.close()
    if asyncio.iscoroutine(closing):
        await closing
    assert read == bytes(view)
    assert result.sha256 == hashlib.sha256(view).hexdigest()


# --- failures and secrets -----------------------------------------------------------------------


def secrets_absent(error: BaseException, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    formatted = "".join(traceback.format_exception(error))
    for secret in secrets:
        assert secret not in str(error)
        assert secret not in formatted
        assert secret not in caplog.text
        assert secret not in repr(error.args)


def test_no_sas_signature_or_key_reaches_logs_errors_or_tracebacks(
    azurite: Azurite, blob_container: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with AzureBlobPayloadStore.from_connection_string(
        azurite.connection_string, blob_container
    ) as store:
        stored = store.upload(
            "q/E/1.json", PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
        )
        signature = sas_of(stored.url)["sig"]
        assert signature not in repr(stored)
        store.delete("q/E/1.json")
        with pytest.raises(PayloadNotFoundError) as missing:
            store.read("q/E/1.json")
    assert f"{blob_container}/q/E/1.json" in str(missing.value)
    assert missing.value.__cause__ is None
    assert missing.value.__suppress_context__
    secrets_absent(missing.value, caplog, signature, azurite.account_key)
    assert "q/E/1.json" in caplog.text  # the SDK's and our logs are on, and redacted


def test_a_wrong_account_key_is_access_denied_without_quoting_it(
    azurite: Azurite, blob_container: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = base64.b64encode(b"not the key" * 6).decode()
    connection_string = connection_string_for(azurite.blob_endpoint, wrong_key)
    with (
        AzureBlobPayloadStore.from_connection_string(
            connection_string, blob_container, retry_total=0
        ) as store,
        pytest.raises(PayloadAccessDeniedError) as denied,
    ):
        store.upload(
            "q/E/1.json",
            b"{}",
            content_type=JSON,
            metadata=payload_metadata("m-9", "E", "q", "00"),
            sas_expires_on=later(),
        )
    assert denied.value.message_id == "m-9"
    assert "HTTP 403" in str(denied.value)
    secrets_absent(denied.value, caplog, wrong_key)


def test_an_unreachable_storage_is_unavailable_and_retryable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:  # a free port with nothing listening once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    connection_string = connection_string_for(endpoint)
    with (
        AzureBlobPayloadStore.from_connection_string(
            connection_string, "claim-check", retry_total=0
        ) as store,
        pytest.raises(PayloadUnavailableError) as unavailable,
    ):
        store.read("q/E/1.json")
    assert unavailable.value.permanent is False
    assert "claim-check/q/E/1.json" in str(unavailable.value)
    secrets_absent(
        unavailable.value, caplog, connection_string.split("AccountKey=")[1].split(";")[0]
    )


# --- settings -----------------------------------------------------------------------------------


def test_from_settings_with_a_connection_string_signs_account_key_sas(
    azurite: Azurite, blob_container: str
) -> None:
    settings = ClaimCheckSettings(
        container_name=blob_container,
        blob_storage={"connection_string": azurite.connection_string},  # type: ignore[arg-type]
    )
    with AzureBlobPayloadStore.from_settings(settings) as store:
        stored = store.upload(
            "q/E/1.json", b"{}", content_type=JSON, metadata={}, sas_expires_on=later()
        )
        assert store.container_name == blob_container
        assert store.signs_with_account_key
    assert httpx.get(stored.url).content == b"{}"


def test_a_connection_string_without_an_account_key_is_refused_without_quoting_it() -> None:
    connection_string = (
        "BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=1&sig=SECRETSIG"
    )
    with pytest.raises(ConfigurationError, match="AccountKey") as refused:
        AzureBlobPayloadStore.from_connection_string(connection_string)
    assert "SECRETSIG" not in str(refused.value)


def test_from_settings_needs_a_storage_account() -> None:
    with pytest.raises(ConfigurationError, match="no storage account"):
        AzureBlobPayloadStore.from_settings(ClaimCheckSettings())


# --- user-delegation SAS (HTTPS Azurite with OAuth) --------------------------------------------


def test_a_user_delegation_sas_verifies_and_serves_the_bytes(
    azurite_oauth: AzuriteOAuth,
) -> None:
    settings = ClaimCheckSettings(
        container_name="claim-check",
        blob_storage={"account_url": azurite_oauth.blob_endpoint},  # type: ignore[arg-type]
    )
    credential = FakeTokenCredential()
    name = blob_name_for("orders", "OrderCreated", str(uuid.uuid4()))
    with CountingStore.from_settings(
        settings, credential=credential, connection_verify=azurite_oauth.ca_path
    ) as store:
        assert not store.signs_with_account_key
        assert store.max_sas_lifetime == USER_DELEGATION_MAX_LIFETIME
        assert store.endpoint == azurite_oauth.blob_endpoint
        stored = store.upload(
            name, PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later(2)
        )
        other = store.upload(
            "q/E/other.json", b"other", content_type=JSON, metadata={}, sas_expires_on=later(3)
        )
        assert store.keys == 1  # the delegation key is cached across uploads
        assert store.read(name) == PAYLOAD
    sas = sas_of(stored.url)
    assert (sas["sp"], sas["spr"], sas["skoid"], sas["sktid"]) == (
        "r",
        "https",
        credential.object_id,
        credential.tenant_id,
    )
    with httpx.Client(verify=azurite_oauth.ssl_context()) as http:
        response = http.get(stored.url)
        assert (response.status_code, response.content) == (200, PAYLOAD)
        assert response.headers["content-type"] == JSON
        assert http.get(tampered(stored.url)).status_code == 403
        scoped = other.url.split("?")[0] + "?" + stored.url.split("?")[1]
        assert http.get(scoped).status_code == 403
        assert (
            http.put(stored.url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"}).status_code
            == 403
        )


async def test_the_async_twin_signs_user_delegation_sas_too(azurite_oauth: AzuriteOAuth) -> None:
    credential = AsyncFakeTokenCredential()
    async with AsyncCountingStore.from_account_url(
        azurite_oauth.blob_endpoint,
        "claim-check-async",
        credential=credential,
        connection_verify=azurite_oauth.ca_path,
    ) as store:
        past = datetime.now(timezone.utc) - timedelta(minutes=1)
        expired = await store.upload(
            "q/E/old.json", b"old", content_type=JSON, metadata={}, sas_expires_on=past
        )
        stored = await store.upload(
            "q/E/new.json", PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
        )
        assert store.keys == 1
        assert await store.read("q/E/old.json") == b"old"
        async with httpx.AsyncClient(verify=azurite_oauth.ssl_context()) as http:
            assert (await http.get(stored.url)).content == PAYLOAD
            assert (await http.get(expired.url)).status_code == 403
            assert (await http.get(tampered(stored.url))).status_code == 403
        assert await store.delete("q/E/new.json") is True
        assert await store.delete("q/E/new.json") is False
