"""A node's read threads: blocking SQLite reads, awaited from the event loop.

Reads never run on the event loop. A few threads serve every partition of the node; each
read borrows one of its shard's read connections (apsw releases the GIL inside SQLite,
so a read and the loop really run at once). Results go back to the loop in batches, one
wake-up for all reads a thread finished in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from keyspan.storage.errors import UnavailableError
from keyspan.storage.writer import _settle

T = TypeVar("T")
_STOP = object()


class ReadPool:
    """Runs blocking read functions on `threads` threads and awaits their results."""

    def __init__(self, threads: int = 2, *, max_batch: int = 64) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"reader-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[[], T]) -> T:
        """Run fn() on a read thread; its exception is raised here."""
        if self._closed:
            raise UnavailableError("the read pool is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, loop, done))
        return await done

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            finished: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            stop = False
            while True:
                fn, loop, done = item
                try:
                    outcome: Any = fn()
                except Exception as err:
                    outcome = err
                finished.setdefault(loop, []).append((done, outcome))
                if sum(map(len, finished.values())) >= self._max_batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
            for loop, pairs in finished.items():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, pairs)
            if stop:
                return
