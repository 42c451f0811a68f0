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
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from keyspan.streams import AsyncClient, Client, ClientClosed, Entry
from keyspan.v1 import kv_pb2, kv_pb2_grpc
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
    for it in iterators:  # nothing more, not even what was fetched before close()
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


def scan_endings(server: ThreadedServer) -> dict[str, float]:
    """How many Scan streams the server has ended, by status code."""
    registry = server.server.observability.registry
    assert registry is not None
    return {
        sample.labels["grpc_code"]: sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "keyspan_rpc_handled_total" and sample.labels["grpc_method"] == "Scan"
    }


def test_a_scan_whose_credit_grant_crosses_its_done_is_read_on_one_stream_that_ends_ok(
    tmp_path: Path,
) -> None:
    """A grant still on its way when the server sent done failed on the client (grpc.aio
    then drops the responses not read yet), so a scan read faster by the server than by
    its consumer read its end again on a second stream; once in 25-160 `keyspan dump`s
    through a gateway the client's next read never returned (neither the last batch nor
    the status arrived) and the dump hung. The client now asks the server to hold the
    stream after done (close_after_done) and closes it itself."""
    server = ThreadedServer(tmp_path / "kv", synchronous="NORMAL", metrics_address="127.0.0.1:0")
    try:
        with Client(server.address) as kv:
            for key in "abc":  # the first partition's entries, then an empty last batch
                kv.put(key, b"v")
            for _ in range(5):
                keys = []
                for entry in kv.scan():
                    time.sleep(0.05)  # the server sends done meanwhile; the grant comes after
                    keys.append(entry.key)
                assert keys == [b"a", b"b", b"c"]
        assert scan_endings(server) == {"OK": 5}  # one stream a scan, none cancelled
    finally:
        server.stop()


async def test_calls_on_a_closed_async_client_raise_client_closed_and_open_no_channel(
    loaded: ThreadedServer,
) -> None:
    """A closed AsyncClient's router opened a new channel for the next call, which then
    went through and left that channel open: a use after close looked like it worked."""
    kv = AsyncClient(loaded.address)
    assert (await kv.get("k00001")) is not None
    await kv.close()
    attempts = {
        "get": lambda: kv.get("k00001"),
        "put": lambda: kv.put("k", b"v"),
        "delete": lambda: kv.delete("k"),
        "patch": lambda: kv.patch("k", {"a": 1}),
        "stats": lambda: kv.stats(),
        "scan": lambda: anext(aiter(kv.scan())),
        "scan_ex": lambda: anext(aiter(kv.scan_ex())),
        "sweep": lambda: anext(aiter(kv.sweep())),
        "bulk_put": lambda: kv.bulk_put([("z", b"v")]),
        "bulk_put_ex": lambda: kv.bulk_put_ex([("z", b"v")]),
    }
    for name, attempt in attempts.items():
        with pytest.raises(ClientClosed, match="AsyncClient is closed"):
            await attempt()
        assert kv.router._channel is None, name  # type: ignore[attr-defined]
    await kv.close()  # idempotent
    assert await until_open_streams(loaded, 0) == 0
    with Client(loaded.address) as other:
        assert other.get("z") is None and other.get("k") is None  # nothing was written


async def test_an_async_scan_read_after_close_raises_client_closed(loaded: ThreadedServer) -> None:
    """grpc.aio raises CancelledError in a call whose channel closed; a scan read on after
    close() raised it bare, which asyncio takes for the task's own cancellation."""
    kv = AsyncClient(loaded.address)
    scan = aiter(kv.scan())
    assert (await anext(scan)).key == b"k00000"
    await kv.close()
    delivered = 1
    with pytest.raises(ClientClosed, match="closed during the call"):
        async for _ in scan:
            delivered += 1  # what had arrived before close() is still handed out
    assert 1 <= delivered < 3_000
    assert await until_open_streams(loaded, 0) == 0


class SlowGet(kv_pb2_grpc.KVServicer):
    """A KV server whose Get answers only when `release` is set."""

    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:
        self.started.set()
        await self.release.wait()
        return kv_pb2.GetResponse(found=False)


