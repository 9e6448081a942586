"""The worker on session entities, against the emulator: each session's events applied in the
order they were sent, several sessions at once, a failure holding up its own session only,
and sessions given back when idle or when the worker stops."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from pydantic import BaseModel
from worker_testkit import LedgerProjection, fast_worker, placeholder, running, send_raw

from claimcheck_bus import AsyncClaimCheckBus
from claimcheck_bus.settings import BusSettings
from claimcheck_bus.testing.polling import wait_for_async
from claimcheck_bus.worker import (
    EventContext,
    MetricsMiddleware,
    Middleware,
    Projection,
    SQLiteProjectionStore,
    Worker,
    handles,
)


class Step(BaseModel):
    """One step of an aggregate, numbered from 1 within its session."""

    Aggregate: str
    Seq: int
    Blob: str = ""


class OrderedProjection(Projection):
    """Applies each aggregate's steps only in sequence: a step that is not the last applied
    plus one is refused and noted as a violation (there must be none)."""

    name = "ordered"

    def __init__(self, fail: Callable[[Step, EventContext], bool] | None = None) -> None:
        self.violations: list[tuple[str, int, int]] = []
        self.fail = fail or (lambda step, context: False)
        self.deliveries: dict[tuple[str, int], list[int]] = defaultdict(list)
        self._lock = threading.Lock()

    def setup(self, db: Any) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS steps (aggregate TEXT PRIMARY KEY, last INTEGER)")

    @handles(Step)
    def on_step(self, step: Step, db: Any, context: EventContext) -> None:
        with self._lock:
            self.deliveries[(step.Aggregate, step.Seq)].append(context.delivery_count)
        if self.fail(step, context):
            raise ConnectionError(f"read model unavailable for {step.Aggregate} #{step.Seq}")
        p = placeholder(db)
        row = db.execute(f"SELECT last FROM steps WHERE aggregate = {p}", (step.Aggregate,))  # noqa: S608
        found = row.fetchone()
        last = found[0] if found else 0
        if step.Seq != last + 1:
            with self._lock:
                self.violations.append((step.Aggregate, last, step.Seq))
            raise AssertionError(f"{step.Aggregate}: step {step.Seq} after {last}")
        db.execute(
            f"INSERT INTO steps (aggregate, last) VALUES ({p}, {p}) "  # noqa: S608
            "ON CONFLICT (aggregate) DO UPDATE SET last = excluded.last",
            (step.Aggregate, step.Seq),
        )


class SessionWatch(Middleware):
    """Notes the sessions the worker holds, and the most it held at once."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.most = 0
        self.started: list[str] = []

    def session_started(self, entity: str, session_id: str) -> None:
        self.held.add(session_id)
        self.started.append(session_id)
        self.most = max(self.most, len(self.held))

    def session_ended(self, entity: str, session_id: str) -> None:
        self.held.discard(session_id)


def progress(store: SQLiteProjectionStore) -> dict[str, int]:
    try:
        return dict(store.query("SELECT aggregate, last FROM steps"))
    except Exception:  # the table is created when the worker starts
        return {}


async def publish_interleaved(
    settings: BusSettings, queue: str, sessions: list[str], steps: int, big_every: int = 0
) -> None:
    """Publish ``steps`` steps of each session, round robin across sessions; every
    ``big_every``-th event large enough to be claim-checked."""
    async with AsyncClaimCheckBus(settings) as bus:
        number = 0
        for seq in range(1, steps + 1):
            for aggregate in sessions:
                number += 1
                blob = "x" * 300_000 if big_every and number % big_every == 0 else ""
                await bus.publish(
                    Step(Aggregate=aggregate, Seq=seq, Blob=blob), queue=queue, session_id=aggregate
                )


def session_worker(
    settings: BusSettings, queue: str, projection: Projection, tmp_path: Path, **options: Any
) -> tuple[Worker, SQLiteProjectionStore]:
    store = SQLiteProjectionStore(tmp_path / "read.db")
    worker = fast_worker(settings, **options)
    worker.add_projection(projection, store=store, queue=queue, sessions=True)
    return worker, store


