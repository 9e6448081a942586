"""The one-command demo: ``python samples/demo.py [--keep-running]`` (``make demo``).

Starts Azurite and the Service Bus emulator on free ports, the billing worker and the order API,
posts a handful of orders (small, large, one invalid), cancels two of them at once, waits for
the invoices in the read model (those of the cancelled orders void), prints a table and stops
everything (also on Ctrl-C or failure). Exit code 0 means it all worked.

An order's events travel in its own session on the session-enabled ``orders`` queue, so billing
applies each cancellation after the creation it cancels, though both are queued together.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python samples/demo.py` from a fresh clone

import httpx  # noqa: E402

from claimcheck_bus.testing.azurite import (  # noqa: E402
    azurite_command,
    connection_string_for,
    find_azurite,
)

START = time.monotonic()


class DemoError(Exception):
    """A step of the demo failed; the message says which and why."""


def step(message: str) -> None:
    """One progress line, with the seconds since the demo started."""
    print(f"[{time.monotonic() - START:6.1f}s] {message}", flush=True)


@dataclass
class Child:
    """A service the demo started, in its own process group."""

    name: str
    process: subprocess.Popen[str]
    output: deque[str] = field(default_factory=lambda: deque(maxlen=60))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole group, then SIGKILL what is left."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            step(f"{self.name} did not stop within {timeout:g} s; killing it")
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:
    # Linux: the kernel kills the service if the demo itself is killed (even by SIGKILL),
    # so nothing is left listening when the finally block never runs.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class Stack:
    """The running services, stopped in reverse order of start."""

    def __init__(self, verbose: bool) -> None:
        self.children: list[Child] = []
        self.verbose = verbose

    def start(
        self,
        name: str,
        command: list[str],
        ready: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> re.Match[str]:
        """Start ``command`` and wait for an output line matching ``ready``; returns the match."""
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: stopped as a whole
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        child = Child(name, process)
        self.children.append(child)
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            # Reading to the end keeps the child from blocking on a full pipe.
            assert process.stdout is not None
            for line in process.stdout:
                child.output.append(line.rstrip())
                if self.verbose:
                    print(f"    {name}: {line.rstrip()}", flush=True)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        pattern = re.compile(ready)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise DemoError(
                    f"{name} exited with code {process.wait()} before it was ready. "
                    "Its last output:\n  " + "\n  ".join(child.output)
                )
            match = pattern.search(line)
            if match:
                return match
        raise DemoError(
            f"{name} was not ready within {timeout:.0f} s. Its last output:\n  "
            + "\n  ".join(child.output)
        )

    def check_alive(self) -> None:
        """Fail with the child's output when a service has died."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise DemoError(
                    f"{child.name} exited with code {code}. Its last output:\n  "
                    + "\n  ".join(child.output)
                )

    def stop(self) -> None:
        """Stop every service, last started first."""
        for child in reversed(self.children):
            if child.process.poll() is None:
                step(f"stopping {child.name}")
            child.stop()


# -- the orders --------------------------------------------------------------------------


def _address(name: str) -> dict[str, Any]:
    return {
        "Name": name,
        "Street": "1 Harbour Street",
        "City": "Rotterdam",
        "PostalCode": "3011",
        "Country": "NL",
    }


def _order(customer: str, lines: int, *, attachment_kb: int = 0) -> dict[str, Any]:
    products = [
        {
            "ProductId": f"SKU-{i:05d}",
            "Name": f"Product {i}",
            "Quantity": 1 + i % 3,
            "Price": round(4.99 + i % 17, 2),
            "Description": "Spare part, boxed, with assembly notes and a two-year warranty.",
        }
        for i in range(lines)
    ]
    order: dict[str, Any] = {
        "CustomerId": customer,
        "PaymentMethod": "CreditCard",
        "Currency": "EUR",
        "Products": products,
        "BillingAddress": _address(customer),
        "Shipping": {"Method": "Express", "Cost": 7.5, "Address": _address(customer)},
        "Discounts": [{"Code": "WELCOME5", "Amount": 5}],
    }
    if attachment_kb:
        order["Attachments"] = [
            {
                "FileName": "purchase-order.pdf",
                "ContentType": "application/pdf",
                "ContentBase64": base64.b64encode(os.urandom(attachment_kb * 768)).decode(),
            }
        ]
    return order


