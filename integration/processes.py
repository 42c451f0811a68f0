"""What every real-process test, workflow and bench here needs: a free loopback port,
the `keyspan` command of this environment, and a wait for gRPC health SERVING."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyspan.services.testing import free_port

__all__ = ["free_port", "keyspan_command", "wait_serving"]


def keyspan_command() -> list[str]:
    """The argv prefix that runs this environment's `keyspan` console script."""
    script = Path(sys.executable).with_name("keyspan")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "keyspan.services"]


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
