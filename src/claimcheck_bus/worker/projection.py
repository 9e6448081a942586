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
    """What one ``@handles`` declares: the wire event type, its version, its class, and
    whether the handler takes a batch."""

    event_type: str
    version: int
    event_class: type[Any]
    batch: bool = False


def handles(
    event_class: type[Any],
    *,
    version: int | None = None,
    event_type: str | None = None,
    batch: bool = False,
) -> Callable[[F], F]:
    """Mark a method as the handler of ``event_class`` events.

    ``event_type`` defaults to what ``publish`` writes (``__event_type__`` or the class name);
    ``version`` to the class's ``__event_version__`` (or 1). Older versions reach the handler
    through the projection's upcasters.

    With ``batch=True`` the method takes ``(events, db, contexts)``: the lists of consecutive
    events of the type that one transaction applies, for one ``executemany`` instead of a
    statement per event. When it raises, each event is retried alone, to find the one at fault.
    """
    declared = Handles(
        event_type_of(event_class, event_type),
        event_version_of(event_class, version),
        event_class,
        batch,
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


@dataclass(frozen=True, slots=True)
class Pending:
    """One event waiting to be applied: the handler to call, the decoded event, its context."""

    handler: Callable[..., Any]
    event: Any
    context: EventContext
    batch: bool = False
    """The handler takes lists: ``handler(events, db, contexts)``."""
    chain: str | None = None
    """Events of one chain (a session) apply in order: once one fails, the later ones of its
    chain in the same batch are not applied (:class:`BlockedBehindError`)."""


class BlockedBehindError(Exception):
    """Not applied: an earlier event of its chain (session) failed, and order comes first."""

    def __init__(self, chain: str) -> None:
        super().__init__(f"an earlier event of session {chain!r} failed; not applied before it")
        self.chain = chain


class _EventFailed(Exception):
    """Inside a batch's transaction: the event at ``index`` raised ``error``."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


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
        [outcome] = self.apply_batch([Pending(handler, event, context)], middleware, now)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def apply_batch(
        self,
        batch: Sequence[Pending],
        middleware: Sequence[Middleware] = (),
        now: Callable[[], datetime] | None = None,
    ) -> list[bool | Exception]:
        """Apply ``batch`` in as few transactions as possible (one when nothing fails).

        Each event's outcome, in order: ``True`` applied, ``False`` already applied (a
        duplicate, also within the batch), or the exception its handler (or a
        ``before_commit`` hook) raised, with none of its writes kept. A failing event is
        taken out and the rest retried together; a failure no one event owns (the inbox
        insert, the commit, a batch handler) has each event retried alone, so one bad event
        never fails the others. Handlers must therefore expect to run again after a
        rollback, as they must for a redelivery.

        Events of a ``chain`` keep their order: behind one that failed, the later events of
        its chain are not applied (their outcome is a :class:`BlockedBehindError`).
        """
        clock = now or _utc_now
        outcomes: dict[int, bool | Exception] = {}
        remaining = list(range(len(batch)))
        while remaining:
            try:
                applied = self._transaction(batch, remaining, middleware, clock())
            except _EventFailed as failed:
                outcomes[failed.index] = failed.error
                remaining.remove(failed.index)
                chain = batch[failed.index].chain
                if chain is not None:
                    for index in [i for i in remaining if i > failed.index]:
                        if batch[index].chain == chain:
                            outcomes[index] = BlockedBehindError(chain)
                            remaining.remove(index)
                continue  # the others, together again
            except Exception as error:
                if len(remaining) == 1:
                    outcomes[remaining[0]] = error
                else:
                    failed_chains: set[str] = set()
                    for index in remaining:
                        chain = batch[index].chain
                        if chain is not None and chain in failed_chains:
                            outcomes[index] = BlockedBehindError(chain)
                            continue
                        [outcomes[index]] = self.apply_batch([batch[index]], middleware, now)
                        if chain is not None and isinstance(outcomes[index], Exception):
                            failed_chains.add(chain)
            else:
                outcomes.update((index, index in applied) for index in remaining)
            break
        return [outcomes[index] for index in range(len(batch))]

    def _transaction(
        self,
        batch: Sequence[Pending],
        indices: Sequence[int],
        middleware: Sequence[Middleware],
        when: datetime,
    ) -> set[int]:
        """One transaction applying ``batch[indices]``; the indices it applied (the others
        were applied before, or earlier in this batch)."""
        with self.store.transaction() as db:
            ids = [batch[index].context.message_id for index in indices]
            claimed = self.store.claim_batch(db, self.name, list(dict.fromkeys(ids)), when)
            fresh = []
            for index, message_id in zip(indices, ids, strict=True):
                if message_id in claimed:
                    claimed.discard(message_id)
                    fresh.append(index)
            for run in _runs(batch, fresh):
                first = batch[run[0]]
                try:
                    if first.batch:
                        first.handler(
                            [batch[i].event for i in run], db, [batch[i].context for i in run]
                        )
                    else:
                        first.handler(first.event, db, first.context)
                    for index in run:
                        for hook in middleware:
                            hook.before_commit(batch[index].context, self.name)
                except Exception as error:
                    if len(run) > 1 or self.store.defers_errors:
                        # A batch handler, or an error that may be an earlier event's
                        # statement surfacing: no one event is known to be at fault.
                        raise
                    raise _EventFailed(run[0], error) from error
        return set(fresh)

    def reset(self) -> None:
        """Truncate the projection's tables and its inbox rows, for a rebuild from replay."""
        self.store.open()
        with self.store.transaction() as db:
            self.projection.reset(db)
            self.store.clear_inbox(db, self.name)


def _runs(batch: Sequence[Pending], indices: Sequence[int]) -> list[list[int]]:
    """``indices`` in order, grouped into handler calls: consecutive events for the same batch
    handler together, every other event alone."""
    runs: list[list[int]] = []
    for index in indices:
        pending = batch[index]
        if runs and pending.batch:
            previous = batch[runs[-1][0]]
            if previous.batch and previous.handler == pending.handler:
                runs[-1].append(index)
                continue
        runs.append([index])
    return runs


def reset_projection(projection: Projection, store: ProjectionStore) -> None:
    """Truncate ``projection``'s tables and inbox rows in ``store`` (then replay to rebuild)."""
    ProjectionRunner(projection, store).reset()


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)
