"""The perf suite against a real 3-node cluster: thick clients, and the same through the gateway.

    keyspan bench cluster [--quick] [-w A -w C ...]

Starts control, nodes 1..3 and a gateway on loopback (integration/cluster.py), with the
YCSB key space cut into 8 partitions over the 3 nodes. The records are loaded once
through the thick client; then each workload runs twice, beside the echo as usual: once
from thick clients that route every key to its owner by the watched map, once through
the gateway. Each gateway record also carries the gateway's overhead as a ratio to the
thick client under the same mix.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from integration.cluster import Cluster
from integration.perf.figures import Figure
from integration.perf.suite import YcsbConfig, ycsb

# YCSB keys are b"user" + 16 hex digits: cut there, or one partition would hold them all.
SPLIT_POINTS = "user2,user4,user6,user8,usera,userc,usere"


def cluster_suite(cfg: YcsbConfig, log: Any = print) -> list[dict[str, Any]]:
    with Cluster(split_points=SPLIT_POINTS) as cluster:
        log(f"cluster up: control {cluster.control.address}, gateway {cluster.gateway.address}")
        thick = ycsb(replace(cfg, target_kind="cluster", target_addresses=(cluster.control.address,)), log)
        gateway = ycsb(
            replace(cfg, target_kind="gateway", target_addresses=(cluster.gateway.address,), load=False), log
        )
    runs: list[dict[str, Any]] = []
    for direct, routed in zip(thick, gateway, strict=True):
        name = direct["suite"].removeprefix("ycsb-")
        direct["suite"], routed["suite"] = f"cluster-thick-{name}", f"cluster-gateway-{name}"
        ours, theirs = direct["figures"][0], routed["figures"][0]
        routed["figures"].append(
            Figure(
                f"{name} gateway / thick client",
                theirs.value,
                ours.unit,
                "thick client, same mix",
                ours.value,
            )
        )
        runs += [direct, routed]
    return runs
