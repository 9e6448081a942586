"""ClaimCheckBus against the raw SDKs doing the same work, in one run on this machine.

    .venv/bin/python benchmarks/claimcheck_vs_raw.py [--events 2000] [--skip-100mb]

Starts the emulator (a subprocess) and Azurite (npm) on free ports, then prints:
- 1 KB events: publish/s and receive+complete/s, ours vs azure-servicebus alone;
- 10 MB and 100 MB: publish + receive wall time, ours vs a raw blob upload + a raw SAS GET;
- peak RSS above baseline of a 100 MB publish and of a streamed 100 MB receive (subprocesses).
Goals (issue 4): >= 0.95x the raw rates; <= 1.2x the raw large-payload time; RSS within
payload + 50 MB (publish) and 50 MB (streamed receive).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from claimcheck_bus import BusSettings, ClaimCheckBus
from claimcheck_bus.claim_check.wire import cloudevent_properties
from claimcheck_bus.testing.azurite import AzuriteProcess, connection_string_for, find_azurite

ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


@contextmanager
def emulator(config: Path, *, pinned: bool = False) -> Iterator[str]:
    """The emulator's connection string; ``pinned`` puts it on the last CPU and this process
    on the others, so that the two do not take turns on one core."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "claimcheck_bus.emulator",
            "--port",
            "0",
            "--config",
            str(config),
            "--max-message-size",
            str(1024 * 1024),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    cpus = sorted(os.sched_getaffinity(0))
    if pinned and len(cpus) > 1:
        os.sched_setaffinity(process.pid, {cpus[-1]})
        os.sched_setaffinity(0, set(cpus[:-1]))
    try:
        assert process.stdout is not None
        connection_string = process.stdout.readline().strip()
        # It goes on writing to stdout: a pipe nobody reads would fill up and stop it.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        yield connection_string
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def azurite(location: Path) -> Iterator[str]:
    node, main_js = find_azurite([ROOT])
    process = AzuriteProcess(node, main_js, location=location)
    try:
        yield connection_string_for(process.start())
    finally:
        process.stop()


def write_config(folder: Path, queues: list[str]) -> Path:
    config = {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": "bench",
                    "Queues": [
                        {"Name": q, "Properties": {"LockDuration": "PT1M", "MaxDeliveryCount": 10}}
                        for q in queues
                    ],
                    "Topics": [],
                }
            ]
        }
    }
    path = folder / "Config.json"
    path.write_text(json.dumps(config))
    return path


