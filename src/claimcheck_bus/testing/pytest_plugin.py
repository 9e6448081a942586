"""Pytest fixtures for claimcheck-bus users: Azurite, the Service Bus emulator, settings.

Registered through the ``pytest11`` entry point, so installing claimcheck-bus makes them
available in any suite (``pip install claimcheck-bus[testing]`` brings what they import; the
Azurite ones also need ``npm i -D azurite@3.37.0`` in the project, Docker, or a running
Azurite: see :mod:`claimcheck_bus.testing.azurite`):

- ``azurite`` (session): a running Azurite blob service; ``blob_container``: a fresh container;
- ``azurite_oauth`` (session): Azurite over HTTPS with ``--oauth basic`` (user-delegation SAS);
- ``servicebus`` (session): the in-process Service Bus emulator; ``fresh_queue``,
  ``fresh_topic``: entities of the test's own;
- ``bus_settings``: :class:`BusSettings` for the test's queue and container, from environment
  variables as an application reads them;
- ``postgres_dsn`` (session): a PostgreSQL database created for the run, dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from claimcheck_bus.testing.azurite import (
    Azurite,
    AzuriteOAuth,
    AzuriteProcess,
    connection_string_for,
    find_azurite,
    running_azurite,
)
from claimcheck_bus.testing.bus_fixtures import bus_settings, fresh_queue, fresh_topic
from claimcheck_bus.testing.credentials import write_self_signed_certificate
from claimcheck_bus.testing.database_fixtures import postgres_dsn
from claimcheck_bus.testing.servicebus import servicebus

__all__ = [
    "azurite",
    "azurite_oauth",
    "blob_container",
    "bus_settings",
    "fresh_queue",
    "fresh_topic",
    "postgres_dsn",
    "servicebus",
]


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
