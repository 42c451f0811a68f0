"""`keyspan bench`: bad sizes refused before anything starts; which runs `targets` and `compare` count."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from integration.perf import history
from integration.perf.figures import Figure
from keyspan.services import cli_bench
from keyspan.services.cli import cli


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["baseline", "--rows", "-5"], "--rows"),
        (["baseline", "--rounds", "0"], "--rounds"),
        (["baseline", "--duration-s", "0"], "--duration-s"),
        (["ycsb", "--concurrency", "0"], "--concurrency"),
        (["ycsb", "--operations", "-1"], "--operations"),
        (["cluster", "--processes", "0"], "--processes"),
        (["obs", "--seconds", "-1"], "--seconds"),
        (["obs", "--warmup-seconds", "-1"], "--warmup-seconds"),
        (["obs", "--slices", "0"], "--slices"),
    ],
)
def test_a_bad_size_is_a_usage_error_naming_the_option(args: list[str], option: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "Traceback" not in result.output


def test_targets_reads_a_history_dir_and_says_when_it_has_no_targets(tmp_path) -> None:
    result = CliRunner().invoke(cli, ["bench", "targets", "--history-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert f"no runs with targets in {tmp_path}" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["bench", "targets", "--last", "0"])
    assert result.exit_code == 2 and "Invalid value for '--last'" in result.output


def test_targets_and_compare_count_the_latest_machines_runs_unless_told(tmp_path) -> None:
    for i in range(12):
        record = history.make_record({
            "suite": "baseline",
            "config": {"rows": 20},
            "figures": [Figure("Put c=64 RPC/s", 900.0 if i < 6 else 700.0, "RPC/s", "echo", 1000.0, 0.8)],
        })  # fmt: skip
        record["date"] = f"2026-01-01T00:{i:02d}:00Z"
        record["machine"] = {"cores": 2, "cpu_model": "EPYC", "platform": "host-a" if i < 6 else "host-b"}
        (tmp_path / f"r{i:02d}.json").write_text(json.dumps(record))
    base = ["bench", "targets", "--history-dir", str(tmp_path), "--last", "20"]
    latest = CliRunner().invoke(cli, base)
    assert "| baseline | Put c=64 RPC/s | >= 0.8 | 6 | 0 | 0.70 |" in latest.output, latest.output
    every = CliRunner().invoke(cli, [*base, "--any-machine"])
    assert "| baseline | Put c=64 RPC/s | >= 0.8 | 12 | 6 | 0.80 |" in every.output, every.output
    compared = CliRunner().invoke(cli, ["bench", "compare", "--history-dir", str(tmp_path), "--no-chart"])
    assert "| baseline | Put c=64 RPC/s | 0.700 | 0.700 | +0.0% |" in compared.output, compared.output


@pytest.mark.parametrize("command", [["ycsb", "-w", "Z"], ["cluster", "-w", "get"], ["profile", "-w", "Q"]])
def test_an_unknown_workload_is_a_usage_error_before_anything_runs(command: list[str]) -> None:
    # It loaded 100,000 records (or started a cluster) first, then failed in the client
    # processes with a KeyError, exit 1.
    result = CliRunner().invoke(
        cli, ["bench", *command, "--no-history"] if command[0] != "profile" else ["bench", *command]
    )
    assert result.exit_code == 2 and "Invalid value for '-w'" in result.output


def test_the_workload_choices_are_the_suites_workloads() -> None:
    from integration.perf.workloads import WORKLOADS

    assert set(cli_bench.YCSB_WORKLOADS + cli_bench.BASELINE_WORKLOADS) == set(WORKLOADS)
    ycsb = cli_bench.bench.commands["ycsb"]
    workload = next(p for p in ycsb.params if p.name == "workloads")
    assert workload.type_cast_value(click.Context(ycsb), ("a", "get")) == (
        "A",
        "get",
    )  # a lowercase letter works


@pytest.mark.parametrize(
    ("spec", "out", "worker", "said"),
    [
        ("{not json", "o.json", "0", "not a RunSpec"),
        ('{"addresses": ["127.0.0.1:1"], "bogus": 1}', "o.json", "0", "unexpected keyword argument 'bogus'"),
        ('{"workload": "A"}', "o.json", "0", "not a RunSpec"),
        ('{"addresses": ["127.0.0.1:1"], "workload": "Q"}', "o.json", "0", "unknown workload 'Q'"),
        (
            '{"addresses": ["127.0.0.1:1"], "processes": 2}',
            "o.json",
            "2",
            "not between 0 and processes - 1 (1)",
        ),
        ('{"addresses": ["127.0.0.1:1"]}', "missing/o.json", "0", "its directory does not exist"),
    ],
)
def test_a_worker_refuses_a_bad_spec_index_or_output_before_it_runs(
    tmp_path, spec: str, out: str, worker: str, said: str
) -> None:
    # Each was a traceback; a bad output path lost the whole run at its end.
    (tmp_path / "spec.json").write_text(spec)
    args = ["bench", "worker", str(tmp_path / "spec.json"), str(tmp_path / out), worker]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and said in result.output, result.output


def test_aggregate_refuses_files_that_are_not_worker_results(tmp_path) -> None:
    (tmp_path / "spec.json").write_text('{"addresses": ["127.0.0.1:1"]}')
    result = CliRunner().invoke(cli, ["bench", "aggregate", str(tmp_path / "spec.json")])
    assert result.exit_code == 2 and "not worker result files" in result.output
