"""The cluster workflow's steps. Each drives a running Cluster, checks what it must, and
answers a Result; pytest (integration/test_cluster.py) and `python -m integration.workflow`
run the same steps.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from integration.cluster import Cluster, wait_serving
from integration.workload import LETTERS, CounterWorkload, Routed, channel, retrying
from keyspan.v1 import kv_pb2, kv_pb2_grpc


class StepFailed(AssertionError):
    pass


@dataclass
class Result:
    step: str
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    notes: str = ""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def gateway_stub(cluster: Cluster) -> kv_pb2_grpc.KVStub:
    return kv_pb2_grpc.KVStub(channel(cluster.gateway.address))


def wait_until(what: str, predicate: Callable[[], bool], timeout_s: float = 20.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise StepFailed(f"timed out waiting for {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def owner_of(cluster: Cluster, partition_id: str) -> str:
    """The node `admin partitions` names as the partition's owner ("-" when none)."""
    rows = [line.split() for line in cluster.admin("partitions").splitlines()]
    return next(r[3] for r in rows if r and r[0] == partition_id)


def node_status(cluster: Cluster, node_id: str) -> str:
    for line in cluster.admin("nodes").splitlines():
        if line.startswith(node_id + " "):
            return line.split()[2]
    return "absent"


# -- counters ------------------------------------------------------------------------------


def counters(cluster: Cluster, seconds: float = 4.0, workers: int = 8) -> Result:
    started = time.monotonic()
    load = CounterWorkload(cluster.gateway.address, cluster.control.address, "counters", workers=workers)
    tally = load.run_for(seconds)
    wrong = load.verify(cluster.gateway.address)
    check(not wrong, f"counters differ from acknowledged increments: {wrong}")
    check(tally.ops > 0, "no increment was acknowledged")
    return Result(
        "counters (etag read-modify-write)", tally.ops, dict(tally.errors), time.monotonic() - started
    )


# -- bulk load and scans -------------------------------------------------------------------


def sorted_entries(n: int, prefix: str = "bulk") -> list[tuple[bytes, bytes]]:
    keys = sorted(f"{LETTERS[i % 26]}/{prefix}/{i:07d}".encode() for i in range(n))
    return [(k, b"value-" + k) for k in keys]


def bulk_put(stub: kv_pb2_grpc.KVStub, data: list[tuple[bytes, bytes]], batch: int = 500) -> int:
    """Load sorted data through one BulkPut stream, resending each batch's rest; answers batches sent."""
    pending, sent = list(data), 0
    while pending:
        chunk = pending[:batch]
        request = kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=k, value=v) for k, v in chunk])
        (answer,) = list(stub.BulkPut(iter([request]), timeout=30))
        check(answer.accepted > 0, f"batch at {chunk[0][0]!r} accepted nothing")
        pending = pending[answer.accepted :]
        sent += 1
    return sent


def scan_all(stub: kv_pb2_grpc.KVStub, start: bytes = b"", end: bytes | None = None, credits: int = 700,
             reverse: bool = False) -> list[tuple[bytes, bytes]]:  # fmt: skip
    """Scan [start, end) granting `credits` at a time, topping up as entries arrive."""
    out: list[tuple[bytes, bytes]] = []
    grants: list[kv_pb2.ScanRequest] = []
    first = kv_pb2.ScanRequest(start=start, credits=credits, reverse=reverse)
    if end is not None:
        first.end = end

    def requests() -> Iterator[kv_pb2.ScanRequest]:
        yield first
        while True:
            while not grants:
                time.sleep(0.002)
            request = grants.pop()
            if request is None:
                return
            yield request

    granted_at = 0
    call = stub.Scan(requests(), timeout=60)
    try:
        for response in call:
            out.extend((e.key, e.value) for e in response.entries)
            if response.done:
                break
            if len(out) - granted_at >= credits // 2:
                grants.append(kv_pb2.ScanRequest(credits=len(out) - granted_at))
                granted_at = len(out)
    finally:
        grants.append(None)  # type: ignore[arg-type]
        call.cancel()
    return out


