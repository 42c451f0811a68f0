"""A cached copy of the cluster's partition map, and a watcher that keeps it fresh.

`PartitionMap` answers which partition (and node) owns a key, and cuts a key range into
pieces, one per partition, in key order. `MapWatcher` follows control's WatchMap stream
and survives control restarts: it reconnects with backoff and keeps the last map meanwhile,
so routing goes on while control is away.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from keyspan.storage.errors import KeyspanError, UnavailableError, WrongPartitionError
from keyspan.storage.keys import KeyRange
from keyspan.streams.stopping import cancel_and_wait
from keyspan.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

SERVING = control_pb2.PARTITION_STATE_SERVING
ASSIGNED = control_pb2.PARTITION_STATE_ASSIGNED
UNAVAILABLE = control_pb2.PARTITION_STATE_UNAVAILABLE
UNASSIGNED = control_pb2.PARTITION_STATE_UNASSIGNED


class TilingError(KeyspanError):
    """Ranges that leave a gap or overlap: refused wherever a map is built or changed."""


@dataclass(frozen=True, slots=True)
class MapEntry:
    partition_id: str
    range: KeyRange
    node_id: str
    address: str
    state: int
    revision_floor: int = 0  # the owner's copy continues from at least this revision

    @property
    def routable(self) -> bool:
        """True when requests can go to the owner now (ASSIGNED is routable: the node
        opens the partition quickly and answers UNAVAILABLE until it does)."""
        return bool(self.address) and self.state in (SERVING, ASSIGNED)

    def unavailable(self) -> UnavailableError:
        why = "has no owner" if not self.node_id else f"owner {self.node_id} is down"
        return UnavailableError(f"partition {self.partition_id} {self.range} {why}", retry_after_s=0.25)

    def wrong_partition(self, key: bytes, map_version: int) -> WrongPartitionError:
        return WrongPartitionError(
            key,
            partition_id=self.partition_id,
            start=self.range.start,
            end=self.range.end,
            node_id=self.node_id,
            address=self.address,
            map_version=map_version,
        )


def check_tiling(ranges: Sequence[KeyRange]) -> None:
    """Raise TilingError unless the ranges, in order, cover the whole key space exactly once."""
    if not ranges:
        raise TilingError("a map needs at least one partition")
    if ranges[0].start != b"":
        raise TilingError(f"the first range starts at {ranges[0].start!r}, not at the start of the key space")
    for before, after in itertools.pairwise(ranges):
        if before.end is None:
            raise TilingError(f"{before} reaches +inf but {after} follows it")
        if before.end != after.start:
            kind = "a gap" if before.end < after.start else "an overlap"
            raise TilingError(f"{kind} between {before} and {after}")
    if ranges[-1].end is not None:
        raise TilingError(f"the last range ends at {ranges[-1].end!r}, not at +inf")


def entries_of(message: control_pb2.PartitionMap) -> list[MapEntry]:
    return [
        MapEntry(
            p.partition_id,
            KeyRange(p.start, p.end if p.HasField("end") else None),
            p.node_id,
            p.address,
            p.state,
            p.revision_floor,
        )
        for p in message.partitions
    ]


def to_message(version: int, entries: Iterable[MapEntry]) -> control_pb2.PartitionMap:
    message = control_pb2.PartitionMap(version=version)
    for e in entries:
        p = message.partitions.add(
            partition_id=e.partition_id,
            start=e.range.start,
            node_id=e.node_id,
            address=e.address,
            state=e.state,
            revision_floor=e.revision_floor,
        )
        if e.range.end is not None:
            p.end = e.range.end
    return message


class PartitionMap:
    """Sorted ranges -> owner, at one version. Replaced whole by `apply`."""

    def __init__(self, entries: Sequence[MapEntry] = (), version: int = 0) -> None:
        self.version = 0
        self._entries: list[MapEntry] = []
        self._starts: list[bytes] = []
        if entries:
            self._set(list(entries), version)

    @classmethod
    def from_message(cls, message: control_pb2.PartitionMap) -> PartitionMap:
        return cls(entries_of(message), message.version)

    def _set(self, entries: list[MapEntry], version: int) -> None:
        entries.sort(key=lambda e: e.range.start)
        check_tiling([e.range for e in entries])
        self._entries, self._starts, self.version = entries, [e.range.start for e in entries], version

    def apply(self, new_map: control_pb2.PartitionMap | PartitionMap) -> bool:
        """Take a newer map; an older or equal version is ignored. True when taken."""
        if isinstance(new_map, PartitionMap):
            entries, version = new_map.entries, new_map.version
        else:
            entries, version = entries_of(new_map), new_map.version
        if version <= self.version:
            return False
        self._set(list(entries), version)
        return True

    @property
    def entries(self) -> list[MapEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def locate(self, key: bytes) -> MapEntry:
        """The entry whose range holds `key`; UnavailableError before any map arrived."""
        if not self._entries:
            raise UnavailableError("no partition map yet (control not reached)", retry_after_s=0.5)
        return self._entries[bisect.bisect_right(self._starts, key) - 1]

    def start_below(self, bound: bytes | None) -> bytes | None:
        """The start of the partition that holds the keys just below `bound` (None: the
        key space's end); None before any map, or below the first key."""
        if not self._entries:
            return None
        i = len(self._entries) if bound is None else bisect.bisect_left(self._starts, bound)
        return self._starts[i - 1] if i else None

    def by_id(self, partition_id: str) -> MapEntry | None:
        return next((e for e in self._entries if e.partition_id == partition_id), None)

    def pieces(self, start: bytes, end: bytes | None) -> list[tuple[KeyRange, MapEntry]]:
        """[start, end) cut at partition bounds: (piece, owner) in key order."""
        if not self._entries:
            raise UnavailableError("no partition map yet (control not reached)", retry_after_s=0.5)
        wanted = KeyRange(start, end)
        first = bisect.bisect_right(self._starts, start) - 1
        out = []
        for e in self._entries[first:]:
            if end is not None and e.range.start >= end:
                break
            common = e.range.intersect(wanted)
            if common is not None:
                out.append((common, e))
        return out

    def owned_by(self, node_id: str) -> list[MapEntry]:
        return [e for e in self._entries if e.node_id == node_id]


def _backoff_s(attempt: int) -> float:
    return min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2)


