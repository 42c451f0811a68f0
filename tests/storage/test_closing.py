"""Closing a partition's writer, the read pool or a shard while calls are in flight: every
call is answered, and the close completes."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from keyspan.storage.errors import UnavailableError
from keyspan.storage.mutations import Bulk, Put
from keyspan.storage.readers import ReadPool
from keyspan.storage.shardset import ShardSet
from tests.storage.shardsets import open_set


async def test_a_write_handed_over_as_its_writer_closes_is_refused_not_left_waiting(shards: ShardSet) -> None:
    """It sat in the loop turn's handoff while the writer drained its queue and stopped:
    queued after that, nobody read it, and its caller waited for ever."""
    writer = shards.partitions[0].writer
    put = asyncio.ensure_future(writer.submit(Put(b"k", b"v")))
    await asyncio.sleep(0)  # submit() ran; its write waits for the end of the loop turn
    writer.close()
    with pytest.raises(UnavailableError, match="partition p0 is closed"):
        await asyncio.wait_for(put, 10)


async def test_a_read_handed_over_as_the_pool_closes_is_refused_not_left_waiting() -> None:
    pool = ReadPool(2)
    read = asyncio.ensure_future(pool.run(lambda: 42))
    await asyncio.sleep(0)
    pool.close()
    with pytest.raises(UnavailableError, match="the read pool is closed"):
        await asyncio.wait_for(read, 10)


async def test_reads_handed_over_before_the_pool_closes_still_run() -> None:
    pool = ReadPool(2)
    reads = [asyncio.ensure_future(pool.run(lambda i=i: i)) for i in range(50)]
    await asyncio.sleep(0.01)  # handed over, maybe not run yet
    pool.close()
    assert await asyncio.wait_for(asyncio.gather(*reads), 10) == list(range(50))


async def test_a_partition_dropped_during_a_read_closes_whole_and_the_read_ends(tmp_path: Path) -> None:
    """Closing a read connection busy on a read thread raised ThreadingViolationError: the
    drop stopped halfway, its other connections open, its files left, the row cache kept."""
    shards = await open_set(tmp_path / "d")
    try:
        keys = [b"a%06d" % i for i in range(20_000)]
        await shards.bulk_put(Bulk(keys, [b"x" * 100] * len(keys)))
        await shards.get(b"a000001")  # a row in the cache
        p0 = shards.partitions[0]
        reading = threading.Event()
        real = p0.shard.reader

        def reader() -> object:  # the scan's read thread, seen to have started
            reading.set()
            return real()

        p0.shard.reader = reader  # type: ignore[method-assign]
        scan = asyncio.ensure_future(
            shards.scan_batch(p0, p0.range, reverse=False, paths=(), max_rows=20_000, max_bytes=1 << 30)
        )
        await asyncio.to_thread(reading.wait, 10)
        await asyncio.to_thread(shards.drop_partition, "p0", delete_files=True)
        assert sorted(f.name for f in (tmp_path / "d").glob("p0.db*")) == []
        assert shards.row_cache is not None and shards.row_cache.entries == 0
        outcome = (await asyncio.gather(scan, return_exceptions=True))[0]
        assert isinstance(outcome, UnavailableError | tuple), outcome  # its rows, or "retry"
        # A read that located the partition before the drop: "not here now", not INTERNAL.
        with pytest.raises(UnavailableError):
            await shards.scan_batch(p0, p0.range, reverse=False, paths=(), max_rows=1, max_bytes=1 << 20)
    finally:
        shards.close()


async def test_a_read_on_a_connection_its_drop_closed_is_unavailable(tmp_path: Path) -> None:
    shards = await open_set(tmp_path / "d")
    try:
        await shards.write(b"a", Put(b"a", b"1"))
        p0 = shards.partitions[0]
        reader = p0.shard.read_connection()  # this thread's, as a read thread's would be
        await asyncio.to_thread(shards.drop_partition, "p0")

        def read_on_it() -> object:
            return reader.execute("SELECT count(*) FROM entries").fetchall()

        with pytest.raises(UnavailableError, match="closed during the read"):
            await shards.reads.run(read_on_it)
        with pytest.raises(UnavailableError, match="partition p0 is no longer served here"):
            await shards.reads.run(lambda: p0.shard.read_connection(wait=True))
    finally:
        shards.close()
