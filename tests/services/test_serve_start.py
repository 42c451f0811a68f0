"""`keyspan serve` refuses a data dir it would serve wrongly: exit 4, one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from keyspan.services.testing import free_port

KEYSPAN = str(Path(sys.executable).with_name("keyspan"))


def serve(data: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    args = [KEYSPAN, "serve", "--address", f"127.0.0.1:{free_port()}", "--data", str(data)]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout_s)


def test_a_lost_shard_file_or_catalogue_stops_the_start_naming_it(tmp_path: Path) -> None:
    from keyspan.storage.shardset import ShardSet, ranges_from_split_points

    data = tmp_path / "data"
    shards = ShardSet(data)
    shards.open([(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"n"]))])
    shards.close()
    (data / "p1.db").unlink()

    started = serve(data)
    assert started.returncode == 4
    assert "catalogue.json lists partitions whose shard files are missing (p1.db)" in started.stderr
    assert "Traceback" not in started.stderr and not (data / "p1.db").exists()

    (data / "catalogue.json").write_text("{")
    started = serve(data)
    assert started.returncode == 4
    assert started.stderr.startswith("keyspan: cannot read ") and "Traceback" not in started.stderr


def test_a_gateway_waiting_for_control_stops_on_sigterm() -> None:
    """It waits NOT_SERVING for its first map, however long control takes, but not past a
    SIGTERM (it used to ignore one until a map came)."""
    import signal
    import time

    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    args = [
        KEYSPAN,
        "gateway",
        "--control",
        f"127.0.0.1:{free_port()}",
        "--address",
        f"127.0.0.1:{free_port()}",
    ]
    gateway = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)
        assert gateway.poll() is None
        gateway.send_signal(signal.SIGTERM)
        assert gateway.wait(10) == 0
        assert '"serving"' not in (gateway.stderr.read() if gateway.stderr else "")
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait()


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [KEYSPAN, "serve", "--address", address, "--data", str(tmp_path / "data")]
        started = subprocess.run(args, capture_output=True, text=True, timeout=60)  # gRPC's default log level
    assert started.returncode == 4
    assert started.stderr == f"keyspan: cannot listen on {address} (in use, or not an address of this host)\n"
