"""A node's life with control: start-up, refusals, a repair's etags, a stall, removal.
Each test runs its own control and nodes in this process, on real 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from keyspan.services.config import ControlConfig, GatewayConfig, NodeConfig
from keyspan.services.control.process import ControlProcess
from keyspan.services.control.store import now_ms
from keyspan.services.gateway.process import GatewayProcess
from keyspan.services.node.process import NodeProcess
from keyspan.storage.errors import KeyspanError
from keyspan.streams import AsyncClient, EtagMismatch, Unavailable
from keyspan.v1 import control_pb2, control_pb2_grpc, kv_pb2, kv_pb2_grpc

pytestmark = pytest.mark.asyncio(loop_scope="module")


def lone_node(control: str, node_id: str, data: Path, sync_timeout_s: float = 0.3) -> NodeProcess:
    """A node of no cluster of this module's: it waits sync_timeout_s for `control`, then
    serves its disk."""
    return NodeProcess(
        NodeConfig(
            address="127.0.0.1:0", probe_address="127.0.0.1:0", control=control, id=node_id, data=data,
            shutdown_grace_s=0.5, sync_timeout_s=sync_timeout_s,
        )
    )  # fmt: skip


def fast_control(data: Path) -> ControlProcess:
    """A control of 2 partitions of its own, whose heartbeats come every 0.1 s."""
    return ControlProcess(
        ControlConfig(
            address="127.0.0.1:0", data=data, partitions=2, heartbeat_interval_s=0.1, suspect_after_s=0.6,
            down_after_s=2.0, shutdown_grace_s=0.5, backup_interval_s=0,
        )
    )  # fmt: skip


@contextlib.asynccontextmanager
async def control_and_node(tmp_path: Path, node_id: str) -> AsyncIterator[tuple[ControlProcess, NodeProcess]]:
    """A fast_control and one node of its own, both stopped on the way out."""
    control = fast_control(tmp_path / "control")
    await control.start()
    node = lone_node(control.address, node_id, tmp_path / node_id, sync_timeout_s=5)
    try:
        await node.start()
        yield control, node
    finally:
        await node.stop(0)
        await control.stop(0)


async def test_a_gateway_with_no_map_yet_answers_stats_unavailable_not_an_empty_store() -> None:
    import socket

    with socket.socket() as silent:  # bound, never listening: the control cannot be reached
        silent.bind(("127.0.0.1", 0))
        control = f"127.0.0.1:{silent.getsockname()[1]}"
        gateway = GatewayProcess(GatewayConfig(address="127.0.0.1:0", control=control, shutdown_grace_s=0.5))
        starting = asyncio.create_task(gateway.start())
        try:
            while not gateway.port:
                await asyncio.sleep(0.01)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await kv_pb2_grpc.KVStub(channel).Stats(kv_pb2.StatsRequest(), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no partition map yet" in (refused.value.details() or "")
        finally:
            await gateway.stop(0)
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, KeyspanError):
                await starting


def said_by_the_session(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "keyspan.services.node.session"]


async def test_a_node_pointed_at_a_data_server_says_it_is_not_a_control(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from keyspan.services.config import ServeConfig
    from keyspan.services.server import KeyspanServer

    serve = KeyspanServer(ServeConfig(address="127.0.0.1:0", data=tmp_path / "serve", sweep_interval_s=3600))
    await serve.start()
    node = lone_node(f"127.0.0.1:{serve.port}", "lost", tmp_path / "n")
    try:
        with caplog.at_level(logging.INFO, logger="keyspan.services.node.session"):
            await node.start()
            deadline = asyncio.get_running_loop().time() + 30
            while not said_by_the_session(caplog) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)  # its first try (1.5 s in all was too short under load)
            await asyncio.sleep(2.5)  # the session retries about every second
    finally:
        await node.stop(0)
        await serve.stop(0)
    # Said once, at ERROR, where it was an INFO line a second. (A busy machine may add a
    # "control session broke" line for an attempt that failed otherwise.)
    said = [r for r in said_by_the_session(caplog) if "is not a keyspan control" in r.getMessage()]
    assert [r.levelname for r in said] == ["ERROR"]
    assert said[0].getMessage().startswith("the --control address is not a keyspan control")


async def test_a_bulk_put_through_the_gateway_ends_ok_on_the_node(tmp_path: Path) -> None:
    """The gateway cancelled its node streams once its caller was done: every load through
    a gateway was a CANCELLED BulkPut in the node's metrics and spans."""
    from tests.services.common.obs_helpers import sample, scrape

    control = fast_control(tmp_path / "control")
    await control.start()
    node = NodeProcess(
        NodeConfig(
            address="127.0.0.1:0", probe_address="127.0.0.1:0", control=control.address, id="n",
            data=tmp_path / "n", shutdown_grace_s=0.5, metrics_address="127.0.0.1:0",
        )
    )  # fmt: skip
    await node.start()
    gateway = GatewayProcess(GatewayConfig(address="127.0.0.1:0", control=control.address))
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            batches = [
                [kv_pb2.Entry(key=b"k%03d" % (10 * b + i), value=b"v") for i in range(10)] for b in range(3)
            ]
            answers = [
                r async for r in kv_pb2_grpc.KVStub(channel).BulkPut(
                    kv_pb2.BulkPutRequest(entries=batch) for batch in batches
                )
            ]  # fmt: skip
        assert [a.accepted for a in answers] == [10, 10, 10]
        codes: dict[str, float] = {}
        for _ in range(50):  # the node's status comes a moment after the gateway's
            handled = (await scrape(node))["keyspan_rpc_handled"].samples  # type: ignore[arg-type]
            codes = {
                s.labels["grpc_code"]: s.value for s in handled if s.labels.get("grpc_method") == "BulkPut"
            }
            if codes:
                break
            await asyncio.sleep(0.05)
        assert codes == {"OK": 1.0}
        assert sample(await scrape(node), "keyspan_node_writes_total") == 30  # type: ignore[arg-type]
    finally:
        await gateway.stop()
        await node.stop(0)
        await control.stop(0)


