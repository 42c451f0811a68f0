"""Chaos on a real cluster (full mode only): nodes killed or stopped, control restarted,
the gateway killed, at random but seeded, while etag counters run and `keyspan load` runs
again and again. Nothing acknowledged may be lost or counted twice, and every load must
finish and read back exactly."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from integration.cluster import Cluster
from integration.workload import CounterWorkload

pytestmark = pytest.mark.timeout(600)
KEYSPAN = str(Path(sys.executable).with_name("keyspan"))
SECONDS = 40


def chaos(cluster: Cluster, rnd: random.Random, until: float) -> list[str]:
    events = []
    while time.monotonic() < until:
        time.sleep(rnd.uniform(1.0, 3.0))
        what = rnd.choice(["kill node", "kill node", "stop node", "restart control", "kill gateway"])
        if what in ("kill node", "stop node"):
            node = cluster.node(rnd.randint(1, len(cluster.nodes)))
            node.kill() if what == "kill node" else node.stop()
            time.sleep(rnd.uniform(0.2, 3.0))
            node.start()
        elif what == "restart control":
            cluster.restart_control(down_s=rnd.uniform(0.2, 2.0))
        else:
            cluster.gateway.kill()
            time.sleep(0.5)
            cluster.gateway.start()
        events.append(what)
    return events


@pytest.mark.parametrize("seed", [1, 2])
def test_loads_and_counters_come_through_chaos_exactly(seed: int, tmp_path: Path) -> None:
    rnd = random.Random(seed)
    keys = list(range(200_000))
    rnd.shuffle(keys)
    source = tmp_path / "in.jsonl"
    with source.open("w") as out:
        for i in keys:
            out.write(
                json.dumps({"key": f"{'abcdefghijklmnopqrstuvwxyz'[i % 26]}/{i:07d}", "value": "v" * 100})
                + "\n"
            )

    with Cluster() as cluster:
        env = {**os.environ, "KEYSPAN_ADDRESS": cluster.gateway.address}
        counters = CounterWorkload(
            cluster.gateway.address, cluster.control.address, "chaos", workers=8
        ).start()
        loads: list[subprocess.CompletedProcess[bytes]] = []
        stop = threading.Event()

        def load_again_and_again() -> None:
            while not stop.is_set():
                loads.append(
                    subprocess.run(
                        [KEYSPAN, "load", str(source), "--no-progress"], env=env, capture_output=True
                    )
                )

        loader = threading.Thread(target=load_again_and_again)
        loader.start()
        events = chaos(cluster, rnd, time.monotonic() + SECONDS)
        stop.set()
        tally = counters.stop()
        loader.join(300)

        assert events and loads and tally.ops > 0
        assert [r.stderr.decode()[-300:] for r in loads if r.returncode] == []
        assert counters.verify(cluster.gateway.address) == {}
        dumped = subprocess.run([KEYSPAN, "dump"], env=env, capture_output=True, timeout=300, check=True)
        got = {
            o["key"]: o["value"]
            for o in map(json.loads, dumped.stdout.splitlines())
            if "/counter/" not in o["key"]
        }
        want = {o["key"]: o["value"] for o in map(json.loads, source.read_text().splitlines())}
        assert got == want
