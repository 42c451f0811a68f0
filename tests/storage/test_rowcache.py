"""The row cache: a Get never sees a row older than the last commit of its key."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Bulk, BulkRow, Delete, Patch, Put
from keyspan.storage.rowcache import ABSENT, MISSING, RowCache
from keyspan.storage.shard import Row, Shard
from keyspan.storage.shardset import ShardSet, ShardSetOptions, now_ms, ranges_from_split_points


@pytest_asyncio.fixture
async def shards(tmp_path: Path) -> AsyncIterator[ShardSet]:
    s = ShardSet(tmp_path / "d", ShardSetOptions(row_cache_bytes=1 << 20))
    ranges = ranges_from_split_points([b"m"])
    await asyncio.to_thread(s.open, [(f"p{i}", r) for i, r in enumerate(ranges)])
    try:
        yield s
    finally:
        s.close()


async def value_of(shards: ShardSet, key: bytes) -> bytes | None:
    row = await shards.get(key)
    return None if row is None else row.value


async def test_every_kind_of_write_evicts_what_it_changed(shards: ShardSet) -> None:
    cache = shards.row_cache
    assert cache is not None
    await shards.write(b"a", Put(b"a", b"1"))
    assert await value_of(shards, b"a") == b"1"
    assert await value_of(shards, b"a") == b"1" and cache.hits == 1  # the second came from the cache
    await shards.write(b"a", Put(b"a", b"2"))
    assert await value_of(shards, b"a") == b"2"
    assert await value_of(shards, b"b") is None  # absent keys are cached too ...
    await shards.bulk_put(Bulk.of_rows([BulkRow(b"b", b"3"), BulkRow(b"c", b"4")]))
    assert await value_of(shards, b"b") == b"3"  # ... and a bulk load evicts them
    await shards.write(b"d", Put(b"d", b'{"x": 1}', json=True))
    assert await value_of(shards, b"d") == b'{"x":1}'
    await shards.write(b"d", Patch(b"d", '{"x": 2}'))
    assert await value_of(shards, b"d") == b'{"x":2}'
    await shards.write(b"a", Delete(b"a"))
    assert await value_of(shards, b"a") is None


async def test_a_cached_row_expires_on_time(shards: ShardSet) -> None:
    await shards.write(b"t", Put(b"t", b"v", expires_at_ms=now_ms() + 200))
    assert await value_of(shards, b"t") == b"v"
    await asyncio.sleep(0.3)
    assert await value_of(shards, b"t") is None


async def test_paths_bypass_the_cache(shards: ShardSet) -> None:
    await shards.write(b"j", Put(b"j", b'{"a": {"b": 7}}', json=True))
    await shards.get(b"j")
    row = await shards.get(b"j", ["$.a.b"])
    assert row is not None and row.value == b'{"$.a.b":7}'


async def test_a_partition_opened_again_starts_with_an_empty_cache(shards: ShardSet) -> None:
    await shards.write(b"x", Put(b"x", b"1"))
    await shards.get(b"x")
    assert shards.row_cache is not None and shards.row_cache.entries == 1
    shards.drop_partition("p1")
    assert shards.row_cache.entries == 0


def test_a_read_begun_before_a_commit_is_never_stored() -> None:
    cache = RowCache(1 << 20)
    old = Row(b"k", b"old", False, 1, None)
    generation = cache.generation  # a reader takes the generation, then reads "old" ...
    cache.written([b"k"])  # ... while a writer commits a new value for k
    cache.fill(b"k", old, generation)  # the stale read must not land
    assert cache.get(b"k", 0) is MISSING
    cache.fill(b"k", Row(b"k", b"new", False, 2, None), cache.generation)
    assert cache.get(b"k", 0).value == b"new"
    cache.fill(b"gone", None, cache.generation)
    assert cache.get(b"gone", 0) is ABSENT


def test_no_read_is_stored_while_a_commit_is_under_way() -> None:
    cache = RowCache(1 << 20)
    old = Row(b"k", b"old", False, 1, None)
    before = cache.generation  # a read begun before the COMMIT ...
    cache.committing()
    during = cache.generation  # ... and one begun while it runs: both may hold "old"
    cache.fill(b"k", old, before)
    cache.fill(b"k", old, during)
    assert cache.get(b"k", 0) is MISSING
    cache.written([b"k"])  # the COMMIT is over
    cache.fill(b"k", old, during)
    assert cache.get(b"k", 0) is MISSING
    cache.fill(b"k", Row(b"k", b"new", False, 2, None), cache.generation)
    assert cache.get(b"k", 0).value == b"new"


async def test_a_read_begun_before_a_commit_never_lands_after_a_newer_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Get A reads v1 on a read thread and stops before filling the cache; v2 commits and
    its writer stops before evicting; Get B reads v2; A fills. A Get begun after B
    answered must not see v1 (it did: the fence opened only after the COMMIT)."""
    shards = ShardSet(tmp_path / "d", ShardSetOptions(row_cache_bytes=1 << 20, inline_read_budget_s=0.0))
    await asyncio.to_thread(shards.open, [("p0", KeyRange())])
    try:
        await shards.write(b"hot", Put(b"hot", b"v1"))
        shard = shards.partitions[0].shard
        a_read, release_a, committed, release_writer = (threading.Event() for _ in range(4))
        plain_get, evict = Shard.get, shard.on_commit
        assert evict is not None

        def get_then_stop_once(*args: object) -> Row | None:
            row = plain_get(*args)  # type: ignore[arg-type]
            if not a_read.is_set():
                a_read.set()
                release_a.wait(5)
            return row

        def evict_late(keys: list[bytes] | None) -> None:
            committed.set()
            release_writer.wait(5)
            evict(keys)

        monkeypatch.setattr(Shard, "get", staticmethod(get_then_stop_once))
        shard.on_commit = evict_late
        get_a = asyncio.create_task(shards.get(b"hot"))
        await asyncio.to_thread(a_read.wait, 5)
        put = asyncio.create_task(shards.write(b"hot", Put(b"hot", b"v2")))
        await asyncio.to_thread(committed.wait, 5)
        b = await shards.get(b"hot")
        release_a.set()
        a = await get_a
        c = await shards.get(b"hot")
        release_writer.set()
        await put
        assert (a.value, b.value, c.value) == (b"v1", b"v2", b"v2")  # type: ignore[union-attr]
    finally:
        shards.close()


