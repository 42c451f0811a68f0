"""The node's row cache: recently read rows, so that a repeated Get makes no SQLite call.

A Get that finds its row here costs a dict lookup on the event loop. One that reads
SQLite cost ~50 us more server CPU under load on a small VM, of which SQLite's own code
was ~7.5 us; the rest is the Python around the read and the kernel's wake-ups
(integration/perf/JOURNAL.md, "Where a Get's extra CPU goes on this host").

Correctness rests on one rule: a row read before a commit is never stored after it.
Writers call `committing()` right before every COMMIT and `written(keys)` once it is
over (committed or failed), which evicts the keys; both bump `generation`. A reader
takes the generation BEFORE it reads, and `fill` stores the row only if no commit began
in between and none is under way. All of it runs under one lock. The fence must open
before the COMMIT: a read that began before it, filling between the COMMIT and the
eviction, would put back the old row after another Get had already answered the new
one, and later Gets would read the old row again.

Expired rows need no eviction: a cached row past its `expires_at_ms` reads as absent,
exactly as Shard.get treats it. Absent keys are cached too (a Put evicts them).
Eviction is least-recently-used within a byte budget, on an OrderedDict: evicting its
oldest entry is O(1). (A plain dict is not: `next(iter(d))` walks over the slots of every
key popped from its front since the dict was last compacted. On a full 64 MiB cache that
made each fill cost 25 to 290 us instead of 3.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from keyspan.storage.shard import Row

ABSENT = object()  # cached: the key has no live row
MISSING = object()  # not cached
# the OrderedDict's slot and link, the Row, the two bytes objects' headers and the etag:
# ~290-330 bytes by tracemalloc (at 200, a cache counted at 64 MiB held 96 MiB of 100-byte rows)
_OVERHEAD_BYTES = 320


class RowCache:
    """Rows by key, for every partition of a node (their key ranges never overlap)."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.generation = 0
        self._committing = 0  # COMMITs under way (one a partition's writer, at most)
        self.hits = self.misses = 0
        self._rows: OrderedDict[bytes, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def entries(self) -> int:
        return len(self._rows)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: bytes, now_ms: int) -> Any:
        """The cached Row, ABSENT, or MISSING."""
        found = self._rows.get(key, MISSING)
        if found is MISSING:
            self.misses += 1
            return MISSING
        self.hits += 1
        try:  # noqa: SIM105 - on every cache hit: cheaper than contextlib.suppress
            self._rows.move_to_end(key)
        except KeyError:  # evicted by another thread since the lookup: still a valid read
            pass
        if found is not ABSENT and found.expires_at_ms is not None and found.expires_at_ms <= now_ms:
            return ABSENT
        return found

    def fill(self, key: bytes, row: Row | None, generation: int) -> None:
        """Store what a read that started at `generation` found (None: no live row)."""
        size = _size(key, row if row is not None else ABSENT)
        if size > self.budget_bytes // 8:
            return
        with self._lock:
            if generation != self.generation or self._committing:
                return  # a commit began in between, or is under way: the row may be stale
            self._drop(key)
            self._rows[key] = row if row is not None else ABSENT
            self._bytes += size
            while self._bytes > self.budget_bytes:
                self._drop_oldest()

    def committing(self) -> None:
        """Right before a COMMIT: no row is stored until its `written`, and none read before."""
        with self._lock:
            self.generation += 1
            self._committing += 1

    def written(self, keys: list[bytes] | None) -> None:
        """After a COMMIT that `committing` announced, committed or failed: forget `keys`
        (None: every key) and fence off reads begun before."""
        with self._lock:
            self._committing = max(0, self._committing - 1)
            self._forget(keys)

    def clear(self) -> None:
        """Forget every row (a partition opened or closed) and fence off reads begun before."""
        with self._lock:
            self._forget(None)

    def _forget(self, keys: list[bytes] | None) -> None:
        self.generation += 1
        if keys is None:
            self._rows.clear()
            self._bytes = 0
            return
        rows = self._rows
        # A bulk load writes thousands of keys that were never read: look before dropping.
        for key in [key for key in keys if key in rows]:
            self._drop(key)

    def _drop_oldest(self) -> None:
        key, old = self._rows.popitem(last=False)
        self._bytes -= _size(key, old)

    def _drop(self, key: bytes) -> None:
        old = self._rows.pop(key, MISSING)
        if old is not MISSING:
            self._bytes -= _size(key, old)


def _size(key: bytes, cached: Any) -> int:
    """What one cached entry (a Row, or ABSENT) counts against the byte budget."""
    return len(key) + (len(cached.value) if cached is not ABSENT else 0) + _OVERHEAD_BYTES
