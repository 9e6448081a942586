"""The end-to-end receive fuzz: generated batches sent through the emulator with the real SDK,
received with :class:`AsyncClaimCheckBus` / :class:`ClaimCheckBus`, judged against issue 16.

Every example gets a queue of its own (nothing a failed example leaves locked can reach the
next) and a bus of its own. A canary HTTP server of the harness's own counts every request it
receives; decoy blobs (valid events marked ``STOLEN``) sit in another container and in our
container outside any entity's layout. The invariants, per message:

- ``receive()`` never raises; every message sent is delivered, as an event or as a typed error
  (a :class:`MessageError`) of its own, raised from ``.data`` / ``load()``;
- the good messages of a batch are delivered with their exact data, whatever else it holds;
- a message whose body is neither data sections nor an AMQP string/bytes value, and that does
  not declare a claim-check, is an :class:`EventDecodeError`;
- no event carries a decoy's or the canary's content; decoys survive ``delete_after_complete``;
- the canary receives no request;
- time per message below :data:`MAX_SECONDS_PER_MESSAGE`; traced memory of the receive below
  :data:`MAX_TRACED_BYTES` (a 400 MB expansion breaks it; the legitimate payloads stay far below).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import http.server
import json
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.servicebus import (
    ServiceBusClient,
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusSender,
)
from azure.servicebus.amqp import AmqpAnnotatedMessage
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas
from fuzz_grammar import (
    Body,
    Targets,
    encoding_values,
    hostile_bodies,
    is_claim_check_values,
    json_texts,
    key_spellings,
    message_ids,
    payload_urls,
    property_values,
    sha_values,
    size_values,
)
from hypothesis import strategies as st
from pydantic import BaseModel

from claimcheck_bus import AsyncClaimCheckBus, BusSettings, ClaimCheckBus
from claimcheck_bus.errors import EventDecodeError, MessageError

MAX_SECONDS_PER_MESSAGE = 5.0
MAX_TRACED_BYTES = 64 * 1024 * 1024
MAX_DOWNLOAD_MB = 4
TAG = "x-fuzz-tag"
STOLEN = "STOLEN-DECOY"
CANARY = "CANARY-BODY"
DECOY_IN_OUR_CONTAINER = "private/secret.json"
DECOY_ELSEWHERE = "secret.json"


class Order(BaseModel):
    OrderId: str
    Total: float


# --------------------------------------------------------------------------- the canary


class Canary:
    """A local HTTP server standing in for every untrusted host: it counts each request and
    answers with a valid event, so that a leak would also show as data."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        requests = self.requests
        body = json.dumps({"OrderId": CANARY, "Total": 1}).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                requests.append(f"{self.command} {self.path}")
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_DELETE = do_PUT = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- the rig


class Lane:
    """A queue with its open sender, reused while examples end clean: attaching an SDK link
    costs about half a second, an example a few milliseconds. An example that may leave
    messages behind (a receive that raised) gets a new queue; its old receiver stays idle."""

    def __init__(self, queue: str, sender: ServiceBusSender) -> None:
        self.queue = queue
        self.sender = sender
        self.receiving = False
        """Whether the buses' receiver link on this queue is open (see :func:`open_receiver`)."""


