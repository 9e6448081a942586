"""Throughput of the Service Bus emulator with the real SDK as client.

Runs the emulator CLI as a subprocess (so its CPU time can be read from /proc apart from the
client's) and measures: start-up time, single sends/s, batched sends/s (batches of 100),
peek-lock receive + complete/s, and the emulator's share of one CPU during each phase.

    .venv/bin/python benchmarks/emulator_throughput.py [--messages 1000] [--batches 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from azure.servicebus import ServiceBusClient, ServiceBusMessage

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Row:
    """One measured phase."""

    phase: str
    count: int
    seconds: float
    emulator_cpu: float

    def render(self) -> str:
        rate = self.count / self.seconds if self.seconds else float("inf")
        share = 100 * self.emulator_cpu / self.seconds if self.seconds else 0.0
        return (
            f"{self.phase:<34} {self.count:>8} {self.seconds:>9.2f} {rate:>11.0f} {share:>12.0f}%"
        )


class Phase:
    """Times a block and the emulator's CPU seconds spent in it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.seconds = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Phase:
        self._t0 = time.perf_counter()
        self._c0 = cpu_seconds(self.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.cpu = cpu_seconds(self.pid) - self._c0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="single sends")
    parser.add_argument("--batches", type=int, default=50, help="batches of 100")
    parser.add_argument("--body", type=int, default=256, help="body size in bytes")
    args = parser.parse_args()

    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "claimcheck_bus.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    conn = process.stdout.readline().strip()
    startup = time.perf_counter() - t0
    if not conn.startswith("Endpoint="):
        print(f"emulator did not start: {conn!r}", file=sys.stderr)
        return 1
    rows: list[Row] = []
    body = b"x" * args.body
    try:
        with ServiceBusClient.from_connection_string(conn) as client:
            with client.get_queue_sender("orders", keep_alive=0) as sender:
                sender.send_messages(ServiceBusMessage(body))  # warm up the link
                with Phase(process.pid) as phase:
                    for _ in range(args.messages):
                        sender.send_messages(ServiceBusMessage(body))
                rows.append(Row("single sends", args.messages, phase.seconds, phase.cpu))
                with Phase(process.pid) as phase:
                    for _ in range(args.batches):
                        batch = sender.create_message_batch()
                        for _ in range(100):
                            batch.add_message(ServiceBusMessage(body))
                        sender.send_messages(batch)
                rows.append(
                    Row("batched sends (100/batch)", 100 * args.batches, phase.seconds, phase.cpu)
                )
            total = args.messages + 1 + 100 * args.batches
            with client.get_queue_receiver("orders", prefetch_count=100) as receiver:
                received = 0
                with Phase(process.pid) as phase:
                    while received < total:
                        # Ask for no more than what is left: the SDK waits out max_wait_time
                        # for a batch it cannot fill.
                        want = min(100, total - received)
                        got = receiver.receive_messages(max_message_count=want, max_wait_time=5)
                        if not got:
                            break
                        for msg in got:
                            receiver.complete_message(msg)
                        received += len(got)
                rows.append(Row("peek-lock receive + complete", received, phase.seconds, phase.cpu))
    finally:
        process.terminate()
        process.wait(10)

    print(f"emulator start-up (process spawn to ready line): {startup:.2f} s")
    print(f"{'phase':<34} {'messages':>8} {'seconds':>9} {'msg/s':>11} {'emulator CPU':>13}")
    for row in rows:
        print(row.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