def demo_orders() -> list[tuple[str, dict[str, Any], bool]]:
    """(label, body, cancel it): small orders, large ones (lines, an attachment) and an invalid
    one; a small and a large one are cancelled right after they are accepted."""
    invalid = _order("cust-bad", 1)
    invalid["Products"][0]["Quantity"] = 0
    del invalid["BillingAddress"]
    return [
        ("small", _order("cust-alice", 2), False),
        ("small", _order("cust-bob", 5), True),
        ("small", _order("cust-alice", 12), False),
        ("many lines", _order("cust-carol", 600), True),
        ("attachment", _order("cust-bob", 3, attachment_kb=120), False),
        ("invalid", invalid, False),
    ]


# -- the run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Start the stack, run the scenario, print the table; stop everything in ``finally``."""
    stack = Stack(args.verbose)
    with tempfile.TemporaryDirectory(prefix="claimcheck-demo-") as work:
        workdir = Path(work)
        try:
            scenario(stack, workdir, args)
        finally:
            stack.stop()
    step("all services stopped")
    return 0


def scenario(stack: Stack, workdir: Path, args: argparse.Namespace) -> None:
    """The demo's steps, each announced."""
    step("starting Azurite (blob storage) on a free port")
    node, main_js = find_azurite([ROOT])
    (workdir / "azurite").mkdir()
    match = stack.start(
        "Azurite",
        azurite_command(node, main_js, workdir / "azurite"),
        r"Blob service successfully listens on (http://[\d.]+:\d+)",
        timeout=30,
    )
    storage = connection_string_for(f"{match.group(1)}/devstoreaccount1")
    step(f"Azurite listens on {match.group(1)}")

    step("starting the Service Bus emulator (queue orders, topic invoices/archive)")
    match = stack.start(
        "Service Bus emulator",
        [
            sys.executable,
            "-m",
            "claimcheck_bus.emulator",
            "--config",
            str(ROOT / "samples" / "Config.json"),
            "--port",
            "0",
        ],
        r"(Endpoint=sb://\S+)",
        timeout=30,
    )
    servicebus = match.group(1)
    step(f"emulator ready: {servicebus.split(';')[0]}")

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "CLAIMCHECK_CONFIG_DIR": str(ROOT / "samples"),
        "CLAIMCHECK_ENV": "development",
        "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING": servicebus,
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING": storage,
        "ORDER_API_DATABASE": str(workdir / "orders.db"),
        "BILLING_DATABASE": args.billing_database or str(workdir / "billing.db"),
        "BILLING_ARCHIVE_DIR": str(workdir / "invoice-archive"),
    }
    step("starting the billing worker and its query API")
    match = stack.start(
        "billing worker",
        [sys.executable, "-m", "samples.billing_worker", "--port", "0"],
        r"billing query API listening on (http://\S+)",
        env=env,
    )
    billing_url = match.group(1)
    step(f"billing query API on {billing_url}")

    step("starting the order API")
    match = stack.start(
        "order API",
        [sys.executable, "-m", "samples.order_api", "--port", "0"],
        r"order API listening on (http://\S+)",
        env=env,
    )
    orders_url = match.group(1)
    step(f"order API on {orders_url}")

    rows = post_orders(orders_url)
    wait_for_invoices(stack, billing_url, rows, args.timeout)
    print_table(rows)
    archived = wait_for_archive(workdir / "invoice-archive", rows, args.timeout)
    step(f"{archived} invoice documents published as InvoiceIssued and archived by the subscriber")
    voided = sum(row.status == "void" for row in rows)
    step(
        f"{voided} cancelled orders: their invoices void, each cancellation applied in its session"
    )

    if args.keep_running:
        keep_running(orders_url, billing_url, servicebus, storage, env)


