"""Read-model stores for projections: one module per database behind one interface."""

from claimcheck_bus.worker.stores.base import INBOX_TABLE, ProjectionStore
from claimcheck_bus.worker.stores.postgres import PostgresProjectionStore
from claimcheck_bus.worker.stores.sqlite import SQLiteProjectionStore

__all__ = ["INBOX_TABLE", "PostgresProjectionStore", "ProjectionStore", "SQLiteProjectionStore"]
