"""A PostgreSQL schema of its own, for a test or a benchmark that must see no other run's
tables (the inbox table has one name in every store)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def schema_of_its_own(dsn: str, prefix: str = "t") -> Iterator[str]:
    """A DSN whose ``search_path`` is a new, empty schema, dropped with its tables on exit
    (close the stores using it first)."""
    import psycopg  # optional dependency: only PostgreSQL read models need it

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{dsn} options='-c search_path={schema}'"
    finally:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