async def test_etags_never_repeat_when_a_repair_gives_a_partition_another_copy(tmp_path: Path) -> None:
    """A repaired partition's new copy started its etags again at 1 (an empty disk) or at
    an old copy's count (a repair back): the same key and etag named two values, and a
    write holding an old etag as its precondition could succeed against another value."""
    control = fast_control(tmp_path / "control")
    await control.start()
    nodes = {n: lone_node(control.address, n, tmp_path / n, sync_timeout_s=5) for n in ("a", "b")}
    await nodes["a"].start()  # first: it gets both partitions
    await nodes["b"].start()
    client = await AsyncClient.for_cluster(control.address)
    state = control.state
    assert state is not None

    async def put_when_served(value: bytes, by: str) -> int:
        """Put once `by` alone holds the partition (a forced repair leaves the old owner
        serving until its map changes)."""
        for _ in range(100):
            held = {n: [p.id for p in node.shards.partitions] for n, node in nodes.items()}
            if [n for n, ids in held.items() if partition in ids] == [by]:
                with contextlib.suppress(Unavailable):  # the client's map is a moment behind
                    return await client.put(b"k", value)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{partition} was never served by {by} alone")

    async def repair_to(node_id: str) -> None:
        """Once the node is up: a node that just started is suspect until its probe says
        SERVING (it reconciles first), and a repair to it is refused meanwhile."""
        for _ in range(100):
            if (await control.call(state.store.node, node_id))["status"] == "up":
                await control.call(state.repair, partition, node_id, True)
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"node {node_id} never came up")

    partition = state.map.locate(b"k").partition_id
    try:
        assert state.map.locate(b"k").node_id == "a"
        first = await put_when_served(b"on a", "a")
        await repair_to("b")
        on_b = await put_when_served(b"on b, an empty copy", "b")
        assert on_b > first and on_b > state.map.by_id(partition).revision_floor - 1_000  # type: ignore[union-attr]
        with pytest.raises(EtagMismatch):  # the old etag names nothing here
            await client.put(b"k", b"x", if_etag=first)
        await repair_to("a")  # back to a's older copy
        again = await put_when_served(b"on a again", "a")
        assert again > on_b
    finally:
        await client.close()
        for node in nodes.values():
            await node.stop(0)
        await control.stop(0)


