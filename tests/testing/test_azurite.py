"""The Azurite harness: real blobs, real SAS URLs over httpx, cleanup when the test run dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from claimcheck_bus.testing.azurite import (
    ACCOUNT_KEY,
    EXTERNAL_ENV,
    Azurite,
    azurite_source,
    blob_endpoint_of,
    connection_string_for,
    find_azurite,
)

PAYLOAD = b'{"OrderId": "42", "Lines": ' + b"[1]" * 1000 + b"}"


@pytest.fixture
def blob_url(azurite: Azurite, blob_container: str) -> str:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(blob_container, "orders/OrderCreated/1.json")
        blob.upload_blob(PAYLOAD, overwrite=True)
        assert blob.download_blob().readall() == PAYLOAD
        return str(blob.url)


def read_only_sas(azurite: Azurite, container: str, blob: str) -> str:
    return generate_blob_sas(
        account_name=azurite.account_name,
        container_name=container,
        blob_name=blob,
        account_key=azurite.account_key,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(timezone.utc) + timedelta(minutes=5),
    )


def test_a_read_only_sas_url_serves_the_bytes_to_plain_http(
    azurite: Azurite, blob_container: str, blob_url: str
) -> None:
    sas = read_only_sas(azurite, blob_container, "orders/OrderCreated/1.json")
    response = httpx.get(f"{blob_url}?{sas}")
    assert response.status_code == 200
    assert response.content == PAYLOAD


def test_a_tampered_signature_is_refused(
    azurite: Azurite, blob_container: str, blob_url: str
) -> None:
    sas = read_only_sas(azurite, blob_container, "orders/OrderCreated/1.json")
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]
    tampered = sas.replace(signature, ("A" if signature[0] != "A" else "B") + signature[1:])
    response = httpx.get(f"{blob_url}?{tampered}")
    assert response.status_code == 403


def test_a_read_only_sas_cannot_write(azurite: Azurite, blob_container: str, blob_url: str) -> None:
    sas = read_only_sas(azurite, blob_container, "orders/OrderCreated/1.json")
    response = httpx.put(
        f"{blob_url}?{sas}", content=b"overwritten", headers={"x-ms-blob-type": "BlockBlob"}
    )
    assert response.status_code == 403
    assert httpx.get(f"{blob_url}?{sas}").content == PAYLOAD


def test_each_test_gets_its_own_empty_container(azurite: Azurite, blob_container: str) -> None:
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        assert list(service.get_container_client(blob_container).list_blobs()) == []


def test_the_source_is_external_then_docker_then_npm() -> None:
    assert azurite_source({EXTERNAL_ENV: "x"}, docker_answers=True) == "external"
    assert azurite_source({}, docker_answers=True) == "testcontainers"
    assert azurite_source({}, docker_answers=False) == "npm"


def test_connection_strings_round_trip() -> None:
    endpoint = "http://127.0.0.1:12345/devstoreaccount1"
    assert blob_endpoint_of(connection_string_for(endpoint)) == endpoint
    assert blob_endpoint_of("UseDevelopmentStorage=true") == (
        "http://127.0.0.1:10000/devstoreaccount1"
    )
    with pytest.raises(ValueError, match="BlobEndpoint"):
        blob_endpoint_of("AccountName=x;AccountKey=y")


def test_the_endpoint_repr_hides_the_key(azurite: Azurite) -> None:
    assert ACCOUNT_KEY not in repr(azurite)


_ORPHAN_SCRIPT = """
import sys, tempfile
from pathlib import Path
from claimcheck_bus.testing.azurite import AzuriteProcess
process = AzuriteProcess(Path(sys.argv[1]), Path(sys.argv[2]), location=Path(tempfile.mkdtemp()))
process.start()
print(process._process.pid, flush=True)
sys.stdin.read()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_azurite_dies_when_the_test_process_is_killed(request: pytest.FixtureRequest) -> None:
    node, main_js = find_azurite([Path(str(request.config.rootpath))])
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(node), str(main_js)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    azurite_pid = int(parent.stdout.readline())
    assert _alive(azurite_pid)

    parent.send_signal(signal.SIGKILL)
    parent.wait(10)

    deadline = time.monotonic() + 10
    while _alive(azurite_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(azurite_pid), "Azurite outlived the killed test process"