class Rig:
    """The emulator, Azurite, our container, a decoy container, the canary, and the clients:
    one bus per (client, ``delete_after_complete``), one lane per bus."""

    def __init__(
        self,
        emulator: Any,
        azurite: Any,
        container: str,
        decoy_container: str,
        canary: Canary,
        blob_service: BlobServiceClient,
        sender_client: ServiceBusClient,
        runner: asyncio.Runner,
    ) -> None:
        self.emulator = emulator
        self.azurite = azurite
        self.container = container
        self.decoy_container = decoy_container
        self.canary = canary
        self.blob_service = blob_service
        self.sender_client = sender_client
        self.runner = runner
        self.stats = FuzzStats()
        self._lanes: dict[tuple[bool, bool], Lane] = {}
        self._buses: dict[tuple[bool, bool], Any] = {}
        host, port = azurite.blob_endpoint.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
        self.targets = Targets(
            trusted_host=host,
            trusted_port=int(port),
            container=container,
            canary_port=canary.port,
            decoy_container=decoy_container,
        )

    def __repr__(self) -> str:  # hypothesis prints it with failing examples: keep it short
        return f"Rig(container={self.container!r})"

    def bus(self, *, sync: bool, delete_after_complete: bool) -> Any:
        key = (sync, delete_after_complete)
        bus = self._buses.get(key)
        if bus is None:
            # The queue is named per receive; the default one is never used.
            settings = self.settings("unused", delete_after_complete)
            if sync:
                bus = ClaimCheckBus(settings, socket_timeout=0.05)
            else:

                async def make() -> AsyncClaimCheckBus:
                    return AsyncClaimCheckBus(settings, socket_timeout=0.05)

                bus = self.runner.run(make())
            self._buses[key] = bus
        return bus

    def lane(self, *, sync: bool, delete_after_complete: bool) -> Lane:
        key = (sync, delete_after_complete)
        lane = self._lanes.get(key)
        if lane is None:
            queue = self.new_queue()
            sender = self.sender_client.get_queue_sender(queue, socket_timeout=0.05)
            lane = self._lanes[key] = Lane(queue, sender)
        return lane

    def discard(self, lane: Lane) -> None:
        """Retire a lane whose queue may hold locked or undelivered messages."""
        self._lanes = {k: v for k, v in self._lanes.items() if v is not lane}
        # The buses would close the stale queue's receiver one by one at the end, half a
        # second each; dropped here, its link goes with the bus's connection instead.
        for bus in self._buses.values():
            for key in [key for key in bus._receivers if key[0] == lane.queue]:
                del bus._receivers[key]

    def close(self) -> None:
        # Senders go with the sender client's connection (closing each link costs 0.5 s).
        for (sync, _), bus in self._buses.items():
            with contextlib.suppress(Exception):
                if sync:
                    bus.close()
                else:
                    self.runner.run(bus.close())

    def new_queue(self) -> str:
        from claimcheck_bus.emulator.config import EntityOptions, QueueConfig

        name = f"fz-{uuid.uuid4().hex[:12]}"
        options = EntityOptions(lock_duration=timedelta(seconds=30), max_delivery_count=10)
        self.emulator.call(lambda broker: broker.add_queue(QueueConfig(name, options)))
        return name

    def settings(self, queue: str, delete_after_complete: bool) -> BusSettings:
        return BusSettings(
            service_bus={
                "connection_string": self.emulator.connection_string,
                "default_queue_name": queue,
            },
            claim_check={
                "blob_storage": {"connection_string": self.azurite.connection_string},
                "container_name": self.container,
                "max_download_size_mb": MAX_DOWNLOAD_MB,
                "download_timeout_seconds": 5,
                "delete_after_complete": delete_after_complete,
            },
        )

    def upload(self, container: str, name: str, data: bytes) -> str:
        """Upload ``data`` and return its URL with a valid read SAS."""
        blob = self.blob_service.get_blob_client(container, name)
        blob.upload_blob(data, overwrite=True)
        token = generate_blob_sas(
            self.azurite.account_name,
            container,
            name,
            account_key=self.azurite.account_key,
            permission=BlobSasPermissions(read=True),
            expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        return f"{blob.url}?{token}"

    def plant_decoys(self) -> None:
        for container, name in self.decoys():
            self.upload(container, name, decoy_body(container, name))

    def decoys(self) -> list[tuple[str, str]]:
        return [
            (self.decoy_container, DECOY_ELSEWHERE),
            (self.container, DECOY_IN_OUR_CONTAINER),
        ]

    def damaged_decoys(self) -> list[str]:
        damaged = []
        for container, name in self.decoys():
            blob = self.blob_service.get_blob_client(container, name)
            try:
                data = blob.download_blob().readall()
            except Exception as error:  # any failure to read it back is damage
                damaged.append(f"{container}/{name}: {type(error).__name__}")
                continue
            if data != decoy_body(container, name):
                damaged.append(f"{container}/{name}: altered")
        return damaged


def decoy_body(container: str, name: str) -> bytes:
    return json.dumps({"OrderId": f"{STOLEN} {container}/{name}", "Total": 1}).encode()


@contextlib.contextmanager
def running_rig(emulator: Any, azurite: Any) -> Iterator[Rig]:
    """A rig on running emulator and Azurite: containers created, decoys planted, tracemalloc
    on; everything removed again at the end."""
    suffix = uuid.uuid4().hex[:16]
    container, decoy = f"fuzz-{suffix}", f"decoy-{suffix}"
    canary = Canary()
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    with (
        BlobServiceClient.from_connection_string(azurite.connection_string) as blobs,
        ServiceBusClient.from_connection_string(emulator.connection_string) as client,
    ):
        blobs.create_container(container)
        blobs.create_container(decoy)
        runner = asyncio.Runner()
        rig = Rig(emulator, azurite, container, decoy, canary, blobs, client, runner)
        rig.plant_decoys()
        try:
            yield rig
        finally:
            rig.close()
            runner.close()
            canary.close()
            if started_tracing:
                tracemalloc.stop()
            for name in (container, decoy):
                with contextlib.suppress(Exception):
                    blobs.delete_container(name)


# --------------------------------------------------------------------------- what is sent


@dataclass(frozen=True)
class Spec:
    """One generated message and what the invariants expect of it."""

    kind: str
    """``good-inline``, ``good-claim-check`` or ``hostile``."""
    body: Body
    properties: dict[Any, Any]
    message_id: Any
    content_type: str | None = None
    payload: tuple[str, str] | None = None
    """A blob to upload before sending: (fixture kind, how its URL is written)."""
    expected: Any = None
    """For good messages: the order they carry."""

    @property
    def declares_nothing(self) -> bool:
        """No spelling of ``IsClaimCheck`` among its properties (the body alone decides)."""
        return not any(
            (k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k)) == "IsClaimCheck"
            for k in self.properties
        )


