"""The history of runs: one JSON file per run, the regression check, the ratio chart.

A run is comparable to another when its `key` matches: the same suite (workload) and the
same config, minus what does not change the measurement's meaning (the tmp dir; the
loopback addresses of the cluster the cluster suite starts for itself). `compare`
takes the latest run of each key against the median of the earlier ones; a ratio
regresses when it moved the wrong way by more than the noise the history itself shows:
max(3 x MAD / median, 10%). With fewer than MIN_EARLIER_RUNS earlier runs there is no
spread to go by, and no verdict.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HISTORY_DIR = Path(__file__).resolve().parent / "history"
MIN_NOISE = 0.10
MIN_EARLIER_RUNS = 3  # fewer cannot show a spread: no verdict then
MAD_FACTOR = 3.0
# `bench targets`: how sure the verdict on a target must be (see median_interval).
MEDIAN_CONFIDENCE = 0.95
_IGNORED_CONFIG = {"tmp_dir"}
# Suites that always start their own servers on ports picked per run: the addresses they
# record say nothing about what was measured. (A ycsb run against --target-address keeps
# its addresses in the key: other servers, other figures.)
_OWN_SERVERS_PREFIX = "cluster-"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=HISTORY_DIR.parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "platform": platform.platform()}


def versions() -> dict[str, str]:
    import apsw
    import grpc

    return {
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
    }


def comparable_key(suite: str, config: dict[str, Any]) -> str:
    ignored = _IGNORED_CONFIG | ({"target_addresses"} if suite.startswith(_OWN_SERVERS_PREFIX) else set())
    kept = {k: v for k, v in sorted(config.items()) if k not in ignored}
    digest = hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{suite}:{digest}"


def make_record(run: dict[str, Any]) -> dict[str, Any]:
    """The history record of one run: provenance, config, every figure and ratio."""
    figures = [f.to_json() for f in run["figures"]]
    return {
        "schema": 1,
        "suite": run["suite"],
        "key": comparable_key(run["suite"], run["config"]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": _git("rev-parse", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "versions": versions(),
        "config": run["config"],
        "figures": figures,
        "ratios": {f["name"]: f["ratio"] for f in figures if f["ratio"] is not None},
        "higher_is_better": {f["name"]: f["higher_is_better"] for f in figures if f["ratio"] is not None},
        "cost": run.get("cost", {}),
        "summaries": run.get("summaries", {}),
        # keyspan/limit round by round, for the interleaved figures: the spread within the run
        "round_ratios": run.get("round_ratios", {}),
    }


def save(record: dict[str, Any], directory: Path = HISTORY_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stamp = record["date"].replace(":", "").replace("-", "")
    path = directory / f"{stamp}-{record['suite']}-{(record['commit'] or 'nogit')[:8]}.json"
    n = 1
    while path.exists():
        path = path.with_name(f"{path.stem}-{n}.json")
        n += 1
    path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return path


def load(directory: Path = HISTORY_DIR) -> list[dict[str, Any]]:
    """Every record, oldest first, each keyed by today's rule (comparable_key), so older
    records written under a stricter rule still meet their peers."""
    records = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    for r in records:
        r["key"] = comparable_key(r["suite"], r["config"])
    return sorted(records, key=lambda r: r["date"])


def on_latest_machine(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs made on the same machine as the latest run: same cores, CPU model and
    platform string (which names the kernel build, so a new VM host counts as another
    machine). Ratios are measured against limits of the same run, but how a ratio
    spreads depends on the machine: the same code gave Put c=16 0.81 of the echo on
    one 2-core VM and 0.59 on another, whose echo was twice as fast."""
    if not records:
        return []
    latest = records[-1].get("machine")
    return [r for r in records if r.get("machine") == latest]


@dataclass(frozen=True)
class Verdict:
    key: str
    suite: str
    ratio: str
    latest: float
    median: float | None
    noise: float | None
    runs: int
    regressed: bool

    @property
    def change(self) -> float | None:
        return None if not self.median else self.latest / self.median - 1


