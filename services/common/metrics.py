"""Prometheus metrics of a keyspan process: RPCs, the /metrics endpoint, the write path.

Each process has its own `CollectorRegistry` (so tests can run several in one Python
process) served on `--metrics-address`. RPCs are counted by ONE wrapper around every
handler, `rpc_telemetry.RpcTelemetry.wrap`, never inside servicers. Gauges
that need a look at the data (partitions, control plane) are computed on scrape by
custom collectors; nothing polls.

Metric names are listed in README "Observability" and used by monitoring/; the test
tests/services/common/test_monitoring.py checks that every name there is really exported.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

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


class Buckets:
    """Histogram counts kept as plain numbers: an observation is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.total = bounds, [0] * (len(bounds) + 1), 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, count) pairs as Prometheus exposes them, +Inf last."""
        out, running = [], 0
        for bound, n in zip((*(le_label(b) for b in self.bounds), "+Inf"), list(self.counts), strict=True):
            running += n
            out.append((bound, running))
        return out


def le_label(bound: float) -> str:
    """A bucket bound the way prometheus_client writes it (1 -> "1.0", 0.0005 -> "0.0005")."""
    return str(int(bound)) + ".0" if bound == int(bound) else repr(bound)


class MethodCounts:
    """One method's RPC series. Updated from the event loop's thread only (grpc.aio runs
    every handler and stream there), so the updates need no lock; a scrape reads them."""

    __slots__ = ("by_code", "in_flight", "kind", "labels", "received", "sent", "stream")

    def __init__(self, service: str, name: str, kind: str) -> None:
        self.labels, self.kind = (service, name), kind
        self.in_flight = self.received = self.sent = 0
        self.by_code: dict[str, Buckets] = {}  # status code name -> durations
        self.stream = None if kind == "unary" else Buckets(STREAM_BUCKETS)

    def finished(self, code: str, seconds: float) -> None:
        self.in_flight -= 1
        durations = self.by_code.get(code)
        if durations is None:
            durations = self.by_code[code] = Buckets(LATENCY_BUCKETS)
        durations.observe(seconds)
        if self.stream is not None:
            self.stream.observe(seconds)


class RpcMetrics(Collector):
    """The RPC series, by service, method, call type and final status code.

    prometheus_client's Counter, Gauge and Histogram take a lock on every update: four
    locked updates per call measured ~5 us of a call's CPU here, most of what metrics
    cost a Get. The counts live in plain `MethodCounts` instead, one per method, and are
    turned into the same families (names, labels, types) on scrape.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._methods: list[MethodCounts] = []
        self._lock = threading.Lock()
        registry.register(self)

    def method(self, service: str, name: str, kind: str) -> MethodCounts:
        """A new method's counts (RpcTelemetry makes one per method, at registration)."""
        counts = MethodCounts(service, name, kind)
        with self._lock:
            self._methods.append(counts)
        return counts

    def collect(self) -> Iterator[Metric]:
        handled = CounterMetricFamily(
            "keyspan_rpc_handled", "RPCs finished, by final status code.", labels=RPC_LABELS
        )
        duration = HistogramMetricFamily(
            "keyspan_rpc_duration_seconds",
            "Time from the call's arrival to its status; for streams, the stream's whole life.",
            labels=RPC_LABELS,
        )
        stream_duration = HistogramMetricFamily(
            "keyspan_rpc_stream_duration_seconds",
            "Life of streaming RPCs (Scan, BulkPut, Sweep), in wider buckets.",
            labels=RPC_LABELS[:3],
        )
        in_flight = GaugeMetricFamily(
            "keyspan_rpc_in_flight", "RPCs being served now.", labels=RPC_LABELS[:2]
        )
        received = CounterMetricFamily(
            "keyspan_rpc_stream_messages_received",
            "Messages read from clients on streaming RPCs.",
            labels=RPC_LABELS[:2],
        )
        sent = CounterMetricFamily(
            "keyspan_rpc_stream_messages_sent",
            "Messages sent to clients on streaming RPCs.",
            labels=RPC_LABELS[:2],
        )
        with self._lock:
            methods = list(self._methods)
        for m in methods:
            in_flight.add_metric(m.labels, m.in_flight)
            received.add_metric(m.labels, m.received)
            sent.add_metric(m.labels, m.sent)
            for code, durations in list(m.by_code.items()):
                labels = (*m.labels, m.kind, code)
                buckets = durations.cumulative()
                handled.add_metric(labels, buckets[-1][1])
                duration.add_metric(labels, buckets, durations.total)
            if m.stream is not None and m.by_code:
                stream_duration.add_metric((*m.labels, m.kind), m.stream.cumulative(), m.stream.total)
        yield from (handled, duration, stream_duration, in_flight, received, sent)
