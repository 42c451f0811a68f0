"""What control's gauges read: a snapshot taken on the store's thread after every change.

The scrape runs on the metrics server's thread, which must not touch the SQLite store
(it belongs to the control-db thread), so control copies what the gauges need into this
snapshot after each ClusterState call, and the collector reads the copy.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from keyspan.services.control.cluster import ClusterState
from keyspan.v1 import control_pb2


def _state_name(state: int) -> str:
    return control_pb2.PartitionState.Name(state).removeprefix("PARTITION_STATE_").lower()


class ControlSnapshot:
    """Implements control_metrics.ControlMetricsSource from the last snapshot taken."""

    def __init__(self) -> None:
        self._nodes: dict[str, int] = {}
        self._partitions: dict[str, int] = {}
        self._version = 0
        self._heartbeats_ms: dict[str, int] = {}
        self._assigning = 0

    def refresh(self, state: ClusterState) -> None:
        """Copy the gauges' inputs; call on the store's thread only."""
        nodes = state.store.nodes()
        entries = state.map.entries
        self._nodes = dict(Counter(n["status"] for n in nodes))
        self._partitions = dict(Counter(_state_name(e.state) for e in entries))
        self._version = state.map.version
        self._heartbeats_ms = {n["node_id"]: n["last_heartbeat_ms"] or 0 for n in nodes}
        self._assigning = sum(1 for e in entries if e.state == control_pb2.PARTITION_STATE_ASSIGNED)

    def nodes_by_status(self) -> Mapping[str, int]:
        return self._nodes

    def partitions_by_state(self) -> Mapping[str, int]:
        return self._partitions

    def map_version(self) -> int:
        return self._version

    def heartbeat_ages_s(self) -> Mapping[str, float]:
        now_ms = time.time_ns() // 1_000_000
        return {node: (now_ms - at) / 1000 for node, at in self._heartbeats_ms.items() if at}

    def operations_in_flight(self) -> Mapping[str, int]:
        # Assignments pushed to a node and not yet acknowledged; moves and splits are not built.
        return {"assign": self._assigning}