async def test_sessions_are_applied_in_order_several_at_once(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    queue = make_queue(sessions=True)
    sessions = [f"order-{n}" for n in range(6)]
    await publish_interleaved(bus_settings, queue, sessions, steps=12, big_every=10)
    projection = OrderedProjection()
    worker, store = session_worker(
        bus_settings, queue, projection, tmp_path, max_concurrent_sessions=4, max_batch_size=5
    )
    watch, metrics = SessionWatch(), MetricsMiddleware(use_otel=False)
    worker.use(watch)
    worker.use(metrics)
    async with running(worker):
        await wait_for_async(
            lambda: _value(progress(store) == dict.fromkeys(sessions, 12)),
            timeout=60,
            what="every session applied to its last step",
        )
        assert metrics.sessions_active[queue] >= 1
        assert set(metrics.session_lags(queue)) <= set(sessions)
    assert projection.violations == []
    assert all(counts == [0] for counts in projection.deliveries.values())
    assert watch.most > 1  # sessions were served side by side
    assert watch.held == set()  # and all given back at shutdown
    assert metrics.sessions_active[queue] == 0
    assert metrics.outcomes == {"completed": 6 * 12}


async def test_a_failure_holds_up_its_own_session_only(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    queue = make_queue(sessions=True)
    release = threading.Event()

    def stuck(step: Step, context: EventContext) -> bool:
        return step.Aggregate == "stuck" and step.Seq == 3 and not release.is_set()

    await publish_interleaved(bus_settings, queue, ["stuck", "free"], steps=8)
    projection = OrderedProjection(fail=stuck)
    worker, store = session_worker(bus_settings, queue, projection, tmp_path)
    async with running(worker):
        await wait_for_async(
            lambda: _value(progress(store).get("free") == 8),
            timeout=30,
            what="the other session applied in full",
        )
        await wait_for_async(
            lambda: _value(len(projection.deliveries[("stuck", 3)]) >= 3),
            timeout=30,
            what="the failing step retried",
        )
        assert progress(store)["stuck"] == 2  # nothing behind the failure was applied
        release.set()
        await wait_for_async(
            lambda: _value(progress(store).get("stuck") == 8),
            timeout=30,
            what="the session resumed in order",
        )
    assert projection.violations == []
    retried = projection.deliveries[("stuck", 3)]
    assert retried[:3] == [0, 1, 2]  # abandoned after each backoff: delivery counts go up
    # The steps held behind it were neither handled nor abandoned while it failed.
    assert all(projection.deliveries[("stuck", n)] == [0] for n in range(4, 9))


async def test_a_poison_message_is_dead_lettered_and_its_session_goes_on(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    queue = make_queue(sessions=True)
    good = [Step(Aggregate="a", Seq=n).model_dump_json().encode() for n in (1, 2)]
    bodies = [good[0], b"{not json", good[1]]
    await send_raw(
        bus_settings,
        queue,
        [
            ServiceBusMessage(body, session_id="a", subject="Step", content_type="application/json")
            for body in bodies
        ],
    )
    projection = OrderedProjection()
    worker, store = session_worker(bus_settings, queue, projection, tmp_path)
    metrics = MetricsMiddleware(use_otel=False)
    worker.use(metrics)
    async with running(worker):
        await wait_for_async(
            lambda: _value(progress(store).get("a") == 2), timeout=30, what="both good steps"
        )
        await wait_for_async(
            lambda: _value(metrics.outcomes.get("dead_lettered") == 1),
            timeout=10,
            what="the poison message dead-lettered",
        )
    async with AsyncClaimCheckBus(bus_settings) as bus:
        [dead] = await bus.receive(bytes, queue=queue, dead_letter=True, max_wait=5, prefetch=False)
        assert dead.message.dead_letter_reason == "UndecodableEvent"
    assert projection.violations == []


async def test_an_idle_session_is_let_go_so_others_get_a_turn(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    queue = make_queue(sessions=True)
    await publish_interleaved(bus_settings, queue, ["first", "second", "third"], steps=3)
    projection = OrderedProjection()
    worker, store = session_worker(
        bus_settings, queue, projection, tmp_path, max_concurrent_sessions=1
    )
    watch = SessionWatch()
    worker.use(watch)
    async with running(worker):
        await wait_for_async(
            lambda: _value(progress(store) == {"first": 3, "second": 3, "third": 3}),
            timeout=30,
            what="one slot serving three sessions in turn",
        )
    assert watch.most == 1
    assert sorted(set(watch.started)) == ["first", "second", "third"]


async def test_stopping_gives_the_sessions_back_at_once(
    bus_settings: BusSettings, make_queue: Callable[..., str], tmp_path: Path
) -> None:
    queue = make_queue(lock=30.0, sessions=True)
    await publish_interleaved(bus_settings, queue, ["kept"], steps=1)
    projection = OrderedProjection()
    worker, store = session_worker(
        bus_settings, queue, projection, tmp_path, session_idle_timeout=60.0
    )
    watch = SessionWatch()
    worker.use(watch)
    async with running(worker):
        await wait_for_async(
            lambda: _value(progress(store).get("kept") == 1), timeout=30, what="the step"
        )
        assert watch.held == {"kept"}  # idle, but within its idle timeout: still held
    await publish_interleaved(bus_settings, queue, ["kept"], steps=1)
    async with AsyncClaimCheckBus(bus_settings) as bus:
        # Well within the 30 s session lock: the worker released it when it stopped.
        async with bus.accept_session(queue=queue, session_id="kept", max_wait=5) as session:
            [step] = await session.receive(Step, max_wait=5)
            assert step.data.Seq == 1
            await step.complete()


def test_an_entity_requires_sessions_for_all_its_handlers_or_none(
    bus_settings: BusSettings, tmp_path: Path
) -> None:
    worker = Worker(bus_settings)
    store = SQLiteProjectionStore(tmp_path / "read.db")
    worker.add_projection(OrderedProjection(), store=store, queue="orders", sessions=True)
    with pytest.raises(ValueError, match="sessions"):
        worker.add_projection(LedgerProjection(), store=store, queue="orders")
    with pytest.raises(ValueError, match="max_concurrent_sessions"):
        Worker(bus_settings, max_concurrent_sessions=0)


async def _value(value: bool) -> bool:
    return value
