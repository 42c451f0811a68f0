"""Opening a data dir on real SQLite files: the catalogue, and the shard files refused
(named, left untouched) rather than served wrong."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import apsw
import pytest

from keyspan.storage.errors import KeyspanError
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, Put
from keyspan.storage.shard import Shard
from keyspan.storage.shardset import ShardSet, ranges_from_split_points
from tests.storage.shardsets import open_set


async def test_a_shard_file_that_cannot_be_opened_is_named_and_the_others_are_closed(tmp_path: Path) -> None:
    shards = await open_set(tmp_path / "d", [b"g", b"n", b"u"])
    path = shards.partitions[1].shard.path
    shards.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"not an SQLite database " * 512)
    fds_before = len(os.listdir("/proc/self/fd"))
    again = ShardSet(tmp_path / "d")
    try:
        with pytest.raises(
            KeyspanError, match=r"^partition p1: cannot open .*p1\.db: file is not a database$"
        ):
            again.open([])
    finally:
        again.close()
    assert (
        len(os.listdir("/proc/self/fd")) == fds_before
    )  # p0, p2 and p3 were opened in parallel, then closed


def refused_start(data_dir: Path, match: str) -> None:
    again = ShardSet(data_dir)
    try:
        with pytest.raises(KeyspanError, match=match):
            again.open(ranges_from_split_points_as_ids([b"x"]))
    finally:
        again.close()


def ranges_from_split_points_as_ids(split: list[bytes]) -> list[tuple[str, KeyRange]]:
    return [(f"q{i}", r) for i, r in enumerate(ranges_from_split_points(split))]


async def test_written_shards_with_no_catalogue_are_refused_not_recut(tmp_path: Path) -> None:
    shards = await open_set(tmp_path / "d", [b"g", b"n"])
    await shards.write(b"a", Put(b"a", b"1"))
    await shards.write(b"p", Put(b"p", b"2"))
    shards.close()
    catalogue = tmp_path / "d" / "catalogue.json"
    saved = catalogue.read_bytes()
    catalogue.unlink()

    # Opened with other ranges, p0 and p2 would be served under ranges that are not theirs.
    refused_start(tmp_path / "d", r"holds shard files with data \(p0\.db, p2\.db\) but no catalogue\.json")
    assert sorted(p.name for p in (tmp_path / "d").glob("*.db")) == ["p0.db", "p1.db", "p2.db"]

    catalogue.write_bytes(saved)  # restored: everything is there
    again = await open_set(tmp_path / "d")
    try:
        assert [(await again.get(k)).value for k in (b"a", b"p")] == [b"1", b"2"]  # type: ignore[union-attr]
    finally:
        again.close()


async def test_empty_shards_of_a_first_start_with_no_catalogue_are_a_new_data_dir(tmp_path: Path) -> None:
    (await open_set(tmp_path / "d", [b"g"])).close()
    (tmp_path / "d" / "catalogue.json").unlink()  # as if the first start stopped before writing it
    (tmp_path / "d" / "p9.db").touch()  # a file SQLite created and never wrote
    again = ShardSet(tmp_path / "d")
    try:
        again.open(ranges_from_split_points_as_ids([b"x"]))
        assert [p.id for p in again.partitions] == ["q0", "q1"]
    finally:
        again.close()


def a_first_page_in_rollback_mode(path: Path, auto_vacuum: str = "INCREMENTAL") -> None:
    """What a first start killed while making a shard leaves (or one that found the disk
    full): SQLite wrote the file's first page in rollback mode, and never set WAL."""
    db = apsw.Connection(str(path))
    db.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
    db.execute("PRAGMA user_version=0")  # writes page 1
    db.close()
    assert path.stat().st_size > 0


@pytest.mark.parametrize("auto_vacuum", ["INCREMENTAL", "NONE"])  # NONE: a file of an older keyspan
async def test_a_shard_file_a_first_start_stopped_making_is_made_again(
    tmp_path: Path, auto_vacuum: str
) -> None:
    """It was refused as "not in WAL mode: restore it from a copy" for ever, on a data dir
    that never held anything."""
    data = tmp_path / "d"
    data.mkdir()
    a_first_page_in_rollback_mode(data / "q1.db", auto_vacuum)
    shards = ShardSet(data)
    try:
        shards.open(ranges_from_split_points_as_ids([b"x"]))
        await shards.write(b"y", Put(b"y", b"1"))
        assert (await shards.get(b"y")).etag == 1  # type: ignore[union-attr]
        shard = shards.locate(b"y").shard
        assert shard.reclaims  # made with incremental auto-vacuum, as every new shard
    finally:
        shards.close()
    db = apsw.Connection(str(data / "q1.db"))
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


