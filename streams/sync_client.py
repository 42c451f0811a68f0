"""Client: the blocking flavour, with the same methods as AsyncClient.

    with Client("127.0.0.1:7420") as kv:
        kv.put("user/ann", {"age": 41})
        print(kv.get("user/ann", json=True).value)

It runs one AsyncClient on a private event loop in a daemon thread, so the logic exists
once. Calls from any thread are safe and run one after another on that loop. Do not call
it from the event loop thread of an in-process grpc.aio *server*: the blocking wait
would stall the server (use AsyncClient there). Iterators (scan, scan_ex, sweep) fetch
a server batch at a time, so the thread hop is paid per batch, not per entry.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import os
import sys
import threading
import warnings
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from keyspan.streams import retry
from keyspan.streams.bulk_sender import DEFAULT_BATCH_BYTES, BulkItem, BulkPutResult
from keyspan.streams.client import DEFAULT_ADDRESS, DEFAULT_STREAM_TIMEOUT_S, DEFAULT_TIMEOUT_S, AsyncClient
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.entry import Entry, KeyLike, Stats, SweepProgress, key_range
from keyspan.streams.errors import ClientClosed
from keyspan.streams.retry import DEFAULT_POLICY, UPDATE_POLICY, RetryPolicy
from keyspan.streams.router import Router

T = TypeVar("T")

# How long close() waits for the loop's tasks to end once it has cancelled them.
CLOSE_TIMEOUT_S = 5.0


class _ClientLoop(asyncio.SelectorEventLoop):
    """The private event loop of one Client; it drops what grpc schedules on it once closed.

    grpc.aio keeps every event loop it has served bound to its one completion queue, and
    whichever bound loop is reading hands each completion to the loop of its call with
    call_soon_threadsafe. A stream cancelled as its Client closes (a scan left early, the
    channel closed under it) completes in grpc's core a moment later: if another Client's
    loop reads that completion, it lands here after this loop closed, and the other loop
    printed "Exception in callback PollerCompletionQueue._handle_events ... Event loop is
    closed" (`keyspan load` did, in a few runs in a hundred). Nothing waits on such a call
    any more, so its completion is dropped.
    """

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        try:
            return super().call_soon_threadsafe(callback, *args, context=context)
        except RuntimeError:
            if self.is_closed():
                return None
            raise


class Client:
    """The blocking client. Close it (or use `with`) to stop its thread and channels.

    `control="HOST:PORT"` makes it a thick client of a cluster: it watches control's map
    and sends each call to the key's owner (Unavailable when no map came in
    map_timeout_s). `router_factory`, when given, builds the Router inside the client's
    loop (grpc.aio channels belong to the loop that creates them)."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        router_factory: Callable[[], Router] | None = None,
        control: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
        metrics: ClientMetrics | None = None,
        map_timeout_s: float = 10.0,
    ) -> None:
        self._loop = _ClientLoop()
        self._thread = threading.Thread(
            target=_run_loop, args=(self._loop,), name="keyspan-client", daemon=True
        )
        self._thread.start()

        async def make() -> AsyncClient:
            if control is not None:  # a thick client: routes by control's map
                return await AsyncClient.for_cluster(
                    control,
                    timeout_s=timeout_s,
                    stream_timeout_s=stream_timeout_s,
                    map_timeout_s=map_timeout_s,
                    metrics=metrics,
                )
            router = router_factory() if router_factory is not None else None
            return AsyncClient(
                address,
                router=router,
                timeout_s=timeout_s,
                stream_timeout_s=stream_timeout_s,
                metrics=metrics,
            )

        self._closed = False
        self._pid = os.getpid()
        # The calls other threads wait on, so that a close() the loop cannot serve in time
        # ends their waits.
        self._calls: set[concurrent.futures.Future[Any]] = set()
        self._calls_lock = threading.Lock()
        self._closing: set[asyncio.Future[None]] = set()  # iterators the loop thread is closing
        try:
            self.aio = self._run(make())
        except BaseException:
            self._stop_loop()
            raise
        # Dropped unclosed, it is closed when collected (with a ResourceWarning), and
        # still open at exit, closed then: a scan iterator it held hung the exit.
        target = address if control is None else f"control={control}"
        self._finalizer = weakref.finalize(self, _abandoned, self._loop, self.aio, target)
        self._finalizer.atexit = False
        _open_clients.add(self)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ClientClosed("this keyspan Client is closed")
        self._check_caller(coro)
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._calls_lock:
            self._calls.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self._closed:  # close() from another thread cancelled this call
                raise ClientClosed("this keyspan Client was closed during the call") from None
            raise
        except KeyboardInterrupt:  # Ctrl-C while waiting: the call stops on the loop too
            future.cancel()
            raise
        finally:
            with self._calls_lock:
                self._calls.discard(future)

    def _check_caller(self, coro: Coroutine[Any, Any, Any] | None = None) -> None:
        """Refuse a call that could only wait for ever: one from the client's own thread
        (update's fn, bulk_put's iterable or on_progress run there, and the thread would
        wait on itself), or from a process forked after the client was made (its loop
        thread is not in the child)."""
        why = None
        if os.getpid() != self._pid:
            why = (
                f"this keyspan Client was made in process {self._pid}, before a fork; make a "
                "new one in this process (gRPC channels do not survive a fork)"
            )
        elif threading.current_thread() is self._thread:
            why = (
                "a keyspan Client was called from its own thread (from update's fn, or "
                "bulk_put's iterable or on_progress, which run there): it would wait on itself; "
                "read what you need before the call, or use another Client"
            )
        if why is not None:
            if coro is not None:
                coro.close()
            raise RuntimeError(why)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Cancel the calls still open, close the channels and stop the loop thread; idempotent.

        An iterator still held (a scan left part-way) is closed too, and its stream ends.
        A call in flight from another thread is cancelled; calls made after close() raise
        ClientClosed (a RuntimeError).
        """
        if self._closed:
            return
        if os.getpid() != self._pid:  # a forked child: its loop and channels are the parent's
            self._closed = True
            self._finalizer.detach()
            return
        self._check_caller()  # from its own thread, close() would wait on itself
        self._closed = True  # no call starts from here on
        self._finalizer.detach()
        shut_down = asyncio.run_coroutine_threadsafe(_shut_down(self.aio, self._loop), self._loop)
        try:
            shut_down.result(timeout=CLOSE_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            # The loop is held by code of the caller's that runs on it (a bulk_put source or
            # an update fn that blocks): the callers waiting on it get ClientClosed now, and
            # the loop shuts down and stops once it is free. (close() waited as long as the
            # source did, and the process's exit with it; stopping the loop at once closed
            # it under the call in flight, which never ended.)
            with self._calls_lock:
                waiting = list(self._calls)
            for call in waiting:
                call.cancel()
            shut_down.add_done_callback(lambda _: self._loop.call_soon_threadsafe(self._loop.stop))
            return
        except BaseException:
            self._stop_loop()
            raise
        self._stop_loop()

    def _stop_loop(self) -> None:
        """Stop the loop; its thread closes it."""
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CLOSE_TIMEOUT_S)

    def _iterate(self, batches: AsyncIterator[list[T]]) -> Iterator[T]:
        """Pull an async iterator of batches from the loop thread, one batch per hop."""
        try:
            while True:
                try:
                    batch = self._run(anext(batches))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
                for item in batch:
                    if self._closed:  # close() cut the scan short: not the batch in hand either
                        raise ClientClosed("this keyspan Client is closed (close() cut this scan short)")
                    yield item
        finally:
            # Once closed, close() has closed the async iterators left open.
            if not self._closed:
                self._close_batches(batches)

    def _close_batches(self, batches: AsyncIterator[Any]) -> None:
        if sys.is_finalizing() or not self._thread.is_alive():
            return  # the interpreter is going: the loop thread runs no more
        if threading.current_thread() is self._thread:
            # The garbage collector closed this iterator on the loop thread itself, where
            # waiting for the loop would wait forever: the loop closes it next.
            closing = asyncio.ensure_future(batches.aclose(), loop=self._loop)  # type: ignore[attr-defined]
            self._closing.add(closing)  # the loop keeps only a weak reference to a task
            closing.add_done_callback(self._closing.discard)
        else:
            self._run(_aclose(batches))

    def get(
        self, key: KeyLike, paths: str | list[str] | None = None, json: bool = False, **kw: Any
    ) -> Entry | None:
        return self._run(self.aio.get(key, paths, json, **kw))

    def put(
        self,
        key: KeyLike,
        value: Any,
        ttl_s: float = 0,
        if_etag: int = 0,
        if_absent: bool = False,
        json: bool = False,
        **kw: Any,
    ) -> int:
        return self._run(self.aio.put(key, value, ttl_s, if_etag, if_absent, json, **kw))

    def delete(self, key: KeyLike, if_etag: int = 0, **kw: Any) -> bool:
        return self._run(self.aio.delete(key, if_etag, **kw))

    def patch(
        self,
        key: KeyLike,
        merge: Any = None,
        set: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        remove: str | list[str] | None = None,
        if_etag: int = 0,
        **kw: Any,
    ) -> Entry:
        return self._run(self.aio.patch(key, merge, set, remove, if_etag, **kw))

    def stats(self, **kw: Any) -> Stats:
        return self._run(self.aio.stats(**kw))

    def scan(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int = 0,
        paths: str | list[str] | None = None,
        reverse: bool = False,
        json: bool = False,
        **kw: Any,
    ) -> Iterator[Entry]:
        """As AsyncClient.scan; credits follow what this iterator has handed out."""
        lower, upper = key_range(start, end)
        return self._iterate(
            self.aio.scan_batches(lower, upper, limit=limit, paths=paths, reverse=reverse, json=json, **kw)
        )

    def scan_ex(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int = 0,
        paths: str | list[str] | None = None,
        reverse: bool = False,
        json: bool = False,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        **kw: Any,
    ) -> Iterator[Entry]:
        """As AsyncClient.scan_ex: every entry once, in order, resuming broken streams."""
        batches = retry.scan_ex_batches(
            self.aio, start, end, limit=limit, paths=paths, reverse=reverse, json=json, policy=policy, **kw
        )
        return self._iterate(batches)

    def sweep(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        max_deletes_per_s: float = 0,
        **kw: Any,
    ) -> Iterator[SweepProgress]:
        return self._iterate(_rebatch(self.aio.sweep(start, end, max_deletes_per_s, **kw)))

    def bulk_put(
        self,
        items: Iterable[BulkItem] | AsyncIterable[BulkItem],
        *,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        on_progress: Callable[[BulkPutResult], None] | None = None,
        **kw: Any,
    ) -> BulkPutResult:
        """As AsyncClient.bulk_put. A plain iterable is read on the client's thread."""
        return self._run(self.aio.bulk_put(items, batch_bytes=batch_bytes, on_progress=on_progress, **kw))

    def bulk_put_ex(
        self,
        items: Iterable[BulkItem] | AsyncIterable[BulkItem],
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        on_progress: Callable[[BulkPutResult], None] | None = None,
        **kw: Any,
    ) -> BulkPutResult:
        return self._run(
            self.aio.bulk_put_ex(items, policy=policy, batch_bytes=batch_bytes, on_progress=on_progress, **kw)
        )

    def update(
        self,
        key: KeyLike,
        fn: Callable[[Any], Any],
        *,
        json: bool = False,
        ttl_s: float | None = None,
        policy: RetryPolicy = UPDATE_POLICY,
        timeout_s: float | None = None,
    ) -> Entry:
        """As AsyncClient.update; `fn` runs on the client's thread, and must be a plain
        function (TypeError for an async one: nothing here would await it)."""
        return self._run(
            self.aio.update(key, _plain(fn), json=json, ttl_s=ttl_s, policy=policy, timeout_s=timeout_s)
        )


