"""The blocking Client against a real server: values, JSON, etags, TTL, typed errors, streams."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from keyspan.storage.keys import Key
from keyspan.streams import (
    Client,
    ClientClosed,
    EtagMismatch,
    InvalidArgument,
    NotFound,
    NotJson,
    ResourceExhausted,
    Unavailable,
)
from keyspan.streams.client import SCAN_MAX_WINDOW
from tests.streams.fakes import FlakyRouter, Plan


def test_put_then_get_returns_bytes_value_and_etag(client: Client) -> None:
    etag = client.put("user/ann", b"\x00\xffraw")
    entry = client.get("user/ann")
    assert entry is not None
    assert (entry.key, entry.value, entry.etag, entry.is_json, entry.expires_at) == (
        b"user/ann",
        b"\x00\xffraw",
        etag,
        False,
        None,
    )


def test_get_of_an_absent_key_is_none(client: Client) -> None:
    assert client.get("nobody") is None


@pytest.mark.parametrize("key", [Key.tuple("user", 42), b"user\x00", "user/\u00e9"])
def test_keys_may_be_key_bytes_or_text(client: Client, key: Key | bytes | str) -> None:
    client.put(key, b"v")
    raw = key.raw if isinstance(key, Key) else key if isinstance(key, bytes) else key.encode()
    assert client.get(raw) is not None


def test_dict_values_are_json_documents(client: Client) -> None:
    client.put("doc", {"name": "ann", "tags": ["a"]})
    entry = client.get("doc", json=True)
    assert entry is not None and entry.is_json and entry.value == {"name": "ann", "tags": ["a"]}
    raw = client.get("doc")
    assert raw is not None and isinstance(raw.value, bytes)


def test_get_with_paths_projects_a_document(client: Client) -> None:
    client.put("doc", {"a": {"b": 1}, "c": 2})
    entry = client.get("doc", paths=["$.a.b", "$.zz"], json=True)
    assert entry is not None and entry.value == {"$.a.b": 1, "$.zz": None}


def test_patch_merges_sets_and_removes(client: Client) -> None:
    client.put("doc", {"a": 1, "b": 2})
    entry = client.patch("doc", merge={"c": 3}, set={"$.a": [1, 2]}, remove=["$.b"])
    assert entry.value == {"a": [1, 2], "c": 3}
    stored = client.get("doc", json=True)
    assert stored is not None and stored.etag == entry.etag


def test_patch_takes_json_text_as_written_and_can_answer_it(client: Client) -> None:
    client.put("doc", b'{"a":1.50}', json=True)
    entry = client.patch("doc", merge=b'{"b":1e400}', set={"$.c": b"0.10000000000000000001"}, json=False)
    assert entry.value == b'{"a":1.50,"b":1e400,"c":0.10000000000000000001}'


def test_a_document_with_a_lone_surrogate_can_be_written_back(client: Client) -> None:
    client.put("doc", rb'{"x":"\ud800"}', json=True)
    read = client.get("doc", json=True)
    assert read is not None and read.value == {"x": "\ud800"}
    client.put("doc", read.value)  # was UnicodeEncodeError: surrogates not allowed
    stored = client.get("doc")
    assert stored is not None and stored.value == rb'{"x":"\ud800"}'


def test_put_with_stale_etag_raises_etag_mismatch_with_the_current_etag(client: Client) -> None:
    etag = client.put("k", b"1")
    client.put("k", b"2", if_etag=etag)
    with pytest.raises(EtagMismatch) as caught:
        client.put("k", b"3", if_etag=etag)
    assert caught.value.current_etag == etag + 1


def test_if_absent_on_an_existing_key_raises_etag_mismatch(client: Client) -> None:
    client.put("k", b"1", if_absent=True)
    with pytest.raises(EtagMismatch):
        client.put("k", b"2", if_absent=True)


def test_delete_says_whether_something_was_deleted(client: Client) -> None:
    client.put("k", b"1")
    assert client.delete("k") is True
    assert client.delete("k") is False


def test_errors_are_typed_from_status_details(client: Client) -> None:
    with pytest.raises(InvalidArgument) as bad:
        client.put("x" * 2000, b"v")
    assert bad.value.field == "key" and "1024" in bad.value.rule
    with pytest.raises(NotFound):
        client.patch("missing", merge={"a": 1})
    client.put("bytes", b"v")
    with pytest.raises(NotJson):
        client.patch("bytes", merge={"a": 1})
    with pytest.raises(ResourceExhausted) as big:
        client.put("big", b"x" * (2 << 20))
    assert big.value.field == "value"


def test_ttl_sets_expires_at_and_expired_entries_vanish(client: Client) -> None:
    client.put("short", b"v", ttl_s=0.2)
    entry = client.get("short")
    assert entry is not None and entry.expires_at is not None
    assert 0 < (entry.expires_at - datetime.now(UTC)).total_seconds() <= 0.3
    time.sleep(0.3)
    assert client.get("short") is None
    progress = list(client.sweep())
    assert progress[-1].done and progress[-1].deleted == 1


def test_scan_ranges_limits_and_reverse(client: Client) -> None:
    keys = [f"k{i:03d}".encode() for i in range(300)]
    client.bulk_put((k, k) for k in keys)
    assert [e.key for e in client.scan()] == keys
    assert [e.key for e in client.scan("k010", "k020")] == keys[10:20]
    assert [e.key for e in client.scan(limit=7)] == keys[:7]
    assert [e.key for e in client.scan("k100", reverse=True, limit=5)] == keys[-5:][::-1]
    assert [e.key for e in client.scan(end="k005", reverse=True)] == keys[:5][::-1]


def test_scan_grants_credits_as_entries_are_consumed(server_address: str) -> None:
    plan = Plan()
    with Client(router_factory=lambda: FlakyRouter(server_address, plan)) as kv:
        kv.bulk_put((f"k{i:06d}", b"x" * 100) for i in range(40_000))
        it = kv.scan()
        first = [next(it) for _ in range(10)]
        granted = sum(r.credits for m, r in plan.requests if m == "Scan")
        assert granted <= SCAN_MAX_WINDOW  # a window ahead, not the whole range
        rest = list(it)
    assert len(first) + len(rest) == 40_000
    granted = sum(r.credits for m, r in plan.requests if m == "Scan")
    assert granted <= 40_000 + SCAN_MAX_WINDOW


def test_bulk_put_batches_by_bytes_and_reports_progress(client: Client) -> None:
    seen: list[int] = []
    result = client.bulk_put(
        ((f"k{i:05d}", b"x" * 1000) for i in range(2_000)),
        batch_bytes=64 * 1024,
        on_progress=lambda r: seen.append(r.entries),
    )
    assert result.entries == 2_000 and result.bytes == 2_000 * 1006
    assert result.batches >= 2_000 * 1006 // (64 * 1024)
    assert seen[-1] == 2_000


def test_stats_reports_partitions_in_key_order(client: Client) -> None:
    client.bulk_put((f"{c}1", b"v") for c in "ahoz")
    stats = client.stats()
    assert [p.start for p in stats.partitions] == [b"", b"g", b"n", b"u"]
    assert stats.approximate_entries == 4


def test_a_default_deadline_applies_to_every_call(server_address: str) -> None:
    with Client("127.0.0.1:1", timeout_s=0.2) as kv:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            kv.get("k")
        assert time.monotonic() - started < 2


def test_breaking_out_of_a_scan_closes_its_stream(client: Client) -> None:
    client.bulk_put((f"k{i:04d}", b"v") for i in range(5_000))
    for n, _ in enumerate(client.scan(), 1):
        if n == 10:
            break
    assert client.get("k0001") is not None  # the client still works after the abandoned stream


def test_a_closed_client_can_close_again(server_address: str) -> None:
    kv = Client(server_address)
    kv.put("k", b"v")
    kv.close()
    kv.close()


def test_a_closed_client_says_so(server_address: str) -> None:
    kv = Client(server_address)
    kv.close()
    with pytest.raises(RuntimeError, match="this keyspan Client is closed"):
        kv.get("k")  # was "Event loop is closed", and a coroutine never awaited


UINT64_RULE = "must be 0 \\({}\\) or a whole number up to 2\\*\\*64-1, not {}"
TIMEOUT_RULE = "must be a number of seconds above 0 and at most 31536000 \\(a year\\), not {}"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda kv: list(kv.scan(limit=-1)), UINT64_RULE.format("no limit", -1)),
        (lambda kv: list(kv.scan_ex(limit=1 << 64)), UINT64_RULE.format("no limit", 1 << 64)),
        (lambda kv: kv.put("k", b"v", if_etag=-5), UINT64_RULE.format("no precondition", -5)),
        (lambda kv: kv.put("k", b"v", if_etag=1 << 64), UINT64_RULE.format("no precondition", 1 << 64)),
        (lambda kv: kv.delete("k", if_etag=-1), UINT64_RULE.format("no precondition", -1)),
        (lambda kv: kv.patch("k", merge={}, if_etag=-1), UINT64_RULE.format("no precondition", -1)),
        (lambda kv: kv.put("k", b"v", timeout_s=0), "timeout_s: " + TIMEOUT_RULE.format(0)),
        (lambda kv: kv.get("k", timeout_s=-1), "timeout_s: " + TIMEOUT_RULE.format(-1)),
        (lambda kv: kv.bulk_put([("a", b"v")], batch_bytes=0), "batch_bytes: must be between 1 and 8388608"),
        (lambda kv: kv.bulk_put_ex([("a", b"v")], batch_bytes=-1), "batch_bytes: must be between 1 and"),
    ],
)
def test_an_argument_out_of_its_range_is_a_value_error_naming_it(
    client: Client, call: Callable[[Client], object], message: str
) -> None:
    client.put("k", b"v")
    with pytest.raises(ValueError, match=message):
        call(client)
    entry = client.get("k")
    assert entry is not None and entry.etag == 1 and client.get("a") is None  # nothing written


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"timeout_s": 0}, "timeout_s: " + TIMEOUT_RULE.format(0)),
        ({"timeout_s": float("nan")}, "timeout_s: " + TIMEOUT_RULE.format("nan")),
        ({"stream_timeout_s": -1.0}, "stream_timeout_s: " + TIMEOUT_RULE.format(-1.0)),
        ({"address": " "}, "address: must be HOST:PORT, not empty"),
    ],
)
def test_a_client_setting_out_of_range_is_a_value_error(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Client(**{"address": "127.0.0.1:1", **settings})


LATE_COMPLETION = """
import sys, time, grpc
from keyspan.streams import Client
from keyspan.v1 import kv_pb2, kv_pb2_grpc

