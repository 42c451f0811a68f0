"""Figures beside their limits, and the table the bench prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Figure:
    """One measured figure, optionally with the limit measured in the same run.

    ratio = value / limit. `higher_is_better` says which way a ratio regresses; `target`,
    when set, is the ratio the issue asks for (a floor, or a ceiling when lower is better).
    """

    name: str
    value: float | None
    unit: str
    limit_name: str = ""
    limit: float | None = None
    target: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.limit:
            return None
        return self.value / self.limit

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if unit == "ms" or abs(x) < 10:
        return f"{x:.3g}" if abs(x) < 10 else f"{x:,.1f}"
    return f"{x:,.0f}"


def table(figures: list[Figure]) -> str:
    """A Markdown table: metric, keyspan, limit, ratio, target, met."""
    lines = [
        "| metric | keyspan | limit | ratio | target | met |",
        "| --- | ---: | --- | ---: | ---: | :---: |",
    ]
    for f in figures:
        limit = f"{_num(f.limit, f.unit)} ({f.limit_name})" if f.limit_name else "-"
        ratio = "-" if f.ratio is None else f"{f.ratio:.2f}"
        if f.target is None:
            target, met = "-", "-"
        else:
            target = (">= " if f.higher_is_better else "<= ") + f"{f.target:g}"
            met = "yes" if f.met else "no"
        lines.append(
            f"| {f.name} | {_num(f.value, f.unit)} {f.unit} | {limit} | {ratio} | {target} | {met} |"
        )
    return "\n".join(lines)


def op_table(summary: dict[str, Any]) -> str:
    """Per op type: count, rate, HdrHistogram percentiles in ms, errors by status code."""
    lines = [
        "| op | count | per s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for op, o in summary["ops"].items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(o["errors"].items())) or "-"
        cells = [_num(o[k], "ms") for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")]
        lines.append(f"| {op} | {o['count']:,} | {o['per_s']:,.0f} | {' | '.join(cells)} | {errors} |")
    return "\n".join(lines)
