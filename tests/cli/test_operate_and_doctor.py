"""`claimcheck-bus publish`, `peek` and `doctor` against the emulator and Azurite."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from claimcheck_bus import BusSettings
from claimcheck_bus.testing.azurite import connection_string_for


def test_publish_a_large_file_then_peek_it_claim_checked(
    cli: Any, bus_settings: BusSettings, fresh_queue: str, tmp_path: Path
) -> None:
    event = tmp_path / "order.json"
    event.write_text(json.dumps({"OrderId": "o-1", "Notes": "x" * 300_000}))
    ran = cli("publish", "--file", str(event), "--event-type", "OrderCreated", "--ttl", "1h",
              "--message-id", "o-1", "--json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json()["route"] == "claim-check"
    assert ran.json()["blob_name"] == f"{fresh_queue}/OrderCreated/o-1.json"

    small = tmp_path / "small.json"
    small.write_text('{"OrderId": "o-2"}')
    assert (
        cli("publish", "-f", str(small), "-e", "OrderCreated", "--json").json()["route"] == "inline"
    )

    peeked = cli("peek", "--json")
    assert peeked.code == 0
    messages = peeked.json()["messages"]
    assert [m["route"] for m in messages] == ["claim-check", "inline"]
    assert messages[0]["payload_size"] > 300_000
    assert messages[0]["sas_expires_at"] is not None
    table = cli("peek")
    assert "o-1" in table.out
    assert "claim-check" in table.out
    # Peeking settles nothing.
    assert len(cli("peek", "--json").json()["messages"]) == 2


def test_publish_refuses_a_file_that_is_not_json(
    cli: Any, bus_settings: BusSettings, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    ran = cli("publish", "--file", str(bad), "--event-type", "E")
    assert ran.code == 2
    assert "is not JSON" in ran.err


def test_doctor_passes_every_check_on_a_working_setup(
    cli: Any, bus_settings: BusSettings, fresh_topic: tuple[str, list[str]]
) -> None:
    topic, _ = fresh_topic
    ran = cli("doctor", "--topic", topic, "--json")
    assert ran.code == 0, ran.out
    checks = {c["name"]: c for c in ran.json()["checks"]}
    assert [c["status"] for c in checks.values()] == ["ok"] * len(checks)
    queue = bus_settings.service_bus.default_queue_name
    assert checks[f"queue {queue}"]["detail"] == "exists; largest message 262144 bytes"
    assert checks[f"topic {topic}"]["status"] == "ok"
    assert checks["sas"]["detail"] == "account-key SAS signed and read back"
    assert set(checks) >= {"settings", "storage", "container", "clock", "trusted endpoints"}
    assert "ok" in cli("doctor").out


def test_doctor_names_a_missing_queue_with_its_fix(cli: Any, bus_settings: BusSettings) -> None:
    ran = cli("doctor", "--queue", "no-such-queue", "--json")
    assert ran.code == 1
    [check] = [c for c in ran.json()["checks"] if c["name"] == "queue no-such-queue"]
    assert check["status"] == "fail"
    assert check["fix"] == "Create the queue or fix its name."


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_doctor_fails_when_services_are_down(
    cli: Any, bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _unused_port()
    monkeypatch.setenv(
        "CLAIMCHECK_SERVICE_BUS__CONNECTION_STRING",
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName=k;SharedAccessKey=c2VjcmV0;"
        "UseDevelopmentEmulator=true;",
    )
    monkeypatch.setenv(
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING",
        connection_string_for(f"http://127.0.0.1:{port}/devstoreaccount1"),
    )
    ran = cli("doctor", "--timeout", "3", "--json", secrets=("c2VjcmV0",))
    assert ran.code == 1
    checks = {c["name"]: c for c in ran.json()["checks"]}
    assert checks[f"queue {bus_settings.service_bus.default_queue_name}"]["status"] == "fail"
    assert checks["storage"]["status"] == "fail"
    assert "role" in checks["storage"]["fix"]
    assert checks["clock"]["status"] == "skip"


def test_doctor_reports_invalid_settings_as_a_failed_check(
    cli: Any, bus_settings: BusSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLAIMCHECK_CLAIM_CHECK__SAS_EXPIRY_HOURS", "-1")
    ran = cli("doctor", "--json")
    assert ran.code == 1
    [check] = ran.json()["checks"]
    assert check["name"] == "settings"
    assert check["status"] == "fail"
    assert "sas_expiry_hours" in check["detail"]


def test_the_installed_entry_point_runs_in_a_subprocess(bus_settings: BusSettings) -> None:
    import subprocess
    import sys

    entry_point = Path(sys.executable).parent / "claimcheck-bus"
    done = subprocess.run(
        [str(entry_point), "config", "show", "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["valid"] is True
    usage = subprocess.run(
        [str(entry_point), "dlq", "resubmit"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert usage.returncode == 2
    assert "select what to act on" in usage.stderr


def test_doctor_signs_and_reads_back_a_user_delegation_sas(
    cli: Any, bus_settings: BusSettings, azurite_oauth: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an account URL and no key, doctor signs a user-delegation SAS and reads it back.
    Entra ID is the one part no test can have: azure-identity's DefaultAzureCredential is
    replaced by a credential whose tokens the OAuth-enabled Azurite accepts."""
    import azure.identity

    from claimcheck_bus.testing.credentials import FakeTokenCredential

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda **_: FakeTokenCredential())
    monkeypatch.delenv("CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__CONNECTION_STRING")
    monkeypatch.setenv(
        "CLAIMCHECK_CLAIM_CHECK__BLOB_STORAGE__ACCOUNT_URL", azurite_oauth.blob_endpoint
    )
    # Azurite's certificate is self-signed: the storage SDK and httpx trust it from here.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", azurite_oauth.ca_path)
    monkeypatch.setenv("SSL_CERT_FILE", azurite_oauth.ca_path)
    ran = cli("doctor", "--json")
    checks = {c["name"]: c for c in ran.json()["checks"]}
    assert checks["sas"]["status"] == "ok", checks["sas"]
    assert checks["sas"]["detail"] == "user-delegation SAS signed and read back"
