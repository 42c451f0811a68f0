"""Closing a client ends every call it has open, quietly; leaving a scan ends its stream at once.

grpc.aio watches each call's end with a task of its own, woken a moment after the call is
cancelled. A blocking Client that stopped its loop before that logged asyncio's ERROR "Task
was destroyed but it is pending!" for it: a normal use looked like a fault.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from keyspan.streams import AsyncClient, Client, Entry
from tests.conftest import ThreadedServer

ROUNDS = 80


def asyncio_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    gc.collect()  # "Task was destroyed but it is pending!" comes from a Task's __del__
    return [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


def wait_for_open_streams(server: ThreadedServer, count: int, within_s: float = 2.0) -> int:
    """The server's open KV streams, once they are `count` (or when within_s has passed)."""
    deadline = time.monotonic() + within_s
    while server.server.streams.open != count and time.monotonic() < deadline:
        time.sleep(0.005)
    return server.server.streams.open


@pytest.fixture
def loaded(threaded_server: ThreadedServer) -> ThreadedServer:
    """A server with more entries than one scan batch holds."""
    with Client(threaded_server.address) as kv:
        kv.bulk_put((f"k{i:05d}", b"v" * 100) for i in range(3_000))
    return threaded_server


def break_out(kv: Client) -> None:
    for _ in kv.scan():
        break


def take_five(kv: Client) -> None:
    assert len(list(itertools.islice(kv.scan(), 5))) == 5


LEAVINGS: list[Callable[[Client], None]] = [break_out, take_five]
HOLDINGS: list[Callable[[Client], Iterator[Entry]]] = [lambda kv: kv.scan(), lambda kv: kv.scan_ex()]


def test_closing_a_client_after_leaving_a_scan_logs_no_pending_task(
    loaded: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    held = []
    for n in range(ROUNDS):
        with Client(loaded.address) as kv:
            if n % 2:
                LEAVINGS[n // 2 % 2](kv)
            else:  # still held as the client closes
                held.append(HOLDINGS[n // 2 % 2](kv))
                next(held[-1])
    held.clear()
    assert asyncio_errors(caplog) == []
    assert wait_for_open_streams(loaded, 0) == 0


@pytest.mark.parametrize("leave", LEAVINGS)
def test_leaving_a_scan_part_way_ends_its_stream_at_once(
    loaded: ThreadedServer, leave: Callable[[Client], None]
) -> None:
    with Client(loaded.address) as kv:
        leave(kv)
        assert wait_for_open_streams(loaded, 0) == 0  # not when the client closes
        it = kv.scan()
        next(it)
        assert wait_for_open_streams(loaded, 1) == 1
        del it
        assert wait_for_open_streams(loaded, 0) == 0
        assert kv.get("k00001") is not None


def test_closing_a_client_ends_the_streams_of_iterators_still_held(
    loaded: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    kv = Client(loaded.address)
    iterators = [make(kv) for make in HOLDINGS]
    for it in iterators:
        next(it)
    assert wait_for_open_streams(loaded, 2) == 2
    kv.close()
    assert wait_for_open_streams(loaded, 0) == 0
    for it in iterators:  # what was fetched before close() is still handed out
        with pytest.raises(RuntimeError, match="this keyspan Client is closed"):
            list(it)
    assert asyncio_errors(caplog) == []


COLLECTED_ON_THE_CLIENT_THREAD = """
import gc, os, sys, threading
from keyspan.streams import Client

kv = Client(sys.argv[1])
it = kv.scan()
next(it)
cycle = [it]
cycle.append(cycle)  # only the cycle collector frees it
del it, cycle
gc.disable()
worker = threading.Thread(target=kv.update, args=("k00001", lambda _: gc.collect() and b"x"))
worker.start()
worker.join(10)
if worker.is_alive():
    os._exit(3)  # the client's thread waits for itself; nothing can close it
kv.close()
"""


def test_an_iterator_collected_on_the_client_thread_is_closed_without_a_deadlock(
    loaded: ThreadedServer,
) -> None:
    """The garbage collector may close an iterator on any thread, the client's own too,
    where waiting for the client's loop used to wait forever. In a process of its own: a
    client stuck that way also held up the interpreter's exit."""
    result = subprocess.run(
        [sys.executable, "-c", COLLECTED_ON_THE_CLIENT_THREAD, loaded.address],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert wait_for_open_streams(loaded, 0) == 0


async def until_open_streams(server: ThreadedServer, count: int, within_s: float = 2.0) -> int:
    """wait_for_open_streams, letting the test's loop run meanwhile."""
    deadline = time.monotonic() + within_s
    while server.server.streams.open != count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    return server.server.streams.open


async def test_an_async_scan_left_part_way_ends_its_stream(
    loaded: ThreadedServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with AsyncClient(loaded.address) as kv:
        scan = kv.scan()
        async for _ in scan:
            break
        await scan.aclose()  # type: ignore[attr-defined]
        assert await until_open_streams(loaded, 0) == 0

        scan = kv.scan()
        async for _ in scan:
            break
        del scan  # asyncio closes a dropped async generator on its loop
        assert await until_open_streams(loaded, 0) == 0

        held = kv.scan()
        async for _ in held:
            break
        assert await until_open_streams(loaded, 1) == 1
    assert await until_open_streams(loaded, 0) == 0  # closing the client cancelled it
    assert asyncio_errors(caplog) == []


SMALL_SCANS = """
import asyncio, sys, time
from keyspan.streams import AsyncClient

async def main() -> None:
    async with AsyncClient(sys.argv[1]) as kv:
        before = len(asyncio.all_tasks())
        for _ in range(20):
            assert [e.key async for e in kv.scan()] == [b"a", b"b", b"c"]
        deadline = time.monotonic() + 2
        while len(asyncio.all_tasks()) > before and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        print(len(asyncio.all_tasks()) - before)

asyncio.run(main())
"""


def test_a_scan_whose_credit_grant_crosses_its_end_leaves_no_task_behind(
    threaded_server: ThreadedServer,
) -> None:
    """The server ends a small scan right after its last batch, while the client may be
    granting credits: grpc.aio then failed the write and left the call waiting in grpc's
    core, with a task of its own, for as long as the loop ran (about every other scan).
    In a process of its own: within this one the grant seldom crosses the end."""
    with Client(threaded_server.address) as kv:
        for key in "abc":  # the first partition's entries, then an empty last batch
            kv.put(key, b"v")
    result = subprocess.run(
        [sys.executable, "-c", SMALL_SCANS, threaded_server.address], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"0"  # tasks left waiting