async def test_a_call_in_flight_when_the_async_client_closes_raises_client_closed() -> None:
    """Inside a TaskGroup a bare CancelledError from the call ended the task as cancelled
    and the group as if nothing had failed; ClientClosed reaches the group."""
    slow = SlowGet()
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(slow, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        kv = AsyncClient(f"127.0.0.1:{port}")
        with pytest.raises(ExceptionGroup) as group:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(kv.get("k"))
                await asyncio.wait_for(slow.started.wait(), 5)
                await kv.close()
        assert [type(e) for e in group.value.exceptions] == [ClientClosed]

        task = asyncio.create_task(AsyncClient(f"127.0.0.1:{port}").get("k"))
        await asyncio.sleep(0.2)
        task.cancel()  # a task really cancelled keeps its CancelledError
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        slow.release.set()
        await server.stop(0)


def test_a_blocking_call_in_flight_when_another_thread_closes_the_client_raises_client_closed() -> None:
    slow = SlowGet()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        kv_pb2_grpc.add_KVServicer_to_server(slow, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        kv = Client(f"127.0.0.1:{port}")
        closer = threading.Timer(0.3, kv.close)
        closer.start()
        with pytest.raises(ClientClosed):
            kv.get("k")
        closer.join()
        with pytest.raises(ClientClosed, match="Client is closed"):
            kv.get("k")
    finally:
        loop.call_soon_threadsafe(slow.release.set)
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


HELD_AT_EXIT = """
import sys
from keyspan.streams import Client

kv = Client(sys.argv[1])  # never closed
rows = kv.scan()  # read part-way and held in a global
print(next(rows).key.decode(), flush=True)
if sys.argv[2] == "raise":
    raise SystemExit("leaving on an error")
"""


@pytest.mark.parametrize("how", ["end of script", "raise"])
def test_a_process_holding_an_unclosed_client_and_a_scan_part_way_exits(
    loaded: ThreadedServer, how: str
) -> None:
    """The iterator closed itself at the interpreter's shutdown through the Client's loop
    thread, which had stopped for good: the process never exited."""
    result = subprocess.run(
        [sys.executable, "-c", HELD_AT_EXIT, loaded.address, how], capture_output=True, text=True, timeout=30
    )
    assert result.stdout == "k00000\n"
    assert result.returncode == (1 if how == "raise" else 0), result.stderr
    assert "Traceback" not in result.stderr


def test_a_client_dropped_unclosed_warns_and_gives_back_its_thread_and_files(loaded: ThreadedServer) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with Client(loaded.address) as kv:  # grpc's own files, opened once a process
        kv.get("k00001")
    threads, fds = threading.active_count(), open_fds()
    with pytest.warns(ResourceWarning, match=r"unclosed keyspan Client\('127\.0\.0\.1:\d+'\): close\(\) it"):
        for _ in range(5):
            kv = Client(loaded.address)
            assert kv.get("k00001") is not None
            del kv
            gc.collect()
    # Not more than before: the in-process server may still have been closing the first
    # client's connection when they were counted (on a busy machine, one fd fewer after).
    deadline = time.monotonic() + 5
    while (threading.active_count() > threads or open_fds() > fds) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads and open_fds() <= fds  # each kept 1 thread and 3 fds


def test_an_async_client_used_in_a_second_event_loop_says_so(loaded: ThreadedServer) -> None:
    kv = AsyncClient(loaded.address)

    async def get() -> Entry | None:
        return await kv.get("k00001")

    assert asyncio.run(get()) is not None
    with pytest.raises(RuntimeError, match=r"belongs to the event loop it was first used in \(closed\)"):
        asyncio.run(get())  # was "Event loop is closed", and a coroutine never awaited
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(kv.router.close())  # nothing else opened a channel
    finally:
        loop.close()


async def test_bulk_loads_in_flight_when_the_async_client_closes_end_with_client_closed(
    threaded_server: ThreadedServer,
) -> None:
    """A batch sent on a call that the closing channel never started waited for ever (2
    trials in 4 left a task pending), or ended with grpc.aio's InvalidStateError."""

    async def load_until_closed(kv: AsyncClient) -> str:
        try:
            while True:
                await kv.bulk_put_ex([(f"ab{i:05d}", b"v") for i in range(5_000)])
        except ClientClosed:
            return "ClientClosed"

    for trial in range(6):
        kv = AsyncClient(threaded_server.address)
        tasks = [asyncio.create_task(load_until_closed(kv)) for _ in range(2)]
        await asyncio.sleep(0.2 + 0.05 * trial)
        await kv.close()
        done, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        assert not pending, f"trial {trial}: a load still running after close"
        assert [t.result() for t in done] == ["ClientClosed", "ClientClosed"]
