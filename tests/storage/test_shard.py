"""The shard and the shard set on real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import apsw
import pytest

from keyspan.storage.errors import (
    EtagMismatchError,
    InvalidArgumentError,
    NotFoundError,
    NotJsonError,
    UnavailableError,
    ValueTooLargeError,
    WrongPartitionError,
)
from keyspan.storage.jsondocs import json_text
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, BulkRow, Delete, Patch, Put, SweepBatch
from keyspan.storage.shard import Shard
from keyspan.storage.shardset import ShardSet, ShardSetOptions, now_ms, partition_stats
from tests.storage.shardsets import open_set


async def test_the_shard_file_is_in_wal_mode_with_full_sync(shards: ShardSet) -> None:
    shard = shards.partitions[0].shard
    db = apsw.Connection(str(shard.path))
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Path(f"{shard.path}-wal").exists()
    assert shard._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


async def test_no_other_process_can_open_a_live_shard(shards: ShardSet) -> None:
    """unix-excl: the WAL index is in the node's memory (no -shm file), and another
    process cannot open the shard while the node has it open, not even to read."""
    await shards.write(b"k", Put(b"k", b"v"))
    shard = shards.partitions[0].shard
    assert not Path(f"{shard.path}-shm").exists()
    peek = (
        "import apsw, sys\n"
        "try:\n"
        "    apsw.Connection(sys.argv[1]).execute('SELECT count(*) FROM entries').fetchone()\n"
        "except apsw.BusyError:\n"
        "    print('busy')\n"
    )
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", peek, str(shard.path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await other.communicate()
    assert (other.returncode, out.strip()) == (0, b"busy")
    assert (await shards.get(b"k")).value == b"v"  # type: ignore[union-attr]


async def test_etags_grow_and_are_never_reused_after_delete(shards: ShardSet) -> None:
    first = await shards.write(b"k", Put(b"k", b"1"))
    second = await shards.write(b"k", Put(b"k", b"2"))
    assert await shards.write(b"k", Delete(b"k")) is True
    again = await shards.write(b"k", Put(b"k", b"3"))
    assert first < second < again
    row = await shards.get(b"k")
    assert row is not None and row.value == b"3" and row.etag == again


async def test_preconditions_are_checked_against_the_current_etag(shards: ShardSet) -> None:
    etag = await shards.write(b"k", Put(b"k", b"v", if_absent=True))
    with pytest.raises(EtagMismatchError) as caught:
        await shards.write(b"k", Put(b"k", b"w", if_absent=True))
    assert caught.value.current == etag
    with pytest.raises(EtagMismatchError):
        await shards.write(b"k", Put(b"k", b"w", if_etag=etag + 100))
    assert await shards.write(b"k", Put(b"k", b"w", if_etag=etag)) > etag
    with pytest.raises(EtagMismatchError) as gone:
        await shards.write(b"zz", Delete(b"zz", if_etag=5))
    assert gone.value.current == 0


async def test_json_documents_project_and_patch_atomically(shards: ShardSet) -> None:
    await shards.write(b"d", Put(b"d", b'{"a": 1, "b": {"c": [1, 2]}, "e": "x"}', json=True))
    row = await shards.get(b"d", ["$.b.c[1]", "$.missing"])
    assert row is not None and row.value == b'{"$.b.c[1]":2,"$.missing":null}'
    result = await shards.write(
        b"d", Patch(b"d", merge_patch='{"a": null, "n": 5}', set=(("$.b.z", '"new"'),), remove=("$.e",))
    )
    assert result.value == b'{"b":{"c":[1,2],"z":"new"},"n":5}'
    stored = await shards.get(b"d")
    assert stored is not None and stored.value == result.value and stored.etag == result.etag


@pytest.mark.parametrize(
    ("patch", "error", "field"),
    [
        (Patch(b"d", merge_patch="{nope"), InvalidArgumentError, "merge_patch"),
        (Patch(b"d", set=(("$.a", "{bad"),)), InvalidArgumentError, "set[0].value"),
        (Patch(b"d", set=(("a.b", "1"),)), InvalidArgumentError, "set[0].path"),
        (Patch(b"d", remove=("$.a", "$.a[")), InvalidArgumentError, "remove[1]"),
        (Patch(b"d", remove=("$",)), InvalidArgumentError, "remove[0]"),
        (Patch(b"bytes", merge_patch="{}"), NotJsonError, None),
        (Patch(b"absent", merge_patch="{}"), NotFoundError, None),
    ],
)
async def test_a_bad_patch_names_its_field_and_changes_nothing(
    shards: ShardSet, patch: Patch, error: type[Exception], field: str | None
) -> None:
    etag = await shards.write(b"d", Put(b"d", b'{"a": 1}', json=True))
    await shards.write(b"bytes", Put(b"bytes", b"raw"))
    with pytest.raises(error) as caught:
        await shards.write(patch.key, patch)
    if field is not None:
        assert caught.value.field == field  # type: ignore[attr-defined]
    row = await shards.get(b"d")
    assert row is not None and row.value == b'{"a":1}' and row.etag == etag


async def test_expired_entries_are_never_read_and_the_sweep_deletes_them(shards: ShardSet) -> None:
    now = now_ms()
    await shards.write(b"old", Put(b"old", b"v", expires_at_ms=now - 1))
    await shards.write(b"new", Put(b"new", b"v", expires_at_ms=now + 60_000))
    assert await shards.get(b"old") is None
    assert (await shards.get(b"new")) is not None
    stats = {s.partition_id: s for s in await shards.stats()}
    assert stats["p1"].expired_entries == 1 and stats["p1"].approximate_entries == 2
    part = shards.partitions[1]
    assert await shards.sweep_batch(part, part.range, 100) == (1, 1)
    stats = {s.partition_id: s for s in await shards.stats()}
    assert stats["p1"].expired_entries == 0 and stats["p1"].approximate_entries == 1


async def test_bulk_prefix_stops_at_the_partition_end_and_commits_whole(shards: ShardSet) -> None:
    rows = [BulkRow(k, b"v") for k in (b"a", b"b", b"l", b"m", b"n")]
    assert await shards.bulk_put(Bulk.of_rows(rows)) == (3, b"m")
    assert await shards.bulk_put(Bulk.of_rows(rows[3:])) == (2, None)
    bad = [BulkRow(b"c", b"{}", json=True), BulkRow(b"d", b"{oops", json=True)]
    with pytest.raises(InvalidArgumentError) as caught:
        await shards.bulk_put(Bulk.of_rows(bad))
    assert caught.value.field == "entries[1].value"
    assert await shards.get(b"c") is None


async def test_a_key_outside_every_partition_is_a_wrong_partition(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path / "d")
    await asyncio.to_thread(shards.open, [("only", KeyRange(b"b", b"c"))])
    try:
        with pytest.raises(WrongPartitionError):
            await shards.get(b"a")
    finally:
        shards.close()


async def test_revision_and_data_survive_reopen(tmp_path: Path) -> None:
    shards = await open_set(tmp_path / "d")
    etag = await shards.write(b"k", Put(b"k", b"v"))
    shards.close()
    again = await open_set(tmp_path / "d", split=[b"zzz"])  # the catalogue wins over new split points
    try:
        assert [p.range for p in again.partitions] == [KeyRange(b"", b"m"), KeyRange(b"m", None)]
        row = await again.get(b"k")
        assert row is not None and row.etag == etag
        assert await again.write(b"k", Put(b"k", b"w")) > etag
    finally:
        again.close()


async def test_concurrent_writes_share_transactions(shards: ShardSet) -> None:
    writer = shards.partitions[0].writer
    before = writer.batches
    etags = await asyncio.gather(*(shards.write(b"c%d" % i, Put(b"c%d" % i, b"v")) for i in range(64)))
    assert len(set(etags)) == 64
    assert writer.batches - before < 64


async def test_the_change_log_lists_every_write_by_revision(shards: ShardSet) -> None:
    for i in range(5):
        await shards.write(b"a", Put(b"a", b"%d" % i))
    await shards.write(b"b", Delete(b"b"))  # nothing deleted: no revision, no log entry
    await shards.write(b"a", Delete(b"a"))
    shard = shards.partitions[0].shard
    with shard.reader() as db:
        log = shard.changes_since(db, 0, 100)
    assert log == [(r, b"a") for r in range(1, 7)]


async def test_the_data_dir_is_locked_against_a_second_process(shards: ShardSet) -> None:
    other = ShardSet(shards.data_dir)
    with pytest.raises(Exception, match="in use"):
        other.open([])
    other.reads.close()


def test_the_entry_count_is_kept_exact_by_every_kind_of_write(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())

    def stored() -> int:
        return shard._db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def write(*mutations: object) -> list[object]:
        outcomes = shard.apply_batch(mutations)  # type: ignore[arg-type]
        assert shard.entries == stored(), outcomes
        return outcomes

    try:
        soon = now_ms() + 50
        write(Put(b"a", b"1"), Put(b"a", b"2"), Put(b"b", b"1", expires_at_ms=soon))
        write(Put(b"b", b"2", if_absent=True), Put(b"c", b"1", if_etag=7))  # both refused
        write(Put(b"c", b"1", if_absent=True), Delete(b"a"), Delete(b"nope"))
        write(Bulk.of_rows([BulkRow(b"k%03d" % i, b"v") for i in range(100)]))  # all new: one probe
        write(Bulk.of_rows([BulkRow(b"k%03d" % i, b"w") for i in range(50, 150, 2)]))  # half stored
        write(Bulk.of_rows([BulkRow(b"k%03d" % i, b"{}", json=True) for i in range(140, 160)]))
        assert shard.entries == 2 + 100 + 25 + 15
        time.sleep(0.06)
        assert write(SweepBatch(b"", None, now_ms(), 100)) == [(1, 1)]  # b expired
        db = shard._db  # a batch that fails as a whole (SQLITE_FULL) changes no count
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        with pytest.raises(apsw.FullError):
            shard.apply_batch([Bulk.of_rows([BulkRow(b"z%05d" % i, b"x" * 500) for i in range(1000)])])
        assert shard.entries == stored() == 141
    finally:
        shard.close()
    again = Shard(tmp_path / "s.db", "s", KeyRange())  # counted anew when opened
    try:
        assert again.entries == 141
    finally:
        again.close()


async def test_threads_that_come_and_go_leave_no_connection_open(shards: ShardSet) -> None:
    """A metrics scrape runs on a new thread each time: its reads must not leave a
    connection (two file descriptors) behind, scrape after scrape."""
    await shards.write(b"a", Put(b"a", b"v"))

    def scrape_like() -> None:
        for p in shards.partitions:
            partition_stats(p)
            p.shard.read_connection().execute("SELECT count(*) FROM entries").fetchone()

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def in_a_new_thread() -> None:
        thread = threading.Thread(target=scrape_like)
        thread.start()
        thread.join()

    in_a_new_thread()  # what is opened once and kept (SQLite keeps a closed file's fd for reuse)
    before = open_fds()
    for _ in range(20):
        in_a_new_thread()
    assert open_fds() == before


def memory_while_three_threads_read_everything(shards: ShardSet) -> int:
    """SQLite's memory once three new threads (three new connections a shard, kept while
    the threads live) have read every page of every shard."""
    read, release = threading.Barrier(4), threading.Event()

    def read_all() -> None:
        for p in shards.partitions:
            p.shard.read_connection().execute("SELECT sum(length(value)) FROM entries").fetchone()
        read.wait()
        release.wait()

    threads = [threading.Thread(target=read_all) for _ in range(3)]
    for t in threads:
        t.start()
    read.wait()
    held = shards.sqlite_memory_bytes()
    release.set()
    for t in threads:
        t.join()
    return held


async def test_sqlite_memory_stays_near_its_limit_however_many_connections_read(tmp_path: Path) -> None:
    limit = 8 << 20
    shards = ShardSet(tmp_path / "d", ShardSetOptions(sqlite_memory_bytes=limit))
    await asyncio.to_thread(shards.open, [("p0", KeyRange(b"", b"m")), ("p1", KeyRange(b"m", None))])
    try:
        assert apsw.soft_heap_limit(-1) == limit  # -1 reads it
        for prefix in (b"a", b"n"):
            rows = [BulkRow(prefix + b"%06d" % i, b"x" * 400) for i in range(20_000)]
            await shards.bulk_put(Bulk.of_rows(rows))  # 2 x ~9 MB
        assert memory_while_three_threads_read_everything(shards) < 2 * limit  # soft: near it
        apsw.soft_heap_limit(0)  # none: the same reads hold far more
        assert memory_while_three_threads_read_everything(shards) > 4 * limit
    finally:
        shards.close()
        apsw.soft_heap_limit(ShardSetOptions().sqlite_memory_bytes)


def test_scan_reads_in_both_directions_within_a_byte_budget(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        shard.apply_batch([Bulk.of_rows([BulkRow(b"k%03d" % i, b"x" * 100) for i in range(100)])])
        with shard.reader() as db:
            rows, done = Shard.scan(db, KeyRange(b"k010", b"k020"), now_ms(), max_rows=100)
            assert [r.key for r in rows] == [b"k%03d" % i for i in range(10, 20)] and done
            rows, done = Shard.scan(db, KeyRange(), now_ms(), reverse=True, max_rows=3)
            assert [r.key for r in rows] == [b"k099", b"k098", b"k097"] and not done
            rows, done = Shard.scan(db, KeyRange(), now_ms(), max_rows=1000, max_bytes=1000)
            assert 5 <= len(rows) < 20 and not done
    finally:
        shard.close()


def test_a_projection_over_its_limit_is_refused_before_it_is_built(tmp_path: Path) -> None:
    """Overlapping paths over a big document would build an object several times its
    size: the values the paths select are added up first, and past the limit nothing
    is built (SQLite's peak memory stays near one document, not eight)."""
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    doc = b'{"a": "' + b"x" * 600_000 + b'", "b": 1}'
    paths = ["$", "$.a", '$."a"', "$.b", "$[0]", "$.a", "$", '$."a"']  # ~3.6 MB projected
    try:
        shard.apply_batch([Put(b"k0", b'{"a": 1}', json=True), Put(b"k1", doc, json=True)])
        reader = shard.point_reader(wait=False)
        apsw.memory_high_water(True)
        before = apsw.memory_used()
        with pytest.raises(ValueTooLargeError) as refused:
            Shard.get(reader, b"k1", now_ms(), paths, max_projection_bytes=1 << 20)
        assert apsw.memory_high_water() - before < 3 << 20  # building it took ~10 MB
        assert refused.value.field == "paths" and refused.value.size > 3_000_000
        assert str(refused.value).endswith("or more, projected from 'k1'; the limit is 1048576")
        with shard.reader() as db:  # a scan ends before such a row; then it is refused
            rows, done = Shard.scan(db, KeyRange(), now_ms(), paths=paths, max_projection_bytes=1 << 20)
            assert [r.key for r in rows] == [b"k0"] and not done
            with pytest.raises(ValueTooLargeError):
                Shard.scan(db, KeyRange(b"k1"), now_ms(), paths=paths, max_projection_bytes=1 << 20)
        # Under the limit the projection is built as before.
        small = Shard.get(reader, b"k1", now_ms(), ["$.b", "$"], max_projection_bytes=1 << 20)
        assert small is not None and small.value == b'{"$.b":1,"$":{"a":"' + b"x" * 600_000 + b'","b":1}}'
    finally:
        shard.close()


def test_a_failed_commit_rolls_the_whole_batch_back(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        assert shard.apply_batch([Put(b"a", b"1")]) == [1]
        # A commit hook that vetoes turns COMMIT into an error, as a full disk would.
        shard._db.set_commit_hook(lambda: True)
        with pytest.raises(apsw.ConstraintError):
            shard.apply_batch([Put(b"a", b"2"), Put(b"b", b"3")])
        shard._db.set_commit_hook(None)
        assert shard.revision == 1 and not shard._db.in_transaction
        with shard.reader() as db:
            row = Shard.get(db, b"a", now_ms())
            assert row is not None and (row.value, row.etag) == (b"1", 1)
            assert Shard.get(db, b"b", now_ms()) is None
        assert shard.apply_batch([Put(b"b", b"3")]) == [2]  # the writer goes on afterwards
    finally:
        shard.close()


def test_a_bulk_batch_mixing_documents_and_bytes_logs_every_row(tmp_path: Path) -> None:

    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        rows = [
            BulkRow(b"a", b"1"),
            BulkRow(b"b", b'{"x": 1}', json=True),
            BulkRow(b"c", b"3", expires_at_ms=1),
        ]
        assert shard.apply_batch([Bulk.of_rows(rows)]) == [3]
        with shard.reader() as db:
            assert Shard.get(db, b"b", now_ms()) == (b"b", b'{"x":1}', True, 2, None)
            assert Shard.get(db, b"a", now_ms()).etag == 1
            assert Shard.get(db, b"c", now_ms()) is None  # expired on arrival
            assert shard.changes_since(db, 0, 10) == [(1, b"a"), (2, b"b"), (3, b"c")]
    finally:
        shard.close()


async def test_after_a_big_group_the_writer_waits_once_to_gather_the_next(tmp_path: Path) -> None:
    from keyspan.storage.writer import COMMIT_WAIT_SIBLINGS, PartitionWriter

    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    writer = PartitionWriter(shard, commit_wait_s=0.2)
    try:
        # A lone write after a lone write: committed at once, no wait.
        await writer.submit(Put(b"a", b"1"))
        started = asyncio.get_running_loop().time()
        await writer.submit(Put(b"a", b"2"))
        assert asyncio.get_running_loop().time() - started < 0.15
        # A big group, then two writes 50 ms apart: the wait gathers them into one commit.
        await asyncio.gather(*(writer.submit(Put(b"g%d" % i, b"v")) for i in range(COMMIT_WAIT_SIBLINGS)))
        before = writer.batches
        first = asyncio.ensure_future(writer.submit(Put(b"x", b"1")))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(writer.submit(Put(b"y", b"1")))
        await asyncio.gather(first, second)
        assert writer.batches == before + 1
    finally:
        await asyncio.to_thread(writer.close)
        shard.close()


def test_a_batch_applies_its_writes_in_order_and_fails_only_the_bad_one(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        outcomes = shard.apply_batch(
            [
                Put(b"a", b"1"),
                Put(b"a", b"2"),  # the same key twice in one batch: the later write wins
                Put(b"b", b"3"),
                Put(b"b", b"x", if_etag=99),  # fails alone
                Put(b"c", b'{"x": 1}', json=True),
                Put(b"d", b"4"),
            ]
        )
        assert outcomes[:3] == [1, 2, 3] and isinstance(outcomes[3], EtagMismatchError)
        assert outcomes[4:] == [4, 5]
        with shard.reader() as db:
            assert Shard.get(db, b"a", now_ms()) == (b"a", b"2", False, 2, None)
            assert Shard.get(db, b"b", now_ms()) == (b"b", b"3", False, 3, None)
            assert Shard.get(db, b"d", now_ms()).etag == 5
            assert shard.changes_since(db, 0, 10) == [(1, b"a"), (2, b"a"), (3, b"b"), (4, b"c"), (5, b"d")]
        assert shard.revision == 5
    finally:
        shard.close()


def test_a_plain_bulk_overwrites_in_place_and_logs_every_row(tmp_path: Path) -> None:

    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        assert shard.apply_batch([Put(b"k2", b"old", expires_at_ms=now_ms() + 60_000)]) == [1]
        keys = [b"k1", b"k2", b"\x00" * 300]  # any bytes, any length up to the limit
        assert shard.apply_batch([Bulk.of_rows([BulkRow(k, b"v" + k) for k in sorted(keys)])]) == [3]
        with shard.reader() as db:
            rows, _ = Shard.scan(db, KeyRange(), now_ms(), max_rows=10)
            assert [(r.key, r.value, r.etag, r.expires_at_ms) for r in rows] == [
                (b"\x00" * 300, b"v" + b"\x00" * 300, 2, None),
                (b"k1", b"vk1", 3, None),
                (b"k2", b"vk2", 4, None),  # the old TTL went with the old value
            ]
            assert [k for _, k in shard.changes_since(db, 1, 10)] == sorted(keys)
    finally:
        shard.close()


async def test_the_writer_calls_on_write_only_for_writes_whose_context_asks(tmp_path: Path) -> None:
    from keyspan.storage.writer import OBSERVE_WRITES, BatchTiming, PartitionWriter

    class Recorder:
        def __init__(self) -> None:
            self.batches: list[BatchTiming] = []
            self.writes: list[int] = []

        def on_batch(self, timing: BatchTiming) -> None:
            self.batches.append(timing)

        def on_write(self, queued_ns: int, timing: BatchTiming) -> None:
            self.writes.append(queued_ns)

    async def observed_put(key: bytes) -> int:
        OBSERVE_WRITES.set(True)  # this task's context only
        return await writer.submit(Put(key, b"v"))

    recorder = Recorder()
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    writer = PartitionWriter(shard, observer=recorder)
    try:
        await writer.submit(Put(b"plain", b"v"))
        await asyncio.ensure_future(observed_put(b"traced"))
        await writer.submit(Put(b"plain-again", b"v"))
        assert len(recorder.writes) == 1  # the traced write only
        # Every write's queue time reaches on_batch, on the writer thread, traced or not.
        assert sum(len(t.queued_ns) for t in recorder.batches) == 3
        assert all(t.dequeued_ns >= max(t.queued_ns) for t in recorder.batches)
    finally:
        await asyncio.to_thread(writer.close)
        shard.close()


def test_a_kept_point_reader_holds_no_read_transaction_between_gets(tmp_path: Path) -> None:
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        shard.apply_batch([Put(b"a", b"1"), Put(b"b", b"2")])
        reader = shard.point_reader(wait=False)
        assert reader is shard.point_reader(wait=False)  # kept, not made per read
        for key in (b"a", b"zz"):  # found, and not found
            assert (Shard.get(reader, key, now_ms()) is None) == (key == b"zz")
            shard.apply_batch([Put(b"c", key)])
            # A cursor left before SQLITE_DONE would still hold its snapshot: busy = 1.
            busy, _, _ = shard._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            assert busy == 0
        assert Shard.get(reader, b"c", now_ms()).value == b"zz"  # type: ignore[union-attr]
    finally:
        shard.close()


def exercise(shard: Shard) -> list[object]:
    """Every kind of write and read on `shard`, and what each answered."""
    soon = now_ms() + 30
    out: list[object] = shard.apply_batch(
        [
            Put(b"a", b"1"),
            Put(b"doc", b'{"x": {"y": 1}}', json=True),
            Put(b"a", b"2", if_etag=1),
            Put(b"t", b"gone soon", expires_at_ms=soon),
            Patch(b"doc", merge_patch='{"z": 2}', remove=("$.x.y",)),
            Put(b"a", b"3", if_absent=True),
            Delete(b"nope"),
        ]
    )
    out += shard.apply_batch([Bulk.of_rows([BulkRow(b"k%03d" % i, b"v" * 1200) for i in range(50)])])
    out += shard.apply_batch([Bulk.of_rows([BulkRow(b"j%d" % i, b"[%d]" % i, json=True) for i in range(5)])])
    time.sleep(0.04)
    out += shard.apply_batch([SweepBatch(b"", None, now_ms(), 10), Delete(b"k000")])
    with shard.reader() as db:
        out.append(Shard.get(db, b"doc", now_ms(), ("$.z", "$.x")))
        out.append(Shard.get(db, b"a", now_ms()))
        out.append(Shard.scan(db, KeyRange(b"j", b"k002"), now_ms(), reverse=True))
    out.append(shard.entries)
    return out


def test_a_shard_with_the_earlier_without_rowid_table_serves_every_operation(tmp_path: Path) -> None:
    earlier = apsw.Connection(str(tmp_path / "old.db"))  # the table as shards made it before
    earlier.execute("PRAGMA journal_mode=WAL")  # as every shard file is made
    earlier.execute(
        "CREATE TABLE entries(key BLOB PRIMARY KEY, value BLOB NOT NULL, json INTEGER NOT NULL, "
        "etag INTEGER NOT NULL, expires_at_ms INTEGER) WITHOUT ROWID"
    )
    earlier.close()
    old, new = Shard(tmp_path / "old.db", "s", KeyRange()), Shard(tmp_path / "new.db", "s", KeyRange())
    try:
        assert (
            "WITHOUT ROWID"
            in old._db.execute("SELECT sql FROM sqlite_schema WHERE name = 'entries'").fetchone()[0]
        )
        assert list(map(repr, exercise(old))) == list(map(repr, exercise(new)))
    finally:
        old.close()
        new.close()


@pytest.mark.parametrize("value_bytes", [1100, 2000, 6000])
def test_a_value_takes_about_its_size_on_disk(tmp_path: Path, value_bytes: int) -> None:
    """A WITHOUT ROWID table spilled each row over ~1 KB to an overflow page of its own:
    a 1.1 KB value took 4.7 KB (4.2x)."""
    import random

    rnd = random.Random(1)
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    try:
        for _ in range(10):  # random keys, as Puts come
            rows = sorted(BulkRow(rnd.randbytes(16), rnd.randbytes(value_bytes)) for _ in range(200))
            shard.apply_batch([Bulk.of_rows(rows)])
        shard._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db = shard._db
        pages, page_bytes = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    finally:
        shard.close()
    assert pages * page_bytes / 2000 / (16 + value_bytes) < 1.5  # with the change log and indexes


def test_the_revision_shows_only_committed_writes(tmp_path: Path) -> None:
    """Stats read `revision` from another thread while a batch ran: it showed etags not yet
    committed, and went back when the COMMIT failed."""
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    seen: list[int] = []
    shard.before_commit = lambda: seen.append(shard.revision)  # statements done, not committed
    try:
        shard.apply_batch([Put(b"a", b"1"), Put(b"b", b"2")])
        assert seen == [0] and shard.revision == 2
        shard.apply_batch([Bulk.of_rows([BulkRow(b"c", b"3"), BulkRow(b"d", b"4")])])
        assert seen == [0, 2] and shard.revision == 4
    finally:
        shard.close()


async def test_a_range_with_a_part_not_held_here_is_refused_not_read_as_empty(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path / "d")  # a node holding [-inf, g) and [n, u) only
    held = [("p0", KeyRange(b"", b"g")), ("p2", KeyRange(b"n", b"u"))]
    await asyncio.to_thread(shards.open, held)
    try:
        assert [p.id for p, _ in shards.covering(KeyRange(b"a", b"f"))] == ["p0"]
        assert [p.id for p, _ in shards.covering(KeyRange(b"n", b"u"))] == ["p2"]

        def held(start: bytes, end: bytes | None, reverse: bool = False) -> tuple[list[str], bytes | None]:
            parts, gap = shards.held(KeyRange(start, end), reverse=reverse)
            return [p.id for p, _ in parts], gap

        # a scan reads up to the gap, then ends with the gap's key (WrongPartition)
        assert held(b"a", b"p") == (["p0"], b"g")
        assert held(b"a", b"p", reverse=True) == (["p2"], b"g")
        assert held(b"h", None) == ([], b"h")
        assert held(b"o", None) == (["p2"], b"u")
        assert held(b"o", None, reverse=True) == ([], b"u")
        assert held(b"", b"t", reverse=True) == (["p2"], b"g")
        for key_range, gap in [
            (KeyRange(b"a", b"h"), b"g"),
            (KeyRange(b"h", b"i"), b"h"),
            (KeyRange(b"o", None), b"u"),
            (KeyRange(b"", None), b"g"),
        ]:
            with pytest.raises(WrongPartitionError) as missing:
                shards.covering(key_range)
            assert missing.value.key == gap
    finally:
        shards.close()


def test_a_wal_grown_under_overlapping_readers_is_cut_back_once_it_restarts(tmp_path: Path) -> None:
    limit = 16 << 20  # storage.shard.WAL_SIZE_LIMIT_BYTES
    shard = Shard(tmp_path / "s.db", "s", KeyRange())
    wal = Path(f"{shard.path}-wal")
    value = b"x" * 1000
    try:
        with shard.reader() as db:  # a read transaction held open: no checkpoint can restart the WAL
            db.execute("BEGIN")
            db.execute("SELECT count(*) FROM entries").fetchone()
            for n in range(30):
                rows = [BulkRow(b"k%02d%04d" % (n, i), value) for i in range(1000)]
                shard.apply_batch([Bulk.of_rows(rows)])
            assert wal.stat().st_size > 2 * limit
            db.execute("COMMIT")
        for n in range(3):  # the readers are gone: a checkpoint completes, the WAL restarts
            shard.apply_batch([Bulk.of_rows([BulkRow(b"z%d" % n, value)])])
            shard._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        assert wal.stat().st_size <= limit
    finally:
        shard.close()


@pytest.mark.parametrize(
    ("text", "at"),
    [
        ('{"a":1} x', 9),  # trailing content: SQLite's json_error_position said 1
        ('{"a":1}}', 8),
        ("[1,2] [3]", 7),
        ("123abc", 4),
        ("[1,2,]", 6),  # JSON5 forms: SQLite placed no fault in them
        ('{"a":1,}', 8),
        ("NaN", 1),
        ('{"s": "NaN", "b": -Infinity}', 19),
        ("0x10", 2),
        ("{'a': 1}", 2),
        ("[1] // note", 5),
        ("[1,,2]", 4),
        ('{"a":1}\x00{"evil":true}', 8),
    ],
)
def test_refused_json_names_its_first_fault_by_character(text: str, at: int) -> None:
    db = apsw.Connection(":memory:")
    with pytest.raises(
        InvalidArgumentError,
        match=rf"^value: must be valid JSON text .*; the first fault is at character {at}$",
    ):
        json_text(db, text, "value")


def test_json_nested_too_deep_is_refused_without_a_character() -> None:
    with pytest.raises(InvalidArgumentError, match=r"nested at most 1000 levels deep$"):
        json_text(apsw.Connection(":memory:"), "[" * 1001 + "]" * 1001, "value")


async def test_a_paced_sweep_keeps_its_rate_across_partition_boundaries(tmp_path: Path) -> None:
    from keyspan.streams.sweep import sweep_range

    shards = await open_set(tmp_path / "d", [b"g", b"n"])
    try:
        gone = now_ms() - 1
        for prefix in (b"a", b"h", b"p"):  # 250 expired entries in each of three partitions
            keys = [prefix + b"%03d" % i for i in range(250)]
            await shards.bulk_put(Bulk(keys, [b"v"] * 250, expires_at_ms=[gone] * 250))
        rate, started, reports = 200, time.monotonic(), []
        async for _, deleted in sweep_range(shards, KeyRange(), max_deletes_per_s=rate):
            reports.append((time.monotonic() - started, deleted))
        assert reports[-1][1] == 750
        # One batch (rate entries) may go at once; after that, no more than the rate allows.
        assert all(deleted <= rate * at + rate + 5 for at, deleted in reports), reports
    finally:
        shards.close()


async def test_a_refused_write_asks_the_gate_again_before_it_answers(shards: ShardSet) -> None:
    """A node fenced while a conditional write waited: its refusal (the current etag) came
    from a copy that may no longer be the partition's."""
    await shards.write(b"a", Put(b"a", b"1"))
    asked: list[bool] = []

    def gate(committed: bool) -> None:
        asked.append(committed)
        if len(asked) == 2:
            raise UnavailableError("fenced meanwhile")

    shards.gate = gate
    with pytest.raises(UnavailableError, match="fenced meanwhile"):
        await shards.write(b"a", Put(b"a", b"2", if_etag=99))  # an etag mismatch, at first
    assert asked == [False, False]


async def test_a_raised_revision_floor_is_in_the_shard_file_before_the_partition_serves(
    tmp_path: Path,
) -> None:
    """A repair's floor that sat only in the WAL (synchronous=NORMAL syncs it at checkpoints)
    was lost with it: the copy's etags started again below the floor, handing out twice
    etags its earlier copies had given."""
    floor = 7_000_000_000
    shards = ShardSet(tmp_path / "d", ShardSetOptions(synchronous="NORMAL"))
    await asyncio.to_thread(shards.open)
    try:
        partition = await asyncio.to_thread(shards.add_partition, "p9", KeyRange(), floor)
        assert partition.shard.revision == floor
        # The shard file alone, as a power cut that lost the WAL would leave it.
        shutil.copyfile(partition.shard.path, tmp_path / "p9.db")
    finally:
        await asyncio.to_thread(shards.close)
    copy = Shard(tmp_path / "p9.db", "p9", KeyRange(), catalogued=True)
    try:
        assert copy.revision == floor
        assert copy.apply_batch([Put(b"k", b"v")]) == [floor + 1]
    finally:
        copy.close()
