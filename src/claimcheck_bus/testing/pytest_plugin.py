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
