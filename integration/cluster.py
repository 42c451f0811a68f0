"""A real keyspan cluster on loopback: control, nodes 1..N and a gateway as subprocesses.

    with Cluster(nodes=3) as cluster:
        cluster.node(1).kill()        # SIGKILL
        cluster.node(1).start()       # same id, ports and data dir
        cluster.restart_control()
        print(cluster.admin("nodes"))

Every process gets free 127.0.0.1 ports, a dir under one temp dir, its own process group
and a log file; `close()` (or leaving the `with`) stops them all, kills what is left of
their groups and removes the temp dir.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from integration.processes import free_port, keyspan_command, wait_serving


class Proc:
    """One keyspan process: started, stopped (SIGTERM), killed (SIGKILL), started again."""

    def __init__(self, name: str, args: list[str], address: str, log_dir: Path, probe: str = "") -> None:
        self.name, self.args, self.address, self.probe = name, args, address, probe
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, wait: bool = True) -> None:
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR", "KEYSPAN_LOG_FORMAT": "json"}
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [*keyspan_command(), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        if wait:
            self.wait_serving()

    def wait_serving(self, timeout_s: float = 30.0) -> None:
        try:
            wait_serving(self.address, timeout_s=timeout_s)
            if self.probe:
                wait_serving(self.probe, "keyspan.v1.KV", timeout_s=timeout_s)
        except TimeoutError:
            raise TimeoutError(f"{self.name} did not start; log:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after timeout_s."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown, no flush."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._reap_group()

    def _reap_group(self) -> None:
        assert self.popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)


class Cluster:
    def __init__(
        self,
        nodes: int = 3,
        split_points: str = "d,h,l,p,t,x",
        suspect_after_s: float = 1.0,
        down_after_s: float = 2.5,
        heartbeat_interval_s: float = 0.3,
        sweep_interval_s: float = 1.0,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="keyspan-cluster-"))
        self.logs = self.root / "logs"
        self.logs.mkdir()
        control_address = f"127.0.0.1:{free_port()}"
        self.control = Proc(
            "control",
            [
                "control", "--address", control_address, "--data", str(self.root / "control"),
                "--split-points", split_points, "--min-nodes", str(nodes),
                "--heartbeat-interval-s", str(heartbeat_interval_s),
                "--suspect-after-s", str(suspect_after_s), "--down-after-s", str(down_after_s),
                "--shutdown-grace-s", "1",
            ],
            control_address,
            self.logs,
        )  # fmt: skip
        self.nodes: list[Proc] = []
        for i in range(1, nodes + 1):
            address, probe = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            args = [
                "node", "--control", control_address, "--address", address, "--probe-address", probe,
                "--data", str(self.root / f"node{i}"), "--id", f"n{i}",
                "--sweep-interval-s", str(sweep_interval_s), "--shutdown-grace-s", "2",
                "--sync-timeout-s", "2",
            ]  # fmt: skip
            self.nodes.append(Proc(f"n{i}", args, address, self.logs, probe))
        gateway_address = f"127.0.0.1:{free_port()}"
        self.gateway = Proc(
            "gateway",
            [
                "gateway",
                "--control",
                control_address,
                "--address",
                gateway_address,
                "--shutdown-grace-s",
                "1",
            ],
            gateway_address,
            self.logs,
        )

    def node(self, i: int) -> Proc:
        """Node i, counted from 1."""
        return self.nodes[i - 1]

    def start(self) -> Cluster:
        try:
            self.control.start()
            for n in self.nodes:
                n.start(wait=False)
            for n in self.nodes:
                n.wait_serving()
            self.gateway.start()
        except BaseException:
            self.close()
            raise
        return self

    def restart_control(self, down_s: float = 0.0) -> None:
        self.control.stop()
        time.sleep(down_s)
        self.control.start()

    def admin(self, *args: str) -> str:
        """Run `keyspan admin --control ... ARGS` and return what it printed."""
        done = subprocess.run(
            [*keyspan_command(), "admin", "--control", self.control.address, *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GRPC_VERBOSITY": "ERROR"},
        )
        return done.stdout + done.stderr

    def close(self) -> None:
        for proc in [self.gateway, *self.nodes, self.control]:
            try:
                proc.stop(timeout_s=10)
            except Exception:  # keep stopping the others
                proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
