"""Receives and settlements taking turns on one link (pure asyncio, no I/O)."""

from __future__ import annotations

import asyncio

from claimcheck_bus.worker.link_turns import LinkTurns


async def one_loop_pass() -> None:
    """asyncio runs ready tasks in order: after one pass, each task created before this call
    has run up to its first wait (a yield, not a timed sleep)."""
    await asyncio.sleep(0)


async def test_settlements_share_the_link_and_wait_for_a_receive() -> None:
    turns = LinkTurns()
    await turns.begin_settling()
    await turns.begin_settling()  # settlements never wait for each other
    receive = asyncio.create_task(turns.begin_receiving())
    await one_loop_pass()
    assert not receive.done()
    turns.end_settling()
    await one_loop_pass()
    assert not receive.done()  # one settlement is still running
    turns.end_settling()
    await asyncio.wait_for(receive, 1)

    settle = asyncio.create_task(turns.begin_settling())
    await one_loop_pass()
    assert not settle.done()  # the receive has the link
    turns.end_receiving()
    await asyncio.wait_for(settle, 1)
    turns.end_settling()


async def test_a_receive_waits_for_settlements_queued_before_it() -> None:
    turns = LinkTurns()
    await turns.begin_receiving()
    waiting = asyncio.create_task(turns.begin_settling())
    await one_loop_pass()
    second_receive = asyncio.create_task(turns.begin_receiving())
    turns.end_receiving()
    await asyncio.wait_for(waiting, 1)
    await one_loop_pass()
    assert not second_receive.done()  # the settlement queued first goes first
    turns.end_settling()
    await asyncio.wait_for(second_receive, 1)
    turns.end_receiving()


async def test_a_cancelled_settlement_gives_its_turn_back() -> None:
    turns = LinkTurns()
    await turns.begin_receiving()
    waiting = asyncio.create_task(turns.begin_settling())
    await one_loop_pass()
    waiting.cancel()
    turns.end_receiving()
    await asyncio.gather(waiting, return_exceptions=True)
    await asyncio.wait_for(turns.begin_receiving(), 1)  # no settlement is left counted
