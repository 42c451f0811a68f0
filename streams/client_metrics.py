"""Counters the thick client (streams/client.py) and the gateway call as they work.

Usage, in the client: take an optional `metrics: ClientMetrics | None` and call
`metrics.retried(method)` before each retry, `metrics.map_refreshed()` after each
partition-map refresh, and `metrics.redirected(partition_id)` on each WrongPartition.
Without a registry the counters go to prometheus-client's default registry, which an
application exposes with `prometheus_client.start_http_server`. Every method is cheap
and thread-safe.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter

CLIENT_METRICS = (
    "keyspan_client_retries",
    "keyspan_client_map_refreshes",
    "keyspan_client_wrong_partition_redirects",
)


class ClientMetrics:
    """The client's retry, map-refresh and redirect counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self._retries = Counter(
            "keyspan_client_retries", "RPC attempts retried, by method.", ["method"], registry=registry
        )
        self._refreshes = Counter(
            "keyspan_client_map_refreshes", "Partition-map refreshes.", registry=registry
        )
        self._redirects = Counter(
            "keyspan_client_wrong_partition_redirects",
            "WrongPartition answers that sent a call to another node.",
            registry=registry,
        )

    def retried(self, method: str) -> None:
        self._retries.labels(method).inc()

    def map_refreshed(self) -> None:
        self._refreshes.inc()

    def redirected(self, partition_id: str = "") -> None:
        """One WrongPartition redirect; partition_id is accepted for logs, not a label."""
        self._redirects.inc()
