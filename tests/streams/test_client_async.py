"""AsyncClient against a KeyspanServer on the test's own event loop (module loop scope)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from keyspan.services.config import ServeConfig
from keyspan.services.server import KeyspanServer
from keyspan.streams import AsyncClient, EtagMismatch, InvalidArgument

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def kv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AsyncClient]:
    data: Path = tmp_path_factory.mktemp("aio")
    server = KeyspanServer(ServeConfig(address="127.0.0.1:0", data=data, synchronous="NORMAL"))
    port = await server.start()
    async with AsyncClient(f"127.0.0.1:{port}") as client:
        yield client
    await server.stop(0)


async def test_put_get_delete_round_trip(kv: AsyncClient) -> None:
    etag = await kv.put("a/1", "text")
    entry = await kv.get("a/1")
    assert entry is not None and entry.value == b"text" and entry.etag == etag
    assert await kv.delete("a/1", if_etag=etag)
    assert await kv.get("a/1") is None


async def test_json_true_stores_a_string_as_a_json_document(kv: AsyncClient) -> None:
    await kv.put("a/s", "hello", json=True)
    entry = await kv.get("a/s", json=True)
    assert entry is not None and entry.is_json and entry.value == "hello"


async def test_delete_with_a_stale_etag_is_aborted(kv: AsyncClient) -> None:
    etag = await kv.put("a/2", b"v")
    await kv.put("a/2", b"w")
    with pytest.raises(EtagMismatch) as caught:
        await kv.delete("a/2", if_etag=etag)
    assert caught.value.current_etag > etag


async def test_scan_streams_across_partitions_in_order(kv: AsyncClient) -> None:
    keys = [f"{c}{i:04d}".encode() for c in "bhpv" for i in range(500)]
    result = await kv.bulk_put((k, k) for k in keys)
    assert result.entries == len(keys)
    got = [e.key async for e in kv.scan("b", "w")]
    assert got == keys
    assert [e.key async for e in kv.scan_ex("b", "w", reverse=True, limit=3)] == keys[::-1][:3]


async def test_bulk_put_of_a_bad_ttl_names_the_entry(kv: AsyncClient) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await kv.bulk_put([("c1", b"v", 0.0), ("c2", b"v", -5.0)])
    assert caught.value.field == "entries[1].ttl_s"


async def test_sweep_reports_progress_to_done(kv: AsyncClient) -> None:
    reports = [p async for p in kv.sweep("x", "y", max_deletes_per_s=1000)]
    assert reports[-1].done