address = sys.argv[1]
first = Client(address)

async def open_stream():
    channel = grpc.aio.insecure_channel(address)  # outlives the Client: its call ends late
    call = kv_pb2_grpc.KVStub(channel).Scan(timeout=0.2)
    await call.write(kv_pb2.ScanRequest(start=b"", credits=1))
    await call.read()
    return channel, call

kept = first._run(open_stream())  # dropped, grpc would cancel the call at once
first.close()
with Client(address) as second:  # its loop reads the completion of the deadline
    second.get("k")
    time.sleep(0.4)
    second.get("k")
"""


def test_a_grpc_completion_after_a_client_closed_is_dropped_quietly(server_address: str) -> None:
    """grpc.aio hands a completion to its call's loop from whichever loop reads it: one for
    a closed Client's loop, read by another Client's, was "Event loop is closed" on stderr
    (a stream cancelled as its Client closes completes a moment later in grpc's core).
    In a process of its own: the test server's loop would be a third loop reading."""
    with Client(server_address) as kv:  # entries the scan waits for credits to send
        kv.bulk_put((f"k{i}", b"v") for i in range(10))
    result = subprocess.run(
        [sys.executable, "-c", LATE_COMPLETION, server_address], capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert b"Event loop is closed" not in result.stderr


def test_bulk_put_ex_never_builds_a_message_over_the_limit_and_refuses_an_entry_none_can_carry(
    tmp_path: Any,
) -> None:
    """A 15.9 MiB value after a 1 MiB one made a 16.9 MiB message: gRPC failed it locally
    and the load retried it as Unavailable(may_have_applied) for a minute; a value no
    message can carry did the same, where put refuses it at once."""
    from tests.conftest import ThreadedServer

    server = ThreadedServer(tmp_path / "kv", synchronous="NORMAL", max_value_bytes=16_711_680)
    try:
        with Client(server.address, timeout_s=30) as kv:
            big = b"b" * 16_600_000
            started = time.monotonic()
            result = kv.bulk_put_ex([(b"la", b"a" * 1_000_000), (b"lb", big)], batch_bytes=8 << 20)
            assert result.entries == 2 and time.monotonic() - started < 10
            assert kv.get(b"lb").value == big  # type: ignore[union-attr]
            largest = (b"k" * 1024, b"m" * 16_711_680)  # the largest key and value a server takes
            assert kv.bulk_put_ex([largest]).entries == 1  # was refused as more than a message holds
            with pytest.raises(
                ResourceExhausted, match=r"entries\[1\]\.value \(key 'z'\): is 17000000 bytes"
            ):
                kv.bulk_put_ex([(b"y", b"1"), (b"z", b"x" * 17_000_000)])
            assert kv.get(b"y") is None  # the batch before it was not sent alone either
    finally:
        server.stop()


def test_a_scan_over_a_value_of_the_largest_size_after_smaller_ones_fits_its_messages(tmp_path: Any) -> None:
    """A batch of 256 KiB of small values took the largest value as its last row: a
    response of 16.2 MiB that gRPC refused, so no forward scan or dump could pass it."""
    from tests.conftest import ThreadedServer

    server = ThreadedServer(tmp_path / "kv", synchronous="NORMAL", max_value_bytes=16_711_680)
    try:
        with Client(server.address, timeout_s=30) as kv:
            kv.put(b"a", b"a" * 262_000)
            kv.put(b"b", b"b" * 16_711_680)
            assert [(e.key, len(e.value)) for e in kv.scan()] == [(b"a", 262_000), (b"b", 16_711_680)]
    finally:
        server.stop()


def test_a_call_from_the_clients_own_thread_is_refused_not_a_deadlock(client: Client) -> None:
    # update's fn runs on the client's thread: a call there waited on itself for ever,
    # and close() and the process's exit after it.
    client.put("n", {"v": 1})
    with pytest.raises(RuntimeError, match="called from its own thread"):
        client.update("n", lambda doc: {"v": client.get("n").value})  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="called from its own thread"):
        client.bulk_put([(b"a", b"1")], on_progress=lambda progress: client.close())
    assert client.get("n") is not None  # still usable


def test_a_client_made_before_a_fork_is_refused_in_the_child_which_exits(server_address: str) -> None:
    # The child hung: its calls and the close at exit waited on a loop thread left in the parent.
    script = f"""
import os, sys
from keyspan.streams import Client
kv = Client({server_address!r})
kv.put("forked", b"1")
pid = os.fork()
if pid == 0:
    try:
        kv.get("forked")
    except RuntimeError as err:
        print("child:", err, flush=True)
    kv.close()  # as `with` would: quietly, the client being the parent's
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("parent:", os.waitstatus_to_exitcode(status), kv.get("forked").value, flush=True)
kv.close()
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "child: this keyspan Client was made in process" in run.stdout
    assert "parent: 0 b'1'" in run.stdout


@pytest.mark.parametrize(
    "counts", [{b"r": 3_000}, {b"f": 2_950, b"g": 50}], ids=["one-partition", "last-batch-across-g"]
)
def test_a_refused_entry_is_raised_once_the_batches_read_before_it_are_in(
    client: Client, counts: dict[bytes, int]
) -> None:
    # They were cancelled in flight and might not be in; then the rest of the last batch
    # sent, which the partition boundary at g cut, was never sent.
    prefixes = tuple(counts)
    keys = [p + b"%05d" % i for p, n in counts.items() for i in range(n)]
    items = [(k, b"v" * 1000) for k in keys] + [(keys[0], b"dup")]
    with pytest.raises(InvalidArgument, match=r"entries\[3000\]\.key"):
        client.bulk_put_ex(iter(items), batch_bytes=64 << 10)
    per_batch = -(-(64 << 10) // (6 + 1000))  # a batch is cut after the entry that fills it
    stored = [e.key for e in client.scan(prefixes[0], b"s")]
    # every batch before the one that held the duplicate (whose 30 entries were not sent)
    assert stored == keys[: 3_000 // per_batch * per_batch]


def test_a_refused_entry_is_raised_even_when_the_stream_fails_before_the_rest_is_in(
    client: Client,
) -> None:
    # An attempt's deadline passed while the batches before it were answered: the retry
    # read on past the refused entry, and the load returned success without it.
    def slow_then_duplicate() -> Iterator[tuple[bytes, bytes]]:
        yield from ((b"d%05d" % i, b"v" * 1000) for i in range(300))
        time.sleep(1.5)  # longer than an attempt's deadline
        yield (b"d00299", b"dup")
        yield from ((b"e%05d" % i, b"v") for i in range(100))

    with pytest.raises(InvalidArgument, match=r"entries\[300\]\.key .*duplicate"):
        client.bulk_put_ex(slow_then_duplicate(), batch_bytes=64 << 10, timeout_s=1.0)
    assert sum(1 for _ in client.scan(b"e", b"f")) == 0


def test_close_ends_the_wait_of_a_call_held_by_a_blocking_source(server_address: str) -> None:
    # close() waited as long as the source did (for ever for one that never ends, and the
    # process's exit with it); stopping the loop then closed it under the call in flight.
    import threading

    release = threading.Event()
    outcome: list[BaseException | None] = []

    def source() -> Iterator[tuple[bytes, bytes]]:
        yield (b"s1", b"v")
        release.wait(60)  # a queue that never gets its end, say
        yield (b"s2", b"v")

    kv = Client(server_address)
    loader = threading.Thread(target=lambda: outcome.append(_raised(lambda: kv.bulk_put(source()))))
    loader.start()
    time.sleep(0.5)
    started = time.monotonic()
    kv.close()
    loader.join(10)
    try:
        assert time.monotonic() - started < 8 and not loader.is_alive()
        assert isinstance(outcome[0], ClientClosed)
    finally:
        release.set()  # the loop then shuts down and its thread ends
    deadline = time.monotonic() + 10
    while kv._thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kv._thread.is_alive()


def _raised(call: Callable[[], object]) -> BaseException | None:
    try:
        call()
    except BaseException as err:  # what the call ended with is the result
        return err
    return None
