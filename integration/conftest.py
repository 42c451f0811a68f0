"""Real processes on loopback: `keyspan serve` for single-node workflows, and one cluster
(control, nodes 1-3, gateway) per test module for the cluster workflows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.cluster import Cluster
from integration.processes import free_port, wait_serving

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
FULL = os.environ.get("KEYSPAN_INTEGRATION_FULL") == "1"


class ServeProcess:
    """A real `keyspan serve` process on a free 127.0.0.1 port."""

    def __init__(self, data: Path, *extra: str) -> None:
        self.data, self.extra = data, extra
        self.address = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data.parent / f"{data.name}.log"

    def start(self) -> ServeProcess:
        cmd = [
            sys.executable,
            "-m",
            "keyspan.services",
            "serve",
            "--address",
            self.address,
            "--data",
            str(self.data),
            "--log-format",
            "json",
            *self.extra,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        try:
            wait_serving(self.address, proc=self.proc)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}; its log ends with:\n{self.log.read_text()[-2000:]}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(tmp_path / "data")
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            os.killpg(process.proc.pid, signal.SIGKILL)
            process.proc.wait()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A workload thread that dies must fail its test, not thin out the load silently."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning"))
