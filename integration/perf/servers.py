"""The processes a run talks to: a target (address list + kind) and the servers it starts.

A target is what the clients dial: `kind` says how (`serve`: any address holds every
partition; `gateway`: any address routes; `cluster`: the one address is control's, and
each client routes by its watched map straight to the nodes) and `addresses` where.
When the bench starts the server itself, it runs it as a real process in its own process
group on 127.0.0.1, and always kills that group on the way out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from integration.processes import free_port, keyspan_command, wait_serving

KINDS = ("serve", "gateway", "cluster")
_TICKS_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    """Where the load goes. Workers spread their channels over `addresses`."""

    kind: str
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"target kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not self.addresses:
            raise ValueError("target: at least one address is needed")


@dataclass
class ServerProcess:
    """A server started by the bench: `keyspan serve` or the echo server."""

    argv: list[str]
    address: str
    data_dir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def keyspan(cls, data_dir: Path, synchronous: str = "FULL") -> ServerProcess:
        address = f"127.0.0.1:{free_port()}"
        argv = [
            *keyspan_command(),
            "serve",
            f"--address={address}",
            f"--data={data_dir}",
            f"--synchronous={synchronous}",
            "--log-level=WARNING",
            "--log-format=json",
        ]
        return cls(argv, address, data_dir)

    @classmethod
    def echo(cls, value_bytes: int) -> ServerProcess:
        address = f"127.0.0.1:{free_port()}"
        argv = [sys.executable, "-m", "integration.perf.echo", address, str(value_bytes)]
        return cls(argv, address)

    def start(self) -> ServerProcess:
        env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
        root = Path(__file__).resolve().parents[2]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True)
        try:
            wait_serving(self.address)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_s(self) -> float:
        """utime + stime of the server so far, in seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS_S

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL it if it has not gone in 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bytes_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
