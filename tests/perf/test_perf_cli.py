"""`keyspan bench` refuses bad sizes before it starts anything."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from keyspan.services import cli_bench  # noqa: F401 - registers `keyspan bench`
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