class MapWatcher:
    """Keeps a PartitionMap fresh from control's WatchMap stream, reconnecting forever.

    Use `start()` inside the running loop, `wait_for(version)` to wait for a newer map
    (after a WrongPartition), and `stop()` to end it. Between control restarts the map
    stays as last seen.
    """

    def __init__(
        self,
        control_address: str,
        partition_map: PartitionMap | None = None,
        on_update: Callable[[], None] | None = None,
    ) -> None:
        self.control_address = control_address
        self.map = partition_map or PartitionMap()
        self.on_update = on_update  # called after each newer map is applied (metrics)
        self.connected = False
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="map-watcher")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def wait_for(self, version: int, timeout_s: float) -> bool:
        """Wait until the map's version is at least `version`; False on timeout."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.map.version >= version), timeout_s)
            except TimeoutError:
                return False
        return True

    async def _take(self, message: control_pb2.PartitionMap) -> None:
        if self.map.apply(message):
            log.info("partition map updated", extra={"map_version": message.version})
            if self.on_update is not None:
                self.on_update()
        async with self._changed:
            self._changed.notify_all()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with grpc.aio.insecure_channel(self.control_address) as channel:
                    stub = control_pb2_grpc.ControlStub(channel)
                    call = stub.WatchMap(control_pb2.WatchMapRequest(after_version=self.map.version))
                    async for message in call:
                        self.connected, attempt = True, 0
                        await self._take(message)
            except grpc.aio.AioRpcError as err:
                log.debug("map watch broke", extra={"code": err.code().name})
            self.connected = False
            await asyncio.sleep(_backoff_s(attempt))
            attempt = min(attempt + 1, 10)
