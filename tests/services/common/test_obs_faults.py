"""Server faults: one Sentry event each (real HTTP endpoint), one ERROR log line with the
trace id; client errors: no event, no ERROR line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from collections.abc import Iterator

import apsw
import grpc
import pytest
import sentry_sdk
from opentelemetry.proto.trace.v1 import trace_pb2

from keyspan.services.common import faults
from keyspan.services.common.logging import JsonFormatter, TraceIdFilter
from keyspan.v1 import kv_pb2, kv_pb2_grpc


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The process's JSON log lines, as services/common/logging sets them up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TraceIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def _errors(log: io.StringIO) -> list[dict]:
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    return [e for e in lines if e["level"] == "ERROR" and e["logger"].startswith("keyspan.")]


def _break_writes(monkeypatch: pytest.MonkeyPatch, server, partition_id: str) -> None:
    """Test-only fault: the partition's shard fails every batch with an SQLite I/O error."""
    shard = next(p.shard for p in server.shards.partitions if p.id == partition_id)

    def apply_batch(mutations):
        raise apsw.IOError("disk I/O error (injected)")

    monkeypatch.setattr(shard, "apply_batch", apply_batch)


@pytest.mark.asyncio
async def test_a_server_fault_is_one_event_and_one_log_line_with_the_trace_id(
    start_server, channel_to, sentry_endpoint, trace_receiver, json_log, monkeypatch
) -> None:
    server = await start_server(sentry_dsn=sentry_endpoint.dsn, otlp_endpoint=trace_receiver.endpoint)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    _break_writes(monkeypatch, server, "p0000")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await kv.Put(kv_pb2.PutRequest(key=b"broken", value=b"SECRET-VALUE-42"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    await asyncio.to_thread(sentry_sdk.flush, 5)
    assert server.observability.tracing.flush()

    [event] = sentry_endpoint.events
    assert "SECRET-VALUE-42" not in json.dumps(event)  # frames' locals held it 9 times
    tags = event["tags"]
    assert tags["partition_id"] == "p0000"
    assert tags["node"] == server.address
    assert tags["component"] == "serve"
    assert tags["method"] == "/keyspan.v1.KV/Put"
    [rpc] = [
        s for s in trace_receiver.named("/keyspan.v1.KV/Put") if s.kind == trace_pb2.Span.SPAN_KIND_SERVER
    ]
    assert tags["trace_id"] == rpc.trace_id.hex()
    assert event["contexts"]["trace"]["trace_id"] == rpc.trace_id.hex()  # Sentry's own, the same
    assert rpc.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    chain = [e["type"] for e in event["exception"]["values"]]
    assert chain == ["IOError", "StorageFaultError"]  # the cause first, as Sentry orders them

    [line] = _errors(json_log)
    assert line["msg"] == "server fault"
    assert line["trace_id"] == rpc.trace_id.hex() and len(line["span_id"]) == 16


@pytest.mark.asyncio
async def test_the_writes_waiting_on_one_failed_batch_log_its_fault_once(
    start_server, channel_to, sentry_endpoint, json_log, monkeypatch
) -> None:
    server = await start_server(sentry_dsn=sentry_endpoint.dsn)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    _break_writes(monkeypatch, server, "p0000")
    puts = [kv.Put(kv_pb2.PutRequest(key=b"b%03d" % i, value=b"v")) for i in range(64)]
    failed = await asyncio.gather(*puts, return_exceptions=True)
    assert all(isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.INTERNAL for f in failed)
    await asyncio.to_thread(sentry_sdk.flush, 5)
    batches = len(sentry_endpoint.events)  # one a failed batch; far fewer than the Puts
    assert 1 <= batches < 64 and len(_errors(json_log)) == batches


@pytest.mark.asyncio
async def test_client_errors_are_neither_reported_nor_logged_as_errors(
    start_server, channel_to, sentry_endpoint, json_log
) -> None:
    server = await start_server(sentry_dsn=sentry_endpoint.dsn)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    etag = (await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"))).etag
    calls = [
        (kv.Patch(kv_pb2.PatchRequest(key=b"absent", merge_patch="{}")), grpc.StatusCode.NOT_FOUND),
        (kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v", if_etag=etag + 7)), grpc.StatusCode.ABORTED),
        (kv.Put(kv_pb2.PutRequest(key=b"", value=b"v")), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == code
    await asyncio.to_thread(sentry_sdk.flush, 5)
    assert sentry_endpoint.events == []
    assert _errors(json_log) == []


@pytest.mark.asyncio
async def test_a_failing_background_sweep_is_reported_with_its_task(
    start_server, sentry_endpoint, json_log, monkeypatch
) -> None:
    server = await start_server(sentry_dsn=sentry_endpoint.dsn, sweep_interval_s=0.1)

    async def broken_sweep() -> int:
        raise RuntimeError("sweep bug (injected)")

    monkeypatch.setattr(server.sweeper, "sweep_once", broken_sweep)
    deadline = time.monotonic() + 10
    while not sentry_endpoint.events and time.monotonic() < deadline:
        await asyncio.to_thread(sentry_sdk.flush, 1)
    await server.sweeper.stop()
    await asyncio.to_thread(sentry_sdk.flush, 5)
    event = sentry_endpoint.events[0]
    assert event["tags"]["task"] == "sweeper" and event["tags"]["component"] == "serve"
    assert event["exception"]["values"][-1]["type"] == "RuntimeError"
    # One log line and one event per failed pass: never the one without the other.
    assert len(_errors(json_log)) == len(sentry_endpoint.events)


def test_the_same_fault_is_reported_once(sentry_endpoint) -> None:
    sentry_sdk.init(dsn=sentry_endpoint.dsn, default_integrations=False)
    err = RuntimeError("one batch, many waiters")
    assert faults.report_fault(err, method="/keyspan.v1.KV/Put")
    assert not faults.report_fault(err, method="/keyspan.v1.KV/Put")
    sentry_sdk.flush(5)
    assert len(sentry_endpoint.events) == 1


@pytest.mark.asyncio
async def test_nothing_is_reported_without_a_dsn(start_server, channel_to, monkeypatch) -> None:
    server = await start_server()
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    _break_writes(monkeypatch, server, "p0000")
    with pytest.raises(grpc.aio.AioRpcError):
        await kv.Put(kv_pb2.PutRequest(key=b"broken", value=b"v"))
    assert not sentry_sdk.get_client().is_active()
    assert not faults.report_fault(RuntimeError("no dsn"))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_crashed_writer_thread_is_reported_with_its_partition(sentry_endpoint) -> None:
    from keyspan.services.config import ProcessConfig

    faults.setup_sentry(ProcessConfig(sentry_dsn=sentry_endpoint.dsn), "serve")

    def crash() -> None:
        raise RuntimeError("writer bug (injected)")

    thread = threading.Thread(target=crash, name="writer-p0003")
    thread.start()
    thread.join()
    sentry_sdk.flush(5)
    [event] = sentry_endpoint.events
    assert event["tags"]["partition_id"] == "p0003" and event["tags"]["task"] == "writer-p0003"


@pytest.mark.asyncio
async def test_an_unsampled_call_still_logs_its_fault_with_a_trace_id(
    start_server, channel_to, trace_receiver, json_log, monkeypatch
) -> None:
    server = await start_server(otlp_endpoint=trace_receiver.endpoint, trace_sample_ratio=0.0)
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    _break_writes(monkeypatch, server, "p0000")
    with pytest.raises(grpc.aio.AioRpcError):
        await kv.Put(kv_pb2.PutRequest(key=b"broken", value=b"v"))
    assert server.observability.tracing.flush()
    [line] = _errors(json_log)
    assert len(line["trace_id"]) == 32 and int(line["trace_id"], 16) != 0
    assert trace_receiver.spans == []
