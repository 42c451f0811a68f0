"""Traces end to end: client span -> server span -> storage spans, at a real OTLP receiver."""

from __future__ import annotations

import asyncio
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from keyspan.services.common.tracing import client_interceptors, shutdown_client_tracing
from keyspan.services.config import ProcessConfig
from keyspan.v1 import kv_pb2, kv_pb2_grpc

SERVER, CLIENT = trace_pb2.Span.SPAN_KIND_SERVER, trace_pb2.Span.SPAN_KIND_CLIENT


def _one(spans: list, **where: object) -> object:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, found)
    return found[0]


async def _exported_server_span(server, receiver, name: str) -> object:
    """The server's span of a failed call, once exported. grpc.aio's `context.abort`
    sends the status before it raises, so the caller can see the error before the
    server's wrapper ends the span; `flush` blocks the loop they share, so give the
    server's task turns of the loop until the span is out (at most 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        assert server.observability.tracing.flush()
        found = [s for s in receiver.named(name) if s.kind == SERVER]
        if found or time.monotonic() > deadline:
            return _one(found)
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_a_put_is_one_trace_from_client_to_fsync(start_server, channel_to, trace_receiver) -> None:
    server = await start_server(otlp_endpoint=trace_receiver.endpoint, trace_sample_ratio=1.0)
    client_config = ProcessConfig(otlp_endpoint=trace_receiver.endpoint)
    try:
        kv = kv_pb2_grpc.KVStub(channel_to(server, client_interceptors(client_config)))
        await kv.Put(kv_pb2.PutRequest(key=b"traced", value=b"v"))
    finally:
        shutdown_client_tracing()
    assert server.observability.tracing.flush()

    client = _one(trace_receiver.named("/keyspan.v1.KV/Put"), kind=CLIENT)
    rpc = _one(trace_receiver.named("/keyspan.v1.KV/Put"), kind=SERVER)
    assert trace_receiver.service_of(client) == "keyspan-client"
    assert trace_receiver.service_of(rpc) == "keyspan-serve"
    assert rpc.trace_id == client.trace_id and rpc.parent_span_id == client.span_id
    write = _one(trace_receiver.named("storage.write"), trace_id=rpc.trace_id)
    assert write.parent_span_id == rpc.span_id
    stages = [_one(trace_receiver.named(n), trace_id=rpc.trace_id) for n in _STAGES]
    assert all(s.parent_span_id == write.span_id for s in stages)
    # The stages follow each other inside the write, inside the RPC.
    queue_wait, transaction, commit = stages
    assert rpc.start_time_unix_nano <= write.start_time_unix_nano
    assert queue_wait.end_time_unix_nano <= transaction.start_time_unix_nano
    assert transaction.end_time_unix_nano <= commit.start_time_unix_nano
    assert commit.end_time_unix_nano == write.end_time_unix_nano <= rpc.end_time_unix_nano
    attributes = {a.key: a.value for a in write.attributes}
    assert attributes["keyspan.partition_id"].string_value == "p0002"  # [n, u)


_STAGES = ("storage.queue_wait", "storage.transaction", "storage.commit")


@pytest.mark.asyncio
async def test_a_client_error_is_on_the_server_span_but_not_an_error_status(
    start_server, channel_to, trace_receiver
) -> None:
    server = await start_server(otlp_endpoint=trace_receiver.endpoint)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    with pytest.raises(grpc.aio.AioRpcError):
        await kv.Patch(kv_pb2.PatchRequest(key=b"absent", merge_patch="{}"))
    rpc = await _exported_server_span(server, trace_receiver, "/keyspan.v1.KV/Patch")
    codes = {a.key: a.value.int_value for a in rpc.attributes}
    assert codes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert rpc.status.code != trace_pb2.Status.STATUS_CODE_ERROR


@pytest.mark.asyncio
async def test_sampling_at_zero_records_no_new_traces(start_server, channel_to, trace_receiver) -> None:
    server = await start_server(otlp_endpoint=trace_receiver.endpoint, trace_sample_ratio=0.0)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    for i in range(20):
        await kv.Put(kv_pb2.PutRequest(key=b"s%d" % i, value=b"v"))
    assert server.observability.tracing.flush()
    assert trace_receiver.named("/keyspan.v1.KV/Put") == []
    assert trace_receiver.named("storage.write") == []


@pytest.mark.asyncio
async def test_health_checks_are_not_traced(start_server, channel_to, trace_receiver) -> None:
    server = await start_server(otlp_endpoint=trace_receiver.endpoint, trace_sample_ratio=1.0)
    channel = channel_to(server)
    for _ in range(5):  # a load balancer's probes
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    await kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"x"))
    assert server.observability.tracing.flush()
    assert trace_receiver.named("/grpc.health.v1.Health/Check") == []
    _one(trace_receiver.named("/keyspan.v1.KV/Get"), kind=SERVER)


@pytest.mark.asyncio
async def test_a_dead_collector_never_slows_or_fails_requests(start_server, channel_to) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    server = await start_server(otlp_endpoint=dead, trace_sample_ratio=1.0)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    started = time.monotonic()
    for i in range(200):
        await kv.Put(kv_pb2.PutRequest(key=b"d%d" % i, value=b"v"), timeout=2)
        await kv.Get(kv_pb2.GetRequest(key=b"d%d" % i), timeout=2)
    assert time.monotonic() - started < 10
    stopping = time.monotonic()
    await server.stop(0)
    assert time.monotonic() - stopping < 8


def test_client_interceptors_are_empty_without_an_endpoint() -> None:
    assert client_interceptors(ProcessConfig()) == []
