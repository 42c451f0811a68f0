"""A control whose control.db is lost, started afresh beside nodes that kept their disks:
each partition goes back to the node that holds its current copy."""

from __future__ import annotations

import shutil
import time

import grpc
import pytest

from integration import steps
from integration.cluster import Cluster
from integration.workload import channel
from keyspan.v1 import kv_pb2, kv_pb2_grpc

pytestmark = [pytest.mark.quick, pytest.mark.timeout(180)]


def test_a_fresh_control_gives_each_partition_back_to_the_node_that_holds_it() -> None:
    with Cluster() as cluster:
        stub = steps.gateway_stub(cluster)
        stub.Put(kv_pb2.PutRequest(key=b"zz/before", value=b"1"), timeout=5)
        first = steps.owner_of(cluster, "p0006")
        other = "n2" if first != "n2" else "n3"
        cluster.admin("repair", "p0006", "--to", other, "--force")  # first keeps a stale copy
        node = kv_pb2_grpc.KVStub(channel(cluster.node(int(other[1:])).address))
        steps.wait_until("the new owner to take a write", lambda: _put(node, b"zz/after"))

        cluster.control.stop()
        shutil.rmtree(cluster.root / "control")  # control.db lost
        time.sleep(1.0)
        cluster.control.start()

        steps.wait_until("the nodes to register again", lambda: steps.owner_of(cluster, "p0006") != "-")
        assert steps.owner_of(cluster, "p0006") == other  # not the first owner's stale copy
        steps.wait_until("the write made after the repair", lambda: steps._get(stub, b"zz/after") is True)
        assert steps._get(stub, b"zz/before") is False  # that one is in the first owner's copy


def _put(stub: kv_pb2_grpc.KVStub, key: bytes) -> bool:
    try:
        stub.Put(kv_pb2.PutRequest(key=key, value=b"1"), timeout=2)
    except grpc.RpcError:  # UNAVAILABLE while the new owner opens it: try again
        return False
    return True
