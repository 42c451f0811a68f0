"""The cluster workflow on real processes: control, nodes n1..n3 and a gateway on loopback.

The quick set (`pytest -q -m quick integration`) runs each step at a small size; set
KEYSPAN_INTEGRATION_FULL=1 for the full sizes (longer loads, nodes down for longer).
Tests run in file order on one cluster; each leaves every node up.
"""

from __future__ import annotations

import pytest

from integration import steps
from integration.cluster import Cluster
from integration.conftest import FULL

pytestmark = [pytest.mark.quick, pytest.mark.timeout(180)]
BULK = 50_000 if FULL else 3000


def test_concurrent_counters_end_exact(cluster: Cluster) -> None:
    result = steps.counters(cluster, seconds=20 if FULL else 3, workers=16 if FULL else 8)
    assert result.ops > 0


def test_bulk_load_scans_back_exactly_through_gateway_and_routed(cluster: Cluster) -> None:
    steps.bulk_and_scan(cluster, n=BULK)


def test_ttl_entries_disappear_on_time(cluster: Cluster) -> None:
    steps.ttl(cluster)


def test_admin_commands_say_what_they_did(cluster: Cluster) -> None:
    steps.admin(cluster)


def test_repair_moves_ownership_and_the_data_follows_the_disk(cluster: Cluster) -> None:
    steps.repair_round_trip(cluster)


def test_kill_9_of_a_node_under_load_loses_no_acknowledged_write(cluster: Cluster) -> None:
    result = steps.kill_node(cluster, victim=2, seconds_down=5.0 if FULL else 0.0, bulk_n=BULK)
    assert "suspect" in result.notes and "down" in result.notes and result.notes.endswith("up")


def test_control_restart_keeps_serving_and_a_node_restarted_meanwhile_serves_its_disk(
    cluster: Cluster,
) -> None:
    result = steps.restart_control(cluster, down_s=5.0 if FULL else 1.5)
    assert result.ops > 0
