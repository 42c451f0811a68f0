"""What every real-process test, workflow and bench here needs: a free loopback port,
the `keyspan` command of this environment, and a wait for gRPC health SERVING."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

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


def keyspan_command() -> list[str]:
    """The argv prefix that runs this environment's `keyspan` console script."""
    script = Path(sys.executable).with_name("keyspan")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from keyspan.services.cli import main; main()"]


def wait_serving(
    address: str,
    service: str = "",
    *,
    timeout_s: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until grpc.health.v1 Check answers SERVING for `service` at `address`; fail
    at once if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet, or still starting: ask again below
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the server for {address} exited with {proc.returncode} before SERVING")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not report SERVING {service!r} within {timeout_s} s")
            time.sleep(0.05)
