"""Deleting expired entries: the Sweep stream and the node's background sweeper."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from keyspan.storage.errors import (
    DiskFullError,
    InvalidArgumentError,
    StorageFaultError,
    UnavailableError,
    WrongPartitionError,
)
from keyspan.storage.keys import KeyRange, range_of
from keyspan.storage.shardset import ShardSet
from keyspan.storage.throttled_log import ThrottledLog
from keyspan.streams.stopping import RERUN_SWEEP, cancel_and_wait, server_stopping, unless_stopping
from keyspan.v1 import kv_pb2

log = logging.getLogger(__name__)
SWEEP_BATCH = 1000
# max_deletes_per_s, when set: slower than one a second would hold a stream for hours.
MIN_DELETES_PER_S, MAX_DELETES_PER_S = 1.0, 1e9


async def sweep_range(
    shards: ShardSet,
    key_range: KeyRange,
    max_deletes_per_s: float = 0.0,
    stopping: asyncio.Event | None = None,
) -> AsyncIterator[tuple[int, int]]:
    """Delete the range's expired entries in batches; yield (scanned, deleted) so far.

    Once `stopping` is set, raises server_stopping before the next batch (or wait)."""
    scanned = deleted = 0
    started = time.monotonic()
    batch = SWEEP_BATCH if not max_deletes_per_s else max(1, min(SWEEP_BATCH, int(max_deletes_per_s)))
    for partition, common in shards.overlapping(key_range):
        while True:
            if stopping is not None and stopping.is_set():
                raise server_stopping(RERUN_SWEEP)
            if max_deletes_per_s:
                # Paced before every batch, a partition's first too: paced only between
                # a partition's batches, the next partition's first came at once (450
                # deletes in ~1 s at 200 a second, across a boundary).
                ahead_s = deleted / max_deletes_per_s - (time.monotonic() - started)
                if ahead_s > 0:
                    pause = asyncio.sleep(ahead_s)
                    await (pause if stopping is None else unless_stopping(pause, stopping, RERUN_SWEEP))
            found, gone = await shards.sweep_batch(partition, common, batch)
            scanned, deleted = scanned + found, deleted + gone
            if found:
                yield scanned, deleted
            if found < batch:
                break


async def serve_sweep(
    shards: ShardSet, requests: AsyncIterator[kv_pb2.SweepRequest], stopping: asyncio.Event
) -> AsyncIterator[kv_pb2.SweepResponse]:
    """Sweep the first request's range, with progress after each batch. Once `stopping`
    is set, the stream ends before its next batch with UNAVAILABLE."""
    # A stream opened with no request in yet does not hold a shutdown either.
    first = await unless_stopping(anext(requests, None), stopping, RERUN_SWEEP)
    if first is None:
        return
    rate = first.max_deletes_per_s
    if rate and not MIN_DELETES_PER_S <= rate <= MAX_DELETES_PER_S:  # NaN fails too
        raise InvalidArgumentError(
            "max_deletes_per_s",
            f"must be 0 (no limit) or between {MIN_DELETES_PER_S:g} and {MAX_DELETES_PER_S:g}, not {rate}",
        )
    key_range = range_of(first.start, first.end if first.HasField("end") else None)
    shards.covering(key_range)  # a range with a part not here is not swept as if empty
    # A fenced node (stalled, not yet confirmed by control) neither sweeps nor reports
    # progress from copies that may no longer be the partitions': checked before the
    # first batch and after each (what a batch deleted was expired, never visible).
    shards.check_gate()
    scanned = deleted = 0
    async for scanned, deleted in sweep_range(shards, key_range, first.max_deletes_per_s, stopping):
        shards.check_gate()
        yield kv_pb2.SweepResponse(scanned=scanned, deleted=deleted)
    shards.check_gate()
    yield kv_pb2.SweepResponse(scanned=scanned, deleted=deleted, done=True)


class Sweeper:
    """Sweeps every partition of the node every interval_s, in bounded batches, then gives
    the pages that deletes freed back to the file system (ShardSet.reclaim).

    A pass that meets a partition closing or moving, or a full disk, is retried at the next
    interval. Any other error is a server fault: logged once here and passed to `on_fault` (services/
    reports it to Sentry); the sweeper keeps running.
    """

    def __init__(self, shards: ShardSet, interval_s: float = 30.0) -> None:
        self._shards, self.interval_s = shards, interval_s
        self._task: asyncio.Task[None] | None = None
        self.deleted = 0
        self.deleted_last_pass = 0
        self.reclaimed_bytes = 0
        # A reclaim that keeps failing (a full disk) is said at most every 10 s.
        self._reclaim_log = ThrottledLog(log, "reclaim failed; tried again at the next sweep", "failures")
        self.on_fault: Callable[[BaseException], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sweeper")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def sweep_once(self) -> int:
        """One pass over every partition, then a reclaim of each; returns how many entries
        it deleted."""
        deleted = self.deleted_last_pass = 0
        for partition in self._shards.partitions:
            if partition.writer.stopped_by is not None:
                # Stopped after an I/O error in a commit (logged and reported then): it
                # refuses every write until a restart, and the others are still swept.
                continue
            before = deleted
            async for _, gone in sweep_range(self._shards, partition.range):
                deleted = self.deleted_last_pass = before + gone
            try:
                self.reclaimed_bytes += await self._shards.reclaim(partition)
            except StorageFaultError as err:  # a full disk, an I/O error: the others go on
                self._reclaim_log.note(partition_id=partition.id, cause=str(err))
        self.deleted += deleted
        return deleted

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep_once()
            except (UnavailableError, WrongPartitionError):
                log.warning("sweep pass interrupted", exc_info=True)
            except DiskFullError as err:  # the partition's writer logs the full disk
                extra = {"component": "sweeper", "partition_id": err.partition_id}
                log.warning("sweep pass stopped: the disk is full", extra=extra)
            except Exception as err:
                log.error("sweep pass failed", exc_info=err, extra={"component": "sweeper"})
                if self.on_fault is not None:
                    self.on_fault(err)
