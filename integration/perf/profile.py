"""Where keyspan's server spends its GIL time under one workload, by py-spy.

Starts a `keyspan serve`, loads it, runs the workload from client processes while
`py-spy record --gil --nonblocking` samples the server, and prints the functions with the
most samples (self and inclusive). --gil keeps only the thread holding the GIL, which
is what bounds a Python server's throughput; the share of samples taken tells how busy
the GIL was. Needs py-spy (the `bench` extra) and ptrace rights over the child (root, or
kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

from integration.perf.results import run_clients
from integration.perf.servers import ServerProcess, remove_tree
from integration.perf.workloads import WORKLOADS, RunSpec

RATE_HZ = 200


def hot_functions(raw: str, top: int = 15) -> tuple[int, list[tuple[str, float]], list[tuple[str, float]]]:
    """(samples, top self, top inclusive) from py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(/\S*/(site-packages|lib/python3\.\d+)/", " (", f) for f in stack.split(";")[1:]]
        if frames:
            own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    share = [(f, n / total) for f, n in own.most_common(top)] if total else []
    incl = [(f, n / total) for f, n in inclusive.most_common(top * 2)] if total else []
    return total, share, incl


def profile(workload: str, records: int, duration_s: float, concurrency: int, processes: int) -> str:
    py_spy = Path(sys.executable).with_name("py-spy")
    work = Path(tempfile.mkdtemp(prefix="keyspan-profile-"))
    out = work / "profile.txt"
    try:
        with ServerProcess.keyspan(work / "data") as ks:
            base = RunSpec(
                addresses=[ks.address],
                records=records,
                keys="sorted",
                fields=1,
                field_bytes=100,
                json=False,
                processes=1,
                concurrency=1,
                duration_s=duration_s,
            )
            run_clients(replace(base, workload="load"))
            streaming = WORKLOADS[workload].mode != "ops"
            spec = (
                replace(base, workload=workload)
                if streaming
                else replace(
                    base, workload=workload, processes=processes, concurrency=max(1, concurrency // processes)
                )
            )
            spy = subprocess.Popen(
                [
                    str(py_spy),
                    "record",
                    "-p",
                    str(ks.pid),
                    "-d",
                    str(int(duration_s) + 2),
                    "-r",
                    str(RATE_HZ),
                    "--gil",
                    "--nonblocking",
                    "--format",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
            )
            result = run_clients(spec)
            spy.wait()
        total, own, incl = hot_functions(out.read_text())
    finally:
        remove_tree(work)
    # py-spy's --gil counts the thread that last held the GIL, so an idle loop waiting
    # on a writer's fsync shows up as the writer: read this share as an upper bound.
    wall = max(1.0, result["elapsed_s"] * RATE_HZ)
    rate = result["rows_per_s"] if streaming else result["ops_per_s"]
    lines = [f"{workload}: {rate:,.0f}/s; GIL busy in {min(1.0, total / wall):.0%} of the run", "", "self:"]
    lines += [f"  {s:6.1%}  {f}" for f, s in own]
    lines += ["", "inclusive:"] + [f"  {s:6.1%}  {f}" for f, s in incl]
    return "\n".join(lines)
