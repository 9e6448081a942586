"""Hooks around message handling for logging, metrics and tracing, kept out of handlers.

A :class:`Middleware` overrides only the hooks it needs. Hooks run on the worker's event loop,
except :meth:`Middleware.before_commit`, which runs in the handler's thread inside the
projection's open transaction. A hook that raises is logged and ignored, never fails a message
(except ``before_commit``, whose error rolls the transaction back like a handler's).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Sequence
from enum import Enum
from typing import Any

from claimcheck_bus.errors import printable
from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import bounded, describe, percentile


class Outcome(Enum):
    """How a message left the worker."""

    COMPLETED = "completed"
    DUPLICATE = "duplicate"
    """Every projection had already applied it: skipped and completed."""
    ABANDONED = "abandoned"
    DEAD_LETTERED = "dead_lettered"
    SETTLE_FAILED = "settle_failed"
    """Settling failed (typically a lost lock): Service Bus redelivers, the inbox skips it."""


class Middleware:
    """Hooks around each message; the base class does nothing."""

    def before_handle(self, context: EventContext) -> None:
        """A message was received and is about to be dispatched."""

    def before_commit(self, context: EventContext, projection: str) -> None:
        """A projection's handler ran; its transaction (with the inbox row) is about to commit."""

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        """A projection committed; ``lag`` is seconds from enqueue to commit."""

    def after_handle(
        self,
        context: EventContext,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """The message was settled (``duration``: seconds from receipt to settlement)."""

    def session_started(self, entity: str, session_id: str) -> None:
        """The worker accepted a session of a session entity and holds its lock."""

    def session_ended(self, entity: str, session_id: str) -> None:
        """The worker let a session go (idle, lost, or stopping)."""


HOOKS = (
    "before_handle",
    "before_commit",
    "after_commit",
    "after_handle",
    "session_started",
    "session_ended",
)


def overriding(middleware: Sequence[Middleware], hook: str) -> list[Middleware]:
    """The middleware whose ``hook`` does something: the base class's no-op is left out, so
    the worker pays per event only for the hooks someone wrote."""
    base = getattr(Middleware, hook)
    return [m for m in middleware if getattr(getattr(m, hook), "__func__", None) is not base]


class LoggingMiddleware(Middleware):
    """Logs every settlement at INFO, one line per message, and each commit's lag at DEBUG.

    An access log: the event type, message id, entity, delivery count, outcome and duration
    of every message, successes included, on ``claimcheck_bus.worker.settlements`` (or
    ``logger``). Without it the worker logs only the messages that were not a plain success.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("claimcheck_bus.worker.settlements")

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        """Log the read-model lag of one commit."""
        self.log.debug(
            "projection %s applied %s %s (lag %s s)",
            projection,
            printable(str(context.event_type)),
            printable(context.message_id),
            f"{lag:.3f}" if lag is not None else "?",
        )

    def after_handle(
        self,
        context: EventContext,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """Log the outcome; failures name the error (secrets masked)."""
        if not self.log.isEnabledFor(logging.INFO):
            return
        failure = (
            f": {printable(bounded(' '.join(describe(error).split()), 300))}"
            if error is not None
            else ""
        )
        # The event type and message id are the sender's: no control characters in our log.
        self.log.info(
            "%s %s on %s (delivery %d): %s in %.3f s%s",
            printable(str(context.event_type)),
            printable(context.message_id),
            context.entity,
            context.delivery_count,
            outcome.value,
            duration,
            failure,
        )


class MetricsMiddleware(Middleware):
    """Counts outcomes and keeps recent read-model lag per projection; on session entities,
    the sessions held and each held session's lag. Also records them to OpenTelemetry when
    ``opentelemetry`` is importable and ``meter`` (or the global one) is set."""

    def __init__(self, *, window: int = 10_000, meter: Any = None, use_otel: bool = True) -> None:
        self.outcomes: dict[str, int] = defaultdict(int)
        self.sessions_active: dict[str, int] = defaultdict(int)
        """Sessions held now, by entity."""
        self._lags: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=window))
        self._session_lags: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._lag_histogram: Any = None
        self._outcome_counter: Any = None
        self._sessions_gauge: Any = None
        if use_otel:
            self._setup_otel(meter)

    def _setup_otel(self, meter: Any) -> None:
        try:
            from opentelemetry import metrics
        except ImportError:  # OpenTelemetry is optional
            return
        meter = meter or metrics.get_meter("claimcheck_bus.worker")
        self._lag_histogram = meter.create_histogram(
            "claimcheck.projection.lag", unit="s", description="enqueue to projection commit"
        )
        self._outcome_counter = meter.create_counter(
            "claimcheck.worker.messages", description="messages settled, by outcome"
        )
        self._sessions_gauge = meter.create_up_down_counter(
            "claimcheck.worker.sessions", description="sessions held, by entity"
        )

    def after_commit(self, context: EventContext, projection: str, lag: float | None) -> None:
        """Record one commit's lag."""
        if lag is None:
            return
        with self._lock:
            self._lags[projection].append(lag)
            if context.session_id is not None:
                key = (context.entity, context.session_id)
                if key in self._session_lags:  # only sessions held now
                    self._session_lags[key] = lag
        if self._lag_histogram is not None:
            self._lag_histogram.record(lag, {"projection": projection})

    def after_handle(
        self,
        context: EventContext,
        outcome: Outcome,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """Count one settlement."""
        with self._lock:
            self.outcomes[outcome.value] += 1
        if self._outcome_counter is not None:
            self._outcome_counter.add(1, {"outcome": outcome.value, "entity": context.entity})

    def session_started(self, entity: str, session_id: str) -> None:
        """Count a session held."""
        with self._lock:
            self.sessions_active[entity] += 1
            self._session_lags[(entity, session_id)] = 0.0
        if self._sessions_gauge is not None:
            self._sessions_gauge.add(1, {"entity": entity})

    def session_ended(self, entity: str, session_id: str) -> None:
        """Count a session let go, and forget its lag."""
        with self._lock:
            self.sessions_active[entity] -= 1
            self._session_lags.pop((entity, session_id), None)
        if self._sessions_gauge is not None:
            self._sessions_gauge.add(-1, {"entity": entity})

    def session_lags(self, entity: str) -> dict[str, float]:
        """The lag (seconds, enqueue to commit) of each session of ``entity`` held now, as of
        its last commit (0 until then). Kept per held session only: session ids are
        unbounded, so they are never metric attributes."""
        with self._lock:
            return {s: lag for (e, s), lag in self._session_lags.items() if e == entity}

    def lags(self, projection: str) -> list[float]:
        """The recent lags (seconds) of ``projection``."""
        with self._lock:
            return list(self._lags[projection])

    def lag_percentile(self, projection: str, fraction: float) -> float | None:
        """A percentile (0.5, 0.95, ...) of ``projection``'s recent lag in seconds."""
        return percentile(self.lags(projection), fraction)
