"""Opt-in gzip of offloaded payloads: round trips (sync, async, worker, a reader that knows only
the wire format), what is stored, and what a hostile stored stream gets."""

from __future__ import annotations

import gzip
import hashlib
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from pydantic import BaseModel

from claimcheck_bus import (
    AsyncClaimCheckBus,
    BusSettings,
    ClaimCheckBus,
    EventDecodeError,
    PayloadTooLargeError,
)
from claimcheck_bus.payloads.compression import Inflater, compressed
from claimcheck_bus.payloads.download import PayloadSubject
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.testing.storage_server import Reply, StorageServer, storage_server
from claimcheck_bus.worker import Projection, SQLiteProjectionStore, Worker, handles

SUBJECT = PayloadSubject("m-1", "q", "store/q/E/m-1.json")


class Report(BaseModel):
    ReportId: str
    Rows: list[str]


def report(rows: int = 20_000) -> Report:
    return Report(ReportId="r-1", Rows=[f"row {n} of the quarterly figures" for n in range(rows)])


def gzipped(settings: BusSettings, **claim_check: object) -> BusSettings:
    updates = {"compression": "gzip", **claim_check}
    return settings.model_copy(
        update={"claim_check": settings.claim_check.model_copy(update=updates)}
    )


def peek(settings: BusSettings) -> ServiceBusMessage:
    conn = settings.service_bus.connection_string
    assert conn is not None
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        queue = str(settings.service_bus.default_queue_name)
        with client.get_queue_receiver(queue) as receiver:
            [message] = receiver.peek_messages(max_message_count=1)
    return message  # type: ignore[return-value]


def test_a_compressed_payload_round_trips_and_follows_the_wire_format(
    bus_settings: BusSettings,
) -> None:
    settings = gzipped(bus_settings)
    sent = report()
    plain = sent.model_dump_json().encode()
    with ClaimCheckBus(settings) as bus:
        receipt = bus.publish(sent)
        assert receipt.route.value == "claim-check"
        # What a client that knows only the wire format does: GET, check, gunzip.
        props = {k.decode(): v for k, v in (peek(settings).application_properties or {}).items()}
        assert props["ClaimCheckContentEncoding"] == b"gzip"
        url = props["ClaimCheckBlobUri"].decode()
        with httpx.stream("GET", url) as response:
            assert response.headers["content-encoding"] == "gzip"
            stored = b"".join(response.iter_raw())
        assert props["ClaimCheckSize"] == len(stored) < len(plain) / 5
        assert props["ClaimCheckSha256"].decode() == hashlib.sha256(stored).hexdigest()
        assert gzip.decompress(stored) == plain
        # A client that decodes Content-Encoding by itself gets the JSON directly.
        assert httpx.get(url).content == plain
        [event] = bus.receive(Report, max_wait=10)
        assert event.data == sent
        event.complete()


async def test_the_async_client_reads_and_streams_compressed_payloads(
    bus_settings: BusSettings, tmp_path: Path
) -> None:
    settings = gzipped(bus_settings)
    sent = report()
    async with AsyncClaimCheckBus(settings) as bus:
        await bus.publish(sent)
        [event] = await bus.receive(Report, max_wait=10)
        assert event.data == sent
        written = await event.save_payload(tmp_path / "payload.json")
        assert (tmp_path / "payload.json").read_bytes() == sent.model_dump_json().encode()
        assert written == len(sent.model_dump_json())
        await event.complete()


def test_what_does_not_shrink_is_stored_as_it_is() -> None:
    assert compressed(random.Random(1).randbytes(4096), "gzip") is None
    assert compressed(b"{}" * 1000, "none") is None
    packed = compressed(b'{"a": 1}' * 1000, "gzip")
    assert packed is not None
    assert gzip.decompress(packed) == b'{"a": 1}' * 1000


class ReportCount(Projection):
    name = "reports"

    def setup(self, db: object) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS reports (id TEXT, rows INTEGER)")  # type: ignore[attr-defined]

    @handles(Report)
    def on_report(self, event: Report, db: object, context: object) -> None:
        db.execute("INSERT INTO reports VALUES (?, ?)", (event.ReportId, len(event.Rows)))  # type: ignore[attr-defined]


