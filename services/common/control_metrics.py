"""Control-plane gauges, computed on scrape from whatever the control process knows.

The control process calls `register_control_metrics(registry, source)` once (or
`Observability.register_control(source)`, which does it when metrics are on); `source`
is any object with the five methods of `ControlMetricsSource`. They run on the scrape
thread, so they must only read in-memory state (a dict copy, not an RPC or a disk read).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ControlMetricsSource(Protocol):
    def nodes_by_status(self) -> Mapping[str, int]:
        """Number of registered nodes per status (e.g. up, suspect, down, draining)."""

    def partitions_by_state(self) -> Mapping[str, int]:
        """Number of partitions per state (e.g. serving, splitting, moving, merging)."""

    def map_version(self) -> int:
        """Version of the current partition map."""

    def heartbeat_ages_s(self) -> Mapping[str, float]:
        """Seconds since each node's last heartbeat, by node id."""

    def operations_in_flight(self) -> Mapping[str, int]:
        """Operations under way per kind (assign: partitions not acknowledged by their node)."""


CONTROL_METRICS = (
    "keyspan_control_nodes",
    "keyspan_control_partitions",
    "keyspan_control_map_version",
    "keyspan_control_heartbeat_age_seconds",
    "keyspan_control_operations_in_flight",
)


class ControlCollector(Collector):
    def __init__(self, source: ControlMetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        src = self._source
        yield _labelled("keyspan_control_nodes", "Nodes by status.", "status", src.nodes_by_status())
        yield _labelled(
            "keyspan_control_partitions", "Partitions by state.", "state", src.partitions_by_state()
        )
        yield GaugeMetricFamily(
            "keyspan_control_map_version", "Version of the partition map.", src.map_version()
        )
        yield _labelled(
            "keyspan_control_heartbeat_age_seconds",
            "Seconds since each node's last heartbeat.",
            "node_id",
            src.heartbeat_ages_s(),
        )
        yield _labelled(
            "keyspan_control_operations_in_flight",
            "Operations under way, by kind: assign (partitions given to a node that has not "
            "acknowledged them yet; moves and splits are not built).",
            "kind",
            src.operations_in_flight(),
        )


def _labelled(name: str, text: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, text, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def register_control_metrics(registry: CollectorRegistry, source: ControlMetricsSource) -> ControlCollector:
    """Export the control plane's gauges from `source` on `registry`; returns the collector."""
    collector = ControlCollector(source)
    registry.register(collector)
    return collector
