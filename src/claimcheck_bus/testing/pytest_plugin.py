"""Pytest fixtures for claimcheck-bus users: Azurite and the Service Bus emulator.

Registered through the ``pytest11`` entry point, so installing claimcheck-bus makes them
available in any suite: ``azurite`` (session), ``blob_container`` (a fresh container per test).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claimcheck_bus.testing.azurite import Azurite, running_azurite


@pytest.fixture(scope="session")
def azurite(request: pytest.FixtureRequest) -> Iterator[Azurite]:
    """A running Azurite blob service for the whole session (see ``testing.azurite``)."""
    try:
        context = running_azurite([Path(str(request.config.rootpath))])
        with context as running:
            yield running
    except FileNotFoundError as missing:
        pytest.fail(str(missing), pytrace=False)


@pytest.fixture
def blob_container(azurite: Azurite) -> Iterator[str]:
    """The name of a new, empty container in Azurite, deleted after the test."""
    from azure.storage.blob import BlobServiceClient

    name = f"test-{uuid.uuid4().hex[:20]}"
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.create_container(name)
        yield name
        service.delete_container(name)


# --- Azurite with OAuth (user-delegation SAS) ---------------------------------------------------
# Appended by the payload-store work; imports kept here so the section above stays untouched.
import ssl  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from claimcheck_bus.testing.azurite import (  # noqa: E402
    ACCOUNT_NAME,
    AzuriteProcess,
    connection_string_for,
    find_azurite,
)
from claimcheck_bus.testing.credentials import (  # noqa: E402
    AsyncFakeTokenCredential,
    FakeTokenCredential,
    write_self_signed_certificate,
)


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
        return FakeTokenCredential()

    def async_credential(self) -> AsyncFakeTokenCredential:
        """The asyncio twin of :meth:`credential`."""
        return AsyncFakeTokenCredential()

    def ssl_context(self) -> ssl.SSLContext:
        """A client SSL context trusting this Azurite's certificate (e.g. ``httpx verify=``)."""
        return ssl.create_default_context(cafile=self.ca_path)


@pytest.fixture(scope="session")
def azurite_oauth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AzuriteOAuth]:
    """An npm Azurite over HTTPS (self-signed, SAN 127.0.0.1) with ``--oauth basic``, for
    user-delegation SAS; pass ``connection_verify=azurite_oauth.ca_path`` to SDK clients."""
    folder = tmp_path_factory.mktemp("azurite-oauth")
    cert, key = write_self_signed_certificate(folder / "tls")
    try:
        node, main_js = find_azurite([Path(str(request.config.rootpath)), Path.cwd()])
    except FileNotFoundError as missing:
        pytest.fail(str(missing), pytrace=False)
    (folder / "data").mkdir()
    process = AzuriteProcess(
        node,
        main_js,
        location=folder / "data",
        extra_args=["--cert", str(cert), "--key", str(key), "--oauth", "basic"],
    )
    endpoint = process.start()
    try:
        yield AzuriteOAuth(
            blob_endpoint=endpoint,
            ca_path=str(cert),
            connection_string=connection_string_for(endpoint),
        )
    finally:
        process.stop()
