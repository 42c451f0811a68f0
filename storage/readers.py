"""A node's reads: blocking SQLite reads, awaited from the event loop.

A few threads serve every partition of the node; each thread has its own read connection
to each shard (apsw releases the GIL inside SQLite, so a read and the loop really run at
once). The reads one turn of the loop submits go to a thread together and come back
together (storage/handoff.py).

Point reads are the one exception to "SQLite stays off the event loop": a Get of a
cached row takes ~10-30 us, while handing it to a thread and back costs 0.1-0.3 ms of CPU
on a small VM (two cross-core wake-ups), which was most of what separated a Get from a
bare gRPC echo. So `run_point` runs the read right on the loop, on a connection that never
waits on a lock, while such reads stay within a time budget; two over-budget reads in a
row (a cold cache, a slow disk) send point reads to the threads for a while, and a read
that would have to wait on a lock goes to a thread at once.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import apsw

from keyspan.storage.errors import UnavailableError
from keyspan.storage.handoff import Handoff, reply

T = TypeVar("T")
_STOP = object()
# A read whose partition was dropped (moved away) under it, on a connection Shard.close
# closed: the caller's answer is "not here now, retry", not an internal error.
_CLOSED = (apsw.ConnectionClosedError, apsw.CursorClosedError)


def _closed_under(err: Exception) -> UnavailableError:
    closed = UnavailableError("the partition closed during the read (moved or dropped); retry")
    closed.__cause__ = err
    return closed


class ReadPool:
    """Runs blocking read functions on `threads` threads and awaits their results.

    `inline_budget_s` is the time a point read may take on the event loop (0: never run
    one there); after two over-budget point reads in a row, point reads go to the threads
    for `inline_pause_s`.
    """

    def __init__(
        self, threads: int = 2, *, inline_budget_s: float = 0.001, inline_pause_s: float = 1.0
    ) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handoff = Handoff(self._queue)
        self._closed = False
        self.inline_budget_s, self.inline_pause_s = inline_budget_s, inline_pause_s
        self._inline_paused_until = 0.0
        self._last_inline_slow = False
        self.inline_reads = self.inline_pauses = 0
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

    async def run_point(self, fn: Callable[[bool], T]) -> T:
        """Run a point read: `fn(True)` right here while inline reads keep to the budget,
        else `fn(False)` on a read thread. fn(True) must read through connections that do
        not wait on locks (apsw.BusyError then sends the read to a thread)."""
        if self.inline_budget_s > 0 and not self._closed:
            started = time.perf_counter()
            if started >= self._inline_paused_until:
                try:
                    result = fn(True)
                except apsw.BusyError:
                    pass  # it would have to wait on a lock: a read thread may
                except _CLOSED as err:
                    raise _closed_under(err) from err
                else:
                    self._after_inline(started, time.perf_counter())
                    return result
        return await self.run(lambda: fn(False))

    def _after_inline(self, started: float, ended: float) -> None:
        self.inline_reads += 1
        slow = ended - started > self.inline_budget_s
        if slow and self._last_inline_slow:
            self._inline_paused_until = ended + self.inline_pause_s
            self.inline_pauses += 1
            slow = False
        self._last_inline_slow = slow

    def close(self, timeout_s: float = 10.0) -> None:
        """Run the reads handed over so far, refuse any later one, stop the threads."""
        self._closed = True
        # Reads flushed before the seal are queued ahead of every stop sentinel, so the
        # threads run them; one still collecting in a loop turn is refused on the loop.
        self._handoff.seal(UnavailableError("the read pool is closed"))
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    def _run(self) -> None:
        while (got := self._queue.get()) is not _STOP:
            loop, items = got
            pairs: list[tuple[asyncio.Future[Any], Any]] = []
            for fn, done in items:
                # A read whose caller was cancelled while it waited here (a Scan its client
                # left) is skipped: 2,000 Scans cancelled at once kept both read threads
                # busy for ~11 s, ahead of every read queued after them. Only the loop sets
                # the state; a read that starts just before the cancel runs to its end.
                if done.cancelled():
                    continue
                try:
                    outcome: Any = fn()
                except _CLOSED as err:
                    outcome = _closed_under(err)
                except Exception as err:
                    outcome = err
                pairs.append((done, outcome))
            reply(loop, pairs)
