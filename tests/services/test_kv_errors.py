"""Every bad input the issue names gets a clear status naming the field, and changes nothing."""

from __future__ import annotations

import contextlib
import json
import os
import resource
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from keyspan.services.common.errors import MAX_MESSAGE_CHARS, to_status
from keyspan.services.server import KeyspanServer
from keyspan.storage.errors import InvalidArgumentError
from keyspan.v1 import errors_pb2, kv_pb2, kv_pb2_grpc

BIG = b"x" * (1 << 20 + 1)
DEEP = "[" * 999 + "]" * 999  # a JSON array nested 999 levels deep


def details(err: grpc.aio.AioRpcError) -> dict[str, object]:
    status = rpc_status.from_call(err)
    found: dict[str, object] = {}
    assert status is not None, "the error carries no google.rpc.Status"
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            errors_pb2.WrongPartition,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


async def snapshot(kv: kv_pb2_grpc.KVStub) -> list[tuple[bytes, bytes, int]]:
    call = kv.Scan()
    await call.write(kv_pb2.ScanRequest(credits=100_000))
    rows = []
    async for response in call:
        rows += [(e.key, e.value, e.etag) for e in response.entries]
        if response.done:
            break
    return rows


async def seed(kv: kv_pb2_grpc.KVStub) -> None:
    await kv.Put(kv_pb2.PutRequest(key=b"doc", value=b'{"a": 1}', json=True))
    await kv.Put(kv_pb2.PutRequest(key=b"raw", value=b"bytes"))


