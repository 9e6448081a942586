"""Small events at raw-SDK speed, large ones near a raw upload + GET, and what gzip saves.

    .venv/bin/python benchmarks/lean_wire.py [--rounds 5] [--events 1000] [--skip-100mb]

Starts the emulator and Azurite on free ports, then runs interleaved rounds of ours and a
hand-written raw publisher (``ServiceBusMessage(json, content_type=..., message_id=uuid)``),
and prints per measure the median events/s (or seconds) of each, and the median of the
per-round ratios with its spread. Issue 20's goals: >= 0.95x for 1 KB publish and receive,
<= 1.2x for 10 MB and 100 MB publish + receive.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.storage.blob import BlobServiceClient
from claimcheck_vs_raw import azurite, emulator, raw_large, write_config

from claimcheck_bus import BusSettings, ClaimCheckBus

MB = 1024 * 1024
#: Events per turn: both sides take turns this often within a round.
CHUNK = 100
EVENT = {"OrderId": "o-1", "CustomerId": "c-1", "Notes": "n" * 900}


def settings_for(sb: str, storage: str, queue: str, container: str, **cc: object) -> BusSettings:
    return BusSettings(
        service_bus={"connection_string": sb, "default_queue_name": queue},
        claim_check={
            "blob_storage": {"connection_string": storage},
            "container_name": container,
            "max_download_size_mb": 512,
            **cc,
        },
    )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Small:
    """1 KB events: publish, publish_batch and receive + complete, ours and raw."""

    def __init__(self, sb: str, storage: str) -> None:
        self.client = ServiceBusClient.from_connection_string(sb)
        self.sender = self.client.get_queue_sender("raw")
        self.receiver = self.client.get_queue_receiver("raw")
        self.bus = ClaimCheckBus(settings_for(sb, storage, "ours", "bench-small"))
        # Open every link outside the timed loops.
        self.sender.send_messages(self.raw_message())
        self.bus.publish(EVENT, event_type="Order")
        self.drain_raw(1)
        self.drain_ours(1)

    def raw_message(self) -> ServiceBusMessage:
        return ServiceBusMessage(
            json.dumps(EVENT).encode(),
            content_type="application/json",
            message_id=str(uuid.uuid4()),
        )

    def publish_raw(self, count: int) -> None:
        for _ in range(count):
            self.sender.send_messages(self.raw_message())

    def publish_ours(self, count: int) -> None:
        for _ in range(count):
            self.bus.publish(EVENT, event_type="Order")

    def batch_raw(self, count: int) -> None:
        batch = self.sender.create_message_batch()
        for _ in range(count):
            message = self.raw_message()
            try:
                batch.add_message(message)
            except ValueError:
                self.sender.send_messages(batch)
                batch = self.sender.create_message_batch()
                batch.add_message(message)
        self.sender.send_messages(batch)

    def batch_ours(self, count: int) -> None:
        self.bus.publish_batch([EVENT] * count, event_type="Order")

    def drain_raw(self, count: int) -> None:
        left = count
        while left:
            for message in self.receiver.receive_messages(100, max_wait_time=5):
                json.loads(b"".join(message.body))
                self.receiver.complete_message(message)
                left -= 1

    def drain_ours(self, count: int) -> None:
        left = count
        while left:
            for event in self.bus.receive(dict, max_messages=100, max_wait=5):
                _ = event.data
                event.complete()
                left -= 1

    def close(self) -> None:
        self.bus.close()
        self.receiver.close()
        self.sender.close()
        self.client.close()


def ours_large(bus: ClaimCheckBus, payload: bytes) -> None:
    bus.publish(payload, event_type="Blob")
    [event] = bus.receive(bytes, max_messages=1, max_wait=30)
    assert len(event.data) == len(payload)
    event.complete()


def compressible(size: int) -> bytes:
    rows, length = [], 0
    while length < size:
        row = len(rows)
        rows.append(json.dumps({"Row": row, "Sku": f"SKU-{row % 977}", "Qty": row % 13}))
        length += len(rows[-1]) + 1
    return ("[" + ",".join(rows) + "]").encode()


def report(name: str, raw: list[float], ours: list[float], rate: bool) -> str:
    """One row: medians, and the median of the per-round ratios ours/raw with their spread
    (for rates above 1 is faster, for times below 1 is)."""
    ratios = [o / r for r, o in zip(raw, ours, strict=True)]
    unit = "/s" if rate else " s"
    raw_value = statistics.median(raw)
    ours_value = statistics.median(ours)
    return (
        f"| {name} | {raw_value:,.2f}{unit} | {ours_value:,.2f}{unit} | "
        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--skip-100mb", action="store_true")
    args = parser.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        config = write_config(Path(folder), ["raw", "ours", "large", "gz", "rss"])
        with emulator(config, pinned=True) as sb, azurite(Path(folder)) as storage:
            small = Small(sb, storage)
            times: dict[str, list[float]] = {}
            for round_number in range(args.rounds):
                # Both sides take turns every CHUNK events, so drift in the machine's load
                # (other processes, the emulator's queue depth) falls on both alike.
                for name, raw_step, ours_step in (
                    ("publish", small.publish_raw, small.publish_ours),
                    ("receive", small.drain_raw, small.drain_ours),
                    ("batch", small.batch_raw, small.batch_ours),
                    ("batch receive", small.drain_raw, small.drain_ours),
                ):
                    spent = {"raw": 0.0, "ours": 0.0}
                    for turn in range(args.events // CHUNK):
                        sides = [("raw", raw_step), ("ours", ours_step)]
                        for side, step in sides if (turn + round_number) % 2 else sides[::-1]:
                            spent[side] += timed(lambda step=step: step(CHUNK))
                    for side, seconds in spent.items():
                        times.setdefault(f"{name} {side}", []).append(args.events / seconds)
            small.close()
            rows.append(report("1 KB publish", times["publish raw"], times["publish ours"], True))
            rows.append(
                report("1 KB receive + complete", times["receive raw"], times["receive ours"], True)
            )
            rows.append(report("1 KB publish_batch", times["batch raw"], times["batch ours"], True))

            container = f"bench-{uuid.uuid4().hex[:8]}"
            with (
                BlobServiceClient.from_connection_string(storage) as service,
                ClaimCheckBus(settings_for(sb, storage, "large", container)) as bus,
            ):
                service.create_container(container)
                for size, rounds in ((10 * MB, args.rounds), (100 * MB, 3)):
                    if size > 10 * MB and args.skip_100mb:
                        continue
                    payload = compressible(size)
                    # Untimed first round: links, connections and the container get opened.
                    raw_large(service, container, payload)
                    ours_large(bus, payload)
                    raw, ours = [], []
                    for _ in range(rounds):
                        raw.append(timed(lambda p=payload: raw_large(service, container, p)))
                        ours.append(timed(lambda p=payload: ours_large(bus, p)))
                    rows.append(report(f"{size // MB} MB publish + receive", raw, ours, rate=False))

            payload = compressible(10 * MB)
            stored: dict[str, int] = {}
            walls: dict[str, list[float]] = {}
            for mode in ("none", "gzip"):
                settings = settings_for(sb, storage, "gz", f"bench-gz-{mode}", compression=mode)
                with ClaimCheckBus(settings) as bus:
                    ours_large(bus, payload)
                    for _ in range(args.rounds):
                        walls.setdefault(mode, []).append(timed(lambda: ours_large(bus, payload)))
                    receipt = bus.publish(payload, event_type="Blob")
                    with BlobServiceClient.from_connection_string(storage) as service:
                        blob = service.get_blob_client(f"bench-gz-{mode}", receipt.blob_name)
                        stored[mode] = blob.get_blob_properties().size
                    [event] = bus.receive(bytes, max_wait=30)
                    event.complete()
            rows.append(report("10 MB JSON, gzip vs none (s)", walls["none"], walls["gzip"], False))
            saved = f"{stored['none'] / stored['gzip']:.1f}x smaller"
            rows.append(
                f"| 10 MB JSON bytes stored | {stored['none']:,} | {stored['gzip']:,} | {saved} |"
            )
    print(
        f"{args.rounds} interleaved rounds, {args.events} events each; emulator and Azurite local"
    )
    print("| measure | raw | claimcheck-bus | ratio (median, spread) |")
    print("|---|---|---|---|")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