@dataclass
class Row:
    """One accepted order and what became of it."""

    label: str
    order_id: str
    payload_bytes: int
    route: str
    posted_at: float
    cancelled: bool = False
    total: str = ""
    status: str = ""
    due: str = ""
    lag_ms: float | None = None
    claim_checked_seen: bool | None = None

    @property
    def settled(self) -> bool:
        """Billing has the invoice in its final state: void if the order was cancelled."""
        return bool(self.status) and (self.status == "void") == self.cancelled


def post_orders(orders_url: str) -> list[Row]:
    """POST each demo order, and cancel those marked at once; the invalid one must get 422,
    which is shown."""
    rows: list[Row] = []
    with httpx.Client(base_url=orders_url, timeout=30) as client:
        for label, body, cancel in demo_orders():
            answer = client.post("/orders", json=body)
            if label == "invalid":
                if answer.status_code != 422:
                    raise DemoError(f"the invalid order got {answer.status_code}, not 422")
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                    for e in answer.json()["detail"]
                )
                step(f"POST /orders ({label}) -> 422 Unprocessable Content: {problems}")
                continue
            if answer.status_code != 202:
                raise DemoError(
                    f"POST /orders ({label}) answered {answer.status_code}: {answer.text[:500]}"
                )
            accepted = answer.json()
            rows.append(
                Row(
                    label,
                    accepted["order_id"],
                    accepted["payload_bytes"],
                    accepted["route"],
                    time.monotonic(),
                )
            )
            step(
                f"POST /orders ({label}, {len(body['Products'])} lines) -> 202 order "
                f"{accepted['order_id'][:8]}, {accepted['payload_bytes']:,} bytes, "
                f"{accepted['route']}, OrderCreated in session {accepted['session_id'][:8]}"
            )
            if cancel:
                cancel_order(client, rows[-1])
    return rows


def cancel_order(client: httpx.Client, row: Row) -> None:
    """Cancel an order right after it was accepted: billing may not have invoiced it yet."""
    answer = client.post(f"/orders/{row.order_id}/cancel", json={"Reason": "changed my mind"})
    if answer.status_code != 202:
        raise DemoError(
            f"POST /orders/{row.order_id}/cancel answered {answer.status_code}: {answer.text[:500]}"
        )
    accepted = answer.json()
    if accepted["session_id"] != row.order_id:
        raise DemoError(
            f"the cancellation of {row.order_id} went to session {accepted['session_id']}"
        )
    row.cancelled = True
    step(
        f"POST /orders/{row.order_id[:8]}/cancel -> 202, OrderCancelled in session "
        f"{accepted['session_id'][:8]}, behind its OrderCreated"
    )


def wait_for_invoices(stack: Stack, billing_url: str, rows: list[Row], timeout: float) -> None:
    """Poll the query API until every accepted order has its invoice."""
    step(f"waiting for {len(rows)} invoices in the billing read model")
    deadline = time.monotonic() + timeout
    pending = {row.order_id: row for row in rows}
    with httpx.Client(base_url=billing_url, timeout=10) as client:
        while pending:
            for order_id, row in list(pending.items()):
                answer = client.get(f"/invoices/{order_id}")
                if answer.status_code != 200:
                    continue
                invoice = answer.json()
                if invoice["status"] == row.status:
                    continue
                row.total = f"{invoice['currency']} {invoice['total']}"
                row.status = invoice["status"]
                row.due = f"{invoice['currency']} {invoice['amount_due']}"
                row.lag_ms = invoice["lag_ms"]
                row.claim_checked_seen = invoice["claim_checked"]
                if row.status == "void":
                    step(
                        f"invoice {invoice['invoice_id'][:12]} void (order cancelled: "
                        f"{invoice['cancel_reason']}), amount due {row.due}"
                    )
                else:
                    step(f"invoice {invoice['invoice_id'][:12]} issued ({row.total})")
                if row.settled:
                    del pending[order_id]
            if not pending:
                break
            stack.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"no invoice in its final state within {timeout:.0f} s for orders "
                    f"{sorted(pending)}; run with --verbose to see the services' logs"
                )
            time.sleep(0.2)