UNARY_CASES = [
    ("Put", kv_pb2.PutRequest(key=b"", value=b"v"), grpc.StatusCode.INVALID_ARGUMENT, "key", "empty"),
    ("Put", kv_pb2.PutRequest(key=b"k" * 1025), grpc.StatusCode.INVALID_ARGUMENT, "key", "limit is 1024"),
    ("Get", kv_pb2.GetRequest(key=b"k" * 1025), grpc.StatusCode.INVALID_ARGUMENT, "key", "limit is 1024"),
    ("Put", kv_pb2.PutRequest(key=b"k", value=BIG), grpc.StatusCode.RESOURCE_EXHAUSTED, "value", "limit is"),
    (  # the proto says which field: merge_patch itself, or the patched document's `value`
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", merge_patch='{"b": "%s"}' % ("x" * len(BIG))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "merge_patch",
        "limit is",
    ),
    (  # as merge_patch: refused before the entry is read, so not NOT_FOUND here
        "Patch",
        kv_pb2.PatchRequest(
            key=b"missing", set=[kv_pb2.PathValue(path="$.b", value='"%s"' % ("x" * len(BIG)))]
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "set[0].value",
        "limit is",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"{no", json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "JSON",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"[1,,2]", json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "the first fault is at character 4",
    ),
    (  # stored twice, the member read differently by SQLite's paths, patches and readers
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b'{"a": {"b": 1, "b": 2}}', json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "must name each member of an object once (RFC 8259 leaves repeated names undefined);"
        " $.a.b is repeated",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", merge_patch='{"n": 5, "n": null}'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "merge_patch",
        "$.n is repeated",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="$.a", value='[{"x": 1, "x": 1}]')]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set[0].value",
        "$[0].x is repeated",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=f"[[{DEEP}]]".encode(), json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "nested at most 1000 levels deep",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"\xff", json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "UTF-8",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"v", ttl_s=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl_s",
        "between",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"v", ttl_s=1e12),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl_s",
        "between",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", ttl_s=float("nan")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "ttl_s",
        "between",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b"v", ttl_s=5, keep_ttl=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "keep_ttl",
        "ttl_s must then be 0",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", if_etag=1, if_absent=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "if_absent",
        "combined",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"raw", merge_patch="{}"),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
        "NOT_JSON",
    ),
    ("Patch", kv_pb2.PatchRequest(key=b"doc"), grpc.StatusCode.INVALID_ARGUMENT, "merge_patch", "needs"),
    (
        "Patch",  # each part is nested 1000 levels at most; the patched document would be 1001
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="$.a", value=f"[{DEEP}]")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set",
        "nest deeper than 1000 levels",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", merge_patch="[1,"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "merge_patch",
        "JSON",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", remove=["a"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "remove[0]",
        "JSON path",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"nope", merge_patch="{}"),
        grpc.StatusCode.NOT_FOUND,
        None,
        "NOT_FOUND",
    ),
    (
        "Get",
        kv_pb2.GetRequest(key=b"doc", paths=["$.a", "$$"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paths[1]",
        "JSON path",
    ),
    (
        "Get",
        kv_pb2.GetRequest(key=b"raw", paths=["$.a"]),
        grpc.StatusCode.FAILED_PRECONDITION,
        None,
        "NOT_JSON",
    ),
    (
        "Get",
        kv_pb2.GetRequest(key=b"doc", paths=["$.a"] * 65),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paths",
        "limit is 64",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"doc", value=b"v", if_etag=999),
        grpc.StatusCode.ABORTED,
        None,
        "ETAG_MISMATCH",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"doc", value=b"v", if_absent=True),
        grpc.StatusCode.ABORTED,
        None,
        "ETAG_MISMATCH",
    ),
    ("Delete", kv_pb2.DeleteRequest(key=b"doc", if_etag=999), grpc.StatusCode.ABORTED, None, "ETAG_MISMATCH"),
    # SQLite reads JSON text and paths only up to a NUL: what follows one went unseen
    (
        "Put",
        kv_pb2.PutRequest(key=b"k", value=b'{"a":1}\x00{"evil":true}', json=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "the first fault is at character 8",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", merge_patch='{"k":1}\x00junk'),
        grpc.StatusCode.INVALID_ARGUMENT,
        "merge_patch",
        "JSON",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="$.a", value="2\x00junk")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set[0].value",
        "JSON",
    ),
    (
        "Patch",  # would have removed all of $.a
        kv_pb2.PatchRequest(key=b"doc", remove=["$.a\x00.b"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "remove[0]",
        "JSON path",
    ),
    (
        "Get",
        kv_pb2.GetRequest(key=b"doc", paths=["$.a\x00.b"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paths[0]",
        "JSON path",
    ),
    (
        "Get",  # a projection names its members by path
        kv_pb2.GetRequest(key=b"doc", paths=["$.a", "$.b", "$.a"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paths[2]",
        "repeats paths[0]",
    ),
    # A request that can never succeed is INVALID_ARGUMENT (do not retry), whatever the
    # entry's state; not ABORTED (retry), NOT_FOUND or NOT_JSON first.
    (
        "Put",
        kv_pb2.PutRequest(key=b"doc", value=b"{no", json=True, if_etag=999),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "JSON",
    ),
    (
        "Put",
        kv_pb2.PutRequest(key=b"doc", value=b"{no", json=True, if_absent=True),
        grpc.StatusCode.INVALID_ARGUMENT,
        "value",
        "JSON",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"nope", remove=["a"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "remove[0]",
        "JSON path",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"raw", merge_patch="[1,"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "merge_patch",
        "JSON",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="a", value="1")], if_etag=999),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set[0].path",
        "JSON path",
    ),
    # A quoted key is a JSON string's body: SQLite set `$."a\qb"` into the document as
    # written, which then was not JSON; `$."a\"` was judged only after the entry was read.
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path='$."a\\qb"', value="1")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set[0].path",
        "JSON path",
    ),
    (
        "Patch",
        kv_pb2.PatchRequest(key=b"missing", set=[kv_pb2.PathValue(path='$."\\u00"', value="1")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "set[0].path",
        "JSON path",
    ),
    (
        "Get",
        kv_pb2.GetRequest(key=b"missing", paths=['$."a\\"']),
        grpc.StatusCode.INVALID_ARGUMENT,
        "paths[0]",
        "JSON path",
    ),
]


@pytest.mark.parametrize(("method", "request_", "code", "field", "rule"), UNARY_CASES)
async def test_bad_unary_input_is_refused_with_its_field_and_nothing_changes(
    kv: kv_pb2_grpc.KVStub, method: str, request_: object, code: grpc.StatusCode, field: str | None, rule: str
) -> None:
    await seed(kv)
    before = await snapshot(kv)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(kv, method)(request_)
    assert caught.value.code() == code
    found = details(caught.value)
    if field is not None:
        violation = found["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
        assert violation.field == field
        assert rule in violation.description
    else:
        assert found["ErrorInfo"].reason == rule  # type: ignore[attr-defined]
    assert await snapshot(kv) == before


async def test_an_etag_mismatch_carries_the_current_etag(kv: kv_pb2_grpc.KVStub) -> None:
    etag = (await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"v"))).etag
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await kv.Put(kv_pb2.PutRequest(key=b"k", value=b"w", if_etag=etag + 1))
    assert details(caught.value)["ErrorInfo"].metadata["current_etag"] == str(etag)  # type: ignore[attr-defined]


async def stream_error(call: grpc.aio.StreamStreamCall, request: object) -> grpc.aio.AioRpcError:
    await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            continue
    return caught.value


STREAM_CASES = [
    ("Scan", kv_pb2.ScanRequest(start=b"m", end=b"c", credits=10), "end", "greater than start"),
    ("Scan", kv_pb2.ScanRequest(start=b"m", end=b"m", credits=10), "end", "greater than start"),
    ("Scan", kv_pb2.ScanRequest(credits=0), "credits", "between 1 and"),
    ("Scan", kv_pb2.ScanRequest(credits=5, paths=["nope"]), "paths[0]", "JSON path"),
    ("Sweep", kv_pb2.SweepRequest(start=b"z", end=b"a"), "end", "greater than start"),
    ("Sweep", kv_pb2.SweepRequest(max_deletes_per_s=-1), "max_deletes_per_s", "between 1 and 1e+09"),
    ("Sweep", kv_pb2.SweepRequest(max_deletes_per_s=float("nan")), "max_deletes_per_s", "not nan"),
    ("Sweep", kv_pb2.SweepRequest(max_deletes_per_s=float("inf")), "max_deletes_per_s", "not inf"),
    ("Sweep", kv_pb2.SweepRequest(max_deletes_per_s=1e-9), "max_deletes_per_s", "between 1 and"),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(
            entries=[kv_pb2.Entry(key=b"b", value=b"1"), kv_pb2.Entry(key=b"a", value=b"2")]
        ),
        "entries[1].key",
        "sorted",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(
            entries=[kv_pb2.Entry(key=b"a", value=b"1"), kv_pb2.Entry(key=b"a", value=b"2")]
        ),
        "entries[1].key",
        "duplicate",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"", value=b"1")]),
        "entries[0].key",
        "empty",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(
            entries=[kv_pb2.Entry(key=b"a", value=b"1"), kv_pb2.Entry(key=b"b", value=b"{", json=True)]
        ),
        "entries[1].value",
        "JSON",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a", ttl_s=-5)]),
        "entries[0].ttl_s",
        "between",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a", value=b"[1]\x00[2]", json=True)]),
        "entries[0].value",
        "the first fault is at character 4",
    ),
    (
        "BulkPut",
        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a", value=b'{"k": 1, "k": 2}', json=True)]),
        "entries[0].value",
        "$.k is repeated",
    ),
    ("Scan", kv_pb2.ScanRequest(credits=5, paths=["$.a", "$.a"]), "paths[1]", "repeats paths[0]"),
]