def routed_scan(routed: Routed, start: bytes, end: bytes | None) -> list[tuple[bytes, bytes]]:
    """Scan piece by piece straight from the owning nodes, routed by the map."""
    out = []
    for piece_start, piece_end, stub in routed.router.pieces(start, end):
        out.extend(scan_all(stub, piece_start, piece_end))
    return out


def bulk_and_scan(cluster: Cluster, n: int = 5000) -> Result:
    started = time.monotonic()
    data = sorted_entries(n)
    stub = gateway_stub(cluster)
    batches = bulk_put(stub, data)
    through_gateway = scan_all(stub, b"", None)
    bulk = [kv for kv in through_gateway if b"/bulk/" in kv[0]]
    check(
        bulk == data, f"gateway scan returned {len(bulk)} bulk entries, not the {len(data)} loaded, in order"
    )
    check(through_gateway == sorted(through_gateway), "gateway scan out of key order")
    backwards = [kv for kv in scan_all(stub, b"", None, reverse=True) if b"/bulk/" in kv[0]]
    check(backwards == data[::-1], "reverse gateway scan differs")
    routed = [kv for kv in routed_scan(Routed(cluster.control.address), b"", None) if b"/bulk/" in kv[0]]
    check(routed == data, "routed scan differs from the data loaded")
    limited = scan_all(stub, b"e", b"q", credits=50)
    check(limited == [kv for kv in through_gateway if b"e" <= kv[0] < b"q"], "sub-range scan differs")
    stats = stub.Stats(kv_pb2.StatsRequest(), timeout=5)
    check(stats.approximate_entries >= n, f"Stats counts {stats.approximate_entries} entries, loaded {n}")
    return Result("bulk load + scans (gateway, reverse, routed)", n + 3 * n, {}, time.monotonic() - started,
                  f"{batches} batches")  # fmt: skip


def verify_bulk(cluster: Cluster, n: int) -> None:
    data = sorted_entries(n)
    scanned = retrying(lambda: scan_all(gateway_stub(cluster), b"", None))
    bulk = [kv for kv in scanned if b"/bulk/" in kv[0]]
    check(bulk == data, f"after the failures the scan has {len(bulk)} of {len(data)} bulk entries")


# -- TTL -----------------------------------------------------------------------------------


def ttl(cluster: Cluster, n: int = 60, ttl_s: float = 3.0) -> Result:
    """Entries written with a TTL (by Put and by BulkPut) are read until then, never after."""
    started = time.monotonic()
    stub = gateway_stub(cluster)
    keys = sorted(f"{LETTERS[i % 26]}/ttl/{i}".encode() for i in range(n))
    for k in keys:
        stub.Put(kv_pb2.PutRequest(key=k + b"/kept", value=b"stays"), timeout=5)
    written = time.monotonic()
    stub.Put(kv_pb2.PutRequest(key=keys[0], value=b"soon gone", ttl_s=ttl_s), timeout=5)
    rest = kv_pb2.BulkPutRequest(
        entries=[kv_pb2.Entry(key=k, value=b"soon gone", ttl_s=ttl_s) for k in keys[1:]]
    )
    while rest.entries:
        (answer,) = list(stub.BulkPut(iter([rest]), timeout=10))
        del rest.entries[: answer.accepted]
    acknowledged = time.monotonic()  # every TTL write expires by acknowledged + ttl_s
    present = [k for k in keys if stub.Get(kv_pb2.GetRequest(key=k), timeout=5).found]
    check(time.monotonic() - written < ttl_s, "writing and reading back took longer than the TTL")
    check(present == keys, f"{n - len(present)} TTL entries missing before they expired")
    time.sleep(max(0.0, acknowledged + ttl_s + 0.1 - time.monotonic()))
    check(
        not any(stub.Get(kv_pb2.GetRequest(key=k), timeout=5).found for k in keys),
        "an expired entry was read",
    )
    left = [k for k, _ in scan_all(stub, b"", None) if b"/ttl/" in k]
    check(sorted(left) == sorted(k + b"/kept" for k in keys), "a scan returned an expired entry")
    sweep = list(stub.Sweep(iter([kv_pb2.SweepRequest()]), timeout=30))
    check(bool(sweep) and sweep[-1].done, "sweep did not finish")
    return Result(
        "TTL expiry + sweep", 4 * n, {}, time.monotonic() - started, f"swept {sweep[-1].deleted} now"
    )


