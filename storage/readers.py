"""A node's read threads: blocking SQLite reads, awaited from the event loop.

Reads never run on the event loop. A few threads serve every partition of the node; each
thread has its own read connection to each shard (apsw releases the GIL inside SQLite,
so a read and the loop really run at once). The reads one turn of the loop submits go to
a thread together and come back together (storage/handoff.py).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from keyspan.storage.errors import UnavailableError
from keyspan.storage.handoff import Handoff, reply

T = TypeVar("T")
_STOP = object()


class ReadPool:
    """Runs blocking read functions on `threads` threads and awaits their results."""

    def __init__(self, threads: int = 2) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handoff = Handoff(self._queue)
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
        self._handoff.put(loop, (fn, done))
        return await done

    def close(self, timeout_s: float = 10.0) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while (got := self._queue.get()) is not _STOP:
            loop, items = got
            pairs: list[tuple[asyncio.Future[Any], Any]] = []
            for fn, done in items:
                try:
                    outcome: Any = fn()
                except Exception as err:
                    outcome = err
                pairs.append((done, outcome))
            reply(loop, pairs)
