"""Client exceptions come from status codes and details, never from the message text
(except gRPC's own UNAVAILABLE, which has no details: its words say whether it was sent)."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from keyspan.streams import errors as e
from keyspan.streams.client import AsyncClient
from keyspan.streams.router import StaticRouter
from keyspan.v1 import errors_pb2


def failed(code: grpc.StatusCode, *details: object, message: str = "misleading text") -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)  # type: ignore[arg-type]
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, message)


def test_wrong_partition_carries_the_owner() -> None:
    detail = errors_pb2.WrongPartition(key=b"k", start=b"g", end=b"n", address="10.0.0.2:7420", map_version=9)
    err = e.from_rpc_error(failed(grpc.StatusCode.FAILED_PRECONDITION, detail))
    assert isinstance(err, e.WrongPartition)
    assert (err.start, err.end, err.address, err.map_version) == (b"g", b"n", "10.0.0.2:7420", 9)


def test_unavailable_carries_retry_info() -> None:
    info = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=250_000_000))
    err = e.from_rpc_error(failed(grpc.StatusCode.UNAVAILABLE, info))
    assert isinstance(err, e.Unavailable) and err.retry_after_s == 0.25 and e.is_retryable(err)


@pytest.mark.parametrize(
    ("details", "message", "may_have_applied"),
    [
        # keyspan's own refusals say so in an ErrorInfo: the write was not applied
        ((error_details_pb2.ErrorInfo(reason="UNAVAILABLE"),), "the server is stopping", False),
        ((error_details_pb2.ErrorInfo(reason="OPEN_FILES_LIMIT"),), "no descriptors", False),
        # a gateway that lost its node after sending the write on
        ((error_details_pb2.ErrorInfo(reason="CONNECTION_LOST"),), "lost the connection", True),
        # a node back from a stall committed it before control confirmed its map
        ((error_details_pb2.ErrorInfo(reason="OWNERSHIP_UNCONFIRMED"),), "node n1 was stalled", True),
        # gRPC's own failures carry no details; only its words tell a call never sent
        ((), "failed to connect to all addresses; last error: Connection refused", False),
        ((), "errors resolving no-such-host.invalid:1: [...]: Domain name not found", False),
        ((), "DNS resolution failed for no-such-host.invalid:1: C-ares status is not ARES_SUCCESS", False),
        ((), "Stream removed (Socket closed)", True),
        ((), "recvmsg:Connection reset by peer", True),
    ],
)
def test_unavailable_says_whether_a_write_may_have_applied(
    details: tuple[object, ...], message: str, may_have_applied: bool
) -> None:
    err = e.from_rpc_error(failed(grpc.StatusCode.UNAVAILABLE, *details, message=message))
    assert isinstance(err, e.Unavailable) and err.may_have_applied is may_have_applied
    assert e.is_retryable(err)


def test_text_alone_decides_nothing() -> None:
    err = e.from_rpc_error(failed(grpc.StatusCode.ABORTED, message="ETAG_MISMATCH current_etag=5"))
    assert type(err) is e.KeyspanClientError and err.code == grpc.StatusCode.ABORTED
    assert not e.is_retryable(err)


def test_etag_mismatch_reads_the_error_info() -> None:
    info = error_details_pb2.ErrorInfo(reason="ETAG_MISMATCH", metadata={"current_etag": "5"})
    err = e.from_rpc_error(failed(grpc.StatusCode.ABORTED, info))
    assert isinstance(err, e.EtagMismatch) and err.current_etag == 5


class LearningRouter(StaticRouter):
    """Answers WrongPartition once from a fake stub, then routes to the real stub."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.learned: list[e.WrongPartition] = []

    def stub_for_key(self, key: bytes) -> object:
        if self.learned:
            return super().stub_for_key(key)
        detail = errors_pb2.WrongPartition(key=key, address=self.address, map_version=2)

        class Stale:
            async def Get(self, request: object, timeout: float | None = None) -> object:
                raise failed(grpc.StatusCode.FAILED_PRECONDITION, detail)

        return Stale()

    def on_wrong_partition(self, err: e.WrongPartition) -> bool:
        self.learned.append(err)
        return True


@pytest.mark.asyncio
async def test_a_call_follows_wrong_partition_when_the_router_learns(server_address: str) -> None:
    router = LearningRouter(server_address)
    async with AsyncClient(router=router) as kv:  # type: ignore[arg-type]
        assert await kv.get("k") is None
    assert [w.map_version for w in router.learned] == [2]


def test_a_full_disk_is_its_own_error_and_not_retried() -> None:
    info = error_details_pb2.ErrorInfo(reason="DISK_FULL", metadata={"partition_id": "p0002"})
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=5))
    err = e.from_rpc_error(failed(grpc.StatusCode.RESOURCE_EXHAUSTED, info, retry))
    assert isinstance(err, e.DiskFull) and not isinstance(err, e.InvalidArgument)
    assert (err.partition_id, err.retry_after_s, e.is_retryable(err)) == ("p0002", 5.0, False)


class DisagreeingRouter(StaticRouter):
    """Every node it asks says another one owns the key (maps that disagree), and it learns."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.hops = 0

    def stub_for_key(self, key: bytes) -> object:
        detail = errors_pb2.WrongPartition(key=key, address=self.address, map_version=2 + self.hops)

        class Elsewhere:
            async def Put(self, request: object, timeout: float | None = None) -> object:
                raise failed(grpc.StatusCode.FAILED_PRECONDITION, detail)

        return Elsewhere()

    def on_wrong_partition(self, err: e.WrongPartition) -> bool:
        self.hops += 1
        return True


@pytest.mark.asyncio
async def test_routing_that_does_not_settle_is_unavailable_not_wrong_partition(server_address: str) -> None:
    router = DisagreeingRouter(server_address)
    async with AsyncClient(router=router) as kv:  # type: ignore[arg-type]
        with pytest.raises(e.Unavailable, match="routing did not settle after 3 redirections") as caught:
            await kv.put("k", b"v")
    assert router.hops == 3 and not caught.value.may_have_applied and caught.value.retry_after_s == 0.5
