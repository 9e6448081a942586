"""Projections: read models fed by events, applied exactly once through an inbox.

The runner inserts (projection name, message id) into the store's inbox in the same
transaction as the handler's writes. A redelivered or duplicate message finds its row and is
skipped; a crash before the commit leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, TypeVar

from claimcheck_bus.worker.context import EventContext
from claimcheck_bus.worker.dispatch import Upcaster, event_type_of, event_version_of
from claimcheck_bus.worker.middleware import Middleware
from claimcheck_bus.worker.stores.base import ProjectionStore

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__claimcheck_handles__"


@dataclass(frozen=True)
class Handles:
    """What one ``@handles`` declares: the wire event type, its version and its class."""

    event_type: str
    version: int
    event_class: type[Any]


def handles(
    event_class: type[Any], *, version: int | None = None, event_type: str | None = None
) -> Callable[[F], F]:
    """Mark a method as the handler of ``event_class`` events.

    ``event_type`` defaults to what ``publish`` writes (``__event_type__`` or the class name);
    ``version`` to the class's ``__event_version__`` (or 1). Older versions reach the handler
    through the projection's upcasters.
    """
    declared = Handles(
        event_type_of(event_class, event_type), event_version_of(event_class, version), event_class
    )

    def mark(function: F) -> F:
        marks = [*getattr(function, _MARK, ()), declared]
        setattr(function, _MARK, marks)
        return function

    return mark


def declared_handlers(target: object) -> list[tuple[Handles, Callable[..., Any]]]:
    """The ``@handles`` methods of an object, bound, sorted by name.

    A subclass overriding a handler without repeating ``@handles`` keeps the declaration:
    marks are looked up through the class hierarchy, the method bound is the override.
    """
    found = []
    names = sorted({name for cls in type(target).__mro__ for name in vars(cls)})
    for name in names:
        marks: list[Handles] = []
        for cls in type(target).__mro__:
            member = vars(cls).get(name)
            if member is not None and getattr(member, _MARK, None):
                marks = list(getattr(member, _MARK))
                break
        for declared in marks:
            found.append((declared, getattr(target, name)))
    return found


class Projection:
    """A read model: ``@handles`` methods write to ``db`` inside the runner's transaction.

    Set ``name`` (part of the inbox key, so two projections never skip each other's work);
    override :meth:`setup` to create tables and :meth:`reset` to empty them for a rebuild.
    ``upcasters[(event_type, n)]`` turns version n of an event's JSON into version n + 1.
    """

    name: ClassVar[str] = ""
    upcasters: ClassVar[Mapping[tuple[str, int], Upcaster]] = {}

    def setup(self, db: Any) -> None:
        """Create this projection's tables if they do not exist (called once at start)."""

    def reset(self, db: Any) -> None:
        """Empty this projection's tables (the runner also clears its inbox rows)."""


class ProjectionRunner:
    """Applies events to one projection in one store, exactly once per message id."""

    def __init__(self, projection: Projection, store: ProjectionStore) -> None:
        name = projection.name or type(projection).__name__
        if len(name) > 200:
            raise ValueError(f"projection name {name[:40]!r}... is too long (200 characters max)")
        self.projection = projection
        self.name = name
        self.store = store

    def start(self) -> None:
        """Open the store and let the projection create its tables."""
        self.store.open()
        with self.store.transaction() as db:
            self.store.lock_for_setup(db)  # several workers may start at once
            self.projection.setup(db)

    def apply(
        self,
        handler: Callable[..., Any],
        event: Any,
        context: EventContext,
        middleware: Sequence[Middleware] = (),
        now: Callable[[], datetime] | None = None,
    ) -> bool:
        """Run ``handler`` and record the message in the inbox, in one transaction.

        Returns ``False`` (and changes nothing) when this projection already applied it.
        """
        clock = now or _utc_now
        with self.store.transaction() as db:
            if not self.store.claim(db, self.name, context.message_id, clock()):
                return False
            handler(event, db, context)
            for hook in middleware:
                hook.before_commit(context, self.name)
        return True

    def reset(self) -> None:
        """Truncate the projection's tables and its inbox rows, for a rebuild from replay."""
        self.store.open()
        with self.store.transaction() as db:
            self.projection.reset(db)
            self.store.clear_inbox(db, self.name)


def reset_projection(projection: Projection, store: ProjectionStore) -> None:
    """Truncate ``projection``'s tables and inbox rows in ``store`` (then replay to rebuild)."""
    ProjectionRunner(projection, store).reset()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
