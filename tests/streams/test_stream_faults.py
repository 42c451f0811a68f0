"""Streams a client leaves or gets wrong, through an in-process server (partitions cut
at g, n, u): a client going away is no server fault, and a refused batch names its
first bad entry."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from keyspan.services.server import KeyspanServer
from keyspan.storage.shard import Shard
from keyspan.v1 import kv_pb2, kv_pb2_grpc

KEYS = [b"a%05d" % i for i in range(4_000)]  # all in the first partition, [-inf, g)


async def load(kv: kv_pb2_grpc.KVStub, keys: list[bytes]) -> None:
    call = kv.BulkPut()
    for at in range(0, len(keys), 1_000):
        chunk = keys[at : at + 1_000]
        await call.write(kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=k, value=k * 20) for k in chunk]))
        assert (await call.read()).accepted == len(chunk)
    await call.done_writing()


async def scan_keys(kv: kv_pb2_grpc.KVStub) -> list[bytes]:
    call = kv.Scan()
    await call.write(kv_pb2.ScanRequest(credits=1_000_000))
    return [e.key async for response in call for e in response.entries]


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_a_scan_is_no_server_fault(
    server: KeyspanServer, kv: kv_pb2_grpc.KVStub, caplog: pytest.LogCaptureFixture
) -> None:
    await load(kv, KEYS)
    for attempt in range(40):  # a race: cancelled after the first response or mid-stream
        call = kv.Scan()
        await call.write(kv_pb2.ScanRequest(credits=1_000_000))
        for _ in range(1 + attempt % 2):
            await call.read()
        call.cancel()
        await asyncio.sleep(0)
    for _ in range(20):  # the client's whole channel closed under the stream
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            call = kv_pb2_grpc.KVStub(channel).Scan()
            await call.write(kv_pb2.ScanRequest(credits=1_000_000))
            await call.read()
    await asyncio.sleep(0.2)
    assert errors_logged(caplog) == []
    assert await scan_keys(kv) == KEYS  # the read threads' connections still serve
    assert server.streams.open == 0


async def test_a_scan_cancelled_while_its_batch_is_read_leaves_the_read_thread_serving(
    server: KeyspanServer,
    kv: kv_pb2_grpc.KVStub,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await load(kv, KEYS)
    reading, release = threading.Event(), threading.Event()
    batches = 0
    scan = Shard.scan

    def held_scan(*args: Any, **kwargs: Any) -> Any:  # the second batch waits, mid-read
        nonlocal batches
        rows = scan(*args, **kwargs)
        batches += 1
        if batches == 2:
            reading.set()
            release.wait(10)
        return rows

    monkeypatch.setattr(Shard, "scan", staticmethod(held_scan))
    call = kv.Scan()
    await call.write(kv_pb2.ScanRequest(credits=1_000_000))
    await call.read()
    assert await asyncio.to_thread(reading.wait, 10)
    call.cancel()
    for _ in range(100):  # the stream ends while its read still runs on the read thread
        if server.streams.open == 0:
            break
        await asyncio.sleep(0.01)
    assert server.streams.open == 0
    release.set()
    assert await scan_keys(kv) == KEYS
    assert (await kv.Get(kv_pb2.GetRequest(key=KEYS[-1]))).found
    assert errors_logged(caplog) == []


def entry(key: bytes, value: bytes = b"1", **fields: Any) -> kv_pb2.Entry:
    return kv_pb2.Entry(key=key, value=value, **fields)


def bad_json(key: bytes) -> kv_pb2.Entry:
    return entry(key, b'{"a": ', json=True)


BIG = b"x" * (2 << 20)  # past the 1 MiB value limit
INVALID, TOO_LARGE = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
FIRST_FAULT_CASES = [  # (entries, the field named, the code): the lowest index wins
    ([entry(b"a"), bad_json(b"b"), entry(b"c"), entry(b"c")], "entries[1].value", INVALID),
    ([entry(b"a"), bad_json(b"c"), entry(b"b")], "entries[1].value", INVALID),
    ([bad_json(b"a"), entry(b"b"), entry(b"")], "entries[0].value", INVALID),
    ([entry(b"a"), bad_json(b"b"), entry(b"c", ttl_s=-1)], "entries[1].value", INVALID),
    ([bad_json(b"a"), entry(b"b", BIG)], "entries[0].value", INVALID),
    ([entry(b"a"), entry(b"a"), bad_json(b"b")], "entries[1].key", INVALID),
    ([entry(b"a"), entry(b"b", BIG), bad_json(b"c")], "entries[1].value", TOO_LARGE),
    ([entry(b"b"), bad_json(b"a")], "entries[1].key", INVALID),  # an entry's key before its JSON
]


@pytest.mark.parametrize(
    ("entries", "field", "code"),
    FIRST_FAULT_CASES,
    ids=[
        "json-before-duplicate",
        "json-before-unsorted",
        "json-before-empty-key",
        "json-before-bad-ttl",
        "json-before-too-large",
        "duplicate-before-json",
        "too-large-before-json",
        "key-before-its-own-json",
    ],
)
async def test_a_bulk_put_batch_with_faults_of_both_kinds_names_its_first_bad_entry(
    kv: kv_pb2_grpc.KVStub, entries: list[kv_pb2.Entry], field: str, code: grpc.StatusCode
) -> None:
    call = kv.BulkPut()
    await call.write(kv_pb2.BulkPutRequest(entries=entries))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == code
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == field
    assert await scan_keys(kv) == []  # nothing of the batch was written
