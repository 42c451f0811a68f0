"""The pytest plugin (keyspan.services.testing) as another project sees it, and running_server()."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from keyspan.services.testing import ServerProcess, running_server
from keyspan.streams import Client


def test_plugin_fixtures_give_real_servers_and_an_emptied_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from keyspan.streams import Client

        def test_writes(keyspan_client):
            keyspan_client.put("a", b"1")
            assert keyspan_client.get("a").value == b"1"

        def test_starts_empty(keyspan_client):
            assert list(keyspan_client.scan()) == []

        def test_own_server(keyspan_server, keyspan_server_session):
            assert keyspan_server.address != keyspan_server_session.address
            with Client(keyspan_server.address) as kv:
                assert kv.stats().approximate_entries == 0
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3)


def test_running_server_serves_then_stops_its_process(tmp_path: Path) -> None:
    with running_server(tmp_path / "data", "--split-points", "m") as address:
        assert address.startswith("127.0.0.1:")
        with Client(address) as kv:
            kv.put("k", b"v")
            assert [p.start for p in kv.stats().partitions] == [b"", b"m"]
    with pytest.raises(OSError):  # the port is closed: the process is gone
        socket.create_connection(("127.0.0.1", int(address.rpartition(":")[2])), timeout=1)


def test_stop_kills_a_server_that_ignores_sigterm(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", stop_timeout_s=0.5)
    server.start()
    process = server.process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    server.stop()
    assert process.returncode == -signal.SIGKILL


def test_a_server_that_cannot_start_raises_with_its_log(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", "--max-value-bytes", "0")
    with pytest.raises(RuntimeError, match="max_value_bytes"):
        server.start(timeout_s=10, attempts=1)


def test_a_developers_keyspan_settings_do_not_reach_the_test_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With KEYSPAN_METRICS_ADDRESS set, the second server could not start (the port taken).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("KEYSPAN_METRICS_ADDRESS", f"127.0.0.1:{taken.getsockname()[1]}")
        with running_server(tmp_path / "a") as first, running_server(tmp_path / "b") as second:
            assert first != second


KILLED_PARENT = """
import sys, time
from keyspan.services.testing import ServerProcess
server = ServerProcess(sys.argv[1])
server.start()
print(server.process.pid, flush=True)
time.sleep(60)
"""


def test_a_server_ends_when_the_test_process_is_killed(tmp_path: Path) -> None:
    # A pytest killed by a CI timeout left its servers running for good (parent PID 1).
    import subprocess
    import sys
    import time

    parent = subprocess.Popen(
        [sys.executable, "-c", KILLED_PARENT, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        server_pid = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        until = time.monotonic() + 15
        while time.monotonic() < until:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail("the server outlived the process that started it")
    finally:
        if parent.poll() is None:
            parent.kill()