async def test_a_listed_shard_file_in_rollback_mode_is_still_refused(tmp_path: Path) -> None:
    """Listed in the catalogue, it was made before: a file in rollback mode replaced it."""
    (await open_set(tmp_path / "d", [b"g"])).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'd' / 'p1.db'}{suffix}").unlink(missing_ok=True)
    a_first_page_in_rollback_mode(tmp_path / "d" / "p1.db")
    raw = (tmp_path / "d" / "p1.db").read_bytes()
    again = ShardSet(tmp_path / "d")
    try:
        with pytest.raises(KeyspanError, match=r"p1\.db is damaged: it is not in WAL mode \(delete\)"):
            again.open()
    finally:
        again.close()
    assert (tmp_path / "d" / "p1.db").read_bytes() == raw


async def test_a_listed_shard_file_that_is_gone_is_refused_not_created_empty(tmp_path: Path) -> None:
    shards = await open_set(tmp_path / "d", [b"g", b"n"])
    await shards.write(b"h", Put(b"h", b"1"))
    shards.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'd' / 'p1.db'}{suffix}").unlink(missing_ok=True)
    refused_start(tmp_path / "d", r"lists partitions whose shard files are missing \(p1\.db\)")
    assert not (tmp_path / "d" / "p1.db").exists()


@pytest.mark.parametrize("body", ['{"partitions": [', '{"partitions": [{"id": "p0"}]}', "[]"])
async def test_an_unreadable_catalogue_is_refused_naming_it(tmp_path: Path, body: str) -> None:
    (await open_set(tmp_path / "d")).close()
    (tmp_path / "d" / "catalogue.json").write_text(body)
    refused_start(tmp_path / "d", r"^cannot read .*catalogue\.json \(\w+: .*\); it says which key range")


@pytest.mark.parametrize(("partition_id", "key_range"), [("s", KeyRange(b"a", b"m")), ("t", KeyRange())])
def test_a_shard_made_for_another_partition_is_refused_untouched(
    tmp_path: Path, partition_id: str, key_range: KeyRange
) -> None:
    Shard(tmp_path / "s.db", "s", KeyRange()).close()
    shard = Shard(tmp_path / "s.db", "s", KeyRange())  # the same partition opens again
    shard.apply_batch([Put(b"b", b"held")])  # (an empty one is used again: nothing to hide)
    shard.close()
    with pytest.raises(KeyspanError, match=r"^partition \w: .*s\.db holds partition s \[-inf, \+inf\), not "):
        Shard(tmp_path / "s.db", partition_id, key_range)
    db = apsw.Connection(str(tmp_path / "s.db"), vfs="unix-excl")
    assert db.execute("SELECT value FROM meta WHERE name = 'end'").fetchone() == (None,)
    assert db.execute("SELECT value FROM meta WHERE name = 'partition_id'").fetchone() == ("s",)
    db.close()


def test_a_shard_of_another_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    with shard._db:
        shard._db.execute("UPDATE meta SET value = 2 WHERE name = 'schema_version'")
    shard.close()
    with pytest.raises(
        KeyspanError, match=r"^partition t: .*s\.db has schema version 2; this keyspan reads version 1"
    ):
        Shard(tmp_path / "s.db", "t", KeyRange(b"a"))
    db = apsw.Connection(str(tmp_path / "s.db"), vfs="unix-excl")
    assert db.execute("SELECT value FROM meta WHERE name = 'partition_id'").fetchone() == ("s",)
    db.close()


def files_of(path: Path) -> dict[str, bytes]:
    """The shard file and its WAL, byte for byte."""
    return {f.name: f.read_bytes() for f in path.parent.glob(path.name + "*")}


