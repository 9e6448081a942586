"""The memory store mirrors the Azure one: the same test bodies run against both.

Each contract test runs once against :class:`AzureBlobPayloadStore` on Azurite (links fetched
with plain httpx over a real socket) and once against :class:`MemoryPayloadStore` (links
fetched through its httpx transport). Memory-only behaviour comes last.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import httpx
import pytest

from claimcheck_bus.errors import PayloadNotFoundError
from claimcheck_bus.payloads import (
    AsyncAzureBlobPayloadStore,
    AsyncMemoryPayloadStore,
    AsyncPayloadStore,
    AzureBlobPayloadStore,
    MemoryPayloadStore,
    PayloadStore,
)
from claimcheck_bus.payloads.store import blob_name_for, payload_metadata
from claimcheck_bus.testing.azurite import Azurite

PAYLOAD = b'{"OrderId": "42", "Lines": [' + b"1," * 5000 + b"1]}"
JSON = "application/json"


def later(hours: float = 1) -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=hours)


def other_blob(url: str, name: str) -> str:
    """The same SAS (query string) put on another blob's path."""
    parts = urlsplit(url)
    container_path = parts.path.rsplit("/", 3)[0]
    return parts._replace(path=f"{container_path}/{name}").geturl()


def tampered(url: str) -> str:
    head, sig = url.split("sig=", 1)
    return f"{head}sig={'A' if sig[0] != 'A' else 'B'}{sig[1:]}"


@dataclass
class Backend:
    store: PayloadStore
    http: httpx.Client


@dataclass
class AsyncBackend:
    store: AsyncPayloadStore
    http: httpx.AsyncClient