def noise_threshold(values: list[float]) -> float:
    """max(3 x MAD / median, 10%): the relative move the runs' own spread explains."""
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    return max(MAD_FACTOR * mad / med if med else 0.0, MIN_NOISE)


def compare(records: list[dict[str, Any]], *, every_key: bool = False) -> list[Verdict]:
    """The latest run of each suite against the median of its earlier comparable runs.

    With every_key, the latest run of every comparable key (config) is checked, not only
    the config each suite ran with last.
    """
    by_key: dict[str, list[dict[str, Any]]] = {}
    latest_key: dict[str, str] = {}
    for r in records:
        by_key.setdefault(r["key"], []).append(r)
        latest_key[r["suite"]] = r["key"]
    keys = list(by_key) if every_key else [k for k in by_key if k in set(latest_key.values())]
    verdicts = []
    for key in keys:
        runs = by_key[key]
        latest, earlier = runs[-1], runs[:-1]
        for name, value in latest["ratios"].items():
            previous = [r["ratios"][name] for r in earlier if r["ratios"].get(name) is not None]
            if len(previous) < MIN_EARLIER_RUNS:
                med = statistics.median(previous) if previous else None
                verdicts.append(Verdict(key, latest["suite"], name, value, med, None, len(runs), False))
                continue
            med, noise = statistics.median(previous), noise_threshold(previous)
            higher = latest.get("higher_is_better", {}).get(name, True)
            regressed = value < med * (1 - noise) if higher else value > med * (1 + noise)
            verdicts.append(Verdict(key, latest["suite"], name, value, med, noise, len(runs), regressed))
    return verdicts


@dataclass(frozen=True)
class TargetRecord:
    """How one targeted figure fared over a suite's last runs of one config."""

    suite: str
    figure: str
    target: float
    higher_is_better: bool
    ratios: tuple[float, ...]  # oldest first

    def meets(self, ratio: float) -> bool:
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    @property
    def met(self) -> int:
        return sum(self.meets(r) for r in self.ratios)

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    @property
    def interval(self) -> tuple[float, float, float] | None:
        return median_interval(self.ratios)

    @property
    def verdict(self) -> str:
        """met / missed: the median's whole confidence interval is on that side of the
        target; undecided: the interval holds the target; or too few runs to tell."""
        interval = self.interval
        if interval is None:
            return "too few runs"
        low, high, _ = interval
        worst, best = (low, high) if self.higher_is_better else (high, low)
        if self.meets(worst):
            return "met"
        return "undecided" if self.meets(best) else "missed"


def median_interval(
    values: tuple[float, ...] | list[float], confidence: float = MEDIAN_CONFIDENCE
) -> tuple[float, float, float] | None:
    """A confidence interval for the median of what the runs are drawn from, assuming
    nothing of its shape: (low, high, coverage).

    How many of n runs fall below the true median is Binomial(n, 1/2), so the interval
    from the k-th smallest to the k-th largest run holds it with probability
    1 - 2 P(B <= k - 1). This takes the narrowest such interval whose coverage is still
    at least `confidence`; None when even the full range falls short (at 95%: fewer
    than 6 runs).
    """
    ordered, n = sorted(values), len(values)
    found = None
    below = 0  # P(B <= k - 1) * 2**n
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1)
        coverage = 1 - 2 * below / 2**n
        if coverage < confidence:
            break
        found = (ordered[k - 1], ordered[n - k], coverage)
    return found


