"""The clock stall detection runs on."""

from __future__ import annotations

import time

_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def running_clock() -> float:
    """Seconds on a clock that also runs while the host is suspended (Linux's
    CLOCK_BOOTTIME, where time.monotonic() stops); elsewhere time.monotonic()."""
    if _BOOTTIME is None:
        return time.monotonic()
    return time.clock_gettime(_BOOTTIME)
