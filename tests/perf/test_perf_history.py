import json
import math
import random

import pytest

from integration.perf import history
from integration.perf.figures import Figure
from integration.perf.suite import Interleaved, round_order


def _record(i: int, ratios: dict[str, float], key: str = "ycsb-A:x", lower: tuple[str, ...] = ()) -> dict:
    return {
        "suite": key.split(":")[0],
        "key": key,
        "date": f"2026-11-26T10:{i:02d}:00Z",
        "commit": f"{i:040x}",
        "ratios": ratios,
        "higher_is_better": {n: n not in lower for n in ratios},
    }


def _noisy_history(rng: random.Random, n: int = 8, centre: float = 0.8, spread: float = 0.03) -> list[dict]:
    return [_record(i, {"A ops/s": centre * (1 + rng.uniform(-spread, spread))}) for i in range(n)]


def test_a_30_percent_drop_is_flagged() -> None:
    runs = _noisy_history(random.Random(1))
    runs.append(_record(9, {"A ops/s": 0.8 * 0.7}))
    (verdict,) = history.compare(runs)
    assert verdict.regressed
    assert verdict.change == pytest.approx(-0.3, abs=0.05)


def test_a_move_within_the_measured_spread_is_not_flagged() -> None:
    rng = random.Random(2)
    runs = _noisy_history(rng, spread=0.08)
    runs.append(_record(9, {"A ops/s": 0.8 * 0.93}))
    (verdict,) = history.compare(runs)
    assert not verdict.regressed


def test_the_noise_band_widens_with_a_noisy_history() -> None:
    quiet = [0.80, 0.81, 0.79, 0.80, 0.80]
    loud = [0.50, 0.80, 1.10, 0.70, 0.95]
    assert history.noise_threshold(quiet) == pytest.approx(history.MIN_NOISE)
    assert history.noise_threshold(loud) > 0.3
    runs = [_record(i, {"r": v}) for i, v in enumerate(loud)] + [_record(9, {"r": 0.8 * 0.7})]
    assert not history.compare(runs)[0].regressed


def test_a_latency_ratio_regresses_upwards() -> None:
    runs = [_record(i, {"p99": 1.2}, lower=("p99",)) for i in range(4)]
    runs.append(_record(9, {"p99": 1.7}, lower=("p99",)))
    assert history.compare(runs)[0].regressed
    runs[-1] = _record(9, {"p99": 0.6}, lower=("p99",))
    assert not history.compare(runs)[0].regressed


def test_only_comparable_runs_are_compared() -> None:
    runs = [_record(i, {"r": 1.0}, key="ycsb-A:small") for i in range(3)]
    runs.append(_record(8, {"r": 0.3}, key="ycsb-A:big"))
    verdicts = {v.key: v for v in history.compare(runs, every_key=True)}
    assert verdicts["ycsb-A:big"].median is None
    assert not verdicts["ycsb-A:big"].regressed


def test_the_history_record_has_provenance_config_and_every_ratio(tmp_path) -> None:
    run = {
        "suite": "baseline",
        "config": {"rows": 10, "tmp_dir": "/tmp/x"},
        "figures": [
            Figure("Get c=64 RPC/s", 900.0, "RPC/s", "echo c=64", 1000.0, 0.9),
            Figure("Get c=1 p99", 1.2, "ms", "echo c=1 p99", 1.0, 1.5, higher_is_better=False),
            Figure("raw apsw point reads/s", 5e4, "reads/s"),
        ],
        "cost": {"cpu_s_per_m_ops": 12.5},
        "round_ratios": {"Get c=64 RPC/s": [0.85, 0.95]},
    }
    record = history.make_record(run)
    for field in ("commit", "date", "machine", "versions", "config", "figures", "ratios", "key"):
        assert field in record
    assert set(record["versions"]) >= {"python", "grpcio", "sqlite"}
    assert record["machine"]["cores"] >= 1
    assert record["ratios"] == {"Get c=64 RPC/s": pytest.approx(0.9), "Get c=1 p99": pytest.approx(1.2)}
    assert record["figures"][0]["met"] is True and record["figures"][1]["met"] is True
    assert record["key"] == history.comparable_key("baseline", {"rows": 10, "tmp_dir": "/elsewhere"})
    assert record["round_ratios"] == {"Get c=64 RPC/s": [0.85, 0.95]}
    path = history.save(record, tmp_path)
    assert history.load(tmp_path) == [json.loads(path.read_text())]


