"""What a gateway answers when its node's connection fails: whether a write may have applied."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from keyspan.services.common.errors import to_status
from keyspan.services.gateway.routing import node_unreachable
from keyspan.storage.keys import KeyRange
from keyspan.streams.errors import from_rpc_error
from keyspan.streams.partition_map import SERVING, MapEntry
from keyspan.v1 import kv_pb2

ENTRY = MapEntry("p3", KeyRange(b"g", b"n"), "b", "127.0.0.1:7431", SERVING)


def grpc_failure(details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details
    )


def as_the_client_sees_it(err: Exception) -> object:
    status = to_status(err)  # type: ignore[arg-type]
    assert status is not None
    trailing = grpc.aio.Metadata(*status.trailing_metadata)
    return from_rpc_error(grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), trailing, status.details))


@pytest.mark.parametrize(
    ("upstream", "may_have_applied", "words"),
    [
        (
            grpc_failure("failed to connect to all addresses; last error: Connection refused"),
            False,
            "cannot reach",
        ),
        (grpc_failure("Stream removed (Socket closed)"), True, "lost the connection to"),
        (None, True, "lost the connection to"),  # a stream that ended with no answer
    ],
)
def test_a_write_sent_on_before_the_node_went_away_may_have_applied(
    upstream: grpc.aio.AioRpcError | None, may_have_applied: bool, words: str
) -> None:
    refused = node_unreachable(ENTRY, upstream)
    assert refused.may_have_applied is may_have_applied
    assert str(refused).startswith(f"{words} node b at 127.0.0.1:7431 (partition p3)")
    seen = as_the_client_sees_it(refused)
    assert seen.may_have_applied is may_have_applied and seen.retry_after_s == 0.25  # type: ignore[attr-defined]


async def test_a_bulk_put_batch_after_a_node_ended_its_stream_goes_on_a_new_one() -> None:
    # The gateway kept each node's BulkPut stream for the batches after; once the node
    # had ended it (a restart, the node back on the same address), every later batch for
    # that node failed "the server is stopping" or CONNECTION_LOST, never sent.
    from keyspan.services.gateway.streams import _forward_batch

    class Ended:
        def done(self) -> bool:
            return True

    class Fresh:
        def __init__(self) -> None:
            self.sent: list[kv_pb2.BulkPutRequest] = []

        def done(self) -> bool:
            return False

        async def write(self, request: kv_pb2.BulkPutRequest) -> None:
            self.sent.append(request)

        async def read(self) -> kv_pb2.BulkPutResponse:
            return kv_pb2.BulkPutResponse(accepted=len(self.sent[-1].entries))

    fresh = Fresh()
    router = SimpleNamespace(
        owner=lambda key: SimpleNamespace(address="n1:1"),
        channels=SimpleNamespace(stub=lambda address: SimpleNamespace(BulkPut=lambda: fresh)),
    )
    calls: dict[str, object] = {"n1:1": Ended()}
    batch = kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a1", value=b"v")])
    answer = await _forward_batch(router, calls, batch, context=None)  # type: ignore[arg-type]
    assert answer.accepted == 1 and fresh.sent == [batch] and calls["n1:1"] is fresh
