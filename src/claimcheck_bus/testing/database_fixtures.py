"""Database fixtures for projection tests: a PostgreSQL database created for the run.

``postgres_dsn`` creates ``claimcheck_test_<random>`` on ``127.0.0.1:5432`` (or the server
named by ``CLAIMCHECK_TEST_POSTGRES_DSN``, a DSN of a database allowed to CREATE DATABASE) and
drops it at the end; tests needing it skip, saying why, when no PostgreSQL answers.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import uuid
from collections.abc import Iterator

import pytest

POSTGRES_ENV = "CLAIMCHECK_TEST_POSTGRES_DSN"


def _admin_candidates() -> list[str]:
    explicit = os.environ.get(POSTGRES_ENV)
    if explicit:
        return [explicit]
    users = ["postgres"]
    with contextlib.suppress(KeyError, OSError):  # no name for this uid (containers)
        users.append(getpass.getuser())
    return [
        f"host=127.0.0.1 port=5432 user={user} dbname=postgres connect_timeout=3" for user in users
    ]


def _with_dbname(dsn: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(dsn)
    params["dbname"] = name
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A DSN of a PostgreSQL database created for this test session (dropped at the end)."""
    try:
        import psycopg
    except ImportError:
        pytest.skip("psycopg is not installed (pip install claimcheck-bus[postgres])")
    problems = []
    for admin in _admin_candidates():
        try:
            connection = psycopg.connect(admin, autocommit=True)
        except psycopg.Error as error:
            problems.append(str(error).strip().splitlines()[0] if str(error) else repr(error))
            continue
        name = f"claimcheck_test_{uuid.uuid4().hex[:12]}"
        with connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        try:
            yield _with_dbname(admin, name)
        finally:
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    pytest.skip(
        "no PostgreSQL answered on 127.0.0.1:5432 (" + "; ".join(problems) + "). Start one, "
        f"or set {POSTGRES_ENV} to a DSN allowed to CREATE DATABASE."
    )
