"""A commit whose WAL fsync fails: the partition stops taking writes (fsyncgate).

SQLite has written the batch's frames, commit frame included, when the fsync fails: the
COMMIT is rolled back in memory, but the frames are whole in the WAL and come back when
the file is next opened. A write answered with that fault may therefore be applied, and
one committed after it would overwrite those frames: from then on what the file holds
depends on whether the process crashed first. The fault is injected by a real SQLite VFS
(apsw's VFS shim over unix-excl) whose xSync fails on demand.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from keyspan.storage import shard as shard_module
from keyspan.storage.errors import StorageFaultError
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Put
from keyspan.storage.shard import Shard
from keyspan.storage.writer import PartitionWriter


class _FailingSync(apsw.VFS):
    NAME = "keyspan-test-failsync"

    def __init__(self) -> None:
        self.fail = False
        super().__init__(self.NAME, base="unix-excl")

    def xOpen(self, name: Any, flags: Any) -> apsw.VFSFile:
        return _File(self, name, flags)


class _File(apsw.VFSFile):
    def __init__(self, vfs: _FailingSync, name: Any, flags: Any) -> None:
        self.vfs = vfs
        super().__init__("unix-excl", name, flags)

    def xSync(self, flags: int) -> None:
        if self.vfs.fail:
            raise apsw.IOError("injected: fsync failed")
        super().xSync(flags)


@pytest.fixture
def failing_sync(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FailingSync]:
    vfs = _FailingSync()
    monkeypatch.setattr(shard_module, "SHARD_VFS", vfs.NAME)
    yield vfs
    vfs.unregister()


async def test_a_failed_commit_may_have_applied_and_stops_the_partitions_writes(
    tmp_path: Path, failing_sync: _FailingSync, caplog: pytest.LogCaptureFixture
) -> None:
    shard = Shard(tmp_path / "s.db", "p0", KeyRange())
    writer = PartitionWriter(shard)
    try:
        assert await writer.submit(Put(b"ok", b"1")) == 1
        failing_sync.fail = True
        with pytest.raises(StorageFaultError) as failed:
            await writer.submit(Put(b"maybe", b"2"))
        assert failed.value.may_have_applied
        failing_sync.fail = False  # the disk seems fine again: still no write goes in
        with caplog.at_level(logging.ERROR, logger="keyspan.storage.writer"):
            for n in range(20):
                with pytest.raises(
                    StorageFaultError, match="takes no more writes after an I/O error"
                ) as refused:
                    await writer.submit(Put(b"after%d" % n, b"3"))
                # the edge logs no traceback for it: its cause was, once (2,880 lines for 50 Puts)
                assert getattr(refused.value, "_keyspan_reported", False)
        refusals = [
            r for r in caplog.records if r.getMessage().startswith("writes refused: the partition stopped")
        ]
        assert len(refusals) == 1 and refusals[0].writes == 1  # type: ignore[attr-defined]
        assert writer.stopped_by is failed.value
        assert writer.faults == {"disk_full": 0, "io": 21}  # the failed commit and each refusal
    finally:
        await asyncio.to_thread(writer.close)
        shard.close()
    # What a restart serves: what was acknowledged, maybe the failed write, nothing after it.
    reopened = Shard(tmp_path / "s.db", "p0", KeyRange(), catalogued=True)
    try:
        with reopened.reader() as db:
            keys = [row[0] for row in db.execute("SELECT key FROM entries ORDER BY key")]
        assert not any(k.startswith(b"after") for k in keys) and b"ok" in keys
    finally:
        reopened.close()


async def test_the_sweeper_passes_over_a_stopped_partition_and_sweeps_the_others(tmp_path: Path) -> None:
    from keyspan.storage.shardset import ShardSet, now_ms, ranges_from_split_points
    from keyspan.streams.sweep import Sweeper

    shards = ShardSet(tmp_path)
    ranges = ranges_from_split_points([b"m"])
    await asyncio.to_thread(shards.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    try:
        for key in (b"a", b"z"):
            await shards.write(key, Put(key, b"v", expires_at_ms=now_ms() - 1))
        stopped = shards.locate(b"a")
        # as after a failed commit (the test above): every write refused until a restart
        fault = StorageFaultError(stopped.id, apsw.IOError("injected"), may_have_applied=True)
        stopped.writer.stopped_by = fault
        assert await Sweeper(shards).sweep_once() == 1
        assert [(p.id, p.shard.entries) for p in shards.partitions] == [("p0", 1), ("p1", 0)]
        assert stopped.writer.faults["io"] == 0  # it was not even asked
    finally:
        await asyncio.to_thread(shards.close)


async def test_a_reclaim_in_the_batch_whose_commit_failed_is_refused_not_run(
    tmp_path: Path, failing_sync: _FailingSync
) -> None:
    from keyspan.storage.mutations import Reclaim

    shard = Shard(tmp_path / "s.db", "p0", KeyRange())
    writer = PartitionWriter(shard)
    try:
        failing_sync.fail = True
        put, reclaim = await asyncio.gather(
            writer.submit(Put(b"maybe", b"1")), writer.submit(Reclaim(512)), return_exceptions=True
        )
        assert isinstance(put, StorageFaultError) and put.may_have_applied
        assert isinstance(reclaim, StorageFaultError) and "takes no more writes" in str(reclaim)
    finally:
        failing_sync.fail = False
        await asyncio.to_thread(writer.close)
        shard.close()