# -- admin ---------------------------------------------------------------------------------


def admin(cluster: Cluster) -> Result:
    started = time.monotonic()
    out = cluster.admin("nodes")
    check(all(re.search(rf"^n{i} .* up ", out, re.M) for i in range(1, len(cluster.nodes) + 1)), out)
    refused = cluster.admin("remove", "n1")
    check("FAILED_PRECONDITION" in refused and "owns" in refused, f"remove was not refused: {refused}")
    check("cordoned node n3" in cluster.admin("cordon", "n3"), "cordon did not say what it did")
    check("up,cordoned" in cluster.admin("nodes"), "cordon not shown")
    check("uncordoned node n3" in cluster.admin("uncordon", "n3"), "uncordon did not say what it did")
    check("NOT_FOUND" in cluster.admin("drain", "nope"), "drain of an unknown node did not say NOT_FOUND")
    parts = cluster.admin("partitions")
    check("serving" in parts and "map version" in parts, parts)
    return Result("admin commands", 7, {}, time.monotonic() - started)


def repair_round_trip(cluster: Cluster) -> Result:
    """Repair a partition to another node and back: the data follows the owner's disk."""
    started = time.monotonic()
    stub = gateway_stub(cluster)
    key = b"z/repair/probe/%d" % time.time_ns()  # new each call: the entry count must grow
    owner = next(
        line.split()[3] for line in cluster.admin("partitions").splitlines() if line.startswith("p0006")
    )
    other = "n2" if owner != "n2" else "n3"

    def owner_entries() -> int:
        rows = [line.split() for line in cluster.admin("nodes").splitlines()]
        return next((int(r[4].replace(",", "")) for r in rows if r and r[0] == owner), 0)

    before = owner_entries()
    stub.Put(kv_pb2.PutRequest(key=key, value=b"on n1"), timeout=5)
    # a heartbeat counts the node's partitions together: once its total grew, p0006 has 1
    wait_until("a heartbeat to count the probe", lambda: owner_entries() > before)
    refused = cluster.admin("repair", "p0006", "--to", other)  # its owner is up, with data
    check("which is up, with" in refused and "--force" in refused, f"repair of a live partition: {refused}")
    check(
        "now assigned to" in cluster.admin("repair", "p0006", "--to", other, "--force"),
        "repair did not say what it did",
    )
    wait_until("the gateway to follow the repair", lambda: _get(stub, key) is False)
    cluster.admin("repair", "p0006", "--to", owner, "--force")
    wait_until("the data to come back with its owner", lambda: _get(stub, key) is True)
    return Result("repair to another node and back", 4, {}, time.monotonic() - started)


def _get(stub: kv_pb2_grpc.KVStub, key: bytes) -> bool | None:
    try:
        return bool(stub.Get(kv_pb2.GetRequest(key=key), timeout=2).found)
    except grpc.RpcError:
        return None


# -- failures ------------------------------------------------------------------------------