def test_the_cache_keeps_to_its_byte_budget() -> None:
    cache = RowCache(64 * 1024)
    for i in range(1000):
        cache.fill(b"k%04d" % i, Row(b"k%04d" % i, b"v" * 100, False, i, None), cache.generation)
        assert cache.bytes <= cache.budget_bytes
    assert 100 < cache.entries < 1000
    assert cache.get(b"k0999", 0) is not MISSING and cache.get(b"k0000", 0) is MISSING  # oldest out first
    cache.clear()
    assert cache.entries == 0 and cache.bytes == 0


def test_a_full_cache_evicts_the_least_recently_read_row() -> None:
    cache = RowCache(64 * 1024)
    key = b"k%04d"
    for i in range(1000):
        cache.fill(key % i, Row(key % i, b"v" * 100, False, i, None), cache.generation)
        if cache.get(key % 0, 0) is MISSING:  # read k0000 after every fill: it stays
            raise AssertionError(f"k0000 was evicted after {i} fills although read each time")
    assert cache.get(key % 1, 0) is MISSING  # never read again: long gone
    assert cache.get(key % 999, 0) is not MISSING
    assert cache.bytes <= cache.budget_bytes


def test_the_budget_counts_what_a_full_cache_really_holds() -> None:
    # Each entry counted 200 bytes of overhead for ~300 held: a cache counted at 64 MiB of
    # 100-byte rows held 96 MiB.
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = RowCache(4 << 20)
        for i in range(100_000):
            key = b"user%012d" % i
            cache.fill(key, Row(key, bytes(100), False, i + 1, None), cache.generation)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes <= cache.budget_bytes
    assert held / cache.bytes < 1.2, f"held {held:,} bytes for {cache.bytes:,} counted"