PAYLOAD_FIXTURES = (
    "good",
    "good-gzip",
    "not-json",
    "deep-json",
    "invalid-utf8",
    "empty",
    "huge-number",
    "gzip-bomb",
    "gzip-garbage",
    "over-limit",
)
URL_FORMS = ("sas", "sas", "bogus-sig", "no-query", "sas-fragment")


def payload_bytes(kind: str) -> bytes:
    """The blob a payload fixture uploads."""
    order = b'{"OrderId": "fixture", "Total": 2}'
    return {
        "good": order,
        "good-gzip": gzip.compress(order),
        "not-json": b"<order/>",
        "deep-json": b"[" * 100_000 + b"]" * 100_000,
        "invalid-utf8": b'{"OrderId": "\xff\xfe", "Total": 1}',
        "empty": b"",
        "huge-number": b'{"OrderId": "x", "Total": ' + b"9" * 100_000 + b"}",
        # Inflates to 4x the receiver's limit from a few kB.
        "gzip-bomb": gzip.compress(b"\0" * (4 * MAX_DOWNLOAD_MB * 1024 * 1024), 9),
        "gzip-garbage": b"\x1f\x8b" + b"\0" * 64,
        "over-limit": b" " * (MAX_DOWNLOAD_MB * 1024 * 1024 + 1),
    }[kind]


orders = st.builds(
    lambda order_id, total: {"OrderId": order_id, "Total": total},
    st.text(max_size=12),
    st.integers(-1000, 1000),
)


@st.composite
def good_inline(draw: st.DrawFn) -> Spec:
    order = draw(orders)
    data = json.dumps(order).encode()
    return Spec(
        "good-inline",
        Body("data", {"data_body": data}),
        {},
        str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        "application/json",
        expected=order,
    )


