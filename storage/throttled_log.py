"""An error that may repeat on every call, logged at most every few seconds with a count."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

INTERVAL_S = 10.0


class ThrottledLog:
    """Logs `message` at ERROR at most every `interval_s`, with how many times it happened
    since the last line in `count_field`: one line for an operator to act on, not one (or
    a traceback) per refused call. Safe to call from any thread."""

    def __init__(
        self, logger: logging.Logger, message: str, count_field: str, interval_s: float = INTERVAL_S
    ) -> None:
        self._logger, self._message, self._count_field = logger, message, count_field
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._logged_at = -interval_s
        self._count = 0

    def note(self, count: int = 1, **fields: Any) -> None:
        with self._lock:
            self._count += count
            now = time.monotonic()
            if now - self._logged_at < self._interval_s:
                return
            count, self._count, self._logged_at = self._count, 0, now
        self._logger.error(self._message, extra={**fields, self._count_field: count})