def kill_node(cluster: Cluster, victim: int = 2, seconds_down: float = 0.0, bulk_n: int = 0) -> Result:
    """kill -9 a node under load; its partitions are UNAVAILABLE until it restarts; nothing acked is lost."""
    started = time.monotonic()
    node_id = f"n{victim}"
    load = CounterWorkload(cluster.gateway.address, cluster.control.address, "kill").start()
    seen: list[str] = []
    try:
        time.sleep(1.0)
        cluster.node(victim).kill()
        wait_until(
            f"{node_id} suspect",
            lambda: _remember(seen, node_status(cluster, node_id)) in ("suspect", "down"),
        )
        wait_until(f"{node_id} down", lambda: _remember(seen, node_status(cluster, node_id)) == "down")
        check("unavailable" in cluster.admin("partitions"), "the down node's partitions are not unavailable")
        _expect_unavailable(cluster, node_id)
        time.sleep(seconds_down)
        cluster.node(victim).start()
        wait_until(f"{node_id} up", lambda: _remember(seen, node_status(cluster, node_id)) == "up")
        time.sleep(1.0)
    finally:
        tally = load.stop()
    wrong = load.verify(cluster.gateway.address)
    check(not wrong, f"counters lost acknowledged increments: {wrong}")
    if bulk_n:
        verify_bulk(cluster, bulk_n)
    check(tally.errors.get("UNAVAILABLE", 0) > 0, "no UNAVAILABLE was seen while a node was down")
    statuses = " -> ".join(dict.fromkeys(seen))
    return Result(f"kill -9 {node_id} under load, restart", tally.ops, dict(tally.errors),
                  time.monotonic() - started, f"admin nodes: {statuses}")  # fmt: skip


def _remember(seen: list[str], status: str) -> str:
    seen.append(status)
    return status


def _expect_unavailable(cluster: Cluster, node_id: str) -> None:
    """A Get for the down node's partition answers UNAVAILABLE with RetryInfo, at once."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    key = _key_on(cluster, node_id) + b"/probe"
    try:
        gateway_stub(cluster).Get(kv_pb2.GetRequest(key=key), timeout=5)
    except grpc.RpcError as err:
        check(err.code() == grpc.StatusCode.UNAVAILABLE, f"expected UNAVAILABLE, got {err.code()}")
        status: Any = rpc_status.from_call(err)  # type: ignore[arg-type]
        check(any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details), "no RetryInfo")
        return
    raise StepFailed("a Get for a down node's partition succeeded")


def restart_control(cluster: Cluster, down_s: float = 1.5, restart_node: int = 3) -> Result:
    """Stop control under load: the data plane keeps serving, a node restarted meanwhile
    serves its partitions from its own disk, and nodes and gateway reconnect."""
    started = time.monotonic()
    marker = _key_on(cluster, f"n{restart_node}") + b"/marker"
    gateway_stub(cluster).Put(kv_pb2.PutRequest(key=marker, value=b"kept on disk"), timeout=5)
    load = CounterWorkload(cluster.gateway.address, cluster.control.address, "control").start()
    try:
        time.sleep(0.5)
        cluster.control.stop()
        before = load.tally.ops
        time.sleep(down_s)
        served_while_down = load.tally.ops - before
        node = cluster.node(restart_node)
        node.stop()
        node.start(wait=False)
        wait_serving(node.address)  # its probe stays NOT_SERVING: it cannot reconcile yet
        found = retrying(lambda: gateway_stub(cluster).Get(kv_pb2.GetRequest(key=marker), timeout=5)).found
        check(found, f"n{restart_node}, restarted while control was down, does not serve its disk")
        cluster.control.start()
        node.wait_serving()
        wait_until("every node up again", lambda: all(node_status(cluster, f"n{i}") == "up"
                                                     for i in range(1, len(cluster.nodes) + 1)))  # fmt: skip
        time.sleep(0.5)
    finally:
        tally = load.stop()
    check(served_while_down > 0, "nothing was served while control was down")
    wrong = load.verify(cluster.gateway.address)
    check(not wrong, f"counters differ after the control restart: {wrong}")
    repair = repair_round_trip(cluster)  # the gateway follows pushes from the restarted control
    return Result("restart control under load (+ a node)", tally.ops, dict(tally.errors),
                  time.monotonic() - started,
                  f"{served_while_down} increments while control was down; n{restart_node} restarted "
                  f"meanwhile served its disk; {repair.step} ok")  # fmt: skip


def _key_on(cluster: Cluster, node_id: str) -> bytes:
    """The first key of a partition that node_id owns (from `admin partitions`)."""
    line = next(ln for ln in cluster.admin("partitions").splitlines() if f" {node_id} " in ln)
    start = line.split()[1]
    return b"" if start == "-inf" else start.strip("'").encode()