@pytest.fixture(params=["azure", "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    store: PayloadStore
    if request.param == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        container: str = request.getfixturevalue("blob_container")
        store = AzureBlobPayloadStore.from_connection_string(azurite.connection_string, container)
        http = httpx.Client(timeout=10)
    else:
        memory = MemoryPayloadStore()
        store, http = memory, httpx.Client(transport=memory.transport())
    with http:
        yield Backend(store, http)
        store.close()


@pytest.fixture(params=["azure", "memory"])
async def async_backend(request: pytest.FixtureRequest) -> AsyncIterator[AsyncBackend]:
    store: AsyncPayloadStore
    if request.param == "azure":
        azurite: Azurite = request.getfixturevalue("azurite")
        container: str = request.getfixturevalue("blob_container")
        store = AsyncAzureBlobPayloadStore.from_connection_string(
            azurite.connection_string, container
        )
        http = httpx.AsyncClient(timeout=10)
    else:
        memory = AsyncMemoryPayloadStore()
        store, http = memory, httpx.AsyncClient(transport=memory.transport())
    async with http:
        yield AsyncBackend(store, http)
        await store.close()


# --- the contract, blocking ---------------------------------------------------------------------


def test_an_uploaded_payload_is_served_by_its_link_with_its_content_type(backend: Backend) -> None:
    name = blob_name_for("orders", "OrderCreated", "m-1")
    stored = backend.store.upload(
        name, PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert (stored.blob_name, stored.size) == (name, len(PAYLOAD))
    assert stored.url.startswith(f"{backend.store.endpoint}/{backend.store.container_name}/")
    response = backend.http.get(stored.url)
    assert response.status_code == 200
    assert response.content == PAYLOAD
    assert response.headers["content-type"] == JSON


def test_the_link_is_read_only(backend: Backend) -> None:
    stored = backend.store.upload(
        "orders/E/ro.json", PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
    )
    put = backend.http.put(
        stored.url, content=b"overwritten", headers={"x-ms-blob-type": "BlockBlob"}
    )
    assert put.status_code == 403
    assert backend.http.delete(stored.url).status_code == 403
    assert backend.http.get(stored.url).content == PAYLOAD


def test_the_link_is_scoped_to_its_one_blob(backend: Backend) -> None:
    first = backend.store.upload(
        "orders/E/1.json", b"one", content_type=JSON, metadata={}, sas_expires_on=later()
    )
    backend.store.upload(
        "orders/E/2.json", b"two", content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert backend.http.get(other_blob(first.url, "orders/E/2.json")).status_code == 403
    assert backend.http.get(tampered(first.url)).status_code == 403
    assert backend.http.get(first.url).content == b"one"


def test_a_retried_upload_overwrites_the_same_blob(backend: Backend) -> None:
    name = blob_name_for("orders", "OrderCreated", "retried")
    first = backend.store.upload(
        name, b"first", content_type=JSON, metadata={}, sas_expires_on=later()
    )
    second = backend.store.upload(
        name, b"second try", content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert backend.http.get(first.url).content == b"second try"
    assert backend.store.read(name) == b"second try"
    assert second.size == len(b"second try")


def test_delete_then_the_link_answers_404_and_a_second_delete_is_false(backend: Backend) -> None:
    stored = backend.store.upload(
        "orders/E/del.json", PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert backend.store.delete("orders/E/del.json") is True
    assert backend.http.get(stored.url).status_code == 404
    assert backend.store.delete("orders/E/del.json") is False
    with pytest.raises(PayloadNotFoundError, match=r"orders/E/del\.json"):
        backend.store.read("orders/E/del.json")


def test_an_expired_link_is_refused_but_the_store_still_reads_with_its_credentials(
    backend: Backend,
) -> None:
    stored = backend.store.upload(
        "orders/E/old.json",
        PAYLOAD,
        content_type=JSON,
        metadata={},
        sas_expires_on=datetime.now(timezone.utc) - timedelta(minutes=1),
    )
    assert backend.http.get(stored.url).status_code == 403
    assert backend.store.read("orders/E/old.json") == PAYLOAD
    sink = io.BytesIO()
    assert backend.store.read_to("orders/E/old.json", sink) == len(PAYLOAD)
    assert sink.getvalue() == PAYLOAD


def test_a_memoryview_uploads_exactly_its_bytes(backend: Backend) -> None:
    buffer = bytearray(b"xx" + PAYLOAD + b"yy")
    stored = backend.store.upload(
        "orders/E/view.json",
        memoryview(buffer)[2:-2],
        content_type=JSON,
        metadata={},
        sas_expires_on=later(),
    )
    assert stored.size == len(PAYLOAD)
    assert backend.store.read("orders/E/view.json") == PAYLOAD


@pytest.mark.parametrize(
    ("entity", "message_id"),
    [
        ("sales/orders.eu", "6f1c-42"),
        ("events", "../a b/\\c%d?e#f&sig=x"),
        ("orders", "ctl\x01\x7f-\u00e9\u65e5-\ud800"),
    ],
)
def test_odd_names_are_stored_served_and_read_back(
    backend: Backend, entity: str, message_id: str
) -> None:
    name = blob_name_for(entity, "OrderCreated", message_id)
    stored = backend.store.upload(
        name, PAYLOAD, content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert backend.http.get(stored.url).content == PAYLOAD
    assert backend.store.read(name) == PAYLOAD
    assert backend.store.delete(name) is True


def test_the_reported_sha256_is_that_of_the_stored_bytes(backend: Backend) -> None:
    data = os.urandom(100_000)
    stored = backend.store.upload(
        "orders/E/h.json", data, content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert stored.sha256 == hashlib.sha256(backend.http.get(stored.url).content).hexdigest()


# --- the contract, asyncio ----------------------------------------------------------------------


async def test_async_upload_serve_overwrite_delete(async_backend: AsyncBackend) -> None:
    store, http = async_backend.store, async_backend.http
    name = blob_name_for("orders", "OrderCreated", "async-1")
    metadata = payload_metadata("async-1", "OrderCreated", "orders", "00")
    stored = await store.upload(
        name, b"one", content_type=JSON, metadata=metadata, sas_expires_on=later()
    )
    assert (await http.get(stored.url)).content == b"one"
    await store.upload(name, PAYLOAD, content_type=JSON, metadata=metadata, sas_expires_on=later())
    response = await http.get(stored.url)
    assert (response.status_code, response.content) == (200, PAYLOAD)
    assert response.headers["content-type"] == JSON
    assert (
        await http.put(stored.url, content=b"x", headers={"x-ms-blob-type": "BlockBlob"})
    ).status_code == 403
    assert (await http.get(tampered(stored.url))).status_code == 403
    assert await store.delete(name) is True
    assert (await http.get(stored.url)).status_code == 404
    assert await store.delete(name) is False
    with pytest.raises(PayloadNotFoundError):
        await store.read(name)


async def test_async_expired_link_refused_and_credentialed_read_works(
    async_backend: AsyncBackend,
) -> None:
    store = async_backend.store
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    stored = await store.upload(
        "orders/E/old.json",
        memoryview(PAYLOAD),
        content_type=JSON,
        metadata={},
        sas_expires_on=past,
    )
    assert (await async_backend.http.get(stored.url)).status_code == 403
    assert await store.read("orders/E/old.json") == PAYLOAD
    sink = io.BytesIO()
    assert await store.read_to("orders/E/old.json", sink) == len(PAYLOAD)
    assert sink.getvalue() == PAYLOAD


# --- memory only --------------------------------------------------------------------------------


def test_memory_links_expire_by_the_injected_clock() -> None:
    now = [datetime(2025, 1, 1, tzinfo=timezone.utc)]
    store = MemoryPayloadStore(clock=lambda: now[0])
    stored = store.upload(
        "a/E/1.json",
        b"x",
        content_type=JSON,
        metadata={},
        sas_expires_on=now[0] + timedelta(hours=1),
    )
    with httpx.Client(transport=store.transport()) as http:
        assert http.get(stored.url).status_code == 200
        now[0] += timedelta(hours=1)
        assert http.get(stored.url).status_code == 403


def test_memory_store_exposes_what_was_stored_for_assertions() -> None:
    store = MemoryPayloadStore(container_name="payloads")
    metadata = payload_metadata("m", "E", "q")
    store.upload("q/E/m.json", b"{}", content_type=JSON, metadata=metadata, sas_expires_on=later())
    blob = store.blobs()["q/E/m.json"]
    # The store records the hash of what it stored, whatever the caller's metadata said.
    sha256 = hashlib.sha256(b"{}").hexdigest()
    assert (blob.data, blob.content_type, dict(blob.metadata)) == (
        b"{}",
        JSON,
        {**metadata, "sha256": sha256},
    )
    assert "payloads" in repr(store)


def test_memory_links_are_never_routable() -> None:
    store = MemoryPayloadStore()
    stored = store.upload(
        "a/E/1.json", b"x", content_type=JSON, metadata={}, sas_expires_on=later()
    )
    assert urlsplit(stored.url).hostname.endswith(".invalid")  # type: ignore[union-attr]
    with httpx.Client(transport=store.transport()) as http:
        assert (
            http.get("https://elsewhere.invalid/memoryaccount/claim-check/a/E/1.json").status_code
            == 400
        )
