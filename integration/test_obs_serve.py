"""A real `keyspan serve` process with metrics and tracing on: the flags work end to end.

The trace is asserted hop by hop (client -> serve -> storage); when the gateway and nodes
exist, the same body extends with one more hop between client and node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from integration.otlp_receiver import TraceReceiver
from integration.processes import free_port, keyspan_command, wait_serving
from keyspan.services.common.tracing import client_interceptors, shutdown_client_tracing
from keyspan.services.config import ProcessConfig
from keyspan.v1 import kv_pb2, kv_pb2_grpc


@pytest.fixture
def receiver() -> Iterator[TraceReceiver]:
    r = TraceReceiver()
    yield r
    r.close()


@pytest.fixture
def serve(tmp_path: Path, receiver: TraceReceiver) -> Iterator[tuple[subprocess.Popen, str, str]]:
    port, metrics_port = free_port(), free_port()
    cmd = [*keyspan_command(), "serve", "--address", f"127.0.0.1:{port}", "--data", str(tmp_path / "data")]
    env = {
        **os.environ,
        "GRPC_VERBOSITY": "ERROR",
        "KEYSPAN_METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
        "KEYSPAN_OTLP_ENDPOINT": receiver.endpoint,
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}/metrics"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.quick
@pytest.mark.asyncio
async def test_serve_exports_metrics_and_one_trace_per_put(serve, receiver: TraceReceiver) -> None:
    proc, address, metrics_url = serve
    await asyncio.to_thread(wait_serving, address, proc=proc)
    client_config = ProcessConfig(otlp_endpoint=receiver.endpoint)
    try:
        async with grpc.aio.insecure_channel(address, interceptors=client_interceptors(client_config)) as ch:
            await kv_pb2_grpc.KVStub(ch).Put(kv_pb2.PutRequest(key=b"hello", value=b"world"))
    finally:
        shutdown_client_tracing()
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=10).read().decode())
    assert 'keyspan_rpc_handled_total{grpc_code="OK",grpc_method="Put"' in body
    assert "keyspan_partition_approximate_entries" in body
    proc.send_signal(signal.SIGTERM)  # a clean stop exports the spans still queued
    assert await asyncio.to_thread(proc.wait, 20) == 0

    [(client_service, client)] = [
        (s, span)
        for s, span in receiver.named("/keyspan.v1.KV/Put")
        if span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    ]
    [(server_service, rpc)] = [
        (s, span)
        for s, span in receiver.named("/keyspan.v1.KV/Put")
        if span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    ]
    assert (client_service, server_service) == ("keyspan-client", "keyspan-serve")
    assert rpc.trace_id == client.trace_id and rpc.parent_span_id == client.span_id
    [(_, write)] = receiver.named("storage.write")
    assert write.trace_id == rpc.trace_id and write.parent_span_id == rpc.span_id
    for stage in ("storage.queue_wait", "storage.transaction", "storage.commit"):
        [(_, span)] = receiver.named(stage)
        assert span.parent_span_id == write.span_id