def settings_for(sb: str, storage: str, queue: str, container: str) -> BusSettings:
    return BusSettings(
        service_bus={"connection_string": sb, "default_queue_name": queue},
        claim_check={
            "blob_storage": {"connection_string": storage},
            "container_name": container,
            "max_payload_size_kb": 256,
            "max_download_size_mb": 512,
        },
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def small_events(sb: str, storage: str, events: int) -> list[tuple[str, float, float]]:
    body = json.dumps({"OrderId": "x", "Notes": "n" * 900}).encode()
    rows = []
    with ServiceBusClient.from_connection_string(sb) as client:
        with client.get_queue_sender("raw") as sender:
            # Both sides send one message before timing: links open outside the loop.
            sender.send_messages(ServiceBusMessage(body))
            raw_send = timed(
                lambda: [sender.send_messages(ServiceBusMessage(body)) for _ in range(events)]
            )

            def same_metadata() -> ServiceBusMessage:
                # What a careful raw publisher sends: ids, content type, CloudEvents attributes.
                message_id = str(uuid.uuid4())
                return ServiceBusMessage(
                    json.dumps({"OrderId": "x", "Notes": "n" * 900}).encode(),
                    message_id=message_id,
                    content_type="application/json",
                    subject="Order",
                    application_properties=cloudevent_properties(
                        event_type="Order",
                        message_id=message_id,
                        source="/raw",
                        time=datetime.now(timezone.utc),
                    ),
                )

            raw_send_meta = timed(
                lambda: [sender.send_messages(same_metadata()) for _ in range(events)]
            )
        with client.get_queue_receiver("raw") as receiver:

            def drain_raw() -> None:
                left = 2 * events + 1
                while left:
                    for message in receiver.receive_messages(100, max_wait_time=5):
                        b"".join(message.body)
                        receiver.complete_message(message)
                        left -= 1

            raw_receive = timed(drain_raw) * events / (2 * events + 1)
    with ClaimCheckBus(settings_for(sb, storage, "ours", "bench-small")) as bus:
        event = {"OrderId": "x", "Notes": "n" * 900}
        bus.publish(event, event_type="Order")
        ours_send = timed(lambda: [bus.publish(event, event_type="Order") for _ in range(events)])
        # The raw receiver's link opened in its `with`; open ours the same way, untimed.
        [first] = bus.receive(dict, max_messages=1, max_wait=5)
        first.complete()

        def drain_ours() -> None:
            left = events
            while left:
                for received in bus.receive(dict, max_messages=100, max_wait=5):
                    received.data  # noqa: B018 - the payload is what a consumer reads
                    received.complete()
                    left -= 1

        ours_receive = timed(drain_ours)
    rows.append(("1 KB publish vs bare raw (events/s)", events / raw_send, events / ours_send))
    rows.append(("1 KB publish vs raw + same metadata", events / raw_send_meta, events / ours_send))
    rows.append(("1 KB receive+complete (events/s)", events / raw_receive, events / ours_receive))
    return rows


def raw_large(service: BlobServiceClient, container: str, payload: bytes) -> None:
    """What a raw publisher and consumer do: upload, sign a read SAS, GET it."""
    blob = service.get_blob_client(container, f"raw/{uuid.uuid4()}.json")
    blob.upload_blob(payload, overwrite=True, max_concurrency=4)
    sas = generate_blob_sas(
        service.account_name,
        container,
        blob.blob_name,
        account_key=service.credential.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    with httpx.Client() as http:
        assert len(http.get(f"{blob.url}?{sas}").content) == len(payload)


def large_payload(sb: str, storage: str, size: int) -> tuple[str, float, float]:
    payload = os.urandom(size)
    container = f"bench-{uuid.uuid4().hex[:8]}"
    with BlobServiceClient.from_connection_string(storage) as service:
        service.create_container(container)

        raw_time = min(timed(lambda: raw_large(service, container, payload)) for _ in range(2))
    with ClaimCheckBus(settings_for(sb, storage, "large", container)) as bus:

        def ours() -> None:
            bus.publish(payload, event_type="Blob")
            [event] = bus.receive(bytes, max_messages=1, max_wait=30)
            assert len(event.data) == len(payload)
            event.complete()

        ours_time = min(timed(ours) for _ in range(2))
    return (f"{size // MB} MB publish+receive (s)", raw_time, ours_time)


_RSS_SCRIPT = """
import os, sys, tempfile, threading, time
from claimcheck_bus import BusSettings, ClaimCheckBus

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS")) / 1024

peak = [0.0]
def sample():
    while True:
        peak[0] = max(peak[0], rss_mb())
        time.sleep(0.005)

sb, storage, mode = sys.argv[1:4]
settings = BusSettings(
    service_bus={"connection_string": sb, "default_queue_name": "rss"},
    claim_check={"blob_storage": {"connection_string": storage}, "container_name": "bench-rss",
                 "max_download_size_mb": 512},
)
with ClaimCheckBus(settings) as bus:
    if mode == "publish":
        payload = os.urandom(100 * 1024 * 1024)
        base = rss_mb()  # includes the payload: what the caller already holds
        threading.Thread(target=sample, daemon=True).start()
        bus.publish(payload, event_type="Blob")
    else:
        [event] = bus.receive(bytes, max_messages=1, max_wait=30)  # metadata only: lazy
        base = rss_mb()
        threading.Thread(target=sample, daemon=True).start()
        with tempfile.TemporaryFile() as sink:
            event.save_payload(sink)
        event.complete()
    time.sleep(0.05)
print(peak[0] - base)
"""


def peak_rss(sb: str, storage: str, mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, sb, storage, mode],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--skip-100mb", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), ["raw", "ours", "large", "rss"])
        with emulator(config) as sb, azurite(Path(folder)) as storage:
            print(f"# {args.events} small events; emulator and Azurite on this machine", flush=True)
            rows = small_events(sb, storage, args.events)
            sizes = [10 * MB] + ([] if args.skip_100mb else [100 * MB])
            rows += [large_payload(sb, storage, size) for size in sizes]
            print(f"{'measure':40} {'raw SDK':>12} {'claimcheck':>12} {'ratio':>8}")
            for name, raw, ours in rows:
                ratio = ours / raw
                print(f"{name:40} {raw:12.2f} {ours:12.2f} {ratio:7.2f}x")
            if not args.skip_100mb:
                publish = peak_rss(sb, storage, "publish")
                receive = peak_rss(sb, storage, "receive")
                print(f"{'100 MB publish: peak RSS beyond payload':40} {publish:12.0f} MB")
                print(f"{'100 MB streamed receive: peak RSS rise':40} {receive:12.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
