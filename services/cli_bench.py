"""`keyspan bench`: the perf suite (integration/perf) from the command line.

The suite lives in the source tree's integration/perf package, beside its history, and is
imported lazily so that `keyspan --help` stays light; it needs a source checkout (an
editable install finds it on its own). See README "## Performance".
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from keyspan.services.cli import cli

# Sizes, counts and durations must be positive: a bad one is a usage error, not a crash
# of the client processes half-way through a run.
_COUNT = click.IntRange(min=1)
_SECONDS = click.FloatRange(min=0, min_open=True)
_HISTORY_HELP = "Where the run records are.  [default: integration/perf/history]"
_ANY_MACHINE_HELP = (
    "Count runs from every machine in the history, not only those from the latest run's "
    "machine (same cores, CPU model and platform string)."
)

QUICK_BASELINE = {"rows": 20_000, "duration_s": 1.0, "rounds": 1}
QUICK_YCSB = {"records": 2_000, "duration_s": 1.0, "concurrency": 16}


# The names of integration/perf/workloads.py's WORKLOADS (a test keeps them in step): a
# name it lacks failed in the client processes, after the load, as a KeyError.
YCSB_WORKLOADS = ["A", "B", "C", "D", "E", "F"]
BASELINE_WORKLOADS = ["get", "put", "load", "scan"]


def _perf(module: str) -> ModuleType:
    """Import integration.perf.<module>, from the source tree this package was installed from."""
    root = Path(__file__).resolve().parents[1]
    if (root / "integration" / "perf").is_dir() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"integration.perf.{module}")
    except ModuleNotFoundError as err:
        raise click.ClickException(
            f"keyspan bench needs a source checkout with integration/perf ({err})"
        ) from None


def _finish(runs: list[dict[str, Any]], history: bool) -> None:
    figures, hist = _perf("figures"), _perf("history")
    for run in runs:
        click.echo(f"\n## {run['suite']}\n")
        click.echo(figures.table(run["figures"]))
        click.echo("\ncost: " + json.dumps(run.get("cost", {}), default=lambda x: round(x, 3)))
        if run.get("round_ratios"):
            click.echo("\nratio in each interleaved round (the spread of one run):")
            for name, ratios in run["round_ratios"].items():
                click.echo(f"  {name}: " + " ".join(f"{r:.2f}" for r in ratios))
        if "keyspan" in run["summaries"]:
            click.echo("\n" + figures.op_table(run["summaries"]["keyspan"]))
        if history:
            click.echo(f"history: {hist.save(hist.make_record(run))}")


@cli.group()
def bench() -> None:
    """The perf suite: keyspan beside raw apsw and a bare gRPC echo, as ratios, with a history."""


@bench.command()
@click.option("--quick", is_flag=True, help="Small sizes and short runs (about a minute).")
@click.option("--rows", type=_COUNT, default=200_000, show_default=True, help="Rows bulk-loaded and scanned.")
@click.option(
    "--duration-s", type=_SECONDS, default=8.0, show_default=True, help="Seconds per unary measurement."
)
@click.option("--processes", type=_COUNT, default=2, show_default=True, help="Client processes (c>1).")
@click.option(
    "--rounds", type=_COUNT, default=2, show_default=True, help="Echo/keyspan alternations per figure."
)
@click.option("--synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL", show_default=True)
@click.option(
    "--tmp-dir",
    default="",
    type=click.Path(file_okay=False),
    help="Where data dirs go, created if missing (default: the system temp dir).",
)
@click.option(
    "--history/--no-history", default=True, show_default=True, help="Append the run to the history."
)
def baseline(quick: bool, history: bool, **options: Any) -> None:
    """keyspan's Put/Get/BulkPut/Scan beside raw apsw and the echo server (issue 2's table)."""
    suite = _perf("suite")
    if quick:
        options.update(QUICK_BASELINE)
    _finish([suite.baseline(suite.BaselineConfig(**options), log=_log)], history)


@bench.command()
@click.option(
    "-w",
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice([*YCSB_WORKLOADS, *BASELINE_WORKLOADS], case_sensitive=False),
    default=["A", "B", "C", "F", "D", "E"],
    show_default=True,
    help="YCSB A-F, or load (BulkPut), scan (full Scan), get, put. Repeatable.",
)
@click.option("--quick", is_flag=True, help="Small sizes and short runs.")
@click.option("--records", type=_COUNT, default=100_000, show_default=True)
@click.option("--fields", type=_COUNT, default=10, show_default=True, help="Fields per record.")
@click.option("--field-bytes", type=_COUNT, default=100, show_default=True)
@click.option(
    "--value-kind",
    type=click.Choice(["json", "bytes"]),
    default="json",
    show_default=True,
    help="One JSON document (updates patch one field) or opaque bytes.",
)
@click.option(
    "--distribution",
    type=click.Choice(["", "zipfian", "uniform", "latest"]),
    default="",
    help="Key choice; default: the workload's (zipfian; latest for D).",
)
@click.option("--concurrency", type=_COUNT, default=32, show_default=True, help="Concurrent calls in all.")
@click.option(
    "--processes", type=_COUNT, default=2, show_default=True, help="Client processes on this machine."
)
@click.option("--duration-s", type=_SECONDS, default=10.0, show_default=True)
@click.option(
    "--operations",
    type=click.IntRange(min=0),
    default=0,
    help="Stop after this many operations (0: duration).",
)
@click.option("--synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL", show_default=True)
@click.option("--target-kind", type=click.Choice(["serve", "gateway", "cluster"]), default="serve")
@click.option(
    "--target-address",
    "target_addresses",
    multiple=True,
    help="Drive running servers instead of starting one (no cost figures). Repeatable.",
)
@click.option(
    "--tmp-dir",
    default="",
    type=click.Path(file_okay=False),
    help="Where data dirs go, created if missing (default: the system temp dir).",
)
@click.option("--history/--no-history", default=True, show_default=True)
def ycsb(workloads: tuple[str, ...], quick: bool, value_kind: str, history: bool, **options: Any) -> None:
    """YCSB core workloads against keyspan, each beside the echo server under the same mix."""
    suite = _perf("suite")
    if quick:
        options.update(QUICK_YCSB)
    cfg = suite.YcsbConfig(workloads=tuple(workloads), json=value_kind == "json", **options)
    _finish(suite.ycsb(cfg, log=_log), history)


@bench.command()
@click.option(
    "-w",
    "--workload",
    "workloads",
    multiple=True,
    type=click.Choice(YCSB_WORKLOADS, case_sensitive=False),
    default=("A", "C"),
    show_default=True,
    help="YCSB workloads to run (A-F).",
)
@click.option("--quick", is_flag=True, help="Small sizes and short runs.")
@click.option("--records", type=_COUNT, default=50_000, show_default=True)
@click.option("--concurrency", type=_COUNT, default=32, show_default=True, help="Concurrent calls in all.")
@click.option(
    "--processes", type=_COUNT, default=2, show_default=True, help="Client processes on this machine."
)
@click.option("--duration-s", type=_SECONDS, default=8.0, show_default=True)
@click.option("--history/--no-history", default=True, show_default=True)
def cluster(workloads: tuple[str, ...], quick: bool, history: bool, **options: Any) -> None:
    """YCSB on a real 3-node cluster (control, nodes, gateway on 127.0.0.1): thick clients,
    then the same mix through the gateway, with the gateway's overhead as a ratio."""
    suite = _perf("suite")
    if quick:
        options.update(records=5_000, duration_s=2.0)
    cfg = suite.YcsbConfig(workloads=tuple(workloads), **options)
    _finish(_perf("cluster_bench").cluster_suite(cfg, log=_log), history)


