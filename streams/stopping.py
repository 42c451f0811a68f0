"""Streams end at a resumable point when their server begins to stop.

Scan, BulkPut and Sweep streams can be resumed by design (a scan from its last
resume_key, a load by sending the batches not answered again, a sweep by running it
again), so a stopping server ends them with UNAVAILABLE instead of letting an idle or
slow one hold the shutdown for the whole grace period. Health watches end too
(services/common/process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from keyspan.storage.errors import UnavailableError

T = TypeVar("T")

# Advice to a client whose stream the stopping server ended: come back after this.
STOPPING_RETRY_S = 1.0
RESUME_SCAN = "resume the scan from the last resume_key"
RESEND_BATCHES = "send the batches not answered again"
RERUN_SWEEP = "run the sweep again (what it deleted stays deleted)"


def server_stopping(what: str) -> UnavailableError:
    return UnavailableError(f"the server is stopping; {what}", retry_after_s=STOPPING_RETRY_S)


async def unless_stopping(awaitable: Awaitable[T], stopping: asyncio.Event, what: str) -> T:
    """The result of `awaitable`; raises server_stopping(what), and cancels it, when
    `stopping` is set first."""
    task = asyncio.ensure_future(awaitable)
    if not stopping.is_set():
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    raise server_stopping(what)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Stop a background task (None: never started) and wait until it has ended."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
