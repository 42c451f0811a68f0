import json

import grpc
import pytest

from integration.perf.results import aggregate
from integration.perf.worker import Recorder, new_histogram


def _worker_file(tmp_path, index: int, latencies_us: list[int], errors: int, elapsed_s: float):
    rec = Recorder()
    hist = new_histogram()
    for us in latencies_us:
        hist.record_value(us)
    rec.hists["read"] = hist
    for _ in range(errors):
        rec.error("read", grpc.StatusCode.UNAVAILABLE)
    rec.error("update", grpc.StatusCode.ABORTED)
    path = tmp_path / f"worker-{index}.json"
    path.write_text(json.dumps({"worker": index, "elapsed_s": elapsed_s, "rows": 0, "ops": rec.to_json()}))
    return path


def test_aggregate_adds_the_workers_histograms(tmp_path) -> None:
    fast = _worker_file(tmp_path, 0, [100] * 900, errors=2, elapsed_s=9.5)
    slow = _worker_file(tmp_path, 1, [10_000] * 100, errors=1, elapsed_s=10.0)
    summary = aggregate([fast, slow])
    read = summary["ops"]["read"]
    assert read["count"] == 1000
    assert read["per_s"] == pytest.approx(100.0)  # over the longest window
    assert read["p50_ms"] == pytest.approx(0.1, rel=0.01)
    assert read["p90_ms"] == pytest.approx(0.1, rel=0.01)
    assert read["p99_ms"] == pytest.approx(10.0, rel=0.01)
    assert read["max_ms"] == pytest.approx(10.0, rel=0.01)
    assert read["errors"] == {"UNAVAILABLE": 3}
    assert summary["errors"] == {"UNAVAILABLE": 3, "ABORTED": 2}
    assert summary["ops"]["update"]["count"] == 0


def test_aggregate_of_one_file_is_that_worker(tmp_path) -> None:
    only = _worker_file(tmp_path, 0, [250, 500, 1000], errors=0, elapsed_s=1.0)
    summary = aggregate([only])
    assert summary["ops"]["read"]["count"] == 3
    assert summary["ops"]["read"]["p50_ms"] == pytest.approx(0.5, rel=0.01)
