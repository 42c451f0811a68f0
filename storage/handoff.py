"""Handing work from an event loop to a thread, and results back, in batches.

A thread wake-up and an event-loop wake-up each cost far more than the SQLite work of one
Get or Put, and on a small machine every extra wake-up is CPU taken from gRPC. So work
submitted during one turn of the event loop travels to the thread as ONE queue item (one
wake-up), and the results a thread finishes together go back in ONE callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Sequence
from typing import Any


def settle(pairs: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    """Resolve each future with its outcome (an exception is raised to its waiter)."""
    for done, outcome in pairs:
        if done.done():  # the caller was cancelled; the work happened all the same
            continue
        if isinstance(outcome, BaseException):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)


def reply(loop: asyncio.AbstractEventLoop, pairs: Sequence[tuple[asyncio.Future[Any], Any]]) -> None:
    """From a worker thread: settle `pairs` on their loop, with one wake-up."""
    with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting any more
        loop.call_soon_threadsafe(settle, pairs)


class Handoff:
    """Collects what the loop submits in one turn and queues it as a single item:
    ``(loop, [item, ...])``. Use it from event-loop threads only; each item is a tuple
    whose second element is the future its outcome settles.

    The thread that reads the queue calls `seal` on its way out, before it refuses what is
    left there: an item still collecting in a loop turn then gets that refusal on the loop,
    where it went onto a queue nobody read again, and its caller waited for ever."""

    def __init__(self, target: queue.SimpleQueue[Any]) -> None:
        self._target = target
        self._pending: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        self._lock = threading.Lock()
        self._sealed: BaseException | None = None

    def put(self, loop: asyncio.AbstractEventLoop, item: Any) -> None:
        pending = self._pending.get(loop)
        if pending is None:
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append(item)

    def seal(self, refusal: BaseException) -> None:
        """From the reading thread, before its last look at the queue: whatever is
        flushed from now on is refused with `refusal` instead of queued."""
        with self._lock:
            self._sealed = refusal

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        items = self._pending.pop(loop, None)
        if not items:
            return
        with self._lock:
            refusal = self._sealed
            if refusal is None:
                self._target.put((loop, items))
                return
        settle([(item[1], refusal) for item in items])
