"""A real keyspan server for other projects' tests: a pytest plugin and `running_server()`.

Installed with keyspan as the pytest11 entry point ``keyspan``, so its fixtures are there
in any project that has keyspan installed:

- ``keyspan_server``: a `keyspan serve` process on a free 127.0.0.1 port with a fresh
  data dir, for one test (``.address``, ``.data_dir``, ``.process``);
- ``keyspan_server_session``: the same, shared by the whole session;
- ``keyspan_client``: a ready blocking Client on the session server, the store emptied
  before each test.

Outside pytest: ``with running_server() as address: ...``. Every server is waited for
until gRPC health reports SERVING, and stopped with SIGTERM, then SIGKILL after
`stop_timeout_s`.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


_PICKS = 200
_handed_out: set[int] = set()


def free_port() -> int:
    """A 127.0.0.1 port nothing is bound to right now, below the kernel's ephemeral range.

    A port from bind(0) comes from the ephemeral range, which outgoing connections also
    draw their source ports from: in a fresh-clone run one of them took such a port
    between the pick and the server's own bind ("Address already in use"). Ports below
    the range are never handed out that way; each is given out once per process.
    """
    low = _ephemeral_low()
    candidates = range(max(1024, low - 12_000), low)
    for port in random.sample(candidates, min(_PICKS, len(candidates))):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use: try another
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # no room below the range: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when unknown)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _server_env() -> dict[str, str]:
    """The test process's environment without its KEYSPAN_* settings: a developer's
    KEYSPAN_METRICS_ADDRESS gave every test server the same port (the second could not
    start), and a KEYSPAN_SENTRY_DSN sent the tests' faults to Sentry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSPAN_")}
    return {**env, "GRPC_VERBOSITY": "ERROR"}


# Linux: the server is started through this, which asks for SIGTERM when the test process
# dies (prctl PR_SET_PDEATHSIG, kept across exec) and then becomes `keyspan serve`: a
# pytest killed by a CI timeout or an IDE's stop button left its servers running for good.
_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)  # the test process died before the prctl
os.execv(sys.executable, [sys.executable, "-m", "keyspan.services", *sys.argv[2:]])
"""


def _serve_command(*args: str) -> list[str]:
    if sys.platform == "linux":
        return [sys.executable, "-c", _WITH_PARENT, str(os.getpid()), "serve", *args]
    return [sys.executable, "-m", "keyspan.services", "serve", *args]


class ServerProcess:
    """One `keyspan serve` child process on 127.0.0.1; `start()`, then `stop()`."""

    def __init__(self, data_dir: Path, *args: str, stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.data_dir, self.args, self.stop_timeout_s = Path(data_dir), args, stop_timeout_s
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    def start(self, timeout_s: float = STARTUP_TIMEOUT_S, attempts: int = 3) -> str:
        """Start the server and wait for SERVING; retry on another port if one was taken."""
        for attempt in range(attempts):
            self.address = f"127.0.0.1:{free_port()}"
            with self.log_path.open("ab") as log:
                args = ["--address", self.address, "--data", str(self.data_dir), "--log-level", "WARNING"]
                self.process = subprocess.Popen(
                    _serve_command(*args, *self.args), stdout=log, stderr=subprocess.STDOUT, env=_server_env()
                )
            if self._wait_serving(timeout_s):
                return self.address
            self.stop()
            if attempt + 1 == attempts:
                break
        raise RuntimeError(f"keyspan serve did not become SERVING; its log:\n{self.log_tail()}")

    def _wait_serving(self, timeout_s: float) -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout_s
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    return False  # exited: a port race or a bad argument; the log says which
                with contextlib.suppress(grpc.RpcError):
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return True
                time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after stop_timeout_s. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(self.stop_timeout_s)


@contextlib.contextmanager
def running_server(data_dir: Path | str | None = None, *args: str) -> Iterator[str]:
    """Run `keyspan serve` for the block and yield its address ("127.0.0.1:PORT").

    Without `data_dir` the data lives in a temporary directory removed afterwards.
    Extra `args` go to `keyspan serve` (e.g. "--split-points", "m")."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="keyspan-"))) / "data"
        server = ServerProcess(Path(data_dir), *args)
        stack.callback(server.stop)
        yield server.start()


def empty_store(client: Any) -> int:
    """Delete every entry; returns how many. For test isolation, not for production."""
    deleted = 0
    for entry in client.scan_ex():
        deleted += client.delete(entry.key)
    return deleted


try:
    import pytest
except ImportError:  # running_server() needs no pytest; the fixtures below do
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def keyspan_server(tmp_path: Path) -> Iterator[ServerProcess]:
        """A `keyspan serve` process for this test only, with its own data dir."""
        server = ServerProcess(tmp_path / "keyspan-data")
        server.start()
        yield server
        server.stop()

    @pytest.fixture(scope="session")
    def keyspan_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
        """One `keyspan serve` process for the whole session."""
        server = ServerProcess(tmp_path_factory.mktemp("keyspan") / "data")
        server.start()
        yield server
        server.stop()

    @pytest.fixture
    def keyspan_client(keyspan_server_session: ServerProcess) -> Iterator[Any]:
        """A blocking keyspan Client on the session server; the store is empty when the test starts."""
        from keyspan.streams import Client

        with Client(keyspan_server_session.address) as client:
            empty_store(client)
            yield client