@bench.command()
@click.option("--quick", is_flag=True, help="Two rounds of 1 s phases (a smoke run, not a figure).")
@click.option("--rounds", type=_COUNT, default=8, show_default=True, help="Rounds, each setting once.")
@click.option("--seconds", type=_SECONDS, default=3.0, show_default=True, help="Each Put and Get phase.")
@click.option(
    "--slices",
    type=_COUNT,
    default=6,
    show_default=True,
    help="Turns the settings take within each phase (drift falls on all of them alike).",
)
@click.option(
    "--warmup-seconds",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Unmeasured load before each phase.",
)
@click.option("--concurrency", type=_COUNT, default=32, show_default=True, help="Concurrent callers.")
@click.option(
    "--keys", type=_COUNT, default=10_000, show_default=True, help="Distinct keys written and read."
)
@click.option("--synchronous", type=click.Choice(["FULL", "NORMAL"]), default="FULL", show_default=True)
@click.option("--history/--no-history", default=True, show_default=True)
def obs(quick: bool, **options: Any) -> None:
    """What metrics and tracing cost (issue 6): Put/Get throughput and server CPU per op with
    --metrics-address, and with tracing at 0.01 and 1.0, as paired ratios to the same load
    with them off; "off again" shows the noise floor. All settings' servers run at once and
    take turns slice by slice within each phase."""
    import argparse
    import asyncio

    overhead = _perf("obs_overhead")
    if quick:
        options.update(rounds=2, seconds=1.0, slices=2, warmup_seconds=0.5)
    asyncio.run(overhead.main(argparse.Namespace(**options)))


@bench.command()
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_file", type=click.Path(dir_okay=False))
@click.argument("worker", type=int)
def worker(spec_file: str, out_file: str, worker: int) -> None:
    """Coordinator mode: run one client process of SPEC_FILE, write its result to OUT_FILE.

    SPEC_FILE is a JSON RunSpec (addresses, workload, records, concurrency, processes,
    duration_s, start_at, ...). Start one worker per client process, each with its own
    WORKER index and the same start_at, then merge with `keyspan bench aggregate`.
    `concurrency` there is calls per worker process; a worker loads nothing, so run a
    spec with "workload": "load" first.
    """
    perf = _perf("worker")
    text = Path(spec_file).read_text()
    try:  # refused before the run: a bad spec, index or output path was a traceback, late
        spec = perf.RunSpec(**json.loads(text))
        if spec.workload not in _perf("workloads").WORKLOADS:
            raise ValueError(f"unknown workload {spec.workload!r}")
    except (ValueError, TypeError) as err:
        raise click.BadParameter(f"not a RunSpec: {err}", param_hint="SPEC_FILE") from None
    if not 0 <= worker < spec.processes:
        raise click.BadParameter(
            f"{worker} is not between 0 and processes - 1 ({spec.processes - 1})", param_hint="WORKER"
        )
    if not Path(out_file).resolve().parent.is_dir():
        raise click.BadParameter(f"{out_file}: its directory does not exist", param_hint="OUT_FILE")
    perf.worker_main(text, out_file, worker)


