"""Which middleware hooks the worker calls: only those someone wrote."""

from __future__ import annotations

from claimcheck_bus.worker import LoggingMiddleware, MetricsMiddleware, Middleware
from claimcheck_bus.worker.middleware import HOOKS, overriding


class Counting(Middleware):
    def after_handle(self, *args: object) -> None:
        pass


class Inherits(Counting):
    """Overrides nothing itself, but its base class does."""


def test_only_middleware_overriding_a_hook_is_called_for_it() -> None:
    plain, counting, inherits = Middleware(), Counting(), Inherits()
    stack = [plain, counting, inherits]
    assert overriding(stack, "after_handle") == [counting, inherits]
    for hook in set(HOOKS) - {"after_handle"}:
        assert overriding(stack, hook) == []


def test_the_shipped_middleware_keep_their_hooks() -> None:
    logging, metrics = LoggingMiddleware(), MetricsMiddleware(use_otel=False)
    assert overriding([logging, metrics], "after_commit") == [logging, metrics]
    assert overriding([logging, metrics], "after_handle") == [logging, metrics]
    assert overriding([logging, metrics], "before_commit") == []