def wait_for_archive(archive: Path, rows: list[Row], timeout: float) -> int:
    """Poll the archive folder until each order's invoice document is there."""
    deadline = time.monotonic() + timeout
    wanted = {f"INV-{row.order_id}.json" for row in rows}
    while True:
        present = {p.name for p in archive.glob("*.json")} if archive.is_dir() else set()
        if wanted <= present:
            return len(wanted)
        if time.monotonic() > deadline:
            raise DemoError(f"{len(wanted - present)} invoices were not archived in time")
        time.sleep(0.2)


def print_table(rows: list[Row]) -> None:
    """The result table: order id, payload bytes, route, invoice total, status and amount due,
    lag."""
    header = f"{'order id':<36}  {'order':<10}  {'payload bytes':>13}  {'route':<13}  " + (
        f"{'invoice total':>14}  {'status':<6}  {'amount due':>12}  {'lag ms':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        lag = f"{row.lag_ms:8.0f}" if row.lag_ms is not None else f"{'?':>8}"
        print(
            f"{row.order_id:<36}  {row.label:<10}  {row.payload_bytes:>13,}  {row.route:<13}  "
            f"{row.total:>14}  {row.status:<6}  {row.due:>12}  {lag}"
        )
    print(flush=True)
    for row in rows:
        if row.claim_checked_seen != (row.route == "claim-check"):
            raise DemoError(
                f"order {row.order_id}: published as {row.route}, but the worker saw "
                f"claim_checked={row.claim_checked_seen}"
            )


def keep_running(
    orders_url: str, billing_url: str, servicebus: str, storage: str, env: dict[str, str]
) -> None:
    """Print how to explore the running stack, then wait for Ctrl-C."""
    example = json.dumps(_order("cust-you", 1), separators=(",", ":"))
    print(
        f"""
The stack keeps running. Explore it with curl:

  order API        {orders_url}      (docs: {orders_url}/docs)
  billing queries  {billing_url}      (docs: {billing_url}/docs)

  curl -s -X POST {orders_url}/orders -H 'content-type: application/json' \\
       -d '{example}'
  curl -s -X POST {orders_url}/orders/<order id>/cancel
  curl -s {billing_url}/invoices/<order id>
  curl -s {billing_url}/customers/cust-alice/invoices

  CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING='{servicebus}'
  CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING='{storage}'
  invoice archive: {env["BILLING_ARCHIVE_DIR"]}

Press Ctrl-C to stop everything.""",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    print()


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the demo; exit 0 on success, 1 with a message on failure."""
    parser = argparse.ArgumentParser(prog="python samples/demo.py", description=__doc__)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the table, keep the stack running and print URLs and connection strings",
    )
    parser.add_argument("--verbose", action="store_true", help="show the services' output")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the invoices"
    )
    parser.add_argument(
        "--billing-database",
        help="read model URL (default: SQLite in a temp folder; postgresql://... works)",
    )
    args = parser.parse_args(argv)
    # SIGTERM to the demo stops the stack like Ctrl-C does. Ctrl-C itself gets Python's default
    # handler back: a job started in the background by a non-interactive shell (CI) inherits
    # SIGINT as ignored, and the demo would then never stop.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = run(args)
    except DemoError as error:
        step(f"DEMO FAILED: {error}")
        return 1
    except KeyboardInterrupt:
        step("interrupted; everything stopped")
        return 130
    step("demo finished: every order was published, billed and archived, the cancelled ones voided")
    return code


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
