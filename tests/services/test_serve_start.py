"""`keyspan serve` refuses a data dir it would serve wrongly: exit 4, one line, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda parts: parts[:1] + parts[2:],
            "no partition holds key 'g'",
        ),  # a gap: SERVING, "starting" for ever
        (lambda parts: [], "no partition holds key ''"),
        (lambda parts: parts + parts[:1], "partition p0 is listed twice"),
        (lambda parts: [{**parts[0], "id": "../p0"}, *parts[1:]], "partition id '../p0' is not a plain name"),
        (lambda parts: [parts[0], {**parts[1], "start": "66"}, parts[2]], "the ranges of p0 and p1 overlap"),
    ],
    ids=["gap", "empty", "twice", "path", "overlap"],
)
def test_a_catalogue_that_does_not_tile_the_key_space_stops_the_start(
    tmp_path: Path, change: Any, message: str
) -> None:
    import json

    from keyspan.storage.shardset import ShardSet, ranges_from_split_points

    data = tmp_path / "data"
    shards = ShardSet(data)
    shards.open([(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"g", b"n"]))])
    shards.close()
    catalogue = json.loads((data / "catalogue.json").read_text())
    catalogue["partitions"] = change(catalogue["partitions"])
    (data / "catalogue.json").write_text(json.dumps(catalogue))
    written = (data / "catalogue.json").read_bytes()
    started = serve(data)
    assert started.returncode == 4, started.stderr
    assert f"catalogue.json is damaged: {message}" in started.stderr and started.stderr.count("\n") == 1
    assert (data / "catalogue.json").read_bytes() == written  # not rewritten as if good


def test_a_damaged_shard_stops_the_start_with_one_line_naming_it(tmp_path: Path) -> None:
    import apsw

    from keyspan.storage.shardset import ShardSet, ranges_from_split_points

    data = tmp_path / "data"
    shards = ShardSet(data)
    shards.open([(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"n"]))])
    shards.close()
    db = apsw.Connection(str(data / "p0.db"))
    with db:  # 75 pages of entries
        db.execute(
            "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 2000) "
            "INSERT INTO entries(key, value, json, etag) "
            "SELECT printf('a%06d', i), zeroblob(100), 0, i FROM c"
        )
    db.close()
    raw = bytearray((data / "p0.db").read_bytes())
    raw[40 * 4096 : 40 * 4096 + 64] = b"\xff" * 64
    (data / "p0.db").write_bytes(raw)

    started = serve(data)
    assert started.returncode == 4
    assert started.stderr.startswith(
        f"keyspan: partition p0: {data / 'p0.db'} is damaged: SQLite's quick_check"
    )
    assert started.stderr.count("\n") == 1 and "Traceback" not in started.stderr
    assert (data / "p0.db").read_bytes() == raw


def test_an_sqlite_file_not_in_wal_mode_is_refused_byte_for_byte_as_found(tmp_path: Path) -> None:
    # Setting WAL mode rewrote its header before the checks refused it.
    import sqlite3

    from keyspan.storage.shardset import ShardSet, ranges_from_split_points

    data = tmp_path / "data"
    shards = ShardSet(data)
    shards.open([(f"p{i}", r) for i, r in enumerate(ranges_from_split_points([b"n"]))])
    shards.close()
    (data / "p1.db").unlink()
    with contextlib.closing(sqlite3.connect(data / "p1.db")) as other:
        other.execute("CREATE TABLE x(a)")
    raw = (data / "p1.db").read_bytes()
    started = serve(data)
    assert started.returncode == 4
    assert f"{data / 'p1.db'} is damaged: it is not in WAL mode (delete)" in started.stderr
    assert (data / "p1.db").read_bytes() == raw


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
        if gateway.stderr is not None:
            gateway.stderr.close()


def test_a_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = [KEYSPAN, "serve", "--address", address, "--data", str(tmp_path / "data")]
        started = subprocess.run(args, capture_output=True, text=True, timeout=60)  # gRPC's default log level
        json_args = [*args, "--log-format", "json"]
        as_json = subprocess.run(json_args, capture_output=True, text=True, timeout=60)
    assert started.returncode == 4
    assert started.stderr == f"keyspan: cannot listen on {address}: the port is in use\n"
    # asked for JSON logs, a log pipeline gets the reason as one JSON line too
    (line,) = as_json.stderr.splitlines()
    event = json.loads(line)
    assert as_json.returncode == 4 and (event["level"], event["msg"]) == ("CRITICAL", "cannot start")
    assert event["error"] == f"cannot listen on {address}: the port is in use"


@pytest.mark.parametrize(
    ("address", "said"),
    [
        (
            "nosuchhost.invalid:7499",
            "cannot listen on nosuchhost.invalid:7499: the host 'nosuchhost.invalid' does not resolve",
        ),
        ("192.0.2.1:7499", "cannot listen on 192.0.2.1:7499: not an address of this host"),
    ],
)
def test_an_address_it_cannot_listen_on_is_named_with_the_reason(
    tmp_path: Path, address: str, said: str
) -> None:
    # Both were "in use, or not an address of this host", after a line of gRPC's C log.
    args = [KEYSPAN, "serve", "--address", address, "--data", str(tmp_path / "data")]
    started = subprocess.run(args, capture_output=True, text=True, timeout=60)
    lines = started.stderr.splitlines()
    assert started.returncode == 4 and len(lines) == 1 and lines[0].startswith(f"keyspan: {said}")


def test_a_data_path_it_cannot_use_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    blocked = tmp_path / "afile" / "sub"
    started = subprocess.run(
        [KEYSPAN, "serve", "--data", str(blocked)], capture_output=True, text=True, timeout=60
    )
    assert (started.returncode, started.stderr) == (4, f"keyspan: cannot use {blocked}: Not a directory\n")
    empty = subprocess.run(
        [KEYSPAN, "serve", "--data", ""], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert empty.returncode == 2 and "data: must name a directory, not be empty" in empty.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing made in the cwd


async def scan(kv: object) -> list[object]:
    from keyspan.v1 import kv_pb2

    call = kv.Scan()  # type: ignore[attr-defined]
    await call.write(kv_pb2.ScanRequest(credits=10))
    return [response async for response in call]  # an empty range with done: "served"


async def test_calls_while_the_partitions_open_are_unavailable_not_wrong_partition(tmp_path: Path) -> None:
    """The port takes calls before the shards are open (health says NOT_SERVING): they are
    retryable. A WrongPartition, which clients do not retry, stopped a load at a restart."""
    import asyncio
    import threading

    import grpc

    from keyspan.services.config import ServeConfig
    from keyspan.services.server import KeyspanServer
    from keyspan.v1 import kv_pb2, kv_pb2_grpc

    server = KeyspanServer(ServeConfig(address="127.0.0.1:0", data=tmp_path / "data"))
    opened, release = server.shards.open, threading.Event()

    def slow_open(*args: object) -> None:
        release.wait(10)
        opened(*args)  # type: ignore[arg-type]

    server.shards.open = slow_open  # type: ignore[method-assign]
    starting = asyncio.create_task(server.start())
    try:
        while not server.port:
            await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            kv = kv_pb2_grpc.KVStub(channel)
            calls = (
                kv.Get(kv_pb2.GetRequest(key=b"k")),
                kv.Put(kv_pb2.PutRequest(key=b"k")),
                scan(kv),
                kv.Stats(kv_pb2.StatsRequest()),  # not a partial answer, or none, as if complete
            )
            for call in calls:
                try:
                    await call
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    assert err.details() == "the server is starting: its partitions are not open"
                else:
                    raise AssertionError("served before the partitions were open")
            release.set()
            await starting
            assert (await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"))).etag == 1
    finally:
        release.set()
        await starting
        await server.stop(0)


def test_a_name_gRPC_can_serve_on_one_of_its_addresses_is_not_refused(monkeypatch: object) -> None:
    """localhost on a host without IPv6: gRPC binds 127.0.0.1 alone and serves."""
    import socket

    import pytest

    from keyspan.services.common.process import _check_can_listen
    from keyspan.services.testing import free_port

    port = free_port()
    real = socket.getaddrinfo

    def v6_unbindable_then_v4(host: object, *args: object, **kwargs: object) -> list[object]:
        stream = socket.SOCK_STREAM
        return [
            (socket.AF_INET6, stream, 6, "", ("2001:db8::1", port, 0, 0)),  # not this host's
            *real("127.0.0.1", port, type=stream),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", v6_unbindable_then_v4)  # type: ignore[attr-defined]
    _check_can_listen(f"localhost:{port}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(OSError):
            _check_can_listen(f"localhost:{port}")


def test_sigusr1_logs_each_task_and_what_it_waits_on(tmp_path: Path) -> None:
    """A stalled stream leaves every thread idle; the tasks show where it waits."""
    import json
    import signal
    import threading
    import time
    from collections.abc import Iterator

    import grpc

    from keyspan.services.testing import ServerProcess
    from keyspan.streams import Client
    from keyspan.v1 import kv_pb2, kv_pb2_grpc

    server = ServerProcess(tmp_path / "data", "--log-format", "json")
    address = server.start()
    try:
        with Client(address) as kv:
            kv.put("a", b"1")
            kv.put("b", b"2")
        done = threading.Event()

        def requests() -> Iterator[kv_pb2.ScanRequest]:
            yield kv_pb2.ScanRequest(start=b"a", credits=1)
            done.wait(30)  # no more credits, no half-close: the server's stream waits

        with grpc.insecure_channel(address) as channel:
            scan = kv_pb2_grpc.KVStub(channel).Scan(requests())
            assert next(scan).entries[0].key == b"a"
            assert server.process is not None
            server.process.send_signal(signal.SIGUSR1)
            deadline, found = time.monotonic() + 10, None
            while found is None and time.monotonic() < deadline:
                time.sleep(0.05)
                for line in server.log_path.read_text().splitlines():
                    event = json.loads(line)
                    if event.get("msg") == "asyncio tasks":
                        found = event
            scan.cancel()
            done.set()
        assert server.process.poll() is None  # it goes on serving
    finally:
        server.stop()
    assert found is not None and found["component"] == "serve", server.log_tail()
    assert "task 'sweeper':" in found["tasks"]
    assert "streams/scan.py" in found["tasks"] and "serve_scan" in found["tasks"], found["tasks"]


async def test_a_connection_with_no_call_open_is_closed_once_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keepalive pings go only where a call is open: the connection of a client that
    vanished between calls was held for good, a descriptor each."""
    import asyncio

    import grpc

    from keyspan.services.common import process
    from keyspan.services.config import ServeConfig
    from keyspan.services.server import KeyspanServer
    from keyspan.v1 import kv_pb2, kv_pb2_grpc

    monkeypatch.setattr(process, "MAX_CONNECTION_IDLE_MS", 500)
    server = KeyspanServer(ServeConfig(address="127.0.0.1:0", data=tmp_path / "data", sweep_interval_s=3600))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"k"))
            assert channel.get_state() == grpc.ChannelConnectivity.READY
            await asyncio.sleep(2.0)  # no call: the server closes the connection
            assert channel.get_state() == grpc.ChannelConnectivity.IDLE
            assert not (await kv_pb2_grpc.KVStub(channel).Get(kv_pb2.GetRequest(key=b"k"))).found  # again
    finally:
        await server.stop(0)


