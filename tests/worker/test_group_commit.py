"""Group commit on real stores: what arrives while a batch is in its transaction forms the
next batch, each event gets its own outcome, and PostgreSQL runs batches side by side."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from worker_testkit import LedgerProjection, OrderCreated, ledger

from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import EventContext, Middleware, ProjectionStore
from claimcheck_bus.worker.group_commit import GroupCommit, batch_cut
from claimcheck_bus.worker.projection import Pending, ProjectionRunner


class RecordingRunner(ProjectionRunner):
    """The real runner, noting the size of each batch as its transaction starts."""

    sizes: list[int]

    def apply_batch(
        self, batch: Sequence[Pending], middleware: Sequence[Middleware] = (), now: Any = None
    ) -> list[bool | Exception]:
        self.sizes.append(len(batch))
        return super().apply_batch(batch, middleware, now)


class GatedLedger(LedgerProjection):
    """The ledger; the event of order ``o-0`` waits for ``gate`` inside its transaction."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
        if event.OrderId == "o-0":
            assert self.gate.wait(20), "the test never opened the gate"
        super().on_created(event, db, context)


def pending(projection: LedgerProjection, number: int, amount: int | None = None) -> Pending:
    return Pending(
        projection.on_created,
        OrderCreated(OrderId=f"o-{number}", Amount=number if amount is None else amount),
        EventContext(f"m-{number}", "OrderCreated", 1, "orders", 0, None),
    )


def committer(
    projection: LedgerProjection, store: ProjectionStore, **options: Any
) -> tuple[GroupCommit, RecordingRunner]:
    runner = RecordingRunner(projection, store)
    runner.sizes = []
    runner.start()

    async def in_thread(function: Any, *args: Any) -> Any:
        return await asyncio.to_thread(function, *args)

    return GroupCommit(runner, in_thread, [], **options), runner


async def test_events_arriving_during_a_transaction_form_the_next_batch(
    store: ProjectionStore,
) -> None:
    projection = GatedLedger()
    commit, runner = committer(projection, store, max_batch_size=3)
    first = asyncio.create_task(commit.apply([pending(projection, 0)]))
    await wait_for_async(lambda: _value(runner.sizes == [1]), what="the first batch started")
    rest = [asyncio.create_task(commit.apply([pending(projection, n)])) for n in range(1, 6)]
    # Runs after each new task reached its wait: every one is queued behind the first batch.
    asyncio.get_running_loop().call_soon(projection.gate.set)
    assert await asyncio.gather(first, *rest) == [[True]] * 6
    assert runner.sizes == [1, 3, 2]
    assert len(ledger(store)) == 6


async def test_each_event_gets_its_own_outcome(store: ProjectionStore) -> None:
    class RefuseNegative(GatedLedger):
        def on_created(self, event: OrderCreated, db: Any, context: EventContext) -> None:
            super().on_created(event, db, context)
            if event.Amount < 0:
                raise ValueError("negative amount")

    refusing = RefuseNegative()
    refusing.gate.set()
    commit, _ = committer(refusing, store, max_batch_size=10)
    together = asyncio.create_task(
        commit.apply([pending(refusing, n, -1 if n == 2 else n) for n in range(4)])
    )
    cancelled = asyncio.create_task(commit.apply([pending(refusing, 9)]))
    cancelled.cancel()  # its caller went away: the others are unaffected
    outcomes = await together
    assert outcomes[:2] == [True, True]
    assert outcomes[3] is True
    assert isinstance(outcomes[2], ValueError)
    assert sorted(row[0] for row in ledger(store)) == ["o-0", "o-1", "o-3"]


async def test_a_group_larger_than_a_batch_is_split(store: ProjectionStore) -> None:
    projection = LedgerProjection()
    commit, runner = committer(projection, store, max_batch_size=4)
    outcomes = await commit.apply([pending(projection, n) for n in range(10)])
    assert outcomes == [True] * 10
    assert sorted(runner.sizes) == [2, 4, 4]
    assert len(ledger(store)) == 10


async def test_a_group_kept_together_is_never_split_across_batches(
    store: ProjectionStore,
) -> None:
    projection = GatedLedger()
    commit, runner = committer(projection, store, max_batch_size=4)
    first = asyncio.create_task(commit.apply([pending(projection, 0)]))
    await wait_for_async(lambda: _value(runner.sizes == [1]), what="the first batch started")
    singles = asyncio.create_task(commit.apply([pending(projection, n) for n in (1, 2)]))
    session = asyncio.create_task(
        commit.apply([pending(projection, n) for n in (3, 4, 5)], together=True)
    )
    asyncio.get_running_loop().call_soon(projection.gate.set)
    assert await asyncio.gather(first, singles, session) == [[True], [True] * 2, [True] * 3]
    assert runner.sizes == [1, 2, 3]  # not 4 then 1: the session's events commit together


def test_batch_cut() -> None:
    a, b = object(), object()
    assert batch_cut([None] * 5, 3) == 3
    assert batch_cut([None] * 2, 3) == 2
    assert batch_cut([None, a, a, a], 2) == 1  # a goes whole into the next batch
    assert batch_cut([a, a, a, None], 2) == 3  # a alone is larger than a batch
    assert batch_cut([None, None, a, a], 3) == 2
    assert batch_cut([a, a, b, b], 3) == 2
    assert batch_cut([a, a, None, b], 3) == 3


@pytest.mark.parametrize("store_location", ["postgres"], indirect=True)
async def test_postgres_runs_batches_side_by_side(store: ProjectionStore) -> None:
    projection = GatedLedger()
    commit, runner = committer(projection, store, max_batch_size=10, concurrency=2)
    first = asyncio.create_task(commit.apply([pending(projection, 0)]))
    await wait_for_async(lambda: _value(runner.sizes == [1]), what="the first batch started")
    # The second batch commits while the first is still in its transaction.
    assert await asyncio.wait_for(commit.apply([pending(projection, 1)]), 20) == [True]
    assert not first.done()
    projection.gate.set()
    assert await first == [True]
    assert runner.sizes == [1, 1]


async def _value(value: bool) -> bool:
    return value
