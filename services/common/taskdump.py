"""What a process's asyncio tasks are waiting on, for `kill -USR1 PID`.

A stalled stream leaves every thread idle, so a thread dump (py-spy, faulthandler) shows
only an event loop waiting in epoll. The tasks say more: each task with the chain of
coroutines and async generators it is awaiting, innermost last. gRPC's own Cython
coroutines show as their file and name with no line, and a chain ends at an async
generator's `asend` (it does not say which generator); so the async generators not
finished yet (a streaming handler is one) follow, each with its own chain.
"""

from __future__ import annotations

import asyncio
import gc
import types
from typing import Any

MAX_DEPTH = 64  # links followed in one await chain


def await_chain(coro: Any) -> list[str]:
    """`file:line name` for each coroutine, async generator or generator that `coro` is
    awaiting, outermost first; an awaitable with no frame (a future) as its repr."""
    links: list[str] = []
    while coro is not None and len(links) < MAX_DEPTH:
        frame = _first(coro, "cr_frame", "ag_frame", "gi_frame")
        if frame is not None:
            code = frame.f_code
            links.append(f"{code.co_filename}:{frame.f_lineno} {code.co_name}")
        else:
            links.append(repr(coro)[:200])
        coro = _first(coro, "cr_await", "ag_await", "gi_yieldfrom")
    return links


def _first(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def describe_tasks(loop: asyncio.AbstractEventLoop) -> str:
    """Every task of `loop`, by name, with its await chain (one line a link)."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    lines = [f"{len(tasks)} tasks"]
    for task in tasks:
        lines.append(f"task {task.get_name()!r}{' (cancelling)' if task.cancelling() else ''}:")
        lines.extend(f"  {link}" for link in await_chain(task.get_coro()))
    # Every object the collector tracks, once per signal: fine for an operator's look.
    live = [g for g in gc.get_objects() if isinstance(g, types.AsyncGeneratorType) and g.ag_frame is not None]
    lines.append(f"{len(live)} async generators not finished")
    for agen in live:
        lines.append(f"async generator {agen.__qualname__}:")
        lines.extend(f"  {link}" for link in await_chain(agen))
    return "\n".join(lines)