async def test_a_stalled_node_answers_again_once_control_acknowledges_a_later_heartbeat(
    tmp_path: Path,
) -> None:
    """The session's heartbeat acknowledgements, end to end: a node whose ticker found a
    stall refuses calls until control answers a heartbeat sent after it."""
    async with control_and_node(tmp_path, "n") as (_, node):
        fence = node.fence
        assert fence is not None and fence.max_gap_s == 1.0  # half of control's 2 s
        fence.alive_at -= 5  # as if the process had not run for 5 s
        async with grpc.aio.insecure_channel(node.address) as channel:
            stub = kv_pb2_grpc.KVStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"))
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "was stalled 5." in (refused.value.details() or "")
            waited = time.monotonic()
            while fence.closed and time.monotonic() - waited < 5:
                await asyncio.sleep(0.02)
            assert not fence.closed and time.monotonic() - waited < 1.0  # a heartbeat or so
            await stub.Put(kv_pb2.PutRequest(key=b"k", value=b"v"))


async def test_a_removed_node_that_still_runs_closes_its_partitions(tmp_path: Path) -> None:
    """remove --force of a running node left its session up: it went on serving what the
    map gave its id, beside a new process registered under that id."""
    async with control_and_node(tmp_path, "gone") as (control, node):
        assert len(node.shards.partitions) == 2
        state = control.state
        assert state is not None
        await control.call(state.remove, "gone", True)
        # a new process under the same id, from another data dir, given the partitions
        await control.call(state.register, "gone", "127.0.0.1:1", "", 1, [], now_ms(), "another-disk")
        for entry in state.map.entries:
            await control.call(state.repair, entry.partition_id, "gone", True)
        for _ in range(100):
            if node.session is not None and node.session.refused and not node.shards.partitions:
                break
            await asyncio.sleep(0.05)
        assert node.shards.partitions == []
        assert node.session is not None and node.session.refused is not None
        assert (
            "this process is not that node any more" in node.session.refused
            or "was removed" in node.session.refused
            # its session was cut and registered again, finding the new process's disk
            or "registered before from another data dir" in node.session.refused
        )


async def test_a_node_whose_control_is_starting_leaves_no_pending_session_task(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each session that control ended (UNAVAILABLE while it starts) left grpc's
    request-reading task pending on the node's queue: asyncio logged "Task was destroyed
    but it is pending!" and a failed aclose() as ERRORs."""
    import gc
    import logging

    class Starting(control_pb2_grpc.ControlServicer):  # control's answer while it starts
        async def Session(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
            await anext(requests)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "control is starting")
            yield control_pb2.ControlMessage()  # never reached: makes this a stream handler

    fake = grpc.aio.server()
    control_pb2_grpc.add_ControlServicer_to_server(Starting(), fake)
    port = fake.add_insecure_port("127.0.0.1:0")
    await fake.start()
    node = lone_node(f"127.0.0.1:{port}", "early", tmp_path / "n")
    try:
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            await node.start()
            try:
                await asyncio.sleep(1.0)  # a few sessions ended by control
                gc.collect()
                await asyncio.sleep(0.1)
            finally:
                await node.stop(0)
            gc.collect()
    finally:
        await fake.stop(0)
    assert [r.getMessage()[:60] for r in caplog.records if r.name == "asyncio"] == []


async def test_a_removed_node_stays_out_of_the_cluster_until_restarted(tmp_path: Path) -> None:
    """Refused at its heartbeat, it registered again at once as a new node and took its
    partitions back (in a one-node cluster, all of them)."""
    async with control_and_node(tmp_path, "gone") as (control, node):
        state = control.state
        assert state is not None and len(node.shards.partitions) == 2
        await control.call(state.remove, "gone", True)
        await asyncio.sleep(2.0)  # ten heartbeat intervals
        assert state.store.node("gone") is None
        assert node.shards.partitions == [] and all(not e.node_id for e in state.map.entries)


async def test_a_node_whose_map_failed_to_apply_starts_a_new_session_and_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error other than gRPC's while applying a map (closing a partition whose read
    connection was busy raised ThreadingViolationError) ended the session task: the node
    sent no heartbeat and took no map again, and control soon had it down."""
    from keyspan.services.node import session

    real = session.reconcile
    calls = 0

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected: applying the map failed")
        return await real(*args, **kwargs)

    monkeypatch.setattr(session, "reconcile", fails_once)
    with caplog.at_level(logging.ERROR, logger="keyspan.services.node.session"):
        async with control_and_node(tmp_path, "n") as (_, node):
            assert len(node.shards.partitions) == 2  # synced, by the second session
    assert calls >= 2
    assert any("control session failed; starting a new one" in r.getMessage() for r in caplog.records)
