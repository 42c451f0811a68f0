"""Helpers of the observability tests: scrape a server's /metrics, read one sample."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from keyspan.services.server import KeyspanServer
from prometheus_client.parser import text_string_to_metric_families


async def scrape(server: KeyspanServer) -> dict[str, Any]:
    """The server's /metrics as {family name: family}."""
    url = f"http://127.0.0.1:{server.observability.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    return {f.name: f for f in text_string_to_metric_families(body)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample called `name` whose labels include `labels`."""
    family = families[name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    values = [s.value for s in family.samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(values) == 1, (name, labels, values)
    return float(values[0])
