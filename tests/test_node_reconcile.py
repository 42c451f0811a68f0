"""A node's reconciliation with real ShardSets in temp dirs."""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import pytest

from keyspan.services.node.reconcile import missing_key_error, reconcile
from keyspan.services.node.session import NodeSession
from keyspan.storage.errors import UnavailableError, WrongPartitionError
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Put
from keyspan.storage.shard import Shard
from keyspan.storage.shardset import ShardSet
from keyspan.streams.partition_map import SERVING, MapEntry, PartitionMap, to_message
from keyspan.v1 import control_pb2

pytestmark = pytest.mark.asyncio


def cluster_map(version: int, owners: tuple[str, str, str]) -> PartitionMap:
    bounds = [(b"", b"g"), (b"g", b"n"), (b"n", None)]
    return PartitionMap(
        [
            MapEntry(f"p{i}", KeyRange(s, e), owner, f"127.0.0.1:{i + 1}", SERVING)
            for i, ((s, e), owner) in enumerate(zip(bounds, owners, strict=True))
        ],
        version,
    )


async def test_reconcile_opens_assigned_and_closes_the_rest_keeping_files(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    shards.open(())
    try:
        m = cluster_map(1, ("me", "other", "me"))
        hosted, failed = await reconcile(shards, "me", m)
        assert hosted == ["p0", "p2"] and failed == []
        await shards.write(b"a", Put(b"a", b"1", False, None, 0, False))
        m.apply(to_message(2, cluster_map(2, ("other", "other", "me")).entries))
        hosted, _ = await reconcile(shards, "me", m)
        assert hosted == ["p2"]
        assert (tmp_path / "p0.db").exists()
        m.apply(to_message(3, cluster_map(3, ("me", "other", "me")).entries))
        await reconcile(shards, "me", m)
        row = await shards.get(b"a")
        assert row is not None and row.value == b"1"
    finally:
        shards.close()


async def test_a_restarted_node_reopens_its_partitions_from_disk(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    shards.open(())
    await reconcile(shards, "me", cluster_map(1, ("me", "x", "x")))
    shards.close()
    again = ShardSet(tmp_path)
    again.open(())
    try:
        assert [p.id for p in again.partitions] == ["p0"]
    finally:
        again.close()


async def test_keys_of_other_nodes_get_wrong_partition_with_the_owner(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    shards.open(())
    m = cluster_map(4, ("me", "other", "me"))
    shards.on_missing = functools.partial(missing_key_error, "me", m)
    try:
        await reconcile(shards, "me", m)
        with pytest.raises(WrongPartitionError) as wrong:
            await shards.get(b"h")
        assert (wrong.value.node_id, wrong.value.address, wrong.value.map_version) == (
            "other",
            "127.0.0.1:2",
            4,
        )
        shards.drop_partition("p2")
        with pytest.raises(UnavailableError):
            await shards.get(b"z")
    finally:
        shards.close()


async def test_a_shard_made_for_another_map_is_refused_and_its_keys_say_why(tmp_path: Path) -> None:
    """A `keyspan serve` data dir (cut at g, n) given to a node of a map cut elsewhere: its
    p1 would be served as [g, n) under another range, its keys out of sight."""
    serve = ShardSet(tmp_path)
    serve.open([("p1", KeyRange(b"a", b"h"))])
    await serve.write(b"b", Put(b"b", b"kept"))
    serve.close()

    shards = ShardSet(tmp_path)
    shards.open(())
    m = cluster_map(4, ("me", "me", "me"))  # p1 is [g, n) here
    failures: dict[str, str] = {}
    shards.on_missing = functools.partial(missing_key_error, "me", m, failures=failures)
    try:
        hosted, failed = await reconcile(shards, "me", m, failures)
        assert sorted(hosted) == ["p0", "p2"] and [f.split(":")[0] for f in failed] == ["p1"]
        assert "holds partition p1 ['a', 'h'), not p1 ['g', 'n')" in failures["p1"]
        with pytest.raises(UnavailableError, match=r"partition p1 failed to open on this node: .*holds"):
            await shards.get(b"h")
        shards.should_hold = lambda: [e.range for e in m.owned_by("me")]  # as the node sets it
        with pytest.raises(UnavailableError, match=r"partition p1 failed to open"):
            await shards.stats()  # not the other two, as if they were all it holds
        # a heartbeat reports the partitions open (it reported none, zeroing their counts)
        session = NodeSession(
            control_address="127.0.0.1:1", node_id="me", disk_id="d", address="127.0.0.1:2",
            probe_address="", capacity=1, shards=shards, partition_map=m, on_synced=_synced,
        )  # fmt: skip
        outbox: asyncio.Queue[control_pb2.NodeMessage] = asyncio.Queue()
        beats = asyncio.create_task(session._heartbeats(outbox, 10.0))
        beat = (await asyncio.wait_for(outbox.get(), 5)).heartbeat
        beats.cancel()
        assert [p.partition_id for p in beat.partitions] == ["p0", "p2"]
    finally:
        shards.close()
    kept = Shard(tmp_path / "p1.db", "p1", KeyRange(b"a", b"h"))  # the file is as it was
    try:
        row = Shard.get(kept.point_reader(wait=True), b"b", 0)
        assert row is not None and row.value == b"kept"
    finally:
        kept.close()


async def test_a_reverse_scan_that_reaches_a_gap_names_the_owner_of_the_keys_it_reads_next(
    tmp_path: Path,
) -> None:
    """A reverse scan reads down from its end: at a gap it must name the owner of the keys
    just below where it stopped. It named the owner of the gap's lowest key, and a client
    following the advice went round the nodes for ever."""
    bounds = [(b"", b"g"), (b"g", b"k"), (b"k", b"n"), (b"n", b"u"), (b"u", None)]
    owners = ["me", "o1", "o2", "me", "o3"]
    m = PartitionMap(
        [
            MapEntry(f"p{i}", KeyRange(s, e), owner, f"127.0.0.1:{i + 1}", SERVING)
            for i, ((s, e), owner) in enumerate(zip(bounds, owners, strict=True))
        ],
        7,
    )
    shards = ShardSet(tmp_path)
    shards.open(())
    shards.on_missing = functools.partial(missing_key_error, "me", m)
    shards.start_below = m.start_below
    try:
        await reconcile(shards, "me", m)

        def owner_after(start: bytes, end: bytes | None, reverse: bool) -> tuple[list[str], str]:
            parts, gap = shards.held(KeyRange(start, end), reverse=reverse)
            assert gap is not None
            return [p.id for p, _ in parts], shards.on_missing(gap).node_id  # type: ignore[attr-defined]

        assert owner_after(b"", b"t", reverse=True) == (["p3"], "o2")  # below n: [k, n)
        assert owner_after(b"h", b"m", reverse=True) == ([], "o2")
        assert owner_after(b"a", None, reverse=True) == ([], "o3")
        assert owner_after(b"a", b"t", reverse=False) == (["p0"], "o1")  # forward: up from g
    finally:
        shards.close()


async def _synced(ok: bool) -> None:
    return None


async def test_a_session_stopped_while_it_winds_down_a_broken_call_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() that came while the session awaited its cancelled sender was swallowed: the
    session went on reconnecting, and a node never stopped on SIGTERM."""
    import socket

    from keyspan.services.node import session as session_module

    winding_down = asyncio.Event()

    async def slow_to_end(call: object, outbox: object) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            winding_down.set()
            await asyncio.sleep(0.5)  # its call's end takes a moment
            raise

    monkeypatch.setattr(session_module, "_send", slow_to_end)
    shards = ShardSet(tmp_path)
    shards.open(())
    with socket.socket() as silent:  # nothing listens: each session fails at once
        silent.bind(("127.0.0.1", 0))
        session = NodeSession(
            control_address=f"127.0.0.1:{silent.getsockname()[1]}", node_id="me", disk_id="d",
            address="127.0.0.1:2", probe_address="", capacity=1, shards=shards, partition_map=PartitionMap(),
            on_synced=_synced,
        )  # fmt: skip
        session.start()
        try:
            await asyncio.wait_for(winding_down.wait(), 10)
            stopping = asyncio.create_task(session.stop())
            await asyncio.wait({stopping}, timeout=3)
            assert stopping.done() and session._task is not None and session._task.done()
        finally:
            for _ in range(100):  # the old code's session went on: it swallowed each cancel
                if session._task is None or session._task.done():
                    break
                session._task.cancel()
                await asyncio.sleep(0.05)
            shards.close()
