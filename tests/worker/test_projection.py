"""The projection runner on real SQLite and PostgreSQL stores: a batch of events in one
transaction, duplicates, a failing event taken out, a failure no event owns, batch handlers."""

from __future__ import annotations

from typing import Any

import psycopg
from worker_testkit import (
    BatchLedgerProjection,
    LedgerProjection,
    OrderCreated,
    ledger,
)

from claimcheck_bus.worker import EventContext, Middleware, PostgresProjectionStore, ProjectionStore
from claimcheck_bus.worker.projection import (
    BlockedBehindError,
    Pending,
    ProjectionRunner,
    handles,
)


def context(message_id: str) -> EventContext:
    return EventContext(message_id, "OrderCreated", 1, "orders", 0, None)


def pending(projection: LedgerProjection, message_id: str, amount: int) -> Pending:
    return Pending(
        projection.on_created,
        OrderCreated(OrderId=f"o-{message_id}", Amount=amount),
        context(message_id),
        batch=isinstance(projection, BatchLedgerProjection),
    )


def started(projection: LedgerProjection, store: ProjectionStore) -> ProjectionRunner:
    runner = ProjectionRunner(projection, store)
    runner.start()
    return runner


def test_a_batch_applies_each_message_once(store: ProjectionStore) -> None:
    projection = LedgerProjection()
    runner = started(projection, store)
    assert runner.apply(projection.on_created, OrderCreated(OrderId="o-0", Amount=0), context("0"))
    outcomes = runner.apply_batch(
        [
            pending(projection, "1", 1),
            pending(projection, "1", 1),  # the same message twice in one batch
            pending(projection, "2", 2),
            pending(projection, "0", 0),  # applied before
        ]
    )
    assert outcomes == [True, False, True, False]
    assert [row[:2] for row in ledger(store)] == [("o-0", 0), ("o-1", 1), ("o-2", 2)]
    assert store.processed("ledger") == 3


def test_a_failing_event_is_taken_out_and_the_rest_commit(store: ProjectionStore) -> None:
    projection = LedgerProjection()
    runner = started(projection, store)

    def refuses(event: OrderCreated, db: Any, context: EventContext) -> None:
        projection.on_created(event, db, context)  # written, then rolled back
        raise TimeoutError("read model busy")

    batch = [pending(projection, str(i), i) for i in range(5)]
    batch[2] = Pending(refuses, OrderCreated(OrderId="o-2", Amount=2), context("2"))
    outcomes = runner.apply_batch(batch)
    assert outcomes[:2] == [True, True]
    assert outcomes[3:] == [True, True]
    assert isinstance(outcomes[2], TimeoutError)
    assert [row[0] for row in ledger(store)] == ["o-0", "o-1", "o-3", "o-4"]
    assert store.processed("ledger") == 4
    # Not in the inbox: its redelivery applies it.
    assert runner.apply_batch([pending(projection, "2", 2)]) == [True]


def test_behind_a_failed_event_its_session_waits_and_other_sessions_commit(
    store: ProjectionStore,
) -> None:
    projection = LedgerProjection()
    runner = started(projection, store)

    def refuses(event: OrderCreated, db: Any, context: EventContext) -> None:
        raise TimeoutError("read model busy")

    def in_session(message_id: str, session: str, handler: Any = None) -> Pending:
        return Pending(
            handler or projection.on_created,
            OrderCreated(OrderId=f"o-{message_id}", Amount=1),
            context(message_id),
            chain=session,
        )

    outcomes = runner.apply_batch(
        [
            in_session("a1", "a"),
            in_session("b1", "b"),
            in_session("a2", "a", refuses),
            in_session("b2", "b"),
            in_session("a3", "a"),
            in_session("c1", "c"),
        ]
    )
    assert outcomes[:2] == [True, True]
    assert isinstance(outcomes[2], TimeoutError)
    assert outcomes[3] is True
    assert isinstance(outcomes[4], BlockedBehindError)
    assert outcomes[5] is True
    assert sorted(row[0] for row in ledger(store)) == ["o-a1", "o-b1", "o-b2", "o-c1"]


def test_a_failure_no_event_owns_keeps_each_session_in_order(store: ProjectionStore) -> None:
    projection = LedgerProjection()
    runner = started(projection, store)
    real_claim_batch = store.claim_batch

    def fails(db: Any, name: str, ids: Any, now: Any) -> set[str]:
        if len(ids) > 1 or ids == ["s2"]:  # a whole batch fails, and s2 alone too
            raise ConnectionError("inbox insert failed")
        return real_claim_batch(db, name, ids, now)

    store.claim_batch = fails  # type: ignore[method-assign]
    batch = [
        Pending(projection.on_created, OrderCreated(OrderId=i, Amount=1), context(i), chain="s")
        for i in ("s1", "s2", "s3")
    ]
    outcomes = runner.apply_batch(batch)
    assert outcomes[0] is True
    assert isinstance(outcomes[1], ConnectionError)
    assert isinstance(outcomes[2], BlockedBehindError)
    assert [row[0] for row in ledger(store)] == ["s1"]


