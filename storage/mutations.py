"""The writes a partition's writer applies, as plain data.

Values arrive validated at the edge (key length, value size, TTL range); what only SQLite
can judge (JSON text, JSON paths) is checked inside the writer's transaction.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    json: bool = False
    expires_at_ms: int | None = None
    if_etag: int = 0
    if_absent: bool = False
    keep_ttl: bool = False  # keep the live entry's expiry (expires_at_ms is then None)


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    if_etag: int = 0


@dataclass(frozen=True, slots=True)
class Patch:
    key: bytes
    merge_patch: str = ""
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    if_etag: int = 0
    max_value_bytes: int = 0  # the patched document's limit, as JSON text; 0: none


class BulkRow(NamedTuple):
    """One entry of a bulk load, for code that holds entries one by one (`Bulk.of_rows`)."""

    key: bytes
    value: bytes
    json: bool = False
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Bulk:
    """Sorted, duplicate-free entries, all inside the partition: committed whole or not
    at all. Held as columns, the shape BulkPut's checks and the writer's carray both
    want: with an object per entry instead, BulkPut reached ~0.51 of raw apsw's insert
    in an A/B where it reaches ~0.59 this way.

    `json` None: no entry is a JSON document; `expires_at_ms` None: no entry expires.
    `json_checked`: every JSON document was found valid already (ShardSet.check_json).
    """

    keys: Sequence[bytes] = ()
    values: Sequence[bytes] = ()
    json: Sequence[bool] | None = None
    expires_at_ms: Sequence[int | None] | None = None
    json_checked: bool = False

    @classmethod
    def of_rows(cls, rows: Sequence[BulkRow]) -> Bulk:
        if not rows:
            return cls()
        keys, values, json, expires = zip(*rows, strict=True)
        return cls(
            keys,
            values,
            json if any(json) else None,
            expires if expires.count(None) != len(expires) else None,
        )

    def __len__(self) -> int:
        return len(self.keys)

    def prefix(self, n: int) -> Bulk:
        """The first n entries."""
        if n >= len(self.keys):
            return self
        json, expires = self.json, self.expires_at_ms
        return Bulk(
            self.keys[:n],
            self.values[:n],
            None if json is None else json[:n],
            None if expires is None else expires[:n],
            self.json_checked,
        )

    def rows(self) -> Iterator[BulkRow]:
        count = len(self.keys)
        json = self.json if self.json is not None else itertools.repeat(False, count)
        expires = self.expires_at_ms if self.expires_at_ms is not None else itertools.repeat(None, count)
        return map(BulkRow, self.keys, self.values, json, expires)


@dataclass(frozen=True, slots=True)
class SweepBatch:
    """Delete up to `limit` entries of [start, end) that expired at or before now_ms."""

    start: bytes
    end: bytes | None
    now_ms: int
    limit: int


@dataclass(frozen=True, slots=True)
class Reclaim:
    """Give up to `max_pages` of the shard's free pages back to the file system, in a
    transaction of its own after the batch it came with. Unless `started` (a reclaim
    that found enough to do goes on until none is left), only once the free pages are
    worth it: see Shard.reclaim."""

    max_pages: int
    started: bool = False


class Reclaimed(NamedTuple):
    """A Reclaim's outcome: bytes given back, and whether free pages are left to give."""

    freed_bytes: int
    more: bool


@dataclass(frozen=True, slots=True)
class PatchResult:
    etag: int
    value: bytes


Mutation = Put | Delete | Patch | Bulk | SweepBatch | Reclaim
