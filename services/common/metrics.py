"""Prometheus metrics of a keyspan process: RPCs, the /metrics endpoint, the write path.

Each process has its own `CollectorRegistry` (so tests can run several in one Python
process) served on `--metrics-address`. RPCs are counted by ONE server interceptor,
`RpcTelemetryInterceptor`, never inside servicers. Gauges that need a look at the data
(partitions, control plane) are computed on scrape by custom collectors; nothing polls.

Metric names are listed in README "Observability" and used by monitoring/; the test
tests/services/test_monitoring.py checks that every name there is really exported.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector

_disable_created_metrics()

# Seconds; from a cached Get (~100 us) to a slow fsync under load.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
STREAM_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Codes that mean the server failed, not the caller: the span is marked as an error.
SERVER_FAULT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type", "grpc_code")


def new_registry(component: str, version: str) -> CollectorRegistry:
    """A process's registry: process CPU/memory/fds and a keyspan_build_info series."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    info = Gauge(
        "keyspan_build_info",
        "1, labelled with the keyspan version and the process kind (serve, node, control, gateway).",
        ["version", "component"],
        registry=registry,
    )
    info.labels(version, component).set(1)
    return registry


class MetricsServer:
    """/metrics over HTTP on its own thread (prometheus-client's server)."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, _, port = address.rpartition(":")
        self._server, self._thread = start_http_server(int(port), addr=host, registry=registry)
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class RpcMetrics:
    """The RPC series, by service, method, call type and final status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "keyspan_rpc_handled", "RPCs finished, by final status code.", RPC_LABELS, registry=registry
        )
        self.duration = Histogram(
            "keyspan_rpc_duration_seconds",
            "Time from the call's arrival to its status; for streams, the stream's whole life.",
            RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stream_duration = Histogram(
            "keyspan_rpc_stream_duration_seconds",
            "Life of streaming RPCs (Scan, BulkPut, Sweep), in wider buckets.",
            RPC_LABELS[:3],
            buckets=STREAM_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "keyspan_rpc_in_flight", "RPCs being served now.", RPC_LABELS[:2], registry=registry
        )
        self.received = Counter(
            "keyspan_rpc_stream_messages_received",
            "Messages read from clients on streaming RPCs.",
            RPC_LABELS[:2],
            registry=registry,
        )
        self.sent = Counter(
            "keyspan_rpc_stream_messages_sent",
            "Messages sent to clients on streaming RPCs.",
            RPC_LABELS[:2],
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """metric.labels(*labels), cached: .labels() costs more than the update itself."""
        key = (metric._name, *labels)
        found = self._children.get(key)
        if found is None:
            with self._lock:
                found = self._children.setdefault(key, metric.labels(*labels))
        return found


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.rpartition("/")
    return service.lstrip("/") or "unknown", name or method


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.unary_unary:
        return "unary"
    if handler.unary_stream:
        return "server_stream"
    return "bidi_stream" if handler.stream_stream else "client_stream"


def _final_code(context: grpc.aio.ServicerContext, err: BaseException | None) -> grpc.StatusCode:
    if isinstance(err, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    if err is not None and not isinstance(err, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if err is None else grpc.StatusCode.UNKNOWN


class _Call:
    """One RPC as the interceptor sees it: starts the clock, records the outcome once."""

    __slots__ = ("kind", "method", "metrics", "service", "started")

    def __init__(self, metrics: RpcMetrics | None, method: str, kind: str) -> None:
        self.metrics, self.kind = metrics, kind
        self.service, self.method = _split(method)
        self.started = time.perf_counter()
        if metrics is not None:
            metrics.child(metrics.in_flight, self.service, self.method).inc()

    def finish(self, context: grpc.aio.ServicerContext, err: BaseException | None) -> None:
        code = _final_code(context, err)
        span = trace.get_current_span()
        if span.is_recording():
            # The OTel interceptor misses statuses set by abort_with_status; record it here.
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            if code in SERVER_FAULT_CODES:
                span.set_status(Status(StatusCode.ERROR, code.name))
        m = self.metrics
        if m is None:
            return
        elapsed = time.perf_counter() - self.started
        labels = (self.service, self.method, self.kind, code.name)
        m.child(m.in_flight, self.service, self.method).dec()
        m.child(m.handled, *labels).inc()
        m.child(m.duration, *labels).observe(elapsed)
        if self.kind != "unary":
            m.child(m.stream_duration, *labels[:3]).observe(elapsed)


class RpcTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC, unary and streaming, by its final status code, and
    puts that code on the RPC's span. Sits inside the tracing interceptor and outside the
    ErrorInterceptor, so it sees the codes the error mapper chose."""

    def __init__(self, metrics: RpcMetrics | None) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method, kind = details.method, _kind(handler)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, kind),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(handler.unary_stream, method, kind, count_in=False),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(handler.stream_stream, method, kind, count_in=True),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, behavior: Callable[..., Awaitable[Any]], method: str, kind: str) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(self._metrics, method, kind)
            try:
                response = await behavior(request, context)
            except BaseException as err:
                call.finish(context, err)
                raise
            call.finish(context, None)
            return response

        return unary

    def _stream(self, behavior: Callable[..., Any], method: str, kind: str, *, count_in: bool) -> Any:
        metrics = self._metrics

        async def counted(requests: AsyncIterator[Any], counter: Any) -> AsyncIterator[Any]:
            async for request in requests:
                counter.inc()
                yield request

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(metrics, method, kind)
            sent = None
            if metrics is not None:
                sent = metrics.child(metrics.sent, call.service, call.method)
                if count_in:
                    request = counted(request, metrics.child(metrics.received, call.service, call.method))
            try:
                async for response in behavior(request, context):
                    if sent is not None:
                        sent.inc()
                    yield response
            except BaseException as err:
                call.finish(context, err)
                raise
            call.finish(context, None)

        return stream
