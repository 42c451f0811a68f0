"""What a gateway answers when its node's connection fails: whether a write may have applied.
And how long it waits for a node that stops answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from keyspan.services.common.errors import to_status
from keyspan.services.gateway.routing import node_unreachable
from keyspan.storage.keys import KeyRange
from keyspan.streams.errors import from_rpc_error
from keyspan.streams.partition_map import SERVING, MapEntry
from keyspan.v1 import kv_pb2, kv_pb2_grpc

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


async def test_a_gateway_bulk_put_ends_though_its_node_never_ends_its_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once its caller half-closed, the gateway half-closed its node streams and waited for
    their status with no bound: a node that never ended its stream held the caller's."""
    from keyspan.services.gateway.streams import bulk_put_through
    from keyspan.streams import calls

    class NeverEnds(kv_pb2_grpc.KVServicer):  # answers every batch, never ends the stream
        def __init__(self) -> None:
            self.cancelled = asyncio.Event()

        async def BulkPut(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for request in requests:
                    yield kv_pb2.BulkPutResponse(accepted=len(request.entries))
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise

    monkeypatch.setattr(calls, "FINISH_S", 0.2)
    node = NeverEnds()
    server = grpc.aio.server()
    kv_pb2_grpc.add_KVServicer_to_server(node, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            router = SimpleNamespace(
                owner=lambda key: SimpleNamespace(address=address),
                channels=SimpleNamespace(stub=lambda _address: kv_pb2_grpc.KVStub(channel)),
            )

            async def one_batch() -> AsyncIterator[kv_pb2.BulkPutRequest]:
                yield kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a1", value=b"v")])

            load = bulk_put_through(router, one_batch(), None, asyncio.Event())  # type: ignore[arg-type]
            async with asyncio.timeout(2):  # FINISH_S, and the cancel
                answers = [answer.accepted async for answer in load]
                await node.cancelled.wait()  # the gateway gave up on the node's stream
            assert answers == [1]
    finally:
        await server.stop(0)