@st.composite
def good_claim_check(draw: st.DrawFn) -> Spec:
    order = draw(orders)
    gzipped = draw(st.booleans())
    properties: dict[Any, Any] = {
        "IsClaimCheck": draw(st.sampled_from((True, "true", "True"))),
        "ClaimCheckBlobUri": None,  # the SAS URL, once uploaded
    }
    data = json.dumps(order).encode()
    stored = gzip.compress(data, mtime=0) if gzipped else data
    if draw(st.booleans()):
        properties["ClaimCheckSize"] = {"TYPE": "LONG", "VALUE": len(stored)}
    if draw(st.booleans()):
        properties["ClaimCheckSha256"] = hashlib.sha256(stored).hexdigest()
    if gzipped:
        properties["ClaimCheckContentEncoding"] = "gzip"
    return Spec(
        "good-claim-check",
        Body("data", {"data_body": b""}),
        properties,
        str(uuid.uuid4()),
        "application/json",
        payload=("order-gzip" if gzipped else "order", "sas"),
        expected=order,
    )


@st.composite
def hostile_message(draw: st.DrawFn, targets: Targets) -> Spec:
    body = draw(
        st.one_of(
            hostile_bodies,
            json_texts.map(lambda text: Body("data", {"data_body": text})),
        )
    )
    properties: dict[Any, Any] = {}
    payload: tuple[str, str] | None = None
    if draw(st.booleans()):
        properties[draw(key_spellings("IsClaimCheck"))] = draw(is_claim_check_values)
        where = draw(st.sampled_from(("url", "url", "fixture", "decoy", "none", "value")))
        if where == "url":
            properties[draw(key_spellings("ClaimCheckBlobUri"))] = draw(payload_urls(targets))
        elif where == "decoy":
            properties["ClaimCheckBlobUri"] = draw(decoy_urls(targets))
        elif where == "fixture":
            payload = (draw(st.sampled_from(PAYLOAD_FIXTURES)), draw(st.sampled_from(URL_FORMS)))
            properties["ClaimCheckBlobUri"] = None
        elif where == "value":
            properties["ClaimCheckBlobUri"] = draw(property_values)
        for name, values in (
            ("ClaimCheckSize", size_values),
            ("ClaimCheckSha256", sha_values),
            ("ClaimCheckContentEncoding", encoding_values),
        ):
            value = draw(values)
            if value is not None:
                properties[draw(key_spellings(name))] = value
    extra = draw(
        st.dictionaries(
            st.one_of(
                st.text(max_size=12),
                st.binary(min_size=1, max_size=8),
                st.sampled_from(
                    ("isclaimcheck", "ClaimCheckBlobURI", "cloudEvents_type", "cloudEvents:type")
                ),
            ).filter(lambda k: k not in (TAG, TAG.encode())),
            property_values,
            max_size=3,
        )
    )
    for key, value in extra.items():
        properties.setdefault(key, value)
    return Spec(
        "hostile",
        body,
        properties,
        draw(message_ids),
        draw(st.sampled_from((None, "application/json", "text/plain", "", "\x00"))),
        payload=payload,
    )


def decoy_urls(targets: Targets) -> st.SearchStrategy[str]:
    """URLs to the decoys: through traversal, directly, with a bogus or no signature."""
    prefix = targets.trusted_prefix
    decoy = targets.decoy_container
    return st.sampled_from(
        (
            f"{prefix}/..%2F{decoy}%2F{DECOY_ELSEWHERE}?sig=bogus",
            f"{prefix}/..%2F{decoy}%2F{DECOY_ELSEWHERE}",
            f"{prefix}/%2E%2E%2F{decoy}%2F{DECOY_ELSEWHERE}?sig=bogus",
            f"{prefix}/x%2F..%2F..%2F{decoy}%2F{DECOY_ELSEWHERE}?sig=bogus",
            f"{prefix}/..%252F{decoy}%252F{DECOY_ELSEWHERE}?sig=bogus",
            f"{prefix}/{DECOY_IN_OUR_CONTAINER}?sig=bogus",
            f"{prefix}/{DECOY_IN_OUR_CONTAINER}",
            f"{prefix}/private%2Fsecret.json?sig=bogus",
            f"{prefix}/x/..%2F{DECOY_IN_OUR_CONTAINER}?sig=bogus",
        )
    )


