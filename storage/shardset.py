"""The partitions one node holds: their shards, writers, catalogue and key routing.

The catalogue (``catalogue.json`` in the data directory) lists each partition's id,
range and file, and is replaced atomically on every change, so a restarted node reopens
exactly the partitions it had.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from keyspan.storage.dirlock import lock_directory
from keyspan.storage.errors import ConfigError, KeyspanError, UnavailableError, WrongPartitionError, key_text
from keyspan.storage.jsondocs import json_text
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, Mutation, Reclaim, Reclaimed, SweepBatch
from keyspan.storage.openfiles import RESERVED_FILES, files_per_partition, open_files_limit
from keyspan.storage.readers import ReadPool
from keyspan.storage.rowcache import ABSENT, MISSING, RowCache
from keyspan.storage.shard import RECLAIM_STEP_PAGES, Row, Shard
from keyspan.storage.writer import PartitionWriter, WriteObserver

log = logging.getLogger(__name__)
CATALOGUE = "catalogue.json"
# Shards opened and checked at once at start-up (each read by a thread of its own).
OPEN_THREADS = 8


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PartitionStats:
    partition_id: str
    range: KeyRange
    approximate_entries: int
    bytes: int
    expired_entries: int
    revision: int
    oldest_expired_ms: int | None = None  # expiry of the oldest expired entry still stored


@dataclass
class DroppedCounts:
    """What the partitions this process no longer holds had counted, so that its node-wide
    counters only ever grow (a drop read as a counter reset made rate() spike)."""

    reads: int = 0
    writes: int = 0
    faults: dict[str, int] = field(default_factory=lambda: {"disk_full": 0, "io": 0})
    reclaimed_bytes: int = 0

    def add(self, p: Partition) -> None:
        self.reads += p.reads
        self.writes += p.writer.mutations
        for reason, n in p.writer.faults.items():
            self.faults[reason] = self.faults.get(reason, 0) + n
        self.reclaimed_bytes += p.shard.reclaimed_bytes


@dataclass(eq=False)
class Partition:
    """One partition open on this node: its shard and its writer."""

    id: str
    range: KeyRange
    shard: Shard
    writer: PartitionWriter
    reads: int = 0  # reads served (Gets and scan batches), for the metrics
    # The revision when free pages were last looked for: every write that can free pages
    # (a delete, a sweep, an overwrite, the change log's trim) moves it on.
    reclaim_checked_at: int = -1

    async def write(self, mutation: Mutation) -> Any:
        return await self.writer.submit(mutation)


def ranges_from_split_points(split_points: Sequence[bytes]) -> list[KeyRange]:
    """The ranges that tile the whole key space, cut at the sorted split points."""
    points = sorted(set(split_points))
    if b"" in points:
        raise ConfigError("split points must be non-empty keys")
    bounds: list[bytes | None] = [b"", *points, None]
    return [KeyRange(bounds[i] or b"", bounds[i + 1]) for i in range(len(bounds) - 1)]


@dataclass(frozen=True, kw_only=True)
class ShardSetOptions:
    synchronous: str = "FULL"
    read_threads: int = 2
    inline_read_budget_s: float = 0.001  # 0: every read on the read threads
    row_cache_bytes: int = 64 << 20  # 0: no row cache
    max_write_batch: int = 256
    commit_wait_s: float = 0.0
    changelog_max: int = 100_000
    # SQLite's memory in this process (page caches, mostly), a soft limit; 0: none. Each
    # connection caches up to 16 MiB, and a partition has several (its writer, the loop's
    # reader, one per read thread...): without a limit, 12 partitions read through 3
    # connections each held ~600 MiB; with 128 MiB set, 128 MiB.
    sqlite_memory_bytes: int = 256 << 20


class ShardSet:
    """The node's partitions, in key order. Not thread-safe: use it from the event loop.

    `on_missing` builds the error for a key no local partition owns: a WrongPartitionError
    (the cluster's node fills in the owner from its map; by default it names no owner), or
    UnavailableError while the partitions are not open (`keyspan serve`). `start_below`
    gives the start of the partition that holds the keys just below a bound (None: the
    key space's end), where a map knows it (the cluster's node), else None: a reverse scan
    that reaches a part not held here names that partition's owner, whose keys come next.
    """

    def __init__(self, data_dir: Path, options: ShardSetOptions | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.options = options or ShardSetOptions()
        self.row_cache = RowCache(self.options.row_cache_bytes) if self.options.row_cache_bytes else None
        self.reads = ReadPool(self.options.read_threads, inline_budget_s=self.options.inline_read_budget_s)
        self._partitions: list[Partition] = []
        self._starts: list[bytes] = []
        self.dropped = DroppedCounts()
        self._counts_lock = threading.Lock()  # a partition leaves and is counted as dropped at once
        self.on_missing: Callable[[bytes], KeyspanError] = WrongPartitionError
        self.start_below: Callable[[bytes | None], bytes | None] = lambda bound: None
        # The ranges this process is meant to hold now (serve: the whole key space; a node:
        # what its map assigns it): Stats refuses while one is not open, not a partial answer.
        self.should_hold: Callable[[], Sequence[KeyRange]] = lambda: ()
        # Timings of every writer opened after it is set (services/ turns them into metrics).
        self.write_observer: WriteObserver | None = None
        # Called before every client write, after it (True: it committed, or False: it was
        # refused, from a copy that may be stale) and after every client read: raises to
        # refuse the call (a node's OwnershipFence); None: every one is answered.
        self.gate: Callable[[bool], None] | None = None
        self._warned_open_files = False

    @staticmethod
    def sqlite_memory_bytes() -> int:
        """What SQLite holds now in this process: the shards' page caches, mostly."""
        return int(apsw.memory_used())

    # -- lifecycle (blocking: call through asyncio.to_thread at start-up) -------------------

    def open(self, initial_ranges: Sequence[tuple[str, KeyRange]] = ()) -> None:
        """Open the catalogue's partitions, creating `initial_ranges` on a new data dir.

        Every shard is checked (SQLite quick_check) before it is served.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        apsw.soft_heap_limit(self.options.sqlite_memory_bytes)  # for the whole process
        catalogue = self.data_dir / CATALOGUE
        catalogued = catalogue.exists()
        if catalogued:
            wanted = self.read_catalogue()
            self._check_catalogue_holds(catalogue, wanted)
        else:
            self._refuse_data_without_catalogue()
            wanted = list(initial_ranges)
        opened_shards = self._open_shards(wanted, catalogued)
        for (partition_id, key_range), opened in zip(wanted, opened_shards, strict=True):
            self._serve(partition_id, key_range, *opened)
        self._write_catalogue()

    def read_catalogue(self) -> list[tuple[str, KeyRange]]:
        """The catalogue's partitions, each with its shard file there: a shard file that is
        gone would otherwise be created empty, and its range served with nothing in it.
        KeyspanError when the catalogue is unreadable or inconsistent."""
        catalogue = self.data_dir / CATALOGUE
        try:
            listed = json.loads(catalogue.read_text())["partitions"]
            wanted = [(p["id"], _range_from_json(p)) for p in listed]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise KeyspanError(
                f"cannot read {catalogue} ({type(err).__name__}: {err}); it says which key range "
                "each shard file serves: restore it (or the whole data dir) from a copy"
            ) from None
        ids = [pid for pid, _ in wanted]
        bad = next((pid for pid in ids if not isinstance(pid, str) or not _PARTITION_ID.fullmatch(pid)), None)
        twice = next((pid for pid in ids if ids.count(pid) > 1), None)
        ordered = sorted(wanted, key=lambda w: w[1].start)
        overlap = next(
            (
                (a, b)
                for (a, ra), (b, rb) in itertools.pairwise(ordered)
                if ra.end is None or ra.end > rb.start
            ),
            None,
        )
        if bad is not None or twice is not None or overlap is not None:
            why = (
                f"partition id {bad!r} is not a plain name"
                if bad is not None
                else f"partition {twice} is listed twice"
                if twice is not None
                else f"the ranges of {overlap[0]} and {overlap[1]} overlap"  # type: ignore[index]
            )
            raise KeyspanError(
                f"{catalogue} is damaged: {why}; it says which key range each shard file "
                "serves: restore it (or the whole data dir) from a copy"
            )
        missing = [f"{pid}.db" for pid, _ in wanted if not (self.data_dir / f"{pid}.db").exists()]
        if missing:
            raise KeyspanError(
                f"{catalogue} lists partitions whose shard files are missing ({', '.join(missing)}); "
                "restore them (or the whole data dir) from a copy: starting would serve their "
                "ranges empty"
            )
        return wanted

    def _check_catalogue_holds(self, catalogue: Path, wanted: Sequence[tuple[str, KeyRange]]) -> None:
        """Refuse a catalogue that leaves out part of what this process must hold
        (`should_hold`: serve's whole key space): the server said SERVING and answered
        that part "starting" for ever, its shard files unread. (Its ranges do not overlap:
        read_catalogue checked.)"""
        ordered = sorted((r for _, r in wanted), key=lambda r: r.start)
        for need in self.should_hold():
            edge: bytes | None = need.start  # what is held runs up to here
            for r in ordered:
                if edge is None or (need.end is not None and edge >= need.end) or r.start > edge:
                    break
                if r.end is None or r.end > edge:
                    edge = r.end
            if edge is not None and (need.end is None or edge < need.end):
                raise KeyspanError(
                    f"{catalogue} is damaged: no partition holds key {key_text(edge)}; it says "
                    "which key range each shard file serves: restore it (or the whole data dir) "
                    "from a copy"
                )

    def _refuse_data_without_catalogue(self) -> None:
        """A data dir with no catalogue is new, unless it holds shards that were written to:
        their ranges are in the lost catalogue, not here (shards created by a first start
        that stopped before it wrote the catalogue are empty, and are used again)."""
        written = [path.name for path in sorted(self.data_dir.glob("*.db")) if Shard.was_written(path)]
        if written:
            raise KeyspanError(
                f"{self.data_dir} holds shard files with data ({', '.join(written)}) but no "
                f"{CATALOGUE}, which says which key range each one serves: restore it (or the "
                "whole data dir) from a copy; to start empty, move the shard files away"
            )

    def _lock_data_dir(self) -> None:
        """Hold an exclusive lock on the data dir for as long as this process lives."""
        self._lock_file = lock_directory(self.data_dir)

    def _open_shards(
        self, wanted: Sequence[tuple[str, KeyRange]], catalogued: bool
    ) -> list[tuple[Shard, float]]:
        """Open and check the shards, up to OPEN_THREADS at a time: quick_check reads every
        page and SQLite does it without the GIL, so a cold start reads the files in
        parallel (4 shards of 420 MB from a cold page cache: 12.5 s against 29 s one by one).
        If any fails, the others are closed and the first failure (in `wanted` order) raised."""
        if len(wanted) <= 1:
            return [self._open_shard(*w, catalogued) for w in wanted]
        with ThreadPoolExecutor(min(OPEN_THREADS, len(wanted)), thread_name_prefix="shard-open") as pool:
            futures = [pool.submit(self._open_shard, *w, catalogued) for w in wanted]
        failures = [f.exception() for f in futures if f.exception() is not None]
        if failures:
            for f in futures:
                if f.exception() is None:
                    f.result()[0].close()
            raise failures[0]  # type: ignore[misc]
        return [f.result() for f in futures]

    def _open_shard(self, partition_id: str, key_range: KeyRange, catalogued: bool) -> tuple[Shard, float]:
        """The partition's shard, opened and checked, and how long that took in ms. A
        `catalogued` one must have been made before: a file that lost it all is refused."""
        started = time.monotonic()
        path = self.data_dir / f"{partition_id}.db"
        try:
            shard = Shard(
                path,
                partition_id,
                key_range,
                synchronous=self.options.synchronous,
                changelog_max=self.options.changelog_max,
                catalogued=catalogued,
            )
        except apsw.Error as err:  # a full disk, a file that is not a database, no permission
            raise KeyspanError(f"partition {partition_id}: cannot open {path}: {err}") from err
        return shard, (time.monotonic() - started) * 1000

    def _serve(self, partition_id: str, key_range: KeyRange, shard: Shard, open_ms: float) -> Partition:
        """Put an open shard in service: its writer, its place in key order, the row cache."""
        if self.row_cache is not None:
            # The node may have served this range before (a move away and back): forget it all.
            self.row_cache.clear()
            shard.before_commit = self.row_cache.committing
            shard.on_commit = self.row_cache.written
        partition = Partition(
            partition_id,
            key_range,
            shard,
            PartitionWriter(
                shard,
                max_batch=self.options.max_write_batch,
                commit_wait_s=self.options.commit_wait_s,
                observer=self.write_observer,
            ),
        )
        i = bisect.bisect_left(self._starts, key_range.start)
        self._partitions.insert(i, partition)
        self._starts.insert(i, key_range.start)
        log.info(
            "partition opened",
            extra={
                "partition_id": partition_id,
                "range": str(key_range),
                "revision": shard.revision,
                "open_ms": round(open_ms, 1),
            },
        )
        self._check_open_files()
        return partition

    def _check_open_files(self) -> None:
        """Warn once when the partitions may need more descriptors than the process has."""
        need = len(self._partitions) * files_per_partition(self.options.read_threads) + RESERVED_FILES
        limit = open_files_limit()
        if need > limit and not self._warned_open_files:
            self._warned_open_files = True
            log.warning(
                "open-files limit too low for the partitions: raise it (ulimit -n, LimitNOFILE=)",
                extra={"partitions": len(self._partitions), "files_needed": need, "limit": limit},
            )

    def add_partition(self, partition_id: str, key_range: KeyRange, revision_floor: int = 0) -> Partition:
        """Create or open one partition and record it in the catalogue. Its revision goes
        on from at least `revision_floor` (see Shard.raise_revision), set before it serves."""
        for p in self._partitions:
            if p.id == partition_id:
                return p
            if p.range.intersect(key_range) is not None:
                raise KeyspanError(f"range {key_range} overlaps partition {p.id} {p.range}")
        shard, open_ms = self._open_shard(partition_id, key_range, False)
        try:
            shard.raise_revision(revision_floor)
        except BaseException as err:
            shard.close()
            if isinstance(err, apsw.Error):  # a full disk: this partition fails to open
                raise KeyspanError(f"partition {partition_id}: cannot raise its revision: {err}") from err
            raise
        partition = self._serve(partition_id, key_range, shard, open_ms)
        self._write_catalogue()
        return partition

    def drop_partition(self, partition_id: str, *, delete_files: bool = False) -> None:
        """Stop serving a partition: its writer commits what is queued, then it closes."""
        for i, p in enumerate(self._partitions):
            if p.id == partition_id:
                # Counted as dropped in the same step, so a scrape never sees the node-wide
                # totals fall; what the writer commits while it closes counts too.
                with self._counts_lock:
                    del self._partitions[i], self._starts[i]
                    self.dropped.add(p)
                    mutations_before = p.writer.mutations
                self._write_catalogue()
                p.writer.close()
                self.dropped.writes += p.writer.mutations - mutations_before
                try:
                    p.shard.close()  # waits for reads still on its connections
                finally:
                    if self.row_cache is not None:
                        self.row_cache.clear()
                if delete_files:
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{p.shard.path}{suffix}").unlink(missing_ok=True)
                return

    def _write_catalogue(self) -> None:
        body = {
            "partitions": [
                {
                    "id": p.id,
                    "start": p.range.start.hex(),
                    "end": None if p.range.end is None else p.range.end.hex(),
                }
                for p in self._partitions
            ]
        }
        tmp = self.data_dir / (CATALOGUE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(body, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.data_dir / CATALOGUE)
        dir_fd = os.open(self.data_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        """Commit what every writer has queued, then close shards and read threads."""
        for p in self._partitions:
            p.writer.close()
        self.reads.close()
        for p in self._partitions:
            p.shard.close()
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()

    # -- routing --------------------------------------------------------------------------

    @property
    def partitions(self) -> list[Partition]:
        return list(self._partitions)

    def counted(self) -> tuple[list[Partition], DroppedCounts]:
        """The partitions held and a copy of what dropped ones counted, from one moment
        (the metrics scrape's thread)."""
        with self._counts_lock:
            return list(self._partitions), dataclasses.replace(self.dropped, faults=dict(self.dropped.faults))

    def locate(self, key: bytes) -> Partition:
        """The local partition that owns `key`; WrongPartitionError when none does."""
        i = bisect.bisect_right(self._starts, key) - 1
        if i >= 0:
            p = self._partitions[i]
            if key in p.range:
                return p
        raise self.on_missing(key)

    def overlapping(self, key_range: KeyRange) -> list[tuple[Partition, KeyRange]]:
        """The local partitions meeting key_range, in key order, each with the common part."""
        out = []
        for p in self._partitions:
            common = p.range.intersect(key_range)
            if common is not None:
                out.append((p, common))
        return out

    def held(
        self, key_range: KeyRange, *, reverse: bool = False
    ) -> tuple[list[tuple[Partition, KeyRange]], bytes | None]:
        """The local partitions meeting key_range, each with the common part, in key order
        (descending if reverse), up to the first part of the range no local partition
        holds; and a key of that gap (None: they hold all of it). A scan over a range some
        of which is not here (not open yet, moved away) must not read that part as empty."""
        parts = self.overlapping(key_range)
        if reverse:
            parts.reverse()
        edge = key_range.end if reverse else key_range.start
        for i, (_, common) in enumerate(parts):
            if (common.end if reverse else common.start) != edge:
                if reverse:  # the gap is [common.end, edge): its keys below edge come next
                    return parts[:i], self._gap_key_below(edge, common.end)  # type: ignore[arg-type]
                return parts[:i], edge
            edge = common.start if reverse else common.end
        if edge != (key_range.start if reverse else key_range.end):
            return parts, self._gap_key_below(edge, key_range.start) if reverse else edge
        return parts, None

    def _gap_key_below(self, bound: bytes | None, low: bytes) -> bytes:
        """A key of the gap [low, bound) in the partition holding its keys just below
        `bound`: the first that a reverse scan reads next. Without a map, `low`."""
        start = self.start_below(bound)
        return low if start is None else max(low, start)

    def covering(self, key_range: KeyRange) -> list[tuple[Partition, KeyRange]]:
        """held(key_range)'s partitions when they hold all of it; else the on_missing
        error for the gap's key."""
        parts, gap = self.held(key_range)
        if gap is not None:
            raise self.on_missing(gap)
        return parts

    # -- operations ----------------------------------------------------------------------

    async def get(
        self, key: bytes, paths: Sequence[str] = (), max_projection_bytes: int | None = None
    ) -> Row | None:
        partition = self.locate(key)
        partition.reads += 1
        shard = partition.shard

        cache = None if paths else self.row_cache
        generation = 0
        if cache is not None:
            found = cache.get(key, now_ms())
            if found is not MISSING:
                if self.gate is not None:
                    self.gate(False)
                return None if found is ABSENT else found  # type: ignore[no-any-return]
            generation = cache.generation  # before the read: see storage/rowcache.py

        def read(on_loop: bool) -> Row | None:
            row = Shard.get(shard.point_reader(wait=not on_loop), key, now_ms(), paths, max_projection_bytes)
            if cache is not None:
                cache.fill(key, row, generation)
            return row

        row = await self.reads.run_point(read)
        if self.gate is not None:
            self.gate(False)
        return row

    async def write(self, key: bytes, mutation: Mutation) -> Any:
        if self.gate is None:
            return await self.locate(key).write(mutation)
        self.gate(False)
        try:
            outcome = await self.locate(key).write(mutation)
        except KeyspanError as err:  # refused (an etag mismatch): by a copy that may be stale?
            self.gate(getattr(err, "may_have_applied", False))  # a fault that may have applied
            raise
        self.gate(True)
        return outcome

    async def bulk_put(self, batch: Bulk) -> tuple[int, bytes | None]:
        """Commit the longest prefix of `batch` inside its first entry's partition.

        Returns (accepted, next_key); next_key is None when every entry went in.
        """
        keys = batch.keys
        partition = self.locate(keys[0])
        end = partition.range.end
        accepted = len(keys) if end is None or keys[-1] < end else bisect.bisect_left(keys, end)
        self.check_gate()
        await partition.write(batch.prefix(accepted))
        if self.gate is not None:
            self.gate(True)
        return accepted, None if accepted == len(keys) else keys[accepted]

    async def check_json(self, batch: Bulk) -> Bulk:
        """`batch` marked json_checked once every JSON document in it is valid, also those
        past the prefix its first key's partition takes: a batch with a bad one is refused
        whole, before anything of it (or of a batch sent after it) commits. On a read
        thread: SQLite judges, as it will store them."""
        if batch.json is None:
            return batch
        shard = self.locate(batch.keys[0]).shard
        values = batch.values
        docs = [i for i, is_json in enumerate(batch.json) if is_json]

        def check() -> None:
            with shard.reader() as db:
                for i in docs:
                    json_text(db, values[i], f"entries[{i}].value")

        await self.reads.run(check)
        return dataclasses.replace(batch, json_checked=True)

    async def scan_batch(
        self,
        partition: Partition,
        key_range: KeyRange,
        *,
        reverse: bool,
        paths: Sequence[str],
        max_rows: int,
        max_bytes: int,
        max_projection_bytes: int | None = None,
        max_message_bytes: int | None = None,
    ) -> tuple[list[Row], bool]:
        def read() -> tuple[list[Row], bool]:
            with partition.shard.reader() as db:
                return Shard.scan(
                    db,
                    key_range,
                    now_ms(),
                    reverse=reverse,
                    paths=paths,
                    max_rows=max_rows,
                    max_bytes=max_bytes,
                    max_projection_bytes=max_projection_bytes,
                    max_message_bytes=max_message_bytes,
                )

        if partition not in self._partitions:
            raise UnavailableError(f"partition {partition.id} is no longer served here")
        partition.reads += 1
        batch = await self.reads.run(read)
        self.check_gate()
        return batch

    def check_gate(self) -> None:
        """Raise the gate's refusal when no client call may be answered now (a fenced
        node): before a write, after a read, around Stats and between a Sweep's batches.
        (`get` asks the gate itself: it is the hot path.)"""
        if self.gate is not None:
            self.gate(False)

    async def sweep_batch(self, partition: Partition, key_range: KeyRange, limit: int) -> tuple[int, int]:
        return await partition.write(SweepBatch(key_range.start, key_range.end, now_ms(), limit))

    async def reclaim(self, partition: Partition) -> int:
        """Give the partition's free pages back to the file system once they are worth it
        (Shard.reclaim), a step at a time, each queued behind the writes before it so
        none waits for more than one; returns the bytes given back. A partition not written
        to since its last look is not looked at again (no trip to its writer)."""
        revision = partition.shard.revision
        if revision == partition.reclaim_checked_at:
            return 0
        freed, started = 0, False
        while True:  # a step that fails raises: the next pass looks again
            outcome: Reclaimed = await partition.write(Reclaim(RECLAIM_STEP_PAGES, started))
            freed += outcome.freed_bytes
            if not outcome.more:
                partition.reclaim_checked_at = revision
                return freed
            started = True

    async def stats(self, *, complete: bool = True) -> list[PartitionStats]:
        """Every partition's stats, read on the read threads (the Stats RPC's source); with
        `complete`, the on_missing error while a range of `should_hold` is not open
        (starting, opening) and the gate's refusal on a fenced node, else the partitions
        open now."""
        if complete:  # the Stats RPC: not from a fenced node's copies (heartbeats: always)
            self.check_gate()
        for key_range in self.should_hold() if complete else ():
            self.covering(key_range)
        stats = [await self.reads.run(lambda p=p: partition_stats(p)) for p in self._partitions]
        if complete:
            self.check_gate()
        return stats


def partition_stats(p: Partition) -> PartitionStats:
    """One partition's counts, size and revision. Blocking: a read thread, or the metrics
    scrape thread, which reports exactly what the Stats RPC reports."""
    now = now_ms()
    with p.shard.stats_reader() as db:
        expired = Shard.count_expired(db, now)
        oldest = Shard.oldest_expired_ms(db, now)
    shard = p.shard
    return PartitionStats(p.id, p.range, shard.entries, shard.size_bytes(), expired, shard.revision, oldest)


_PARTITION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a file name in the data dir, and nothing else


def _range_from_json(p: dict[str, Any]) -> KeyRange:
    return KeyRange(bytes.fromhex(p["start"]), None if p["end"] is None else bytes.fromhex(p["end"]))