def _plain(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`fn`, refused when it is async: its coroutine would be stored as a value (or fail to
    encode) and was never awaited."""
    if not callable(fn):
        raise TypeError(f"fn: must be a function of the current value, not {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn):
        name = getattr(fn, "__name__", repr(fn))
        raise TypeError(
            f"fn: must be a plain function returning the new value (the blocking Client does "
            f"not await); {name} is a coroutine function (AsyncClient.update awaits one)"
        )

    def plain(value: Any) -> Any:
        result = fn(value)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited, and no warning that it was not
            raise TypeError("fn: returned an awaitable; the blocking Client's update takes a plain function")
        return result

    return plain


def _run_loop(loop: _ClientLoop) -> None:
    """The Client thread: its loop, until stopped, then closed."""
    try:
        loop.run_forever()
    finally:
        loop.close()


async def _aclose(batches: AsyncIterator[Any]) -> None:
    """Close an async iterator whose last step may still be ending: one cancelled by
    Ctrl-C in the calling thread runs its cleanup on the loop, and aclose() meanwhile
    raised "asynchronous generator is already running" (a traceback in place of the
    KeyboardInterrupt)."""
    for attempt in range(1000):  # 5 s
        try:
            await batches.aclose()  # type: ignore[attr-defined]
            return
        except RuntimeError as err:
            if "already running" not in str(err) or attempt == 999:
                raise
            await asyncio.sleep(0.005)


async def _shut_down(aio: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
    """End everything on the loop, as asyncio.run does before it closes its own.

    A cancelled gRPC call ends in grpc's core a moment after cancel() returns, and a task
    of grpc.aio (_AioCall._handle_status_once_received) waits for that end. A loop stopped
    before that task ran logged asyncio's ERROR "Task was destroyed but it is pending!"
    (about one Client in five closed with a scan iterator still held did).
    """
    try:
        await aio.close()  # the channels cancel every call still open on them
    finally:
        await _cancel_tasks()  # grpc's watchers of the calls; calls from other threads
        await loop.shutdown_asyncgens()  # iterators still held run their cleanup
        await _cancel_tasks()


# The Clients not closed yet, closed at exit while their loop threads still run. Left to
# the interpreter's shutdown, a scan iterator a Client held closed itself through a loop
# thread that had stopped for good, and the process never exited.
_open_clients: weakref.WeakSet[Client] = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        if client._pid != os.getpid():  # a forked child: its loop thread stayed in the parent
            continue
        with contextlib.suppress(Exception):
            client.close()


def _abandoned(loop: _ClientLoop, aio: AsyncClient, target: str) -> None:
    """A Client collected unclosed (any thread may run this): warn, as an unclosed file
    does, then close its channels and stop its thread without waiting for them. Left open,
    each one kept a thread and three file descriptors for the life of the process."""
    warnings.warn(
        f"unclosed keyspan Client({target!r}): close() it or use `with`; its thread and channel "
        "are closed now",
        ResourceWarning,
        stacklevel=1,  # from the garbage collector: no caller's line to point at
    )

    async def shut_down_then_stop() -> None:
        try:
            await _shut_down(aio, loop)
        finally:
            loop.stop()

    with contextlib.suppress(RuntimeError):  # the loop has closed already
        asyncio.run_coroutine_threadsafe(shut_down_then_stop(), loop)


async def _cancel_tasks() -> None:
    """Cancel the loop's other tasks and wait for them to end, as asyncio.run does: a task
    still pending when its loop is closed is logged as destroyed."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)


async def _rebatch(items: AsyncIterator[T]) -> AsyncIterator[list[T]]:
    """Each item as a one-item batch (for sweep reports, which are few)."""
    try:
        async for item in items:
            yield [item]
    finally:
        await items.aclose()  # type: ignore[attr-defined]