def test_a_failing_before_commit_hook_belongs_to_its_event(store: ProjectionStore) -> None:
    class RefuseSecond(Middleware):
        def before_commit(self, context: EventContext, projection: str) -> None:
            if context.message_id == "2":
                raise RuntimeError("audit log full")

    projection = LedgerProjection()
    runner = started(projection, store)
    outcomes = runner.apply_batch(
        [pending(projection, str(i), i) for i in range(1, 4)], [RefuseSecond()]
    )
    assert outcomes[0] is True
    assert outcomes[2] is True
    assert isinstance(outcomes[1], RuntimeError)
    assert [row[0] for row in ledger(store)] == ["o-1", "o-3"]


def test_a_failure_no_event_owns_retries_each_event_alone(store: ProjectionStore) -> None:
    projection = LedgerProjection()
    runner = started(projection, store)
    real_claim_batch = store.claim_batch
    batches: list[list[str]] = []

    def fails_for_several(db: Any, name: str, ids: Any, now: Any) -> set[str]:
        batches.append(list(ids))
        if len(ids) > 1:  # the injected fault: only a whole batch fails
            raise ConnectionError("inbox insert failed")
        return real_claim_batch(db, name, ids, now)

    store.claim_batch = fails_for_several  # type: ignore[method-assign]
    outcomes = runner.apply_batch([pending(projection, str(i), i) for i in range(3)])
    assert outcomes == [True, True, True]
    assert batches == [["0", "1", "2"], ["0"], ["1"], ["2"]]
    assert len(ledger(store)) == 3


def test_a_batch_handler_takes_consecutive_events_of_its_type(store: ProjectionStore) -> None:
    class Mixed(BatchLedgerProjection):
        def __init__(self) -> None:
            super().__init__()
            self.shipped: list[str] = []

        @handles(OrderCreated, event_type="OrderShipped")
        def on_shipped(self, event: OrderCreated, db: Any, context: EventContext) -> None:
            self.shipped.append(event.OrderId)

    projection = Mixed()
    runner = started(projection, store)
    shipped = Pending(projection.on_shipped, OrderCreated(OrderId="s", Amount=0), context("s"))
    outcomes = runner.apply_batch(
        [
            pending(projection, "1", 1),
            pending(projection, "2", 2),
            shipped,
            pending(projection, "3", 3),
            pending(projection, "1", 1),  # a duplicate is not handed to the handler
        ]
    )
    assert outcomes == [True, True, True, True, False]
    assert projection.calls == [["o-1", "o-2"], ["o-3"]]
    assert projection.shipped == ["s"]
    assert [row[0] for row in ledger(store)] == ["o-1", "o-2", "o-3"]


def test_a_failing_batch_handler_finds_the_event_at_fault(store: ProjectionStore) -> None:
    projection = BatchLedgerProjection()
    runner = started(projection, store)
    outcomes = runner.apply_batch(
        [pending(projection, "1", 1), pending(projection, "2", -2), pending(projection, "3", 3)]
    )
    assert outcomes[0] is True
    assert outcomes[2] is True
    assert isinstance(outcomes[1], ValueError)
    # The whole batch first, then each event alone.
    assert projection.calls == [["o-1", "o-2", "o-3"], ["o-1"], ["o-2"], ["o-3"]]
    assert [row[0] for row in ledger(store)] == ["o-1", "o-3"]
    assert store.processed("ledger") == 2


def test_a_pipelined_store_finds_the_event_at_fault(
    pipelined_store: PostgresProjectionStore,
) -> None:
    """In pipeline mode a bad statement raises at the next fetch or the commit, here in the
    next event's handler: the runner cannot tell whose it was, so it applies each event
    alone, and only the one at fault fails."""
    projection = LedgerProjection()
    runner = started(projection, pipelined_store)
    calls: list[str] = []

    def counts_then_writes(event: OrderCreated, db: Any, context: EventContext) -> None:
        calls.append(context.message_id)
        db.execute("SELECT COUNT(*) FROM ledger").fetchone()  # waits for what went before
        projection.on_created(event, db, context)
        if context.message_id == "2":
            db.execute("INSERT INTO ledger (order_id) VALUES ('no amount')")  # NOT NULL

    batch = [
        Pending(counts_then_writes, OrderCreated(OrderId=f"o-{i}", Amount=i), context(str(i)))
        for i in range(4)
    ]
    outcomes = runner.apply_batch(batch)
    assert outcomes[:2] == [True, True]
    assert outcomes[3] is True
    assert isinstance(outcomes[2], psycopg.errors.NotNullViolation)
    assert calls == ["0", "1", "2", "3", "0", "1", "2", "3"]  # together, then each alone
    assert [row[0] for row in ledger(pipelined_store)] == ["o-0", "o-1", "o-3"]
    assert pipelined_store.processed("ledger") == 3
    again = runner.apply_batch(batch)  # the batch redelivered: only the bad event runs
    assert [again[0], again[1], again[3]] == [False, False, False]
    assert isinstance(again[2], psycopg.errors.NotNullViolation)
