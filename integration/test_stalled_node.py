"""A node paused past its down timeout, whose partition was repaired meanwhile, must not
acknowledge the writes that waited in it: they would commit on a copy that is no longer
the partition's, and vanish from every read (services/node/fence.py)."""

from __future__ import annotations

import os
import signal
import time

import grpc
import pytest
from grpc_status import rpc_status

from integration import steps
from integration.cluster import Cluster
from keyspan.v1 import kv_pb2, kv_pb2_grpc

pytestmark = [pytest.mark.quick, pytest.mark.timeout(180)]
PARTITION = "p0006"  # [x, +inf)
KEYS = [b"zz/k%d" % i for i in range(10)]


def reason_of(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.type_url.endswith("google.rpc.ErrorInfo"):
            from google.rpc import error_details_pb2

            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def test_a_node_stalled_past_its_down_timeout_acknowledges_no_write_of_a_repaired_partition() -> None:
    with Cluster() as cluster:
        gateway = steps.gateway_stub(cluster)
        etags = {k: gateway.Put(kv_pb2.PutRequest(key=k, value=b"old"), timeout=5).etag for k in KEYS}
        owner = steps.owner_of(cluster, PARTITION)
        other = next(f"n{i}" for i in (1, 2, 3) if f"n{i}" != owner)
        node = cluster.node(int(owner[1:]))
        # A client each, as many applications would be, each connected before the pause.
        stubs = [kv_pb2_grpc.KVStub(grpc.insecure_channel(node.address)) for _ in KEYS]
        for stub in stubs:
            stub.Get(kv_pb2.GetRequest(key=KEYS[0]), timeout=5)
        assert node.popen is not None
        os.kill(node.popen.pid, signal.SIGSTOP)
        try:
            waiting = [
                stub.Put.future(kv_pb2.PutRequest(key=k, value=b"new", if_etag=etags[k]), timeout=30)
                for stub, k in zip(stubs, KEYS, strict=True)
            ]
            steps.wait_until(f"{owner} to be down", lambda: steps.node_status(cluster, owner) == "down")
            repaired = cluster.admin("repair", PARTITION, "--to", other)
            assert f"now assigned to {other}" in repaired, repaired
            time.sleep(2.0)  # the new owner opens it
        finally:
            os.kill(node.popen.pid, signal.SIGCONT)

        acked: dict[bytes, int] = {}
        refusals: dict[str, int] = {}
        for key, call in zip(KEYS, waiting, strict=True):
            try:
                acked[key] = call.result().etag
            except grpc.RpcError as err:
                kind = f"{err.code().name} {reason_of(err)}: {err.details()[:80]}"
                refusals[kind] = refusals.get(kind, 0) + 1
        # Every write acknowledged is what the partition's owner serves now.
        steps.wait_until("the repaired partition to serve", lambda: steps._get(gateway, KEYS[0]) is not None)
        for key, etag in acked.items():
            got = gateway.Get(kv_pb2.GetRequest(key=key), timeout=5)
            assert (got.found, got.value, got.etag) == (True, b"new", etag), (key, etag, got, refusals)
        # The stalled node serves again once control confirmed its map: a partition it kept.
        kept = next(i for i in range(6) if steps.owner_of(cluster, f"p000{i}") == owner)
        key = b"aeimqu"[kept : kept + 1] + b"/after-the-stall"
        steps.wait_until(f"{owner} to take writes again", lambda: _put(stubs[0], key), timeout_s=10)
        print("acknowledged", len(acked), "refused", refusals)


def _put(stub: kv_pb2_grpc.KVStub, key: bytes) -> bool:
    try:
        stub.Put(kv_pb2.PutRequest(key=key, value=b"1"), timeout=2)
    except grpc.RpcError:
        return False
    return True