@st.composite
def batches(draw: st.DrawFn, targets: Targets, max_hostile: int = 4) -> list[Spec]:
    """A batch: at least one good message and some hostile ones, in any order."""
    good = draw(st.lists(st.one_of(good_inline(), good_claim_check()), min_size=1, max_size=2))
    hostile = draw(st.lists(hostile_message(targets), min_size=1, max_size=max_hostile))
    return draw(st.permutations(good + hostile))


# --------------------------------------------------------------------------- sending


@dataclass
class Sent:
    """What actually went out: tag to spec (messages the SDK or broker refused are left out)."""

    specs: dict[str, Spec]
    unsendable: int = 0


def build(rig: Rig, queue: str, spec: Spec, tag: str) -> AmqpAnnotatedMessage:
    properties = dict(spec.properties)
    if spec.payload is not None:
        kind, form = spec.payload
        properties["ClaimCheckBlobUri"] = payload_url(rig, queue, tag, kind, form, spec)
    properties[TAG] = tag
    system: dict[str, Any] = {"message_id": spec.message_id}
    if spec.content_type is not None:
        system["content_type"] = spec.content_type
    return AmqpAnnotatedMessage(
        **spec.body.keywords, properties=system, application_properties=properties
    )


def payload_url(rig: Rig, queue: str, tag: str, kind: str, form: str, spec: Spec) -> str:
    if kind in ("order", "order-gzip"):
        data = json.dumps(spec.expected).encode()
        data = gzip.compress(data, mtime=0) if kind == "order-gzip" else data
    else:
        data = payload_bytes(kind)
    # Our own layout for this queue, so that a credential fallback is legitimate here.
    url = rig.upload(rig.container, f"{queue}/Order/{tag}.json", data)
    base, _, _query = url.partition("?")
    return {
        "sas": url,
        "bogus-sig": f"{base}?sig=bogus",
        "no-query": base,
        "sas-fragment": f"{url}#frag",
    }[form]


def encodable(message: AmqpAnnotatedMessage) -> bool:
    """Whether the SDK can encode ``message`` at all (measured offline, through a batch):
    a send that fails to encode shuts the sender's link down, and re-attaching costs 0.5 s."""
    try:
        ServiceBusMessageBatch(max_size_in_bytes=2**40).add_message(message)
    except Exception:
        return False
    return True


def send(rig: Rig, lane: Lane, specs: list[Spec], example: str) -> Sent:
    """Send the batch; a hostile message the SDK cannot encode or the broker refuses is left
    out (it never reaches a receiver)."""
    tagged = {f"{example}-{i}": spec for i, spec in enumerate(specs)}
    messages = {tag: build(rig, lane.queue, spec, tag) for tag, spec in tagged.items()}
    sent = Sent({})
    for tag, message in list(messages.items()):
        if not encodable(message):
            assert tagged[tag].kind == "hostile", f"the SDK cannot encode good message {tag}"
            del messages[tag]
            sent.unsendable += 1
    with contextlib.suppress(Exception):  # else one by one, to leave out only what fails
        lane.sender.send_messages(list(messages.values()))
        sent.specs = {tag: tagged[tag] for tag in messages}
        return sent
    for tag, message in messages.items():
        try:
            lane.sender.send_messages(message)
        except Exception:
            if tagged[tag].kind != "hostile":
                raise
            sent.unsendable += 1
        else:
            sent.specs[tag] = tagged[tag]
    return sent


# --------------------------------------------------------------------------- receiving


@dataclass
class Outcome:
    """What the receiver made of one message."""

    tag: str
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0


@dataclass
class Received:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    receive_error: BaseException | None = None
    slowest_receive: float = 0.0
    traced_peak: int = 0
    foreign: int = 0

    def add(self, outcome: Outcome) -> None:
        if outcome.tag == "?":
            self.foreign += 1
        else:
            self.outcomes[outcome.tag] = outcome


AS_TYPES: tuple[type[Any], ...] = (Order, dict, bytes, str)


