"""A client process's share of --operations (integration/perf/worker.py)."""

from __future__ import annotations

import asyncio
import time

import pytest

from integration.perf.worker import Recorder, RunSpec, _ops


class _Stub:
    def __init__(self, calls: list[bytes]) -> None:
        self.calls = calls

    async def Get(self, request: object) -> None:
        self.calls.append(request.key)  # type: ignore[attr-defined]
        await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("operations", "processes", "concurrency"), [(3, 1, 4), (10, 1, 4), (100, 2, 32), (7, 3, 2)]
)
def test_every_operation_asked_for_is_run_once_over_the_processes(
    operations: int, processes: int, concurrency: int
) -> None:
    # With fewer operations than calls in all, the run was timed instead (3 asked for,
    # 139,823 run); otherwise the share was rounded down (10 asked for, 8 run).
    calls: list[bytes] = []
    spec = RunSpec(
        addresses=["fake"], workload="get", records=100, processes=processes, concurrency=concurrency,
        operations=operations, duration_s=30, start_at=time.time(),
    )  # fmt: skip
    started = time.monotonic()
    for worker in range(processes):
        asyncio.run(_ops(spec, worker, [lambda key: _Stub(calls)], Recorder()))
    warmups = processes  # one read each before the clock starts
    assert len(calls) - warmups == operations and time.monotonic() - started < 10
