"""The writes a partition's writer applies, as plain data.

Values arrive validated at the edge (key length, value size, TTL range); what only SQLite
can judge (JSON text, JSON paths) is checked inside the writer's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    json: bool = False
    expires_at_ms: int | None = None
    if_etag: int = 0
    if_absent: bool = False


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


class BulkRow(NamedTuple):
    """One entry of a bulk load. A NamedTuple: one is built per loaded entry, and a
    tuple costs a third of a frozen dataclass to make."""

    key: bytes
    value: bytes
    json: bool = False
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Bulk:
    """Sorted, duplicate-free rows, all inside the partition: committed whole or not at all."""

    rows: list[BulkRow] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SweepBatch:
    """Delete up to `limit` entries of [start, end) that expired at or before now_ms."""

    start: bytes
    end: bytes | None
    now_ms: int
    limit: int


@dataclass(frozen=True, slots=True)
class PatchResult:
    etag: int
    value: bytes


Mutation = Put | Delete | Patch | Bulk | SweepBatch
