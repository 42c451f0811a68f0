"""The runs: the baseline (keyspan beside raw apsw and the echo) and the YCSB workloads.

Each run starts what it measures (a real `keyspan serve` on 127.0.0.1 with a temp data dir,
the echo server, client processes), measures limits and keyspan interleaved, stops every
process it started, and returns its figures for the table and the history.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from integration.perf import raw_sqlite
from integration.perf.figures import Figure
from integration.perf.results import merge, overall_percentile, run_clients, run_workers
from integration.perf.servers import ServerProcess, Target, bytes_on_disk, remove_tree
from integration.perf.workloads import WORKLOADS, RunSpec

CONCURRENCIES = (1, 16, 64)


@dataclass(frozen=True)
class BaselineConfig:
    rows: int = 200_000
    value_bytes: int = 100
    duration_s: float = 8.0
    processes: int = 2
    synchronous: str = "FULL"
    rounds: int = 2  # echo, keyspan, echo, keyspan ...: each gets duration_s / rounds a turn
    tmp_dir: str = ""


@dataclass(frozen=True)
class YcsbConfig:
    workloads: tuple[str, ...] = ("A", "B", "C", "F", "D", "E")
    records: int = 100_000
    fields: int = 10
    field_bytes: int = 100
    json: bool = True
    distribution: str = ""
    concurrency: int = 32
    processes: int = 2
    duration_s: float = 10.0
    operations: int = 0
    synchronous: str = "FULL"
    target_kind: str = "serve"
    target_addresses: tuple[str, ...] = ()
    tmp_dir: str = ""
    load: bool = True  # False: the target already holds the records


@contextmanager
def _workdir(tmp_dir: str) -> Iterator[Path]:
    if tmp_dir:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="keyspan-bench-", dir=tmp_dir or None))
    try:
        yield path
    finally:
        remove_tree(path)


def _split(concurrency: int, processes: int) -> tuple[int, int]:
    """(processes, calls per process) for a total concurrency."""
    procs = max(1, min(processes, concurrency))
    return procs, max(1, concurrency // procs)


class Meter:
    """Server CPU-seconds over a stretch of a run."""

    def __init__(self, server: ServerProcess) -> None:
        self.server, self.cpu_s = server, server.cpu_s()

    def per_million(self, ops: float) -> float | None:
        used = self.server.cpu_s() - self.cpu_s
        return used / ops * 1e6 if ops else None


@dataclass
class Interleaved:
    """What `interleaved` measured: per server, the merged summary, CPU-seconds per
    million ops, and the ops/s of each round (in the order the rounds ran)."""

    summaries: dict[str, dict[str, Any]]
    cpu_s_per_m_ops: dict[str, float]
    round_rates: dict[str, list[float]]

    def round_ratios(self, name: str, limit: str) -> list[float]:
        """name's ops/s over limit's, round by round: the spread of a ratio within one run."""
        return [
            round(got / lim, 3) if lim else float("nan")
            for got, lim in zip(self.round_rates[name], self.round_rates[limit], strict=True)
        ]


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Who runs when in one round: the given order in even rounds, reversed in odd ones
    (A B, B A, A B ...), so neither side always runs first, right after the other's load."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def interleaved(spec: RunSpec, servers: dict[str, ServerProcess], rounds: int) -> Interleaved:
    """Run spec against each server in turn, `rounds` times, duration_s split over rounds.

    Interleaving spreads the machine's bursts of other work over both sides of a ratio;
    alternating the order (`round_order`) keeps a drift over the run from favouring one.
    """
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    window_s = dict.fromkeys(servers, 0.0)
    cpu_s = dict.fromkeys(servers, 0.0)
    round_rates: dict[str, list[float]] = {name: [] for name in servers}
    for r in range(rounds):
        for name in round_order(list(servers), r):
            server = servers[name]
            before = server.cpu_s()
            got = run_workers(replace(spec, addresses=[server.address], duration_s=spec.duration_s / rounds))
            cpu_s[name] += server.cpu_s() - before
            results[name] += got
            window = max(r["elapsed_s"] for r in got)
            window_s[name] += window
            round_rates[name].append(merge(got, window)["ops_per_s"])
    summaries = {name: merge(results[name], window_s[name]) for name in servers}
    per_m = {}
    for name, s in summaries.items():
        ops = sum(o["count"] for o in s["ops"].values())
        per_m[name] = cpu_s[name] / ops * 1e6 if ops else float("nan")
    return Interleaved(summaries, per_m, round_rates)


def baseline(cfg: BaselineConfig, log: Any = print) -> dict[str, Any]:
    figures: list[Figure] = []
    summaries: dict[str, Any] = {}
    with _workdir(cfg.tmp_dir) as work, ExitStack() as stack:
        raw = work / "raw.db"
        log(f"raw apsw: inserting {cfg.rows:,} rows ...")
        raw_insert = raw_sqlite.bulk_insert(raw, cfg.rows, cfg.value_bytes, cfg.synchronous)
        raw_reads = raw_sqlite.point_reads(raw, cfg.rows, min(cfg.rows, 50_000))
        raw_scan, _ = raw_sqlite.full_scan(raw)
        raw_commits = raw_sqlite.single_commits(
            work / "raw-commits.db", 2_000, cfg.value_bytes, cfg.synchronous
        )
        raw_upsert = raw_sqlite.keyspan_statements_insert(
            work / "raw-upsert.db", cfg.rows, cfg.value_bytes, cfg.synchronous
        )
        echo = stack.enter_context(ServerProcess.echo(cfg.value_bytes))
        ks = stack.enter_context(ServerProcess.keyspan(work / "data", cfg.synchronous))
        base = RunSpec(
            addresses=[ks.address],
            records=cfg.rows,
            fields=1,
            field_bytes=cfg.value_bytes,
            json=False,
            keys="sorted",
            duration_s=cfg.duration_s,
            processes=1,
            concurrency=1,
        )
        log("keyspan BulkPut ...")
        meter = Meter(ks)
        load = summaries["bulk_put"] = run_clients(replace(base, workload="load"))
        load_cpu = meter.per_million(load["rows"])
        raw_bytes = cfg.rows * (16 + cfg.value_bytes)
        space = bytes_on_disk(work / "data") / raw_bytes
        scan = summaries["scan"] = run_clients(replace(base, workload="scan"))
        echo_stream = run_clients(
            replace(
                base, addresses=[echo.address], workload="load", records=min(cfg.rows, 20_000), batch_bytes=1
            )
        )
        summaries["echo_stream"] = echo_stream
        # The same streams against the echo: what the client and gRPC alone can carry.
        echo_load = summaries["echo_bulk_put"] = run_clients(
            replace(base, addresses=[echo.address], workload="load")
        )
        echo_scan = summaries["echo_scan"] = run_clients(
            replace(base, addresses=[echo.address], workload="scan")
        )
        figures += [
            Figure("BulkPut rows/s", load["rows_per_s"], "rows/s", "raw apsw insert", raw_insert, 0.5),
            Figure("Scan rows/s", scan["rows_per_s"], "rows/s", "raw apsw scan", raw_scan, 0.1),
            Figure(
                "BulkPut vs keyspan's SQL alone", load["rows_per_s"], "rows/s", "raw upsert+log", raw_upsert
            ),
            Figure(
                "BulkPut vs echo BulkPut",
                load["rows_per_s"],
                "rows/s",
                "echo BulkPut",
                echo_load["rows_per_s"],
            ),
            Figure("Scan vs echo Scan", scan["rows_per_s"], "rows/s", "echo Scan", echo_scan["rows_per_s"]),
            Figure("echo stream msgs/s", echo_stream["ops"]["bulk_batch"]["per_s"], "msg/s"),
            Figure("raw apsw point reads/s", raw_reads, "reads/s"),
            Figure("raw apsw single-row commits/s", raw_commits, "commits/s"),
        ]
        cost: dict[str, Any] = {"bulk_put_cpu_s_per_m_rows": load_cpu, "space_amplification": space}
        round_ratios: dict[str, list[float]] = {}
        for c in CONCURRENCIES:
            procs, calls = _split(c, cfg.processes)
            for op in ("get", "put"):
                spec = replace(base, workload=op, processes=procs, concurrency=calls)
                log(f"{op} c={c}: echo and keyspan, interleaved x{cfg.rounds} ...")
                pair = interleaved(spec, {"echo": echo, "keyspan": ks}, cfg.rounds)
                lim = summaries[f"echo_{op}_c{c}"] = pair.summaries["echo"]
                got = summaries[f"{op}_c{c}"] = pair.summaries["keyspan"]
                cost[f"echo_{op}_c{c}_cpu_s_per_m_ops"] = pair.cpu_s_per_m_ops["echo"]
                cost[f"{op}_c{c}_cpu_s_per_m_ops"] = pair.cpu_s_per_m_ops["keyspan"]
                round_ratios[f"{op.capitalize()} c={c} RPC/s"] = pair.round_ratios("keyspan", "echo")
                name = op.capitalize()
                target = {("get", 64): 0.9, ("put", 64): 0.8}.get((op, c))
                figures.append(
                    Figure(
                        f"{name} c={c} RPC/s",
                        got["ops_per_s"],
                        "RPC/s",
                        f"echo c={c}",
                        lim["ops_per_s"],
                        target,
                    )
                )
                p99_target = 1.5 if (op, c) == ("get", 1) else None
                figures.append(
                    Figure(
                        f"{name} c={c} p99",
                        overall_percentile(got, "p99"),
                        "ms",
                        f"echo c={c} p99",
                        overall_percentile(lim, "p99"),
                        p99_target,
                        False,
                    )
                )
        figures.append(
            Figure(
                "Get c=1 RPC/s vs raw point reads",
                summaries["get_c1"]["ops_per_s"],
                "RPC/s",
                "raw apsw reads",
                raw_reads,
            )
        )
        figures.append(
            Figure(
                "Put c=1 RPC/s vs raw single-row commits",
                summaries["put_c1"]["ops_per_s"],
                "RPC/s",
                "raw apsw commits",
                raw_commits,
            )
        )
        cost["server_peak_rss_bytes"] = ks.peak_rss_bytes()
        cost["echo_peak_rss_bytes"] = echo.peak_rss_bytes()
    return {
        "suite": "baseline",
        "config": cfg.__dict__,
        "figures": figures,
        "summaries": summaries,
        "cost": cost,
        "round_ratios": round_ratios,
    }


def _ycsb_target(cfg: YcsbConfig, work: Path, stack: ExitStack) -> tuple[Target, ServerProcess | None]:
    if cfg.target_addresses:
        return Target(cfg.target_kind, cfg.target_addresses), None
    ks = stack.enter_context(ServerProcess.keyspan(work / "data", cfg.synchronous))
    return Target("serve", (ks.address,)), ks


def ycsb(cfg: YcsbConfig, log: Any = print) -> list[dict[str, Any]]:
    """Load once through BulkPut, then run the workloads in YCSB's order; one record each."""
    runs: list[dict[str, Any]] = []
    with _workdir(cfg.tmp_dir) as work, ExitStack() as stack:
        echo = stack.enter_context(ServerProcess.echo(cfg.fields * cfg.field_bytes))
        target, ks = _ycsb_target(cfg, work, stack)
        procs, calls = _split(cfg.concurrency, cfg.processes)
        base = RunSpec(
            addresses=list(target.addresses),
            kind=target.kind,
            records=cfg.records,
            fields=cfg.fields,
            field_bytes=cfg.field_bytes,
            json=cfg.json,
            distribution=cfg.distribution,
            duration_s=cfg.duration_s,
            operations=cfg.operations,
            processes=procs,
            concurrency=calls,
        )
        load: dict[str, Any] = {}
        load_cost: dict[str, Any] = {}
        meter = Meter(ks) if ks else None
        if cfg.load:
            log(f"load {cfg.records:,} records through BulkPut ...")
            load = run_clients(replace(base, workload="load", processes=1, concurrency=1))
            load_cost["load_rows_per_s"] = load["rows_per_s"]
        if ks is not None and meter is not None and load:
            load_cost["load_cpu_s_per_m_rows"] = meter.per_million(load["rows"])
            raw = sum(len(k) for k in _keys(cfg.records)) + cfg.records * base.value_bytes
            load_cost["space_amplification"] = bytes_on_disk(work / "data") / raw
        for name in cfg.workloads:
            spec = replace(base, workload=name)
            log(f"workload {name}: echo, then keyspan ...")
            lim = run_clients(replace(spec, addresses=[echo.address], kind="serve"))
            meter = Meter(ks) if ks else None
            got = run_clients(spec)
            ops = got["ops_per_s"] * got["elapsed_s"]
            cost = dict(load_cost)
            if ks is not None and meter is not None:
                cost["cpu_s_per_m_ops"] = meter.per_million(ops)
                cost["server_peak_rss_bytes"] = ks.peak_rss_bytes()
            figures = [
                Figure(f"{name} ops/s", got["ops_per_s"], "ops/s", "echo, same mix", lim["ops_per_s"])
                if WORKLOADS[name].mode == "ops"
                else Figure(
                    f"{name} rows/s", got["rows_per_s"], "rows/s", "echo, same stream", lim["rows_per_s"]
                ),
                Figure(
                    f"{name} p99",
                    overall_percentile(got, "p99"),
                    "ms",
                    "echo p99",
                    overall_percentile(lim, "p99"),
                    None,
                    False,
                ),
            ]
            config = {**cfg.__dict__, "workloads": name, "target_addresses": list(cfg.target_addresses)}
            runs.append(
                {
                    "suite": f"ycsb-{name}",
                    "config": config,
                    "figures": figures,
                    "summaries": {"keyspan": got, "echo": lim, "load": load},
                    "cost": cost,
                }
            )
    return runs


def _keys(records: int) -> Iterator[bytes]:
    from integration.perf.keys import record_key

    return (record_key(n) for n in range(records))
