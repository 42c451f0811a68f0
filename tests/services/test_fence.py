"""The node's ownership fence after a stall, on a clock the test moves."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from keyspan.services.common.errors import to_status
from keyspan.services.node.fence import OwnershipFence
from keyspan.storage.errors import UnavailableError


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


def test_without_control_s_down_timeout_no_stall_closes_it() -> None:
    clock = Clock()
    fence = OwnershipFence("n1", clock=clock)
    fence.configure(down_after_s=0)  # an older control says nothing of it
    clock.now += 60
    fence.check(committed=True)
    assert not fence.closed
