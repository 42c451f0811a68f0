"""monitoring/: every metric the alert rules and the dashboard use is really exported.

A real server with metrics on serves some traffic and is scraped; the control plane's
names come from register_control_metrics, the client's from ClientMetrics.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from obs_helpers import FakeControl, scrape
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keyspan.services.common.control_metrics import register_control_metrics
from keyspan.storage.mutations import Put
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.v1 import kv_pb2, kv_pb2_grpc

MONITORING = Path(__file__).resolve().parents[3] / "monitoring"
METRIC = r"\b((?:keyspan|process)_[a-z0-9_]+)"
ADDED_BY_PROMETHEUS = {"job", "instance", "le"}


def _alert_rules() -> list[dict]:
    groups = yaml.safe_load((MONITORING / "alerts.yaml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads((MONITORING / "keyspan-dashboard.json").read_text())


def _dashboard_exprs() -> list[str]:
    dash = _dashboard()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    return exprs + [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]


@pytest_asyncio.fixture
async def exported(start_server, channel_to) -> dict[str, set[str]]:
    server = await start_server(metrics_address="127.0.0.1:0")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    await kv.Put(kv_pb2.PutRequest(key=b"a", value=b"v"))
    await kv.Get(kv_pb2.GetRequest(key=b"a"))

    async def scan_requests():
        yield kv_pb2.ScanRequest(start=b"a", credits=1)

    _ = [b async for b in kv.Scan(scan_requests())]
    expired = time.time_ns() // 1_000_000 - 1000
    await server.shards.partitions[0].write(Put(b"b", b"v", False, expired, 0, False))
    names: dict[str, set[str]] = {}
    families = list((await scrape(server)).values())
    registry = CollectorRegistry()
    register_control_metrics(registry, FakeControl())
    ClientMetrics(registry).retried("Put")
    families += text_string_to_metric_families(generate_latest(registry).decode())
    for family in families:
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


def _check(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What is wrong with expr: unknown metric names or label names."""
    problems = []
    used = re.findall(METRIC, expr)
    others = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{", expr)) - set(used)
    problems += [f"unknown metric {m}" for m in used if m not in exported]
    problems += [f"metric {m} is not exported by keyspan" for m in others - {"up"}]
    for metric, body in re.findall(METRIC + r"\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body):
            if label not in exported.get(metric, set()) | ADDED_BY_PROMETHEUS:
                problems.append(f"{metric} has no label {label}")
    known = set().union(*(exported.get(m, set()) for m in used)) | ADDED_BY_PROMETHEUS
    for group in re.findall(r"\bby \(([^)]*)\)", expr):
        problems += [f"no metric in it has label {lb}" for lb in re.findall(r"\w+", group) if lb not in known]
    return problems


@pytest.mark.asyncio
async def test_every_alert_uses_exported_metrics_and_labels(exported) -> None:
    rules = _alert_rules()
    assert len(rules) >= 6
    problems = {r["alert"]: _check(r["expr"], exported) for r in rules}
    assert {a: p for a, p in problems.items() if p} == {}
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "warn"} and rule["annotations"]["summary"]


@pytest.mark.asyncio
async def test_every_dashboard_query_uses_exported_metrics_and_labels(exported) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    problems = {e: _check(e, exported) for e in exprs}
    assert {e: p for e, p in problems.items() if p} == {}


def test_the_dashboard_covers_rpcs_hot_spots_sweep_lag_and_node_health() -> None:
    dash = _dashboard()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"RPCs", "Partition hot spots", "TTL sweep", "Node health"} <= rows
    for panel in dash["panels"]:
        assert panel["type"] == "row" or panel["targets"], panel["title"]


def test_the_check_catches_a_made_up_metric_and_label() -> None:
    exported = {"keyspan_rpc_handled_total": {"grpc_code"}}
    assert _check('rate(keyspan_rpc_handled_total{grpc_code="OK"}[5m])', exported) == []
    assert _check("rate(keyspan_nope_total[5m])", exported) == ["unknown metric keyspan_nope_total"]
    assert _check('keyspan_rpc_handled_total{color="red"}', exported) == [
        "keyspan_rpc_handled_total has no label color"
    ]
    assert _check("node_load1{x='1'}", exported) == ["metric node_load1 is not exported by keyspan"]