@pytest.mark.parametrize("loss", ["cut to 0 bytes", "replaced by a new database"])
async def test_a_listed_shard_that_lost_its_contents_is_refused_not_served_empty(
    tmp_path: Path, loss: str
) -> None:
    shards = await open_set(tmp_path / "d", [b"g"])
    await shards.write(b"a", Put(b"a", b"1"))
    shards.close()
    path = tmp_path / "d" / "p0.db"
    path.write_bytes(b"")
    if loss == "replaced by a new database":
        db = apsw.Connection(str(path))
        db.execute("PRAGMA journal_mode=WAL")  # SQLite writes the header page, no tables
        db.close()
    before = files_of(path)
    # Served, its range would read empty and its etags start again at 1.
    refused_start(
        tmp_path / "d", r"^partition p0: .*p0\.db is damaged: it (is empty|holds no record of its partition)"
    )
    assert files_of(path) == before


@pytest.mark.parametrize(
    ("fill", "at", "found"),
    [
        (b"\x00", 8, r"Tree \d+ page \d+ cell \d+: Offset 0 out of range"),  # quick_check lists faults
        (b"\xff", 0, r"database disk image is malformed"),  # quick_check cannot go on
    ],
)
async def test_a_damaged_shard_is_refused_on_one_line_naming_it_and_left_byte_for_byte(
    tmp_path: Path, fill: bytes, at: int, found: str
) -> None:
    shards = await open_set(tmp_path / "d", [b"g"])
    keys = [b"a%06d" % i for i in range(2000)]
    await shards.bulk_put(Bulk(keys, [bytes(100)] * len(keys)))
    shards.close()
    path = tmp_path / "d" / "p0.db"
    data = bytearray(path.read_bytes())
    page = len(data) // 4096 // 2 * 4096
    data[page + at : page + at + 64] = fill * 64
    path.write_bytes(data)
    db = apsw.Connection(str(path), vfs="unix-excl")  # a commit left in the WAL, as by a crash
    with db:
        db.execute("UPDATE entries SET value = x'01' WHERE key = ?", (keys[0],))
    db.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    db.close()
    before = files_of(path)
    assert sorted(before) == ["p0.db", "p0.db-wal"]
    again = ShardSet(tmp_path / "d")
    try:
        with pytest.raises(KeyspanError) as refused:
            again.open([])
    finally:
        again.close()
    message = str(refused.value)
    assert re.match(rf"^partition p0: .*p0\.db is damaged: SQLite's quick_check found: .*{found}", message)
    assert "\n" not in message and message.endswith("restore it (or the whole data dir) from a copy")
    assert files_of(path) == before  # not written, not checkpointed


async def test_the_shards_are_opened_and_checked_in_parallel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = await open_set(tmp_path / "d", [b"g", b"n", b"u"])
    shards.close()
    all_four = threading.Barrier(4, timeout=10)  # broken unless the four checks run at once
    check = Shard.check

    def check_together(shard: Shard) -> None:
        all_four.wait()
        check(shard)

    monkeypatch.setattr(Shard, "check", check_together)
    again = ShardSet(tmp_path / "d")
    try:
        again.open([])
        assert len(again.partitions) == 4
    finally:
        again.close()


def test_a_shard_that_lost_its_revision_record_is_refused(tmp_path: Path) -> None:
    # It was served, and every write failed with INTERNAL ("UNIQUE constraint failed").
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    shard.apply_batch([Put(b"a", b"1")])
    shard._db.execute("DELETE FROM meta WHERE name = 'revision'")
    shard.close()
    with pytest.raises(KeyspanError, match="is damaged: it holds no record of its revision"):
        Shard(tmp_path / "s.db", "s", KeyRange(), catalogued=True)


def test_empty_shards_of_an_unfinished_first_start_are_used_again_under_other_split_points(
    tmp_path: Path,
) -> None:
    # Refused as "made for another partition map", though no file held anything.
    first = ShardSet(tmp_path / "d")
    first.open([(f"p{i:04d}", r) for i, r in enumerate(ranges_from_split_points([b"g", b"n"]))])
    first.close()
    (tmp_path / "d" / "catalogue.json").unlink()  # killed before it wrote the catalogue
    again = ShardSet(tmp_path / "d")
    again.open([(f"p{i:04d}", r) for i, r in enumerate(ranges_from_split_points([b"m"]))])
    try:
        assert [(p.id, p.range) for p in again.partitions] == [
            ("p0000", KeyRange(b"", b"m")),
            ("p0001", KeyRange(b"m", None)),
        ]
    finally:
        again.close()