@bench.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the merged summary as JSON.")
def aggregate(files: tuple[str, ...], as_json: bool) -> None:
    """Merge worker result files: HdrHistograms added, throughput over the longest window."""
    try:
        summary = _perf("results").aggregate([Path(f) for f in files])
    except (ValueError, KeyError, TypeError) as err:  # json's errors are ValueErrors
        raise click.BadParameter(
            f"not worker result files ({type(err).__name__}: {err})", param_hint="FILES"
        ) from None
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    click.echo(
        f"{summary['workers']} workers, {summary['elapsed_s']:.2f} s, {summary['ops_per_s']:,.0f} ops/s"
    )
    click.echo(_perf("figures").op_table(summary))


@bench.command()
@click.option("--history-dir", type=click.Path(file_okay=False), default=None, help=_HISTORY_HELP)
@click.option(
    "--chart/--no-chart", default=True, show_default=True, help="Write ratios.png in the history dir."
)
@click.option("--strict", is_flag=True, help="Exit 1 when a regression is flagged.")
@click.option("--every-config", is_flag=True, help="Check every config's latest run, not each suite's last.")
@click.option("--any-machine", is_flag=True, help=_ANY_MACHINE_HELP)
def compare(
    history_dir: str | None, chart: bool, strict: bool, every_config: bool, any_machine: bool
) -> None:
    """The latest run of each workload against the median of its earlier comparable runs
    (by default, runs on the latest run's machine only)."""
    hist = _perf("history")
    directory = Path(history_dir) if history_dir else hist.HISTORY_DIR
    records = hist.load(directory)
    if not records:
        raise click.ClickException(f"no runs in {directory}")
    compared = records if any_machine else hist.on_latest_machine(records)
    _say_left_out(len(records) - len(compared))
    verdicts = hist.compare(compared, every_key=every_config)
    click.echo(hist.verdict_table(verdicts))
    if chart:
        click.echo(f"chart: {hist.chart(records, directory / 'ratios.png')}")
    if strict and any(v.regressed for v in verdicts):
        sys.exit(1)


@bench.command()
@click.option("--history-dir", type=click.Path(file_okay=False), default=None, help=_HISTORY_HELP)
@click.option("--last", type=_COUNT, default=12, show_default=True, help="How many of the latest runs count.")
@click.option("--any-machine", is_flag=True, help=_ANY_MACHINE_HELP)
def targets(history_dir: str | None, last: int, any_machine: bool) -> None:
    """How the latest runs fared against each target, with a verdict.

    Per suite, over its last runs with the config it ran with last (as `compare` does):
    how many runs met the target, their median and range, and a 95% confidence interval
    for the median that assumes nothing of the runs' spread (from the k-th smallest to
    the k-th largest run; 6 runs at least). Verdict: met when the whole interval meets
    the target, missed when none of it does, undecided when the target lies inside it.
    On a noisy machine one run says little. By default only runs on the latest run's
    machine count.
    """
    hist = _perf("history")
    directory = Path(history_dir) if history_dir else hist.HISTORY_DIR
    records = hist.load(directory)
    counted = records if any_machine else hist.on_latest_machine(records)
    _say_left_out(len(records) - len(counted))
    found = hist.targets(counted, last)
    if not found:
        raise click.ClickException(f"no runs with targets in {directory}")
    click.echo(hist.target_table(found))


def _say_left_out(runs: int) -> None:
    if runs:
        click.echo(f"{runs} runs from other machines left out (--any-machine counts them)", err=True)


def _log(message: str) -> None:
    click.echo(message, err=True)


@bench.command("profile")
@click.option(
    "-w",
    "--workload",
    type=click.Choice([*BASELINE_WORKLOADS, *YCSB_WORKLOADS], case_sensitive=False),
    default="get",
    show_default=True,
    help="get, put, load, scan or A-F.",
)
@click.option("--records", type=_COUNT, default=100_000, show_default=True)
@click.option("--duration-s", type=_SECONDS, default=8.0, show_default=True)
@click.option("--concurrency", type=_COUNT, default=64, show_default=True)
@click.option("--processes", type=_COUNT, default=2, show_default=True)
def profile_command(workload: str, **options: Any) -> None:
    """Profile the server under a workload with py-spy (GIL time) and print the hot functions."""
    click.echo(_perf("profile").profile(workload, **options))
