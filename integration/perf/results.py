"""Running client processes and merging what they report.

`run_clients` spawns the worker processes of one run (multiprocessing, spawn: a fresh
interpreter each, no forked gRPC state), gives them a common start time, and merges their
result files. `aggregate` does the merge alone, for files written by workers started by
hand on other machines (coordinator mode).
"""

from __future__ import annotations

import json
import multiprocessing
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from integration.perf.worker import new_histogram, worker_main
from integration.perf.workloads import RunSpec

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
SPAWN_LEAD_S = 1.2


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of many workers' results: per op count, rate, percentiles (ms), errors."""
    elapsed = max((r["elapsed_s"] for r in results), default=0.0) or 1e-9
    hists: dict[str, HdrHistogram] = {}
    errors: dict[str, Counter[str]] = {}
    for r in results:
        for op, data in r["ops"].items():
            hist = hists.setdefault(op, new_histogram())
            if data["hist"]:
                hist.decode_and_add(data["hist"])
            errors.setdefault(op, Counter()).update(data["errors"])
    ops = {}
    for op, hist in sorted(hists.items()):
        count = hist.get_total_count()
        summary = {"count": count, "per_s": count / elapsed, "errors": dict(errors[op])}
        for name, pct in PERCENTILES.items():
            summary[name + "_ms"] = hist.get_value_at_percentile(pct) / 1000 if count else None
        summary["max_ms"] = hist.get_max_value() / 1000 if count else None
        ops[op] = summary
    total = sum(o["count"] for o in ops.values())
    all_errors: Counter[str] = Counter()
    for e in errors.values():
        all_errors.update(e)
    return {
        "elapsed_s": elapsed,
        "ops_per_s": total / elapsed,
        "rows": sum(r.get("rows", 0) for r in results),
        "rows_per_s": sum(r.get("rows", 0) for r in results) / elapsed,
        "errors": dict(all_errors),
        "ops": ops,
        "workers": len(results),
    }


def aggregate(files: list[Path]) -> dict[str, Any]:
    return merge([json.loads(Path(f).read_text()) for f in files])


def overall_percentile(summary: dict[str, Any], name: str) -> float | None:
    """The percentile of the run's dominant op (the one with most calls)."""
    ops = summary["ops"]
    if not ops:
        return None
    main = max(ops.values(), key=lambda o: o["count"])
    return main[name + "_ms"]


def run_clients(spec: RunSpec, result_dir: Path | None = None) -> dict[str, Any]:
    """Run spec.processes workers against spec.addresses; wait for all; merge."""
    spec = replace(spec, start_at=time.time() + SPAWN_LEAD_S + 0.3 * spec.processes)
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="keyspan-bench-") as tmp:
        out_dir = Path(result_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / f"worker-{i}.json" for i in range(spec.processes)]
        spec_json = json.dumps(asdict(spec))
        procs = [ctx.Process(target=worker_main, args=(spec_json, str(f), i)) for i, f in enumerate(files)]
        try:
            for p in procs:
                p.start()
            for p in procs:
                p.join(spec.duration_s + 600)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
        if failed:
            raise RuntimeError(
                f"client processes {failed} failed (exit codes {[procs[i].exitcode for i in failed]})"
            )
        return aggregate(files)
