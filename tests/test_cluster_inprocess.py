"""Control, two nodes and a gateway in one process, on real 127.0.0.1 ports."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry

from keyspan.services.config import ControlConfig, GatewayConfig, NodeConfig
from keyspan.services.control.process import ControlProcess
from keyspan.services.gateway.process import GatewayProcess
from keyspan.services.node.process import NodeProcess
from keyspan.storage.errors import KeyspanError
from keyspan.storage.shardset import ShardSet
from keyspan.streams import AsyncClient, Unavailable
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.map_router import MapRouter
from keyspan.streams.router import open_channel
from keyspan.v1 import control_pb2, control_pb2_grpc, errors_pb2, kv_pb2, kv_pb2_grpc
from tests.services.test_kv_streams import exactly_credited

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Running:
    control: ControlProcess
    nodes: dict[str, NodeProcess]
    gateway: GatewayProcess
    channels: list[grpc.aio.Channel]

    def stub(self, address: str) -> kv_pb2_grpc.KVStub:
        channel = grpc.aio.insecure_channel(address)
        self.channels.append(channel)
        return kv_pb2_grpc.KVStub(channel)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    root: Path = tmp_path_factory.mktemp("cluster")
    control = ControlProcess(
        ControlConfig(
            address="127.0.0.1:0", data=root / "control", split_points="g,n", min_nodes=2,
            heartbeat_interval_s=0.1, suspect_after_s=0.6, down_after_s=2.0, shutdown_grace_s=0.5,
        )
    )  # fmt: skip
    await control.start()
    nodes = {}
    for node_id in ("a", "b"):
        node = NodeProcess(
            NodeConfig(
                address="127.0.0.1:0", probe_address="127.0.0.1:0", control=control.address, id=node_id,
                data=root / node_id, shutdown_grace_s=0.5,
            )
        )  # fmt: skip
        nodes[node_id] = node
    await asyncio.gather(*(n.start() for n in nodes.values()))
    gateway = GatewayProcess(
        GatewayConfig(address="127.0.0.1:0", control=control.address, shutdown_grace_s=0.5)
    )
    await gateway.start()
    cluster = Running(control, nodes, gateway, [])
    try:
        yield cluster
    finally:
        for channel in cluster.channels:
            await channel.close()
        await gateway.stop()
        for node in nodes.values():
            if node.session is not None and node.port:
                await node.stop()
        await control.stop()


def wrong_partition(err: grpc.aio.AioRpcError) -> errors_pb2.WrongPartition | None:
    for detail in rpc_status.from_call(err).details:  # type: ignore[arg-type, union-attr]
        if detail.Is(errors_pb2.WrongPartition.DESCRIPTOR):
            out = errors_pb2.WrongPartition()
            detail.Unpack(out)
            return out
    return None


async def scan(stub: kv_pb2_grpc.KVStub, credits: int, reverse: bool = False) -> list[bytes]:
    grants: asyncio.Queue[kv_pb2.ScanRequest] = asyncio.Queue()
    grants.put_nowait(kv_pb2.ScanRequest(credits=credits, reverse=reverse))

    async def requests() -> AsyncIterator[kv_pb2.ScanRequest]:
        while True:
            yield await grants.get()

    keys: list[bytes] = []
    call = stub.Scan(requests())
    async for response in call:
        keys.extend(e.key for e in response.entries)
        if response.entries:
            grants.put_nowait(kv_pb2.ScanRequest(credits=len(response.entries)))
        if response.done:
            break
    call.cancel()
    return keys


KEYS = sorted(f"{c}{i}".encode() for c in "bdhkpz" for i in range(40))


async def test_the_map_is_assigned_over_both_nodes(running: Running) -> None:
    async with grpc.aio.insecure_channel(running.control.address) as channel:
        watch = control_pb2_grpc.ControlStub(channel).WatchMap(control_pb2.WatchMapRequest())
        async for m in watch:  # pushed: ASSIGNED until each node acknowledges, then SERVING
            if all(p.state == control_pb2.PARTITION_STATE_SERVING for p in m.partitions):
                break
        watch.cancel()
    assert [p.partition_id for p in m.partitions] == ["p0000", "p0001", "p0002"]
    assert {p.node_id for p in m.partitions} == {"a", "b"}


async def test_gateway_writes_and_scans_across_nodes_in_key_order(running: Running) -> None:
    gateway = running.stub(running.gateway.address)
    for k in KEYS:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    assert (await gateway.Get(kv_pb2.GetRequest(key=b"k3"))).value == b"k3"
    assert await scan(gateway, credits=7) == KEYS
    assert await scan(gateway, credits=1000, reverse=True) == KEYS[::-1]
    stats = await gateway.Stats(kv_pb2.StatsRequest())
    assert stats.approximate_entries == len(KEYS) and len(stats.partitions) == 3


async def test_a_gateway_scan_credited_exactly_ends_with_done_past_empty_pieces(running: Running) -> None:
    # Out of credits at a piece boundary, the gateway opens the next piece with a credit
    # of its own: `done` needs none, and the pieces left here are empty.
    gateway = running.stub(running.gateway.address)
    for k in KEYS:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    ds, hs = [k for k in KEYS if k.startswith(b"d")], [k for k in KEYS if k.startswith(b"h")]
    forward = await exactly_credited(gateway, kv_pb2.ScanRequest(start=b"d", end=b"h", credits=len(ds)))
    assert [e.key for r in forward for e in r.entries] == ds and forward[-1].done
    first = kv_pb2.ScanRequest(start=b"f", end=b"k", reverse=True, credits=len(hs))
    backward = await exactly_credited(gateway, first)
    assert [e.key for r in backward for e in r.entries] == hs[::-1] and backward[-1].done


async def test_a_gateway_scan_credited_exactly_then_half_closed_still_ends_with_done(
    running: Running,
) -> None:
    # As serve does: done needs no credit, and the client closing its side does not make
    # the empty pieces after its last entry unknowable (the gateway ended OK, no done).
    gateway = running.stub(running.gateway.address)
    await gateway.Put(kv_pb2.PutRequest(key=b"d9", value=b"d9"))
    call = gateway.Scan()  # d9 ends its piece; [g, g1) is empty
    await call.write(kv_pb2.ScanRequest(start=b"d9", end=b"g1", credits=1))
    await call.done_writing()
    responses = [r async for r in call]
    assert [e.key for r in responses for e in r.entries] == [b"d9"] and responses[-1].done
    assert await call.code() == grpc.StatusCode.OK


async def test_a_later_grant_outside_the_credit_range_ends_a_gateway_scan_with_invalid_argument(
    running: Running,
) -> None:
    gateway = running.stub(running.gateway.address)
    for k in KEYS:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    call = gateway.Scan()
    await call.write(kv_pb2.ScanRequest(credits=1))
    assert len((await call.read()).entries) == 1
    await call.write(kv_pb2.ScanRequest(credits=0))  # ended OK, no done, the rest cut off
    more: list[kv_pb2.ScanResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async with asyncio.timeout(10):
            while (response := await call.read()) is not grpc.aio.EOF:  # EOF: ended OK
                more.append(response)
    assert more == []  # its one credit was used: nothing more came before the refusal
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "credits: must be between 1 and 1000000, not 0"


async def test_a_gateway_scan_holds_the_entry_of_its_own_credit_until_the_client_grants(
    running: Running,
) -> None:
    gateway = running.stub(running.gateway.address)
    for k in (b"d9", b"h0"):
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    call = gateway.Scan()  # d9 is the last key of its piece, h0 the only one of the next
    await call.write(kv_pb2.ScanRequest(start=b"d9", end=b"h00", credits=1))
    assert [e.key for e in (await call.read()).entries] == [b"d9"]
    reading = asyncio.ensure_future(call.read())  # a cancelled read would cancel the call
    finished, _ = await asyncio.wait({reading}, timeout=0.3)
    assert not finished  # h0 is there, and the client has granted no credit for it
    await call.write(kv_pb2.ScanRequest(credits=1))
    last = await reading
    assert [e.key for e in last.entries] == [b"h0"] and last.done
    call.cancel()


async def test_a_sweeps_rate_holds_across_pieces_through_the_gateway_and_the_thick_client(
    running: Running,
) -> None:
    # Each node paced its own piece from its start: 900 deletes over 6 pieces went in
    # 0.06 s at 200 a second. Here [c, r) is cut at the map's bounds g and n, with 100
    # expired entries in each piece; a piece may start once those before it are paid for.
    gateway = running.stub(running.gateway.address)
    router = MapRouter.watching(running.control.address, open_channel)
    try:
        assert await router.wait_for_map(10)
        thick = AsyncClient(router=router)
        for sweeper in ("gateway", "thick"):
            keys = [f"{p}{sweeper[0]}{i:03d}".encode() for p in "cjp" for i in range(100)]
            for key in keys:
                await gateway.Put(kv_pb2.PutRequest(key=key, value=b"v", ttl_s=0.05))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            if sweeper == "gateway":
                call = gateway.Sweep()
                await call.write(kv_pb2.SweepRequest(start=b"c", end=b"r", max_deletes_per_s=300))
                await call.done_writing()
                deleted = [r async for r in call][-1].deleted
            else:
                deleted = [p async for p in thick.sweep("c", "r", max_deletes_per_s=300)][-1].deleted
            assert deleted >= len(keys) - 5  # the nodes' own sweepers may take a few
            # the third piece waits for the 200 deletes before it: 0.67 s at 300 a second
            assert time.monotonic() - started >= 0.6, sweeper
    finally:
        await router.close()


async def test_a_scan_whose_client_stops_granting_ends_via_the_gateway_as_direct(running: Running) -> None:
    gateway = running.stub(running.gateway.address)
    for k in KEYS[:5]:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    owner = running.stub(running.gateway.router.owner(KEYS[0]).address)
    for stub in (owner, gateway):
        # Two credits, then the client closes its side: it will grant no more.
        call = stub.Scan()
        await call.write(kv_pb2.ScanRequest(start=KEYS[0], credits=2))
        await call.done_writing()
        got = [e.key async for response in call for e in response.entries]
        assert got == KEYS[:2] and await call.code() == grpc.StatusCode.OK


async def test_a_scan_through_the_gateway_asked_to_close_after_done_takes_a_late_grant(
    running: Running,
) -> None:
    """The gateway closes each node piece once its done is read (a piece left open would
    hold the scan for the node's linger, 10 s a piece), and holds the client's stream."""
    gateway = running.stub(running.gateway.address)
    for k in KEYS:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    started = time.monotonic()
    call = gateway.Scan()
    await call.write(kv_pb2.ScanRequest(credits=len(KEYS) + 1, close_after_done=True))
    got: list[bytes] = []
    async with asyncio.timeout(5):
        while not (response := await call.read()).done:
            got.extend(e.key for e in response.entries)
    got.extend(e.key for e in response.entries)
    await asyncio.sleep(0.05)  # the gateway has long sent done
    await call.write(kv_pb2.ScanRequest(credits=10))  # a grant sent before done was seen
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert got == KEYS
    assert time.monotonic() - started < 3


async def test_a_node_answers_wrong_partition_with_the_owner(running: Running) -> None:
    node_a = running.nodes["a"]
    foreign = next(e for e in node_a.map.entries if e.node_id == "b")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.stub(node_a.address).Put(kv_pb2.PutRequest(key=foreign.range.start + b"x", value=b"v"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = wrong_partition(refused.value)
    assert detail is not None
    assert (detail.node_id, detail.address, detail.partition_id) == (
        "b",
        running.nodes["b"].address,
        foreign.partition_id,
    )


async def test_a_node_scans_up_to_a_range_it_does_not_hold_then_names_it(running: Running) -> None:
    """It used to skip the part held elsewhere and answer done, as if that part were empty."""
    gateway = running.stub(running.gateway.address)
    for k in KEYS:
        await gateway.Put(kv_pb2.PutRequest(key=k, value=k))
    router = running.gateway.router
    mine = router.owner(b"").address
    gap = next(start for start in (b"g", b"n") if router.owner(start).address != mine)
    call = running.stub(mine).Scan()
    await call.write(kv_pb2.ScanRequest(credits=1000))
    got: list[bytes] = []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for response in call:
            got.extend(e.key for e in response.entries)
            assert not response.done
    assert got == [k for k in KEYS if k < gap]
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = wrong_partition(refused.value)
    assert detail is not None and detail.key == gap and detail.address == router.owner(gap).address


async def test_map_router_watching_control_routes_straight_to_the_nodes(running: Running) -> None:
    router = MapRouter.watching(running.control.address)
    try:
        assert await router.wait_for_map()
        assert (await router.stub_for_key(b"p5").Get(kv_pb2.GetRequest(key=b"p5"))).value == b"p5"
        keys: list[bytes] = []
        for start, end, stub in router.pieces(b"c", b"q"):
            request = kv_pb2.ScanRequest(start=start, credits=1000)
            if end is not None:
                request.end = end
            async for response in stub.Scan(iter([request])):
                keys.extend(e.key for e in response.entries)
        assert keys == [k for k in KEYS if b"c" <= k < b"q"]
        assert len(router.stubs()) == 2
    finally:
        await router.close()


async def test_the_thick_client_routes_by_the_map_across_nodes(running: Running) -> None:
    registry = CollectorRegistry()
    client = await AsyncClient.for_cluster(running.control.address, metrics=ClientMetrics(registry))
    try:
        assert registry.get_sample_value("keyspan_client_map_refreshes_total") >= 1
        keys = [f"t{c}{i:03d}".encode() for c in "acegikmoqsuwy" for i in range(30)]
        # Scans and bulk loads are cut at partition bounds (g, n) and stitched in key order.
        result = await client.bulk_put_ex([(k, b"v-" + k) for k in keys])
        assert result.entries == len(keys)
        got = [e.key async for e in client.scan_ex(b"t", b"u")]
        assert got == keys
        assert [e.key async for e in client.scan(b"t", b"u", reverse=True)] == keys[::-1]
        # Point calls go to each key's owner; etag read-modify-write works on either node.
        for key in (b"counter-a", b"p-counter", b"z-counter"):
            for _ in range(5):
                await client.update(key, lambda old: int(old or 0) + 1, json=True)
            assert (await client.get(key, json=True)).value == 5  # type: ignore[union-attr]
        # The keys really landed on both nodes, each holding only what it owns.
        for node in running.nodes.values():
            held = sum(s.approximate_entries for s in await node.shards.stats())
            assert held > 0
    finally:
        await client.close()


async def test_a_stopped_node_makes_its_partitions_unavailable_with_retry_info(running: Running) -> None:
    victim = running.nodes["b"]
    owned = victim.map.owned_by("b")[0]
    await victim.stop(0)
    victim.port = 0
    deadline = time.monotonic() + 10
    while running.gateway.watcher.map.by_id(owned.partition_id).routable:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the map never reported the partition unavailable"
        await asyncio.sleep(0.05)
    with pytest.raises(grpc.aio.AioRpcError) as unavailable:
        await running.stub(running.gateway.address).Get(kv_pb2.GetRequest(key=owned.range.start + b"x"))
    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
    details = rpc_status.from_call(unavailable.value).details  # type: ignore[arg-type, union-attr]
    assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in details)
    # Stats claims every partition: it answered the others' alone, with nothing said.
    with pytest.raises(grpc.aio.AioRpcError) as partial:
        await running.stub(running.gateway.address).Stats(kv_pb2.StatsRequest())
    assert partial.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"partition {owned.partition_id}" in (partial.value.details() or "")
    router = MapRouter.watching(running.control.address, open_channel)
    try:
        assert await router.wait_for_map(10)
        with pytest.raises(Unavailable, match=f"partition {owned.partition_id}"):
            await AsyncClient(router=router).stats()
    finally:
        await router.close()


async def test_a_stopping_gateway_ends_its_idle_streams_at_once(running: Running) -> None:
    gateway = GatewayProcess(
        GatewayConfig(address="127.0.0.1:0", control=running.control.address, shutdown_grace_s=10)
    )
    await gateway.start()
    try:
        stub = running.stub(gateway.address)
        for k in (b"b1", b"b2", b"b3"):
            await stub.Put(kv_pb2.PutRequest(key=k, value=k))
        scan_call = stub.Scan()  # has used its credits; the node waits for more, and so does the gateway
        await scan_call.write(kv_pb2.ScanRequest(start=b"b", credits=2))
        assert len((await scan_call.read()).entries) == 2
        bulk_call = stub.BulkPut()  # had its batch answered; waits for the next one
        await bulk_call.write(kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"b4", value=b"v")]))
        assert (await bulk_call.read()).accepted == 1
        silent_scan, silent_sweep = stub.Scan(), stub.Sweep()  # opened; their first request never comes
        while gateway.streams.open < 4:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        await gateway.stop()  # a grace period of 10 s, and nothing in flight
        assert time.monotonic() - started < 3
        for call in (scan_call, bulk_call, silent_scan, silent_sweep):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "the server is stopping" in (caught.value.details() or "")
    finally:
        await gateway.stop(0)


async def test_a_node_session_that_ends_leaves_no_map_waiter(running: Running, tmp_path: Path) -> None:
    def map_waiters() -> int:  # one task a live node session, waiting for the next map
        return sum(t.get_coro().__qualname__ == "MapHub.newer_than" for t in asyncio.all_tasks())

    async def settles_at(count: int) -> bool:
        for _ in range(100):
            if map_waiters() == count:
                return True
            await asyncio.sleep(0.05)
        return False

    before = map_waiters()
    node = NodeProcess(
        NodeConfig(
            address="127.0.0.1:0", probe_address="127.0.0.1:0", control=running.control.address, id="c",
            data=tmp_path / "c", shutdown_grace_s=0.5,
        )
    )  # fmt: skip
    await node.start()
    assert await settles_at(before + 1)
    await node.stop()
    assert await settles_at(before)


def _field_of(err: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(err)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([control_pb2.Register(node_id="x", address="nonsense")], "register.address"),
        ([control_pb2.Register(node_id="x", address="127.0.0.1:0")], "register.address"),
        (
            [control_pb2.Register(node_id="x", address="h:1", probe_address="h:99999")],
            "register.probe_address",
        ),
        ([control_pb2.Register(node_id="x", address="h:1", capacity=2**32 - 1)], "register.capacity"),
        (
            [
                control_pb2.Register(node_id="x", address="h:1"),
                control_pb2.Heartbeat(
                    partitions=[kv_pb2.PartitionStats(partition_id="p0000", bytes=2**64 - 1)]
                ),
            ],
            "heartbeat.partitions[0]",
        ),
    ],
    ids=["address", "port-0", "probe-port", "capacity", "uint64-count"],
)
async def test_a_session_with_a_bad_registration_or_heartbeat_is_refused_by_field(
    running: Running, messages: list[object], field: str
) -> None:
    async with grpc.aio.insecure_channel(running.control.address) as channel:
        call = control_pb2_grpc.ControlStub(channel).Session()
        for m in messages:
            kind = "register" if isinstance(m, control_pb2.Register) else "heartbeat"
            await call.write(control_pb2.NodeMessage(**{kind: m}))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [message async for message in call]  # read until the refusal
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _field_of(refused.value) == field
        # Nothing of a refused registration reached the map's nodes.
        nodes = await control_pb2_grpc.ControlStub(channel).ListNodes(control_pb2.ListNodesRequest())
        assert "x" not in {n.node_id for n in nodes.nodes} or field.startswith("heartbeat")


async def test_a_second_node_with_the_same_id_and_another_disk_is_refused(
    running: Running, tmp_path: Path
) -> None:
    """It would otherwise take over node a's partitions and serve them empty."""
    first = running.nodes["a"]
    owned_before = [(e.partition_id, e.address) for e in running.control.state.map.entries]  # type: ignore[union-attr]
    impostor = NodeProcess(
        NodeConfig(
            address="127.0.0.1:0", probe_address="127.0.0.1:0", control=running.control.address, id="a",
            data=tmp_path / "a-elsewhere", shutdown_grace_s=0.5, sync_timeout_s=10,
        )
    )  # fmt: skip
    with pytest.raises(
        KeyspanError,
        match=r"refused this node: node a \(last at .*\) registered before from another data dir",
    ):
        await impostor.start()
    await impostor.server.stop(None)
    entries = running.control.state.map.entries  # type: ignore[union-attr]
    assert [(e.partition_id, e.address) for e in entries] == owned_before
    assert any(e.address == first.address for e in entries)
    # The impostor let go of what it opened: its data dir can be opened again at once.
    again = ShardSet(tmp_path / "a-elsewhere")
    again.open(())
    again.close()


async def test_the_gateway_passes_on_the_callers_deadline(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every node call had --call-timeout-s: a caller's 30 s Put ended DEADLINE_EXCEEDED
    after 10 s, and a caller's 1 s one left the node working to 10 s."""
    gateway = GatewayProcess(
        GatewayConfig(address="127.0.0.1:0", control=running.control.address, call_timeout_s=0.3)
    )
    await gateway.start()
    try:
        owner = next(n for n in running.nodes.values() if n.address == gateway.router.owner(b"slow").address)
        write = owner.shards.write

        async def slow_write(key: bytes, mutation: Any) -> Any:
            await asyncio.sleep(0.8)
            return await write(key, mutation)

        monkeypatch.setattr(owner.shards, "write", slow_write)
        stub = running.stub(gateway.address)
        put = await stub.Put(kv_pb2.PutRequest(key=b"slow", value=b"v"), timeout=5)  # 0.8 s < 5 s
        assert put.etag > 0
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.Put(kv_pb2.PutRequest(key=b"slow", value=b"w"))  # no deadline: 0.3 s
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await gateway.stop(0)


async def test_a_gateway_scan_or_sweep_that_keeps_meeting_wrong_partition_ends_unavailable(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that kept answering WrongPartition (its map and the gateway's disagreeing,
    with no newer map coming) held a scan through the gateway for ever, and a sweep's was
    relayed as FAILED_PRECONDITION, which its client could do nothing with."""
    from keyspan.storage.errors import WrongPartitionError

    gateway = running.gateway
    entry = gateway.router.owner(b"b")
    node = next(n for n in running.nodes.values() if n.address == entry.address)

    async def no_newer_map(wrong: object) -> None:  # none comes; do not wait a second each time
        return None

    monkeypatch.setattr(gateway.router, "after_wrong_partition", no_newer_map)
    monkeypatch.setattr(node.shards, "on_missing", lambda key: WrongPartitionError(key, node_id="elsewhere"))
    await asyncio.to_thread(node.shards.drop_partition, entry.partition_id)
    try:
        stub = running.stub(gateway.address)
        call = stub.Scan()
        await call.write(kv_pb2.ScanRequest(start=b"b", end=b"c", credits=10))
        with pytest.raises(grpc.aio.AioRpcError) as scan:
            await asyncio.wait_for(call.read(), 10)
        assert scan.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "scan: routing did not settle" in (scan.value.details() or "")
        sweep = stub.Sweep()
        await sweep.write(kv_pb2.SweepRequest(start=b"b", end=b"c"))
        with pytest.raises(grpc.aio.AioRpcError) as swept:
            await asyncio.wait_for(sweep.read(), 10)
        assert swept.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "sweep: routing did not settle" in (swept.value.details() or "")
    finally:
        monkeypatch.undo()
        await asyncio.to_thread(node.shards.add_partition, entry.partition_id, entry.range)
