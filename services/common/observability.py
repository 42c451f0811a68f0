"""Metrics, traces and fault reports of one process, set up from its ProcessConfig.

GrpcProcess makes one `Observability` before it creates its gRPC server, takes the
handler wrappers from it (applied at registration), and starts and stops it with the server, so every process
(serve, node, control, gateway) gets /metrics, RPC metrics, RPC spans and Sentry with no
code of its own. A process adds only its own gauges:

- a process holding partitions: ``self.observability.watch_shards(shards, sweeper)``
  before the shards are opened (in ``__init__``);
- the control process: ``self.observability.register_control(source)``, see
  `control_metrics.ControlMetricsSource`;
- anything else: ``self.observability.add_collector(collector)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import Collector

from keyspan import __version__
from keyspan.services.common import faults
from keyspan.services.common.control_metrics import ControlMetricsSource, register_control_metrics
from keyspan.services.common.metrics import MetricsServer, RpcMetrics, new_registry
from keyspan.services.common.registrar import Wrap
from keyspan.services.common.rpc_telemetry import RpcTelemetry, ServerSampler
from keyspan.services.common.storage_metrics import PartitionCollector, StorageTelemetry
from keyspan.services.common.tracing import Tracing
from keyspan.services.config import ProcessConfig

if TYPE_CHECKING:
    from keyspan.storage.shardset import ShardSet
    from keyspan.streams.sweep import Sweeper

log = logging.getLogger(__name__)


class Observability:
    def __init__(self, config: ProcessConfig, component: str) -> None:
        self.config, self.component = config, component
        self.registry = new_registry(component, __version__) if config.metrics_address else None
        self.tracing = Tracing(config, component) if config.otlp_endpoint else None
        self.rpc_metrics = RpcMetrics(self.registry) if self.registry is not None else None
        self.sentry = faults.setup_sentry(config, component)
        self.metrics_server: MetricsServer | None = None

    @property
    def enabled(self) -> bool:
        return self.registry is not None or self.tracing is not None

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics_server is None else self.metrics_server.port

    def handler_wrappers(self) -> list[Wrap]:
        """The one wrapper that traces and measures every RPC; none when both are off."""
        if not self.enabled:
            return []
        sampler = None
        if self.tracing is not None:
            sampler = ServerSampler(self.tracing.tracer, self.config.trace_sample_ratio)
        return [RpcTelemetry(self.rpc_metrics, sampler).wrap]

    def add_collector(self, collector: Collector) -> None:
        """Export a process-specific collector's series (no-op when metrics are off)."""
        if self.registry is not None:
            self.registry.register(collector)

    def register_control(self, source: ControlMetricsSource) -> None:
        """The control plane's gauges (nodes, partitions, map version, heartbeats, ops)."""
        if self.registry is not None:
            register_control_metrics(self.registry, source)

    def watch_shards(self, shards: ShardSet, sweeper: Sweeper | None = None) -> None:
        """Partition gauges, write-path histograms and storage spans for `shards`, and
        Sentry reports for the sweeper's faults. Call before the shards are opened."""
        if self.enabled:
            tracer = None if self.tracing is None else self.tracing.tracer
            shards.write_observer = StorageTelemetry(self.registry, tracer)
        if self.registry is not None:
            max_series = getattr(self.config, "max_partition_series", 100)
            self.registry.register(PartitionCollector(shards, max_series))
        if sweeper is not None and self.sentry:
            sweeper.on_fault = faults.report_background_fault("sweeper")

    def report_fault(self, err: BaseException, **tags: Any) -> None:
        """Report a fault of a process's own background task (no-op without Sentry)."""
        faults.report_fault(err, **tags)

    def start(self, address: str) -> None:
        """Serve /metrics (when configured); tag fault reports with the process address."""
        faults.set_node(address)
        if self.registry is not None:
            try:
                self.metrics_server = MetricsServer(self.config.metrics_address, self.registry)
            except OSError as err:
                raise OSError(f"cannot serve metrics on {self.config.metrics_address}: {err}") from None
            log.info(
                "metrics served",
                extra={"component": self.component, "metrics_port": self.metrics_server.port},
            )

    def stop(self) -> None:
        """Stop /metrics, export the spans still queued, send pending fault reports."""
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if self.tracing is not None:
            self.tracing.shutdown()
        faults.flush()
