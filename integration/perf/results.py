"""Running client processes and merging what they report.

`run_clients` hands one run to the client processes of a pool that lives as long as the
bench (spawned once, so a run does not pay for interpreters starting), gives them a
common start time, and merges their result files. `aggregate` does the merge alone, for
files written by workers started by hand on other machines (coordinator mode).
"""

from __future__ import annotations

import atexit
import contextlib
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
START_LEAD_S = 0.5  # connect and warm up before the common start


def merge(results: list[dict[str, Any]], elapsed_s: float | None = None) -> dict[str, Any]:
    """One summary of many workers' results: per op count, rate, percentiles (ms), errors.

    The rate is over the longest worker's window, or over elapsed_s when given (the sum
    of the windows of several rounds run one after the other).
    """
    elapsed = elapsed_s or max((r["elapsed_s"] for r in results), default=0.0) or 1e-9
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


class ClientPool:
    """Client processes kept alive across the runs of one bench invocation.

    Spawned once (multiprocessing spawn: a fresh interpreter, no forked gRPC state), each
    waits on a pipe for (spec, out file, worker index), runs it, and answers None or the
    error. An idle worker always has one "ready" waiting in its pipe, so the common start
    time is set only once every worker of the run has its imports done. A worker whose
    parent dies sees EOF and exits.
    """

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, Any]] = []

    def ensure(self, n: int) -> None:
        while len(self._workers) < n:
            parent, child = self._ctx.Pipe()
            proc = self._ctx.Process(target=serve_tasks, args=(child,), daemon=True)
            proc.start()
            child.close()
            self._workers.append((proc, parent))

    def run(self, spec: RunSpec, files: list[Path]) -> None:
        self.ensure(len(files))
        for _, conn in self._workers[: len(files)]:  # wait until every one has imported
            if not conn.poll(120) or conn.recv() != "ready":
                raise RuntimeError("a client process did not come up")
        spec = replace(spec, start_at=time.time() + START_LEAD_S)
        spec_json = json.dumps(asdict(spec))
        for i, (f, (_, conn)) in enumerate(zip(files, self._workers, strict=False)):
            conn.send((spec_json, str(f), i))
        errors = []
        for _, conn in self._workers[: len(files)]:
            if not conn.poll(spec.duration_s + 600):
                errors.append("timed out")
                continue
            answer = conn.recv()
            if answer is not None:
                errors.append(answer)
            conn.send("ping")  # the worker answers "ready" for the next run
        if errors:
            raise RuntimeError(f"client processes failed: {errors}")

    def close(self) -> None:
        for proc, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._workers.clear()


def serve_tasks(conn: Any) -> None:
    """A pooled client process: announce readiness, then run tasks until told to stop."""
    conn.send("ready")
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        if task == "ping":
            conn.send("ready")
            continue
        try:
            worker_main(*task)
            conn.send(None)
        except Exception as err:
            conn.send(repr(err))


_pool: ClientPool | None = None


def close_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.close()
        _pool = None


def run_clients(spec: RunSpec, result_dir: Path | None = None) -> dict[str, Any]:
    """Run spec.processes workers against spec.addresses from the pool; merge their files."""
    return merge(run_workers(spec, result_dir))


def run_workers(spec: RunSpec, result_dir: Path | None = None) -> list[dict[str, Any]]:
    """Run spec.processes workers against spec.addresses from the pool; their results."""
    global _pool
    if _pool is None:
        _pool = ClientPool()
        atexit.register(close_pool)
    with tempfile.TemporaryDirectory(prefix="keyspan-bench-") as tmp:
        out_dir = Path(result_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        files = [out_dir / f"worker-{i}.json" for i in range(spec.processes)]
        _pool.run(spec, files)
        return [json.loads(f.read_text()) for f in files]