@pytest.mark.parametrize(
    ("command", "sent", "code"),
    [("serve", "SIGTERM", 0), ("serve", "SIGINT", 0), ("get", "SIGINT", 130)],
)
def test_a_signal_while_the_command_still_imports_ends_it_as_a_later_one_would(
    tmp_path: Path, command: str, sent: str, code: int
) -> None:
    """In the first ~0.3 s (imports), SIGTERM killed the server (exit -15, where --help
    says 0) and Ctrl-C printed a KeyboardInterrupt traceback from inside an import."""
    import signal
    import time

    address = f"127.0.0.1:{free_port()}"
    args = {"serve": ["serve", "--data", str(tmp_path / "d")], "get": ["get", "k"]}[command]
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    started = subprocess.Popen(
        [KEYSPAN, *args, "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(0.15)  # past the interpreter's own start, well before the command runs
    started.send_signal(getattr(signal, sent))
    _, err = started.communicate(timeout=60)
    assert started.returncode == code, err
    assert "Traceback" not in err


@pytest.mark.parametrize("nohup", [False, True])
def test_sighup_stops_the_server_cleanly_unless_started_under_nohup(tmp_path: Path, nohup: bool) -> None:
    """SIGHUP (the terminal that ran it closing) killed it with no shutdown."""
    import signal
    import time

    def hup_ignored() -> None:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    args = [KEYSPAN, "serve", "--address", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "d")]
    env = {**os.environ, "GRPC_VERBOSITY": "ERROR"}
    server = subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=hup_ignored if nohup else None
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:  # its log: JSON lines
            if '"msg": "serving"' in line:
                break
        server.send_signal(signal.SIGHUP)
        if nohup:
            time.sleep(1.0)
            assert server.poll() is None  # still serving
            server.send_signal(signal.SIGTERM)
        rest = server.stderr.read()
        assert server.wait(timeout=60) == 0
        assert '"msg": "stopped"' in rest
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
