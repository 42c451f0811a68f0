"""Run the whole cluster workflow outside pytest and print a results table.

    python -m integration.workflow [--quick]

Starts control, nodes 1..3 and a gateway on loopback, runs every step of
integration/steps.py, stops everything, and exits 1 if a step failed. The results are
kept with the perf history, in integration/perf/history/workflow/ (--no-history: not).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from integration import steps
from integration.cluster import Cluster
from integration.perf import history


def plan(quick: bool) -> tuple[int, list[tuple[str, object]]]:
    n = 3000 if quick else 50_000
    seconds = 3.0 if quick else 20.0
    return n, [
        ("counters", lambda c: steps.counters(c, seconds=seconds, workers=8 if quick else 16)),
        ("bulk", lambda c: steps.bulk_and_scan(c, n=n)),
        ("ttl", lambda c: steps.ttl(c)),
        ("admin", steps.admin),
        ("repair", steps.repair_round_trip),
        ("kill", lambda c: steps.kill_node(c, victim=2, seconds_down=0.0 if quick else 5.0, bulk_n=n)),
        ("control", lambda c: steps.restart_control(c, down_s=1.5 if quick else 5.0)),
    ]


def table(results: list[steps.Result], failed: list[tuple[str, str]]) -> str:
    rows = [["STEP", "OPS", "ERRORS (retried)", "SECONDS", "NOTES"]]
    for r in results:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "0"
        rows.append([r.step, str(r.ops), errors, f"{r.duration_s:.1f}", r.notes])
    for name, why in failed:
        rows.append([name, "-", "FAILED", "-", why[:120]])
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def keep(
    results: list[steps.Result], failed: list[tuple[str, str]], mode: str, n: int, total_s: float
) -> Path:
    """Append this run's results to the perf history (a folder of its own: no ratios)."""
    record = {
        "schema": 1,
        "suite": f"workflow-{mode}",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": history._git("rev-parse", "HEAD"),
        "machine": history.machine(),
        "versions": history.versions(),
        "bulk_entries": n,
        "total_s": round(total_s, 1),
        "steps": [asdict(r) for r in results],
        "failed": [{"step": name, "why": why} for name, why in failed],
    }
    return history.save(record, history.HISTORY_DIR / "workflow")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the small, fast workflow (CI's size)")
    parser.add_argument("--no-history", action="store_true", help="do not keep the results in the history")
    args = parser.parse_args()
    started = time.monotonic()
    n, todo = plan(args.quick)
    results: list[steps.Result] = []
    failed: list[tuple[str, str]] = []
    with Cluster() as cluster:
        up_s = time.monotonic() - started
        print(
            f"cluster up in {up_s:.1f}s: control {cluster.control.address}, gateway {cluster.gateway.address}"
        )
        for name, step in todo:
            try:
                results.append(step(cluster))  # type: ignore[operator]
            except Exception as err:
                where = traceback.extract_tb(err.__traceback__)[-1]
                failed.append((name, f"{type(err).__name__} at {where.name}:{where.lineno}: {err}"))
            print(f"  {name}: {'ok' if not failed or failed[-1][0] != name else 'FAILED'}", flush=True)
    print()
    print(table(results, failed))
    mode = "quick" if args.quick else "full"
    total_s = time.monotonic() - started
    print(f"\n{mode} workflow, {n} bulk entries: {len(results)} ok, {len(failed)} failed, {total_s:.1f}s")
    if not args.no_history:
        print(f"kept in {keep(results, failed, mode, n, total_s)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
