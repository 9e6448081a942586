"""Background workers and exactly-once CQRS projections on top of the claim-check bus.

```python
worker = Worker(settings)
store = SQLiteProjectionStore("billing.db")
worker.add_projection(BillingProjection(), store=store, queue="orders")
worker.run()
```
"""

from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import (
    EVENT_VERSION_PROPERTY,
    UnknownEventTypeError,
    UnsupportedEventVersionError,
    Upcaster,
)
from claimcheck_bus.worker.middleware import (
    LoggingMiddleware,
    MetricsMiddleware,
    Middleware,
    Outcome,
)
from claimcheck_bus.worker.projection import Projection, handles, reset_projection
from claimcheck_bus.worker.stores import (
    PostgresProjectionStore,
    ProjectionStore,
    SQLiteProjectionStore,
)
from claimcheck_bus.worker.worker import Worker

__all__ = [
    "EVENT_VERSION_PROPERTY",
    "EventContext",
    "LoggingMiddleware",
    "MetricsMiddleware",
    "Middleware",
    "Outcome",
    "PostgresProjectionStore",
    "Projection",
    "ProjectionStore",
    "SQLiteProjectionStore",
    "UnknownEventTypeError",
    "UnsupportedEventVersionError",
    "Upcaster",
    "Worker",
    "handles",
    "reset_projection",
]
