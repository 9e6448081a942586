"""Peak memory of a worker at default settings fed hostile and large claim-checked payloads.

    .venv/bin/python benchmarks/hostile_worker_memory.py [--honest 8] [--honest-mb 200]

Starts the emulator and a local storage server of its own (trusted by the worker), sends a
mix of messages, runs a Worker with default settings in a fresh interpreter until every
message is settled, and prints that process's peak RSS (VmHWM) with its RSS before the run:

- honest payloads of ``--honest-mb`` each, declared with ClaimCheckSize;
- payloads of 16 bytes whose server declares a 200 MB Content-Length;
- gzip bombs (ClaimCheckContentEncoding gzip) inflating to 1 GB;
- AMQP values holding two large integers (a 400 MB expansion before issue 16).

With the default payload budget (twice max_download_size_mb: 512 MB), what the worker holds
at once is bounded whatever the senders do; the figure shows by how much.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from azure.servicebus import ServiceBusClient, ServiceBusMessage
from azure.servicebus.amqp import AmqpAnnotatedMessage
from claimcheck_vs_raw import emulator, write_config

from claimcheck_bus.testing.storage_server import Reply, storage_server

MB = 1024 * 1024

_WORKER = """
import os, sys
from pathlib import Path
from claimcheck_bus import BusSettings
from claimcheck_bus.worker import Middleware, Worker

def kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

sb, trusted, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
settings = BusSettings(
    service_bus={"connection_string": sb, "default_queue_name": "hostile"},
    claim_check={"enabled": False, "trusted_blob_endpoints": [trusted]},
)
settled = 0
worker = Worker(settings)

def handled(event: bytes) -> None:
    pass

class Count(Middleware):
    def after_handle(self, context, outcome, error, seconds):
        global settled
        settled += 1
        if settled >= expected:
            worker.stop()

worker.add_handler(bytes, handled, event_type="Payload")
worker.use(Count())
before = kib("VmRSS")
worker.run()
print(before, kib("VmHWM"), settled)
"""


def claim_checked(url: str, message_id: str, **extra: object) -> ServiceBusMessage:
    return ServiceBusMessage(
        b"",
        message_id=message_id,
        subject="Payload",
        application_properties={"IsClaimCheck": True, "ClaimCheckBlobUri": url, **extra},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--honest", type=int, default=8)
    parser.add_argument("--honest-mb", type=int, default=200)
    parser.add_argument("--liars", type=int, default=20)
    parser.add_argument("--bombs", type=int, default=5)
    parser.add_argument("--numbers", type=int, default=5)
    args = parser.parse_args()
    honest = os.urandom(args.honest_mb * MB)
    bomb = gzip.compress(b"\0" * (1024 * MB), 9)
    messages: list[ServiceBusMessage | AmqpAnnotatedMessage] = []
    with tempfile.TemporaryDirectory() as folder, storage_server() as server:
        config = write_config(Path(folder), ["hostile"])
        honest_url = server.serve("/store/hostile/Payload/honest.json", Reply(honest))
        liar_url = server.serve(
            "/store/hostile/Payload/liar.json", Reply(b"0123456789abcdef", content_length=200 * MB)
        )
        bomb_url = server.serve("/store/hostile/Payload/bomb.json", Reply(bomb))
        size = {
            "ClaimCheckSize": len(honest),
            "ClaimCheckSha256": hashlib.sha256(honest).hexdigest(),
        }
        messages += [claim_checked(honest_url, f"honest-{n}", **size) for n in range(args.honest)]
        messages += [claim_checked(liar_url, f"liar-{n}") for n in range(args.liars)]
        messages += [
            claim_checked(bomb_url, f"bomb-{n}", ClaimCheckContentEncoding="gzip")
            for n in range(args.bombs)
        ]
        messages += [
            AmqpAnnotatedMessage(
                value_body=[200_000_000, 200_000_000],
                properties={"message_id": f"numbers-{n}", "subject": "Payload"},
            )
            for n in range(args.numbers)
        ]
        with emulator(config) as sb:
            with (
                ServiceBusClient.from_connection_string(sb) as client,
                client.get_queue_sender("hostile") as sender,
            ):
                for message in messages:
                    sender.send_messages(message)
            ran = subprocess.run(
                [sys.executable, "-c", _WORKER, sb, server.url("/store"), str(len(messages))],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
    if ran.returncode:
        print(ran.stderr[-3000:], file=sys.stderr)
        return 1
    before, peak, settled = (int(x) for x in ran.stdout.split()[-3:])
    print("| messages | settled | worker RSS before | peak RSS (VmHWM) | rise |")
    print("|---|---|---|---|---|")
    print(
        f"| {len(messages)} ({args.honest} x {args.honest_mb} MB honest, {args.liars} lying "
        f"Content-Length, {args.bombs} gzip bombs, {args.numbers} integer values) | {settled} | "
        f"{before / 1024:.0f} MB | {peak / 1024:.0f} MB | {(peak - before) / 1024:.0f} MB |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
