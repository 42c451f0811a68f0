"""`keyspan vacuum` on real data dirs: a stopped server's shard files rewritten smaller."""

from __future__ import annotations

from pathlib import Path

import apsw
from click.testing import CliRunner

from keyspan.services.cli import cli
from keyspan.storage.dirlock import lock_directory
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, Delete
from keyspan.storage.shard import Shard
from keyspan.storage.shardset import ShardSet, ranges_from_split_points

KEYS = [b"k%06d" % i for i in range(20_000)]


def data_dir_made_before_reclaim(path: Path) -> Path:
    """A data dir of two partitions whose shards have no auto-vacuum (as before the
    reclaim), most of their rows deleted: free pages the files keep."""
    shards = ShardSet(path)
    shards.open([(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"m"]))])
    shards.close()
    for db_path in sorted(path.glob("p*.db")):
        db = apsw.Connection(str(db_path))
        db.execute("PRAGMA auto_vacuum=NONE")
        db.execute("VACUUM")
        db.close()
    shard = Shard(path / "p0.db", "p0", KeyRange(b"", b"m"), catalogued=True)
    assert not shard.reclaims
    shard.apply_batch([Bulk(KEYS, [b"v" * 100] * len(KEYS))])
    shard.apply_batch([Delete(k) for k in KEYS[:18_000]])
    shard.close()
    return path


def test_vacuum_rewrites_each_shard_smaller_with_auto_vacuum_on(tmp_path: Path) -> None:
    data = data_dir_made_before_reclaim(tmp_path / "data")
    before = (data / "p0.db").stat().st_size
    result = CliRunner().invoke(cli, ["vacuum", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("p0: ") and "p1: " in result.output
    assert (data / "p0.db").stat().st_size < before / 3
    for db_path in (data / "p0.db", data / "p1.db"):
        db = apsw.Connection(str(db_path))
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        db.close()
    shards = ShardSet(data)  # and the data is all there
    shards.open()
    try:
        assert shards.partitions[0].shard.entries == 2_000 and shards.partitions[0].shard.reclaims
    finally:
        shards.close()


def test_vacuum_refuses_a_data_dir_in_use_or_none(tmp_path: Path) -> None:
    data = data_dir_made_before_reclaim(tmp_path / "data")
    held = lock_directory(data)  # a server running on it
    try:
        result = CliRunner().invoke(cli, ["vacuum", "--data", str(data)])
    finally:
        held.close()
    assert result.exit_code == 4 and "in use by another keyspan process; stop it first" in result.output
    result = CliRunner().invoke(cli, ["vacuum", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 4 and "is not a keyspan data dir" in result.output
