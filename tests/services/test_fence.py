"""The node's ownership fence after a stall, on a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2

from keyspan.services.common.errors import to_status
from keyspan.services.node.fence import OwnershipFence
from keyspan.storage.errors import StorageFaultError, UnavailableError
from keyspan.storage.keys import KeyRange
from keyspan.storage.mutations import Mutation, Put
from keyspan.storage.shardset import ShardSet, now_ms
from keyspan.streams.sweep import serve_sweep
from keyspan.v1 import kv_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fence_after_a_stall(stall_s: float) -> tuple[OwnershipFence, Clock]:
    clock = Clock()
    fence = OwnershipFence("n1", clock=clock)
    fence.configure(down_after_s=2.5)  # stalls over 1.25 s close it
    fence.sent(7)
    clock.now += stall_s
    return fence, clock


def test_a_node_that_keeps_running_answers_whether_or_not_control_answers() -> None:
    fence, clock = fence_after_a_stall(0.2)
    for _ in range(50):  # no heartbeat acknowledged meanwhile: control may be away
        fence.note_alive()
        fence.check()
        fence.check(committed=True)
        clock.now += 0.2
    assert not fence.closed


def test_a_stall_refuses_reads_and_writes_until_a_later_heartbeat_is_acknowledged() -> None:
    fence, _ = fence_after_a_stall(3.0)
    with pytest.raises(UnavailableError, match=r"node n1 was stalled 3\.0 s") as before:
        fence.check()  # the first call after the stall finds it, before the ticker does
    assert not before.value.may_have_applied and before.value.code == "UNAVAILABLE"
    with pytest.raises(UnavailableError) as after:
        fence.check(committed=True)
    assert after.value.may_have_applied and after.value.code == "OWNERSHIP_UNCONFIRMED"
    status = to_status(after.value)
    assert status is not None and status.code == grpc.StatusCode.UNAVAILABLE
    details = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"]).details
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in details) and info.reason == "OWNERSHIP_UNCONFIRMED"
    fence.note_alive()
    fence.acknowledged(7, control_version=5, held_version=5)  # sent before the stall
    assert fence.closed
    fence.sent(8)
    fence.acknowledged(8, control_version=6, held_version=5)  # a map it has not got yet
    assert fence.closed
    fence.acknowledged(8, control_version=6, held_version=6)
    assert not fence.closed
    fence.check(committed=True)


def test_a_stall_found_by_a_call_closes_the_fence_once() -> None:
    """A call found the stall but left the time the node was last seen running as it
    was: once control confirmed, the next call, before the ticker ran, found the same
    stall again and closed the fence for another heartbeat."""
    fence, _ = fence_after_a_stall(3.0)
    with pytest.raises(UnavailableError):
        fence.check()
    fence.sent(8)
    fence.acknowledged(8, control_version=5, held_version=5)
    fence.check()  # no tick in between
    assert not fence.closed


def test_calls_in_a_loop_turn_that_runs_long_do_not_hide_that_the_ticker_fell_behind() -> None:
    """One loop turn of 30 tasks of 0.1 s, each asking the fence: the ticker (and the
    heartbeats) wait 3 s all the same. Each call marking the node seen running would
    have hidden that."""
    fence, clock = fence_after_a_stall(0.0)
    refused = 0
    for _ in range(30):
        clock.now += 0.1
        try:
            fence.check()
        except UnavailableError:
            refused += 1
    assert fence.closed and refused == 18  # from 1.3 s behind on


def test_without_control_s_down_timeout_no_stall_closes_it() -> None:
    clock = Clock()
    fence = OwnershipFence("n1", clock=clock)
    fence.configure(down_after_s=0)  # an older control says nothing of it
    clock.now += 60
    fence.check(committed=True)
    assert not fence.closed


@pytest_asyncio.fixture
async def fenced_shards(tmp_path: Path) -> AsyncIterator[tuple[ShardSet, Clock]]:
    """One partition behind a fence (as on a node), its key b"a" at etag 1."""
    shards = ShardSet(tmp_path)
    await asyncio.to_thread(shards.open, [("p0", KeyRange())])
    try:
        await shards.write(b"a", Put(b"a", b"1"))
        clock = Clock()
        fence = OwnershipFence("n1", clock=clock)
        fence.configure(down_after_s=2.5)
        shards.gate = fence.check
        yield shards, clock
    finally:
        await asyncio.to_thread(shards.close)


async def test_a_write_refused_for_its_etag_on_a_node_stalled_meanwhile_is_unavailable_not_aborted(
    fenced_shards: tuple[ShardSet, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node stalled while the write waited in it: the etag it was refused against is
    its copy's, which may no longer be the partition's (repaired elsewhere meanwhile)."""
    shards, clock = fenced_shards
    partition = shards.locate(b"a")
    write = partition.write

    async def stalled_while_queued(mutation: Mutation) -> Any:
        clock.now += 3.0  # the process did not run for 3 s
        return await write(mutation)

    monkeypatch.setattr(partition, "write", stalled_while_queued)
    with pytest.raises(UnavailableError, match=r"node n1 was stalled 3\.0 s") as refused:
        await shards.write(b"a", Put(b"a", b"2", if_etag=99))  # etag 1 on this copy
    assert not refused.value.may_have_applied and refused.value.code == "UNAVAILABLE"
    status = to_status(refused.value)
    assert status is not None and status.code == grpc.StatusCode.UNAVAILABLE  # not ABORTED


async def test_a_write_that_may_have_applied_on_a_node_stalled_meanwhile_says_so(
    fenced_shards: tuple[ShardSet, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fenced node's refusal of a write whose commit failed as it may have reached the
    disk said it was not applied."""
    shards, clock = fenced_shards
    partition = shards.locate(b"a")

    async def fails_in_its_commit(mutation: Mutation) -> Any:
        clock.now += 3.0  # the process did not run for 3 s
        raise StorageFaultError("p0", apsw.IOError("injected: fsync failed"), may_have_applied=True)

    monkeypatch.setattr(partition, "write", fails_in_its_commit)
    with pytest.raises(UnavailableError) as refused:
        await shards.write(b"a", Put(b"a", b"2"))
    assert refused.value.may_have_applied and refused.value.code == "OWNERSHIP_UNCONFIRMED"


async def test_a_stalled_node_answers_no_stats_but_still_counts_for_its_heartbeats(
    fenced_shards: tuple[ShardSet, Clock],
) -> None:
    """Stats from a copy that may no longer be the partition's is refused like a read;
    the heartbeats' own count (complete=False) goes on: they are how the fence reopens."""
    shards, clock = fenced_shards
    clock.now += 3.0
    with pytest.raises(UnavailableError, match=r"node n1 was stalled 3\.0 s"):
        await shards.stats()
    assert [s.revision for s in await shards.stats(complete=False)] == [1]


async def test_a_stalled_node_sweeps_nothing_for_a_client_and_reports_no_progress(
    fenced_shards: tuple[ShardSet, Clock],
) -> None:
    shards, clock = fenced_shards
    await shards.write(b"b", Put(b"b", b"2", expires_at_ms=now_ms() - 1))  # expired

    async def one_request() -> AsyncIterator[kv_pb2.SweepRequest]:
        yield kv_pb2.SweepRequest()

    clock.now += 3.0
    answered: list[kv_pb2.SweepResponse] = []
    with pytest.raises(UnavailableError, match=r"node n1 was stalled 3\.0 s"):
        answered.extend([r async for r in serve_sweep(shards, one_request(), asyncio.Event())])
    assert answered == []  # no progress from the stale copy either
    assert [s.expired_entries for s in await shards.stats(complete=False)] == [1]  # not swept