def test_the_chart_is_a_png(tmp_path) -> None:
    runs = _noisy_history(random.Random(3), n=4)
    path = history.chart(runs, tmp_path / "ratios.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_checks_the_config_each_suite_ran_last() -> None:
    runs = [_record(i, {"r": 1.0}, key="ycsb-A:old") for i in range(3)]
    runs += [_record(5 + i, {"r": 1.0}, key="ycsb-A:new") for i in range(3)]
    runs.append(_record(9, {"r": 0.5}, key="ycsb-A:new"))
    (verdict,) = history.compare(runs)
    assert verdict.key == "ycsb-A:new" and verdict.regressed
    assert {v.key for v in history.compare(runs, every_key=True)} == {"ycsb-A:old", "ycsb-A:new"}


def test_too_few_earlier_runs_give_no_verdict() -> None:
    runs = [_record(0, {"r": 1.0}), _record(1, {"r": 1.0}), _record(2, {"r": 0.2})]
    (verdict,) = history.compare(runs)
    assert not verdict.regressed and verdict.noise is None and verdict.median == 1.0
    assert "too few runs" in history.verdict_table([verdict])


def test_each_round_of_an_interleaved_figure_gets_its_own_ratio() -> None:
    pair = Interleaved({}, {}, {"keyspan": [900.0, 700.0, 0.0], "echo": [1000.0, 1000.0, 0.0]})
    ratios = pair.round_ratios("keyspan", "echo")
    assert ratios[:2] == [0.9, 0.7] and math.isnan(ratios[2])  # a round with no echo calls


def test_interleaved_rounds_alternate_who_runs_first() -> None:
    orders = [round_order(["echo", "keyspan"], r) for r in range(4)]
    assert orders == [["echo", "keyspan"], ["keyspan", "echo"], ["echo", "keyspan"], ["keyspan", "echo"]]


def test_cluster_runs_compare_across_the_ports_their_own_cluster_got(tmp_path) -> None:
    config = {"records": 50, "target_kind": "cluster", "tmp_dir": ""}
    for i, port in enumerate((41001, 52002, 33003, 44004)):
        run = {
            "suite": "cluster-thick-A",
            "config": {**config, "target_addresses": [f"127.0.0.1:{port}"]},
            "figures": [Figure("A ops/s", 1000.0 - 300 * (i == 3), "ops/s", "echo", 2000.0)],
        }
        record = history.make_record(run)
        # records written before the rule kept the port in their key: load() re-keys them
        record["key"] = f"cluster-thick-A:old{port}"
        record["date"] = f"2026-01-0{i + 1}T00:00:00Z"
        (tmp_path / f"r{i}.json").write_text(json.dumps(record))
    verdicts = history.compare(history.load(tmp_path))
    assert [(v.runs, v.regressed) for v in verdicts] == [(4, True)]


def test_a_run_against_other_servers_is_not_compared_with_ours() -> None:
    ours = history.comparable_key("ycsb-A", {"target_addresses": []})
    theirs = history.comparable_key("ycsb-A", {"target_addresses": ["10.0.0.5:7420"]})
    assert ours != theirs


def _targeted_runs(tmp_path, puts: list[float], p99s: list[float], config: dict, start: int = 0) -> None:
    for i, (put, p99) in enumerate(zip(puts, p99s, strict=True)):
        record = history.make_record({
            "suite": "baseline",
            "config": config,
            "figures": [
                Figure("Put c=64 RPC/s", put * 1000, "RPC/s", "echo c=64", 1000.0, 0.8),
                Figure("Get c=1 p99", p99, "ms", "echo c=1 p99", 1.0, 1.5, higher_is_better=False),
                Figure("Get c=1 RPC/s", 900.0, "RPC/s", "echo c=1", 1000.0),
            ],
        })  # fmt: skip
        record["date"] = f"2026-01-01T00:{start + i:02d}:00Z"
        (tmp_path / f"r{start + i}.json").write_text(json.dumps(record))


def test_targets_count_the_latest_runs_that_met_each_target(tmp_path) -> None:
    _targeted_runs(tmp_path, [0.99, 0.99], [0.5, 0.5], {"rows": 10})  # another config: not counted
    _targeted_runs(tmp_path, [0.99, 0.84, 0.72, 0.60, 0.81], [2.0, 1.2, 1.6, 1.0, 1.4], {"rows": 20}, start=2)
    found = {t.figure: t for t in history.targets(history.load(tmp_path), last=4)}
    assert set(found) == {"Put c=64 RPC/s", "Get c=1 p99"}  # figures without a target are left out
    put, p99 = found["Put c=64 RPC/s"], found["Get c=1 p99"]
    assert put.ratios == pytest.approx((0.84, 0.72, 0.60, 0.81))
    assert (put.met, put.median, put.meets(put.median)) == (2, pytest.approx(0.765), False)
    assert (p99.met, p99.median, p99.meets(p99.median)) == (3, pytest.approx(1.3), True)
    table = history.target_table([put, p99])
    # four runs cannot pin a median down at 95%
    assert "| baseline | Put c=64 RPC/s | >= 0.8 | 4 | 2 | 0.77 | 0.60-0.84 | - | too few runs |" in table
    assert "| baseline | Get c=1 p99 | <= 1.5 | 4 | 3 | 1.30 | 1.00-1.60 | - | too few runs |" in table


def test_the_median_interval_is_the_order_statistics_binomial_interval() -> None:
    assert history.median_interval([0.5, 0.6, 0.7, 0.8, 0.9]) is None  # full range: 1 - 2/32 < 95%
    low, high, coverage = history.median_interval([0.9, 0.5, 0.7, 0.6, 0.8, 1.0])
    assert (low, high, coverage) == (0.5, 1.0, pytest.approx(1 - 2 / 64))
    # 11 runs: 2nd smallest to 2nd largest (1 - 2 * 12/2048); the 3rd would cover only 93.5%
    low, high, coverage = history.median_interval([i / 10 for i in range(11)])
    assert (low, high, coverage) == (0.1, 0.9, pytest.approx(1 - 24 / 2048))


@pytest.mark.parametrize(
    ("ratios", "higher_is_better", "verdict"),
    [
        ((0.82, 0.85, 0.81, 0.90, 0.83, 0.88), True, "met"),
        ((0.62, 0.75, 0.71, 0.79, 0.73, 0.70), True, "missed"),
        ((0.75, 0.85, 0.81, 0.90, 0.78, 0.88), True, "undecided"),
        ((1.05, 1.08, 1.02, 1.09, 1.06, 1.04), False, "met"),  # a p99 ratio: lower is better
        ((1.05, 1.12, 1.02, 1.09, 1.06, 1.04), False, "undecided"),
        ((0.82, 0.85, 0.81, 0.90, 0.83), True, "too few runs"),
    ],
)
def test_a_target_is_met_or_missed_only_when_the_median_interval_says_so(
    ratios: tuple[float, ...], higher_is_better: bool, verdict: str
) -> None:
    target = 0.8 if higher_is_better else 1.1
    found = history.TargetRecord("baseline", "figure", target, higher_is_better, ratios)
    assert found.verdict == verdict


def test_only_runs_on_the_latest_runs_machine_count_by_default(tmp_path) -> None:
    _targeted_runs(tmp_path, [0.9] * 6, [1.0] * 6, {"rows": 20})
    _targeted_runs(tmp_path, [0.7] * 6, [1.0] * 6, {"rows": 20}, start=6)
    for path in sorted(tmp_path.glob("r*.json"), key=lambda p: int(p.stem[1:]))[6:]:
        record = json.loads(path.read_text())
        record["machine"] = {**record["machine"], "platform": "another VM host"}
        path.write_text(json.dumps(record))
    records = history.load(tmp_path)

    def put_ratios(runs: list[dict]) -> tuple[float, ...]:
        return next(t.ratios for t in history.targets(runs, last=20) if t.figure.startswith("Put"))

    assert put_ratios(history.on_latest_machine(records)) == pytest.approx((0.7,) * 6)
    assert len(put_ratios(records)) == 12
    assert history.on_latest_machine([]) == []
