"""The read pool: point reads inline on the loop while fast, on the read threads otherwise."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Put
from keyspan.storage.readers import ReadPool
from keyspan.storage.shard import Shard


@pytest.fixture
def pool() -> Iterator[ReadPool]:
    reads = ReadPool(1, inline_budget_s=0.005, inline_pause_s=60.0)
    yield reads
    reads.close()


def where(on_loop: bool) -> tuple[bool, int]:
    return on_loop, threading.get_ident()


async def test_a_fast_point_read_runs_on_the_loop_thread(pool: ReadPool) -> None:
    assert await pool.run_point(where) == (True, threading.get_ident())
    assert pool.inline_reads == 1


async def test_two_slow_reads_in_a_row_send_point_reads_to_the_threads(pool: ReadPool) -> None:
    def slow(on_loop: bool) -> tuple[bool, int]:
        time.sleep(0.01)
        return where(on_loop)

    assert (await pool.run_point(slow))[0]  # one slow read alone is forgiven (a GC pause, a preemption)
    assert (await pool.run_point(where))[0]
    assert (await pool.run_point(slow))[0]
    assert (await pool.run_point(slow))[0]
    on_loop, thread = await pool.run_point(where)  # paused: this one went to a read thread
    assert not on_loop and thread != threading.get_ident()
    assert pool.inline_pauses == 1


async def test_a_read_that_would_wait_on_a_lock_goes_to_a_thread(pool: ReadPool) -> None:
    def busy_on_loop(on_loop: bool) -> tuple[bool, int]:
        if on_loop:
            raise apsw.BusyError("database is locked")
        return where(on_loop)

    on_loop, thread = await pool.run_point(busy_on_loop)
    assert not on_loop and thread != threading.get_ident()
    assert (await pool.run_point(where))[0]  # a lock is not a slow disk: no pause


async def test_a_zero_budget_keeps_every_read_off_the_loop() -> None:
    reads = ReadPool(1, inline_budget_s=0)
    try:
        on_loop, thread = await reads.run_point(where)
        assert not on_loop and thread != threading.get_ident()
    finally:
        reads.close()


async def test_errors_of_an_inline_read_reach_the_caller(pool: ReadPool) -> None:
    def fails(on_loop: bool) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        await pool.run_point(fails)


def test_the_loops_connection_never_waits_on_a_lock(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        shard.apply_batch([Put(b"a", b"1")])
        quick, waiting = shard.read_connection(wait=False), shard.read_connection()
        assert quick is not waiting and quick is shard.read_connection(wait=False)
        assert quick.execute("PRAGMA busy_timeout").get == 0
        assert waiting.execute("PRAGMA busy_timeout").get > 0
        row = Shard.get(quick, b"a", 0)
        assert row is not None and row.value == b"1"
    finally:
        shard.close()


async def test_a_read_whose_caller_left_while_it_waited_is_not_run(pool: ReadPool) -> None:
    """A Scan its client left must not keep the read threads busy ahead of live reads."""
    release, ran = threading.Event(), []
    blocker = asyncio.ensure_future(pool.run(release.wait))  # holds the pool's one thread
    await asyncio.sleep(0.05)
    left = [asyncio.ensure_future(pool.run(lambda i=i: ran.append(i))) for i in range(5)]
    await asyncio.sleep(0)  # queued behind the blocker
    for task in left:
        task.cancel()
    await asyncio.sleep(0)
    live = asyncio.ensure_future(pool.run(lambda: ran.append("live") or "done"))
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.wait_for(live, 5) == "done"
    assert await blocker
    assert ran == ["live"]