async def test_a_worker_projects_compressed_events(
    bus_settings: BusSettings, tmp_path: Path
) -> None:
    settings = gzipped(bus_settings)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    async with AsyncClaimCheckBus(settings) as bus:
        await bus.publish(report())
    worker = Worker(settings, max_wait=0.3)
    worker.add_projection(ReportCount(), store=store)
    import asyncio

    stop = asyncio.Event()
    task = asyncio.create_task(worker.serve(stop))

    async def projected() -> list[tuple[object, ...]] | None:
        try:
            return store.query("SELECT id, rows FROM reports") or None
        except Exception:
            return None

    try:
        assert await wait_for_async(projected, timeout=20) == [("r-1", 20_000)]
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        store.close()


def send_claim_check(settings: BusSettings, url: str, encoding: str) -> None:
    """A claim-checked message pointing at ``url``, as a foreign sender writes one."""
    conn = settings.service_bus.connection_string
    assert conn is not None
    properties = {
        "IsClaimCheck": True,
        "ClaimCheckBlobUri": url,
        "ClaimCheckContentEncoding": encoding,
    }
    with ServiceBusClient.from_connection_string(conn.get_secret_value()) as client:
        with client.get_queue_sender(str(settings.service_bus.default_queue_name)) as sender:
            sender.send_messages(
                ServiceBusMessage(b"", message_id="m-1", application_properties=properties)
            )


@pytest.fixture
def server() -> Iterator[StorageServer]:
    with storage_server() as server:
        yield server


@pytest.mark.parametrize(
    ("stored", "error", "words"),
    [
        # A bomb: 8 MB of zeros in a few KB, above the receiver's 1 MB.
        (gzip.compress(b"\0" * 8_000_000), PayloadTooLargeError, "inflates beyond"),
        (gzip.compress(b'{"ReportId": "x", "Rows": []}') + b"garbage", EventDecodeError, "follow"),
        (gzip.compress(b'{"ReportId": "x", "Rows": []}')[:-6], EventDecodeError, "truncated"),
        (b"not gzip at all", EventDecodeError, "not valid gzip"),
    ],
    # Named ids: the gzip header holds the compression time, so ids made from the bytes would
    # differ between pytest-xdist workers collecting a second apart, and xdist refuses that.
    ids=["bomb", "trailing-garbage", "truncated", "not-gzip"],
)
def test_hostile_compressed_streams_get_typed_errors(
    bus_settings: BusSettings,
    server: StorageServer,
    stored: bytes,
    error: type[Exception],
    words: str,
) -> None:
    settings = gzipped(
        bus_settings, trusted_blob_endpoints=[server.url("/store")], max_download_size_mb=1
    )
    url = server.serve("/store/q/Report/m-1.json", Reply(stored))
    send_claim_check(settings, url, "gzip")
    with ClaimCheckBus(settings) as bus:
        [event] = bus.receive(Report, max_wait=10)
        with pytest.raises(error, match=words):
            _ = event.data
        event.complete()


def test_the_inflater_never_inflates_past_its_limit_in_one_piece() -> None:
    bomb = zlib.compress(b"\0" * 50_000_000, 9, wbits=31)
    inflater = Inflater(2_000_000, SUBJECT)
    pieces: list[int] = []

    def inflate() -> None:
        pieces.extend(len(piece) for piece in inflater.feed(bomb))

    with pytest.raises(PayloadTooLargeError):
        inflate()
    assert max(pieces) <= 1024 * 1024
    assert sum(pieces) <= 2_000_000


def test_an_unknown_encoding_is_refused_before_any_request(
    bus_settings: BusSettings, server: StorageServer
) -> None:
    settings = gzipped(bus_settings, trusted_blob_endpoints=[server.url("/store")])
    url = server.serve("/store/q/Report/m-1.json", Reply(b"{}"))
    send_claim_check(settings, url, "br")
    with ClaimCheckBus(settings) as bus:
        [event] = bus.receive(Report, max_wait=10)
        with pytest.raises(EventDecodeError, match="unknown ClaimCheckContentEncoding 'br'"):
            _ = event.data
        event.complete()
    assert server.requests == []
