"""The one-command demo, end to end, as a subprocess: its table, its 422, its cancelled orders'
void invoices, its clean stop."""

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from claimcheck_bus.testing.polling import wait_for

from .factories import order_body

ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, str(ROOT / "samples" / "demo.py")]
ROW = re.compile(
    r"^([0-9a-f-]{36})\s+(.+?)\s+([\d,]+)\s+(inline|claim-check)\s+(EUR [\d.]+)\s+"
    r"(issued|void)\s+(EUR [\d.]+)\s+(\d+)$"
)
CANCEL = re.compile(
    r"POST /orders/([0-9a-f]{8})/cancel -> 202, OrderCancelled in session ([0-9a-f]{8})"
)
URL = re.compile(r"(?:listens on|API on) (http://127\.0\.0\.1:\d+)")
EMULATOR = re.compile(r"emulator ready: Endpoint=sb://(127\.0\.0\.1:\d+)")

# Each demo starts Azurite, the emulator and two services: under pytest-xdist these tests run
# one at a time on one worker (with the other process-heavy ones), not against each other.
pytestmark = pytest.mark.xdist_group("process-trees")


def _refuses(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


def _addresses(output: str) -> list[str]:
    found = [u.removeprefix("http://") for u in URL.findall(output)]
    found += EMULATOR.findall(output)
    return found


def test_demo_prints_the_table_and_stops_everything() -> None:
    started = time.monotonic()
    result = subprocess.run(
        DEMO, cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert time.monotonic() - started < 120, output

    rows = [m.groups() for line in result.stdout.splitlines() if (m := ROW.match(line.strip()))]
    assert len(rows) == 5, output
    routes = [r[3] for r in rows]
    assert routes.count("inline") == 3, output
    assert routes.count("claim-check") == 2, output
    for _, _label, size, route, total, status, due, lag in rows:
        payload = int(size.replace(",", ""))
        # claimcheck.toml's threshold is 64 KiB.
        assert (payload > 64 * 1024) == (route == "claim-check"), output
        assert float(total.split()[1]) > 0
        assert due == ("EUR 0.00" if status == "void" else total), output
        assert int(lag) < 60_000
    # A small order and the one with many lines were cancelled right after they were accepted:
    # each cancellation went to its order's session, and billing voided the invoice.
    cancelled = CANCEL.findall(output)
    assert len(cancelled) == 2, output
    assert all(order == session for order, session in cancelled)
    void = {r[0][:8]: r[1] for r in rows if r[5] == "void"}
    assert void == {cancelled[0][0]: "small", cancelled[1][0]: "many lines"}, output
    assert (
        len(re.findall(r"invoice INV-\S+ void \(order cancelled: changed my mind\)", output)) == 2
    )
    assert "2 cancelled orders: their invoices void" in output
    assert re.search(r"POST /orders \(invalid\) -> 422 .*Quantity: Input should be greater", output)
    assert "5 invoice documents published as InvoiceIssued and archived" in output
    assert "all services stopped" in output
    # Progress lines as it goes: every step is timestamped.
    assert len(re.findall(r"^\[\s*\d+\.\d+s\] ", result.stdout, re.M)) >= 15

    addresses = _addresses(result.stdout)
    assert len(addresses) == 4, output  # Azurite, emulator, billing query API, order API
    assert all(_refuses(a) for a in addresses), f"still listening after the demo: {addresses}"


def test_keep_running_serves_until_interrupted() -> None:
    process = subprocess.Popen(
        [*DEMO, "--keep-running"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line or time.monotonic() > deadline:
                break
        output = "".join(lines)
        assert "Press Ctrl-C" in output, output
        orders_url = re.search(r"order API\s+(http://\S+)", output).group(1)
        billing_url = re.search(r"billing queries\s+(http://\S+)", output).group(1)
        assert "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING='Endpoint=sb://" in output
        assert "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING='" in output

        # The stack is really up: a new order becomes an invoice.
        accepted = httpx.post(f"{orders_url}/orders", json=order_body("cust-curl"), timeout=30)
        assert accepted.status_code == 202
        order_id = accepted.json()["order_id"]
        invoice = wait_for(
            lambda: (
                (r := httpx.get(f"{billing_url}/invoices/{order_id}")).status_code == 200
                and r.json()
            ),
            timeout=30,
            what="the invoice of the order posted while the demo keeps running",
        )
        assert invoice["customer_id"] == "cust-curl"
        assert process.poll() is None

        process.send_signal(signal.SIGINT)
        # Each service gets 10 s to stop before SIGKILL: under load the four can take a while.
        rest, _ = process.communicate(timeout=120)
        output += rest
        assert process.returncode == 0, output
        assert "all services stopped" in output
        addresses = _addresses(output)
        assert len(addresses) == 4, output
        assert all(_refuses(a) for a in addresses), addresses
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_failing_service_fails_the_demo_with_its_output_and_stops_the_rest() -> None:
    import os

    env = {**os.environ, "CLAIMCHECK_CLAIM_CHECK__CONTAINER_NAME": "Not_A_Container"}
    result = subprocess.run(
        DEMO, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "DEMO FAILED: billing worker exited with code 1 before it was ready" in output
    assert "claim_check.container_name" in output  # the service's own error, shown
    addresses = _addresses(result.stdout)
    assert len(addresses) == 2, output  # Azurite and the emulator had started
    assert all(_refuses(a) for a in addresses), addresses


def test_the_read_model_can_live_in_postgresql(postgres_dsn: str) -> None:
    import psycopg

    result = subprocess.run(
        [*DEMO, "--billing-database", postgres_dsn],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    rows = [m.groups() for line in result.stdout.splitlines() if (m := ROW.match(line.strip()))]
    assert len(rows) == 5, output
    with psycopg.connect(postgres_dsn) as connection:
        billed = {row[0] for row in connection.execute("SELECT order_id FROM invoices")}
        voided = {row[0] for row in connection.execute("SELECT order_id FROM invoice_voids")}
    assert {row[0] for row in rows} <= billed
    assert {row[0] for row in rows if row[5] == "void"} <= voided
