"""The clocks liveness and stall detection run on.

A system clock can step: NTP correcting it, an operator's `date -s`, a VM restored from
a snapshot. Liveness read on it breaks both ways: a step forward of more than
`--down-after-s` makes every node look dead at once, a step back keeps a dead node "up"
for as long as the step. `running_clock` never steps; `steady_wall_ms` is wall time
that advances with it (see there).
"""

from __future__ import annotations

import time

_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def running_clock() -> float:
    """Seconds on a clock that also runs while the host is suspended (Linux's
    CLOCK_BOOTTIME, where time.monotonic() stops); elsewhere time.monotonic()."""
    if _BOOTTIME is None:
        return time.monotonic()
    return time.clock_gettime(_BOOTTIME)


# The wall clock and the running clock read together once, when the process starts.
_ANCHOR_WALL_MS = time.time_ns() // 1_000_000
_ANCHOR_RUNNING = running_clock()


def steady_wall_ms() -> int:
    """Milliseconds since the epoch as the wall clock read them when this process
    started, advanced since on the running clock: a step of the system clock does not
    move it. Times kept across a restart (a node's last heartbeat in control.db) stay
    near wall time; they are off by the steps taken while the process ran."""
    return _ANCHOR_WALL_MS + int((running_clock() - _ANCHOR_RUNNING) * 1000)
