"""The partition's single writer: one thread that owns the write connection.

Whatever is queued when the thread wakes is committed in one transaction and one fsync
(group commit): under load, 64 concurrent Puts cost one fsync, not 64.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Sequence
from typing import Any

from keyspan.storage.errors import UnavailableError
from keyspan.storage.mutations import Mutation
from keyspan.storage.shard import Shard

_STOP = object()


def _settle(pairs: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    for done, outcome in pairs:
        if done.done():  # the RPC was cancelled; the write happened all the same
            continue
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


class PartitionWriter:
    """Owns the partition's only write connection, on a thread of its own.

    A write whose RPC is cancelled after queueing still commits; its result is dropped.
    Callers must treat a cancelled Put as "maybe applied".
    """

    def __init__(self, shard: Shard, *, max_batch: int = 256) -> None:
        self._shard, self._max_batch = shard, max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self.batches = 0
        self.mutations = 0
        self._thread = threading.Thread(target=self._run, name=f"writer-{shard.partition_id}", daemon=True)
        self._thread.start()

    async def submit(self, mutation: Mutation) -> Any:
        """Queue one mutation and wait for its outcome; raises its KeyspanError."""
        if self._closed:
            raise UnavailableError(f"partition {self._shard.partition_id} is closing")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        self._queue.put((mutation, loop, done))
        return await done

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, stop the thread and wait for it (at most timeout_s)."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _drain(self, first: Any) -> tuple[list[Any], bool]:
        batch, stop = [first], False
        while len(batch) < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._drain(first)
            try:
                outcomes: list[Any] = self._shard.apply_batch([m for m, _, _ in batch])
            except Exception as err:
                # An SQLite fault (disk full, I/O error): nothing of the batch was
                # committed. Every waiter gets it; the edge logs it once as a server fault.
                outcomes = [err] * len(batch)
            self.batches += 1
            self.mutations += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for (_, loop, done), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((done, outcome))
            for loop, pairs in by_loop.items():
                # A closed loop has nobody waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, pairs)