@pytest.mark.parametrize(("method", "request_", "field", "rule"), STREAM_CASES)
async def test_bad_stream_input_is_refused_with_its_field_and_nothing_changes(
    kv: kv_pb2_grpc.KVStub, method: str, request_: object, field: str, rule: str
) -> None:
    await seed(kv)
    before = await snapshot(kv)
    err = await stream_error(getattr(kv, method)(), request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = details(err)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert (violation.field, rule in violation.description) == (field, True)
    assert await snapshot(kv) == before


async def test_an_unknown_fault_is_internal_without_a_stack_trace(kv: kv_pb2_grpc.KVStub, server) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("boom")

    server.shards.get = broken
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await kv.Get(kv_pb2.GetRequest(key=b"k"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "Traceback" not in caught.value.details() and "ZeroDivisionError" in caught.value.details()


async def test_a_full_disk_refuses_writes_retryably_and_keeps_what_was_acknowledged(
    server: KeyspanServer, kv: kv_pb2_grpc.KVStub, caplog: pytest.LogCaptureFixture
) -> None:
    etag = (await kv.Put(kv_pb2.PutRequest(key=b"a", value=b"v"))).etag
    partition = server.shards.partitions[0]  # [-inf, g)
    db = partition.shard._db  # the writer's connection
    # SQLite's own SQLITE_FULL, as from a full disk: the file may not grow by a page
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    big = b"x" * 50_000
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kv.Put(kv_pb2.PutRequest(key=b"b", value=big))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the disk is full" in caught.value.details()
        found = details(caught.value)
        assert found["ErrorInfo"].reason == "DISK_FULL"  # type: ignore[attr-defined]
        assert found["ErrorInfo"].metadata["partition_id"] == partition.id  # type: ignore[attr-defined]
        assert found["RetryInfo"].retry_delay.seconds > 0  # type: ignore[attr-defined]
    call = kv.BulkPut()
    await call.write(kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"c", value=big)]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    got = await kv.Get(kv_pb2.GetRequest(key=b"a"))
    assert (got.found, got.value, got.etag) == (True, b"v", etag)
    assert not (await kv.Get(kv_pb2.GetRequest(key=b"b"))).found
    assert partition.writer.faults == {"disk_full": 4, "io": 0}
    said = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in said] == ["disk full: writes refused"]  # once, not per write

    db.execute("PRAGMA max_page_count = 4294967294")  # space freed
    assert (await kv.Put(kv_pb2.PutRequest(key=b"b", value=big))).etag == etag + 1


@contextlib.contextmanager
def no_descriptor_left() -> Iterator[None]:
    """Every descriptor number the process may use is taken until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1, hard))
    filler = []
    try:
        with contextlib.suppress(OSError):
            while True:
                filler.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_node_out_of_descriptors_refuses_reads_retryably_and_says_so_once(
    server: KeyspanServer, kv: kv_pb2_grpc.KVStub, caplog: pytest.LogCaptureFixture
) -> None:
    etag = (await kv.Put(kv_pb2.PutRequest(key=b"zebra", value=b"v"))).etag  # p0003 [u, +inf)
    partition = server.shards.locate(b"zebra")
    with no_descriptor_left():  # and p0003 has no read connection open yet
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await kv.Get(kv_pb2.GetRequest(key=b"zebra"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "open-files limit" in caught.value.details() and "ulimit -n" in caught.value.details()
            found = details(caught.value)
            assert found["ErrorInfo"].reason == "OPEN_FILES_LIMIT"  # type: ignore[attr-defined]
            assert found["ErrorInfo"].metadata["partition_id"] == partition.id  # type: ignore[attr-defined]
            assert found["RetryInfo"].retry_delay.ToMilliseconds() > 0  # type: ignore[attr-defined]
    said = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert said == ["open-files limit reached: calls refused"]  # once, and no traceback

    got = await kv.Get(kv_pb2.GetRequest(key=b"zebra"))  # descriptors back: served again
    assert (got.found, got.value, got.etag) == (True, b"v", etag)


async def test_a_patch_that_would_grow_a_document_past_the_value_limit_changes_nothing(
    kv: kv_pb2_grpc.KVStub,
) -> None:
    doc = b'{"a": "' + b"x" * 1_000_000 + b'"}'
    etag = (await kv.Put(kv_pb2.PutRequest(key=b"doc", value=doc, json=True))).etag
    grow = [
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="$.b", value='"' + "y" * 100_000 + '"')]),
        kv_pb2.PatchRequest(key=b"doc", merge_patch='{"c": "' + "z" * 100_000 + '"}'),
    ]
    for request in grow:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await kv.Patch(request)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "value: is 1100015 bytes once patched; the limit is 1048576"
        violation = details(caught.value)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
        assert violation.field == "value"
    got = await kv.Get(kv_pb2.GetRequest(key=b"doc"))
    assert (got.etag, len(got.value)) == (etag, len(b'{"a":"' + b"x" * 1_000_000 + b'"}'))
    short = kv_pb2.PathValue(path="$.a", value='"short"')
    shrink = await kv.Patch(kv_pb2.PatchRequest(key=b"doc", set=[short]))
    assert (shrink.etag, shrink.value) == (etag + 1, b'{"a":"short"}')


def raw_method(server: KeyspanServer, channel: grpc.aio.Channel, method: str, response: type) -> object:
    """A KV method whose requests are sent as the bytes given, unchecked by protobuf."""
    path = f"/keyspan.v1.KV/{method}"
    deserialize = response.FromString  # type: ignore[attr-defined]
    if method in ("Scan", "BulkPut", "Sweep"):
        return channel.stream_stream(path, request_serializer=bytes, response_deserializer=deserialize)
    return channel.unary_unary(path, request_serializer=bytes, response_deserializer=deserialize)


SET_A = b"\x1a\x07\x0a\x03$.a\x12\x00"  # set[0]: path $.a
NOT_UTF8 = [  # raw protobuf with \xff in a string field, and the field it should name
    ("Get", kv_pb2.GetResponse, b"\x0a\x01k\x12\x01\xff", "paths[0]"),
    ("Patch", kv_pb2.PatchResponse, b"\x0a\x03doc\x12\x01\xff", "merge_patch"),
    (
        "Patch",
        kv_pb2.PatchResponse,
        b"\x0a\x03doc\x1a\x07\x0a\x03$.a\x12\x00\x1a\x03\x12\x01\xff",
        "set[1].value",
    ),
    ("Patch", kv_pb2.PatchResponse, b"\x0a\x03doc\x22\x01\xff", "remove[0]"),
    ("Get", kv_pb2.GetResponse, b"\x0a\x05k", "request"),  # the wire format itself is broken
]


@pytest.mark.parametrize(("method", "response", "raw", "field"), NOT_UTF8)
async def test_a_request_that_does_not_parse_is_invalid_argument_naming_its_field(
    server: KeyspanServer,
    kv: kv_pb2_grpc.KVStub,
    caplog: pytest.LogCaptureFixture,
    method: str,
    response: type,
    raw: bytes,
    field: str,
) -> None:
    await seed(kv)
    before = await snapshot(kv)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw_method(server, channel, method, response)(raw)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = details(caught.value)["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == field
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []  # the client's fault, not logged
    assert await snapshot(kv) == before


async def test_a_stream_request_that_does_not_parse_ends_the_stream_after_the_ones_before(
    server: KeyspanServer, kv: kv_pb2_grpc.KVStub
) -> None:
    good = kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a", value=b"1")]).SerializeToString()
    bad = b"\x0a\x05\x0a\x01b\x12"  # an Entry cut short
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = raw_method(server, channel, "BulkPut", kv_pb2.BulkPutResponse)()  # type: ignore[operator]
        await call.write(good)
        await call.write(bad)
        assert (await call.read()).accepted == 1  # the batch before is answered first
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value)["BadRequest"].field_violations[0].field == "request"  # type: ignore[attr-defined]

        await kv.Put(kv_pb2.PutRequest(key=b"b", value=b"2"))  # the scan waits for credits after a
        scan = raw_method(server, channel, "Scan", kv_pb2.ScanResponse)()  # type: ignore[operator]
        await scan.write(kv_pb2.ScanRequest(credits=1).SerializeToString())
        assert [e.key for e in (await scan.read()).entries] == [b"a"]
        await scan.write(b"\x22\x01\xff")  # a later request: paths[0] is not UTF-8
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await scan.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(caught.value)["BadRequest"].field_violations[0].field == "paths[0]"  # type: ignore[attr-defined]
    assert (await kv.Get(kv_pb2.GetRequest(key=b"a"))).value == b"1"


async def test_a_projection_over_the_value_limit_is_refused_and_a_scan_delivers_what_came_before(
    kv: kv_pb2_grpc.KVStub, caplog: pytest.LogCaptureFixture
) -> None:
    big = b'{"a": "' + b"x" * 600_000 + b'", "b": 1}'  # under the 1 MiB limit; $ and $.a: over
    await kv.Put(kv_pb2.PutRequest(key=b"a1", value=b'{"a": 1}', json=True))
    await kv.Put(kv_pb2.PutRequest(key=b"a2", value=big, json=True))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await kv.Get(kv_pb2.GetRequest(key=b"a2", paths=["$", "$.a"]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The values the paths select add up past the limit, so the projection is not built.
    refused = "paths: is 1200016 bytes or more, projected from 'a2'; the limit is 1048576"
    assert caught.value.details() == refused
    assert details(caught.value)["BadRequest"].field_violations[0].field == "paths"  # type: ignore[attr-defined]
    assert (await kv.Get(kv_pb2.GetRequest(key=b"a2", paths=["$.b"]))).value == b'{"$.b":1}'

    call = kv.Scan()
    await call.write(kv_pb2.ScanRequest(start=b"a", end=b"b", paths=["$", "$.a"], credits=10))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            assert [e.key for e in response.entries] == [b"a1"]
            assert response.resume_key == b"a1\x00" and not response.done
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []


async def test_set_creates_missing_parent_objects_as_documented(kv: kv_pb2_grpc.KVStub) -> None:
    await kv.Put(kv_pb2.PutRequest(key=b"doc", value=b'{"a": 1, "l": [1]}', json=True))
    sets = [("$.x.y", "1"), ("$.p.q[0]", "2"), ("$.l[1]", "3"), ("$.l[5]", "4"), ("$.a.b", "5")]
    patched = await kv.Patch(
        kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path=p, value=v) for p, v in sets])
    )
    assert patched.value == b'{"a":1,"l":[1,3],"x":{"y":1},"p":{"q":[2]}}'


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Get", kv_pb2.GetRequest(key=b"doc", paths=["x" * 10_000]), "paths[0]"),
        ("Get", kv_pb2.GetRequest(key=b"doc", paths=["$.a", "é" * 3_000, "é" * 3_000]), "paths[1]"),
        ("Patch", kv_pb2.PatchRequest(key=b"doc", remove=["x" * 100_000]), "remove[0]"),
        (
            "Patch",
            kv_pb2.PatchRequest(key=b"doc", set=[kv_pb2.PathValue(path="y" * 50_000, value="1")]),
            "set[0].path",
        ),
    ],
    ids=["ascii", "non-ascii", "remove", "set"],
)
async def test_a_long_bad_path_is_quoted_in_part_so_the_error_reaches_the_client(
    kv: kv_pb2_grpc.KVStub, method: str, request_: object, field: str
) -> None:
    # Quoted whole, it went twice into gRPC's trailers, past the client's 16 KiB cap: the
    # client got RESOURCE_EXHAUSTED "received metadata size exceeds hard limit" instead.
    await seed(kv)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(kv, method)(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)["BadRequest"].field_violations[0].field == field  # type: ignore[attr-defined]
    message = caught.value.details() or ""
    assert len(message) < 300 and "characters)" in message and "is not a JSON path" in message


async def test_a_long_path_in_a_scan_is_quoted_in_part(kv: kv_pb2_grpc.KVStub) -> None:
    err = await stream_error(kv.Scan(), kv_pb2.ScanRequest(credits=5, paths=["z" * 40_000]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.details() or "") < 300


def test_any_status_message_is_bounded_whatever_an_error_quotes() -> None:
    status = to_status(InvalidArgumentError("value", "x" * 50_000))
    assert status is not None
    assert len(status.details) <= MAX_MESSAGE_CHARS and status.details.endswith("(cut from 50007 characters)")


async def test_a_member_named_with_a_quote_can_be_read_and_set_by_a_quoted_path(
    kv: kv_pb2_grpc.KVStub,
) -> None:
    await kv.Put(kv_pb2.PutRequest(key=b"q", value=b'{"k\\"q": 1}', json=True))
    got = await kv.Get(kv_pb2.GetRequest(key=b"q", paths=['$."k\\"q"']))
    assert got.value == b'{"$.\\"k\\\\\\"q\\"":1}'
    patched = await kv.Patch(
        kv_pb2.PatchRequest(key=b"q", set=[kv_pb2.PathValue(path='$."\\u00e9"', value="2")])
    )
    assert json.loads(patched.value) == {'k"q': 1, "\u00e9": 2}  # JSON still
