"""`keyspan bench obs --quick`: the overhead bench runs its real servers and reports.

Not a timed test: it checks that every setting is measured and that the run's figures
are real numbers (the bench is only run by hand and by `make bench` otherwise).
"""

from __future__ import annotations

import math
import subprocess

import pytest

from integration.processes import keyspan_command

SETTINGS = ("off again", "metrics", "metrics+trace@0.01", "metrics+trace@1.0")


@pytest.mark.quick
def test_bench_obs_quick_measures_every_setting_in_turns() -> None:
    out = subprocess.run(
        [*keyspan_command(), "bench", "obs", "--quick", "--no-history"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "in 2 turns" in out.stdout
    rows = {
        line[:20].strip(): line[20:].split()
        for line in out.stdout.splitlines()
        if line[:20].strip() in SETTINGS
    }
    assert set(rows) == set(SETTINGS), out.stdout
    for name, cells in rows.items():
        ratios = [float(c) for c in cells[::2]]  # "0.96 [0.83-1.08]": the median, then the range
        assert len(ratios) == 4 and all(math.isfinite(r) and r > 0 for r in ratios), (name, cells)
    spans = int(out.stdout.split("spans received: ")[1].split()[0])
    assert spans > 0  # tracing at 1.0 really exported to the in-process receiver