def targets(records: list[dict[str, Any]], last: int = 12) -> list[TargetRecord]:
    """Each targeted figure over the last `last` runs of its suite's latest config.

    One run of this machine says little (the same code swings by 10-25%); how many runs
    met a target, and where their median sits, says more.
    """
    latest_key = {r["suite"]: r["key"] for r in records}
    found: list[TargetRecord] = []
    for suite, key in latest_key.items():
        runs = [r for r in records if r["key"] == key][-last:]
        goals: dict[str, tuple[float, bool]] = {}
        for r in runs:
            for f in r.get("figures", []):
                if f.get("target") is not None:
                    goals[f["name"]] = (f["target"], f.get("higher_is_better", True))
        for name, (target, higher) in goals.items():
            ratios = tuple(r["ratios"][name] for r in runs if r["ratios"].get(name) is not None)
            found.append(TargetRecord(suite, name, target, higher, ratios))
    return found


def target_table(found: list[TargetRecord]) -> str:
    level = f"{MEDIAN_CONFIDENCE:.0%}"
    lines = [
        f"| suite | figure | target | runs | met in | median | range | median's {level} interval | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in found:
        sign = ">=" if t.higher_is_better else "<="
        interval = "-" if t.interval is None else f"{t.interval[0]:.2f}-{t.interval[1]:.2f}"
        lines.append(
            f"| {t.suite} | {t.figure} | {sign} {t.target:g} | {len(t.ratios)} | {t.met} | {t.median:.2f} "
            f"| {min(t.ratios):.2f}-{max(t.ratios):.2f} | {interval} | {t.verdict} |"
        )
    return "\n".join(lines)


def verdict_table(verdicts: list[Verdict]) -> str:
    lines = [
        "| suite | ratio | latest | median of earlier | change | noise band | runs | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for v in verdicts:
        med = "-" if v.median is None else f"{v.median:.3f}"
        change = "-" if v.change is None else f"{v.change:+.1%}"
        noise = "-" if v.noise is None else f"±{v.noise:.0%}"
        if v.regressed:
            verdict = "REGRESSION"
        elif v.noise is None:
            verdict = f"too few runs ({v.runs - 1} earlier, {MIN_EARLIER_RUNS} needed)"
        else:
            verdict = "ok"
        lines.append(
            f"| {v.suite} | {v.ratio} | {v.latest:.3f} | {med} | {change} | {noise} | {v.runs} | {verdict} |"
        )
    return "\n".join(lines)


def chart(records: list[dict[str, Any]], path: Path) -> Path:
    """A PNG of the ratios over the runs: one row per suite (its latest config's runs),
    throughput ratios on the left (higher is better), p99 and CPU ratios on the right
    (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest_key = {r["suite"]: r["key"] for r in records}
    suites = sorted(latest_key, key=lambda name: (name != "baseline", name))
    fig, axes = plt.subplots(len(suites), 2, figsize=(15, 2.8 * len(suites)), squeeze=False)
    for row, suite in zip(axes, suites, strict=True):
        runs = [r for r in records if r["key"] == latest_key[suite]]
        labels = [r["date"][5:16].replace("T", " ") + "\n" + (r["commit"] or "")[:7] for r in runs]
        for ax, higher in zip(row, (True, False), strict=True):
            names = sorted(
                {n for r in runs for n in r["ratios"] if r.get("higher_is_better", {}).get(n, True) == higher}
            )
            ax.set_prop_cycle(color=plt.cm.tab10.colors, marker=list("osD^v<>ph*"))
            for name in names:
                xs = [i for i, r in enumerate(runs) if r["ratios"].get(name) is not None]
                ax.plot(xs, [runs[i]["ratios"][name] for i in xs], label=name, linewidth=1.2)
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
            kind = "throughput / limit (higher is better)" if higher else "p99 or CPU ratio (lower is better)"
            ax.set_title(f"{suite}: {kind}", fontsize=9)
            # at most 7 labels, the latest run always among them, so they do not overlap
            step = max(1, math.ceil(len(runs) / 7))
            ticks = list(range(len(runs) - 1, -1, -step))[::-1]
            ax.set_xticks(ticks, [labels[i] for i in ticks], fontsize=7)
            ax.set_xlim(-0.5, max(1, len(runs)) - 0.5)
            ax.grid(alpha=0.3)
            if names:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
