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

import threading
from typing import Any

import grpc
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