async def receive_async(
    bus: Any, queue: str, count: int, as_type: type[Any], prefetch: bool
) -> Received:
    """Receive ``count`` messages with an ``AsyncClaimCheckBus``, settling each."""
    received = Received()
    deadline = time.monotonic() + 30
    while len(received.outcomes) < count and time.monotonic() < deadline:
        started = time.monotonic()
        try:
            events = await bus.receive(
                as_type,
                queue=queue,
                max_messages=count - len(received.outcomes),
                max_wait=1,
                prefetch=prefetch,
            )
        except Exception as error:
            received.receive_error = error
            return received
        received.slowest_receive = max(received.slowest_receive, time.monotonic() - started)
        for event in events:
            outcome = Outcome(_tag_of(event.properties) or "?")
            started = time.monotonic()
            try:
                if not prefetch:
                    await event.load()
                outcome.value = event.data
            except Exception as error:
                outcome.error = error
            outcome.seconds = time.monotonic() - started
            received.add(outcome)
            if outcome.error is None:
                await event.complete()
            else:
                await event.dead_letter("FuzzedMessage", type(outcome.error).__name__)
    return received


def receive_sync(bus: Any, queue: str, count: int, as_type: type[Any]) -> Received:
    """Receive ``count`` messages with a ``ClaimCheckBus`` (payloads fetched by ``.data``)."""
    received = Received()
    deadline = time.monotonic() + 30
    while len(received.outcomes) < count and time.monotonic() < deadline:
        started = time.monotonic()
        try:
            events = bus.receive(
                as_type, queue=queue, max_messages=count - len(received.outcomes), max_wait=1
            )
        except Exception as error:
            received.receive_error = error
            return received
        received.slowest_receive = max(received.slowest_receive, time.monotonic() - started)
        for event in events:
            outcome = Outcome(_tag_of(event.properties) or "?")
            started = time.monotonic()
            try:
                outcome.value = event.data
            except Exception as error:
                outcome.error = error
            outcome.seconds = time.monotonic() - started
            received.add(outcome)
            if outcome.error is None:
                event.complete()
            else:
                event.dead_letter("FuzzedMessage", type(outcome.error).__name__)
    return received


def _tag_of(properties: dict[str, Any]) -> str | None:
    tag = properties.get(TAG)
    return tag if isinstance(tag, str) else None


# --------------------------------------------------------------------------- one example


@dataclass
class FuzzStats:
    """Figures across a run, for the long run's table."""

    examples: int = 0
    messages: int = 0
    unsendable: int = 0
    events: int = 0
    typed_errors: int = 0
    slowest_message: float = 0.0
    slowest_receive: float = 0.0
    traced_peak: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)


def run_example(
    rig: Rig,
    specs: list[Spec],
    *,
    sync: bool,
    as_type: type[Any],
    prefetch: bool,
    delete_after_complete: bool,
) -> None:
    """Send ``specs``, receive them, and assert every invariant."""
    lane = rig.lane(sync=sync, delete_after_complete=delete_after_complete)
    bus = rig.bus(sync=sync, delete_after_complete=delete_after_complete)
    if not lane.receiving:
        open_receiver(rig, bus, lane, sync=sync)
    rig.plant_decoys()
    canary_before = len(rig.canary.requests)
    sent = send(rig, lane, specs, f"{lane.queue}-{rig.stats.examples}")
    baseline = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    if sync:
        received = receive_sync(bus, lane.queue, len(sent.specs), as_type)
    else:
        received = rig.runner.run(
            receive_async(bus, lane.queue, len(sent.specs), as_type, prefetch)
        )
    received.traced_peak = max(0, tracemalloc.get_traced_memory()[1] - baseline)
    record(rig.stats, sent, received)
    if received.receive_error is not None or len(received.outcomes) < len(sent.specs):
        rig.discard(lane)
    check(rig, sent, received, as_type, canary_before)


