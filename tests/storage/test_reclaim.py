"""Giving the pages that deletes free back to the file system, on real shard files."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import apsw
import pytest

from keyspan.storage.errors import DiskFullError, StorageFaultError
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, Delete, Put, Reclaim, Reclaimed
from keyspan.storage.shard import RECLAIM_STEP_PAGES, Shard
from keyspan.storage.shardset import ShardSet, now_ms, ranges_from_split_points
from keyspan.storage.writer import PartitionWriter
from keyspan.streams.sweep import Sweeper

ROWS = 40_000  # ~6.6 MB of 100-byte values: a reclaim of it takes several steps


def keys(n: int = ROWS) -> list[bytes]:
    return [b"k%08d" % i for i in range(n)]


def loaded_shard(path: Path) -> Shard:
    shard = Shard(path, "s", KeyRange())
    shard.apply_batch([Bulk(keys(), [b"v" * 100] * ROWS)])
    shard._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return shard


def file_bytes(path: Path) -> int:
    return path.stat().st_size


async def test_the_sweeper_gives_back_what_deletes_freed_and_keeps_every_entry(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    ranges = ranges_from_split_points([b"m"])
    await asyncio.to_thread(shards.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    try:
        await shards.bulk_put(Bulk(keys(), [b"v" * 100] * ROWS))
        partition = shards.locate(b"k")
        path = partition.shard.path
        await asyncio.to_thread(partition.shard._db.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
        loaded = file_bytes(path)
        kept = keys()[::10]
        await asyncio.gather(*(shards.write(k, Delete(k)) for i, k in enumerate(keys()) if i % 10))
        revision, entries = partition.shard.revision, partition.shard.entries
        assert file_bytes(path) == loaded  # deletes alone keep the pages for later writes

        sweeper = Sweeper(shards)
        await sweeper.sweep_once()

        assert file_bytes(path) < loaded / 2  # the 10% left are spread over every page
        assert sweeper.reclaimed_bytes == partition.shard.reclaimed_bytes > loaded / 2
        # Nothing stored changed: the same entries, count and revision.
        assert partition.shard.revision == revision and partition.shard.entries == entries == len(kept)
        for k in kept:
            row = await shards.get(k)
            assert row is not None and row.value == b"v" * 100
        assert await shards.get(keys()[1]) is None
        # A second pass finds nothing worth giving back, and a partition not written to
        # since is not even asked.
        before = sweeper.reclaimed_bytes
        await sweeper.sweep_once()
        assert sweeper.reclaimed_bytes == before
        looks = []
        look = partition.shard.reclaim
        partition.shard.reclaim = lambda m: looks.append(m) or look(m)  # type: ignore[method-assign]
        assert await shards.reclaim(partition) == 0 and looks == []
        await shards.write(b"k", Put(b"k", b"v"))
        assert await shards.reclaim(partition) == 0 and len(looks) == 1
    finally:
        await asyncio.to_thread(shards.close)


def test_a_few_free_pages_are_kept_for_the_next_writes(tmp_path: Path) -> None:
    shard = loaded_shard(tmp_path / "s.db")
    try:
        size = file_bytes(shard.path)
        shard.apply_batch([Delete(k) for k in keys()[:2000]])  # 5%: under a sixteenth of the file
        assert shard.reclaim(Reclaim(RECLAIM_STEP_PAGES)) == Reclaimed(0, False)
        shard._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert file_bytes(shard.path) == size and shard.reclaimed_bytes == 0
    finally:
        shard.close()


def test_a_reclaim_goes_on_in_steps_once_started_and_returns_every_free_page(tmp_path: Path) -> None:
    shard = loaded_shard(tmp_path / "s.db")
    try:
        shard.apply_batch([Delete(k) for k in keys()[: ROWS // 2]])
        free = shard._db.execute("PRAGMA freelist_count").fetchone()[0]
        page = shard._db.execute("PRAGMA page_size").fetchone()[0]
        steps = [shard.reclaim(Reclaim(RECLAIM_STEP_PAGES, started=i > 0)) for i in range(20)]
        done = [s.more for s in steps].index(False)
        assert done == free // RECLAIM_STEP_PAGES
        assert sum(s.freed_bytes for s in steps) == free * page == shard.reclaimed_bytes
        assert shard._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
        assert all(s == Reclaimed(0, False) for s in steps[done + 1 :])
    finally:
        shard.close()


def test_a_shard_made_without_auto_vacuum_is_served_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    loaded_shard(path).close()
    earlier = apsw.Connection(str(path))  # as shards were made before: no auto-vacuum
    earlier.execute("PRAGMA auto_vacuum=NONE")
    earlier.execute("VACUUM")
    earlier.close()
    shard = Shard(path, "s", KeyRange(), catalogued=True)
    try:
        assert not shard.reclaims
        shard.apply_batch([Delete(k) for k in keys()[: ROWS // 2]])
        shard._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = file_bytes(path)
        assert shard.reclaim(Reclaim(RECLAIM_STEP_PAGES)) == Reclaimed(0, False)
        assert file_bytes(path) == size and shard.entries == ROWS // 2
    finally:
        shard.close()


async def test_a_reclaim_that_fails_fails_alone_after_its_batch_s_writes(tmp_path: Path) -> None:
    shard = loaded_shard(tmp_path / "s.db")
    shard.apply_batch([Delete(k) for k in keys()[: ROWS // 2]])
    writer = PartitionWriter(shard)
    try:
        commits = []

        def veto_the_second(*_: object) -> bool:  # the batch commits, its reclaim does not
            commits.append(1)
            return len(commits) == 2

        shard._db.set_commit_hook(veto_the_second)
        put, reclaim = writer.submit(Put(b"a", b"1")), writer.submit(Reclaim(RECLAIM_STEP_PAGES))
        etag, failed = await asyncio.gather(put, reclaim, return_exceptions=True)  # one batch
        shard._db.set_commit_hook(None)
        assert writer.batches == 1 and len(commits) == 2
        assert isinstance(etag, int) and isinstance(failed, StorageFaultError)
        assert isinstance(failed.__cause__, apsw.ConstraintError)
        assert not shard._db.in_transaction and shard.reclaimed_bytes == 0
        with shard.reader() as db:
            row = Shard.get(db, b"a", now_ms())
            assert row is not None and row.etag == etag
        assert (await writer.submit(Reclaim(RECLAIM_STEP_PAGES))).freed_bytes > 0
    finally:
        await asyncio.to_thread(writer.close)
        shard.close()


async def test_a_reclaim_that_failed_is_tried_again_at_the_next_look(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    await asyncio.to_thread(shards.open, [("p0", KeyRange())])
    try:
        partition = shards.partitions[0]
        await shards.bulk_put(Bulk(keys(), [b"v" * 100] * ROWS))
        await asyncio.gather(*(shards.write(k, Delete(k)) for k in keys()[: ROWS // 2]))
        partition.shard._db.set_commit_hook(lambda: True)  # the reclaim's COMMIT fails
        with pytest.raises(StorageFaultError):
            await shards.reclaim(partition)
        partition.shard._db.set_commit_hook(None)
        assert await shards.reclaim(partition) > 0  # looked at again, with no write between
    finally:
        await asyncio.to_thread(shards.close)


async def test_a_partition_whose_reclaim_keeps_failing_does_not_stop_the_sweep_of_the_others(
    tmp_path: Path,
) -> None:
    shards = ShardSet(tmp_path)
    ranges = ranges_from_split_points([b"m"])
    await asyncio.to_thread(shards.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    try:
        await shards.bulk_put(Bulk(keys(), [b"v" * 100] * ROWS))  # all in p0, [, m)
        await asyncio.gather(*(shards.write(k, Delete(k)) for k in keys()[: ROWS // 2]))
        await shards.write(b"x", Put(b"x", b"v", expires_at_ms=now_ms() - 1))  # p1 to sweep
        full = DiskFullError("p0", apsw.FullError("database or disk is full"))
        shards.partitions[0].shard.reclaim = lambda m: full  # type: ignore[method-assign]
        assert await Sweeper(shards).sweep_once() == 1  # p1's expired entry, after p0's failure
        assert shards.partitions[1].shard.entries == 0
    finally:
        await asyncio.to_thread(shards.close)


class _FailingPragma:
    """A shard's write connection whose `PRAGMA <name>` fails with an I/O error."""

    def __init__(self, db: apsw.Connection, name: str) -> None:
        self._db, self._name = db, name

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == f"PRAGMA {self._name}":
            raise apsw.IOError("injected: disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_reclaim_whose_look_at_the_free_pages_fails_returns_the_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first SQLite calls (how many pages are free) were outside its try: their fault
    was raised, where a reclaim's faults are returned and fail the reclaim alone."""
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        monkeypatch.setattr(shard, "_db", _FailingPragma(shard._db, "freelist_count"))
        failed = shard.reclaim(Reclaim(RECLAIM_STEP_PAGES))
        assert isinstance(failed, StorageFaultError) and isinstance(failed.__cause__, apsw.IOError)
        monkeypatch.undo()
        assert shard.reclaim(Reclaim(RECLAIM_STEP_PAGES)) == Reclaimed(0, False)
        assert shard.apply_batch([Put(b"a", b"1")]) == [1]
    finally:
        shard.close()