def open_receiver(rig: Rig, bus: Any, lane: Lane, *, sync: bool) -> None:
    """Open the bus's receiver link on a new lane with a probe message, before any example.

    The receives of an example wait 1 s, and the SDK counts opening the link in that budget:
    on a loaded machine (parallel test workers) a first receive would time out opening the
    link, a fault of the machine, not of a message. The probe returns as soon as it arrives.
    """
    lane.sender.send_messages(ServiceBusMessage(b"probe", message_id="probe"))
    if sync:
        [probe] = bus.receive(bytes, queue=lane.queue, max_wait=30)
        probe.complete()
    else:

        async def receive_probe() -> None:
            [probe] = await bus.receive(bytes, queue=lane.queue, max_wait=30)
            await probe.complete()

        rig.runner.run(receive_probe())
    lane.receiving = True


def record(stats: FuzzStats, sent: Sent, received: Received) -> None:
    stats.examples += 1
    stats.messages += len(sent.specs)
    stats.unsendable += sent.unsendable
    stats.slowest_receive = max(stats.slowest_receive, received.slowest_receive)
    stats.traced_peak = max(stats.traced_peak, received.traced_peak)
    for outcome in received.outcomes.values():
        stats.slowest_message = max(stats.slowest_message, outcome.seconds)
        if outcome.error is None:
            stats.events += 1
        else:
            stats.typed_errors += isinstance(outcome.error, MessageError)
            name = type(outcome.error).__name__
            stats.errors_by_type[name] = stats.errors_by_type.get(name, 0) + 1


def expected_value(order: dict[str, Any], as_type: type[Any]) -> Any:
    data = json.dumps(order).encode()
    return {Order: Order(**order), dict: order, bytes: data, str: data.decode()}[as_type]


def describe(error: BaseException | None) -> str:
    return "nothing" if error is None else f"{type(error).__name__}: {str(error)[:200]}"


def check(rig: Rig, sent: Sent, received: Received, as_type: type[Any], canary: int) -> None:
    """The invariants, each its own assertion so that hypothesis tells failures apart."""
    leaked = rig.canary.requests[canary:]
    assert not leaked, f"the canary (an untrusted host) received {leaked}"
    assert received.receive_error is None, (
        "receive() raised for a fault of one message: " + describe(received.receive_error)
    )
    missing = sorted(set(sent.specs) - set(received.outcomes))
    assert not missing, f"messages never delivered: {missing}"
    assert received.foreign == 0, "a message of another example arrived"
    for tag, outcome in received.outcomes.items():
        spec = sent.specs[tag]
        error = outcome.error
        assert error is None or isinstance(error, MessageError), (
            f"{spec.kind} message {tag} ({spec.body.kind} body) raised an untyped "
            + describe(error)
        )
        if spec.kind != "hostile":
            assert error is None, f"good message {tag} ({spec.kind}) failed: {describe(error)}"
            assert outcome.value == expected_value(spec.expected, as_type)
        elif spec.declares_nothing and not spec.body.accepted_shape:
            assert isinstance(error, EventDecodeError), (
                f"a {spec.body.kind} body gave {describe(error)}, not an EventDecodeError"
            )
        text = repr(outcome.value)
        assert STOLEN not in text, f"message {tag} read a decoy: {text[:200]}"
        assert CANARY not in text, f"message {tag} read the canary: {text[:200]}"
        assert outcome.seconds < MAX_SECONDS_PER_MESSAGE, (
            f"message {tag} took {outcome.seconds:.1f} s"
        )
    # With prefetch, receive() itself fetches; it waits up to 1 s for the broker.
    assert received.slowest_receive < 1 + MAX_SECONDS_PER_MESSAGE, (
        f"a receive() took {received.slowest_receive:.1f} s"
    )
    damaged = rig.damaged_decoys()
    assert not damaged, f"decoy blobs were deleted or altered: {damaged}"
    assert received.traced_peak < MAX_TRACED_BYTES, (
        f"receiving the batch traced {received.traced_peak / 2**20:.0f} MiB"
    )


__all__ = [
    "AS_TYPES",
    "Canary",
    "FuzzStats",
    "Rig",
    "Spec",
    "batches",
    "run_example",
    "running_rig",
]
