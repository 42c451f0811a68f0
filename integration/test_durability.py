"""Acknowledged writes survive SIGKILL of a real `keyspan serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import grpc
import pytest

from integration.conftest import ServeProcess
from keyspan.v1 import kv_pb2, kv_pb2_grpc


async def write_until_killed(
    address: str,
    stop: threading.Event,
    acked: dict[bytes, tuple[bytes, int]],
    batches: list[tuple[list[bytes], bool]],
) -> None:
    """Puts from 32 workers and one BulkPut stream, recording what was acknowledged."""
    async with grpc.aio.insecure_channel(address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)

        async def putter(worker: int) -> None:
            n = 0
            while not stop.is_set():
                key, value = b"put/%02d/%06d" % (worker, n), b"value-%d-%d" % (worker, n)
                try:
                    etag = (await kv.Put(kv_pb2.PutRequest(key=key, value=value), timeout=5)).etag
                except grpc.aio.AioRpcError:
                    return
                acked[key] = (value, etag)
                n += 1

        async def bulk() -> None:
            call = kv.BulkPut()
            n = 0
            try:
                while not stop.is_set():
                    keys = [b"zbulk/%08d" % i for i in range(n, n + 500)]
                    record = (keys, False)
                    batches.append(record)
                    await call.write(
                        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=k, value=k) for k in keys])
                    )
                    answer = await call.read()
                    if answer is grpc.aio.EOF:
                        return
                    assert answer.accepted == len(keys)
                    batches[-1] = (keys, True)
                    n += 500
            except grpc.aio.AioRpcError:
                return

        await asyncio.gather(*(putter(w) for w in range(32)), bulk())


@pytest.mark.quick
def test_acknowledged_writes_survive_kill_9(serve_process: ServeProcess) -> None:
    server = serve_process.start()
    stop = threading.Event()
    acked: dict[bytes, tuple[bytes, int]] = {}
    batches: list[tuple[list[bytes], bool]] = []
    writer = threading.Thread(
        target=asyncio.run, args=(write_until_killed(server.address, stop, acked, batches),)
    )
    writer.start()
    deadline = time.monotonic() + 30
    while (len(acked) < 2000 or sum(done for _, done in batches) < 10) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # mid-stream: writes are in flight
    stop.set()
    writer.join(30)
    assert len(acked) >= 2000, "too few writes were acknowledged before the kill"

    server.start()  # same data dir; health SERVING again
    with grpc.insecure_channel(server.address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for key, (value, etag) in acked.items():
            got = kv.Get(kv_pb2.GetRequest(key=key))
            assert (got.found, got.value, got.etag) == (True, value, etag), key
        for keys, was_acked in batches:
            present = [
                kv.Get(kv_pb2.GetRequest(key=k)).found for k in (keys[0], keys[len(keys) // 2], keys[-1])
            ]
            if was_acked:
                assert all(present)
            else:  # a batch in flight at the kill is all there or not at all
                assert len(set(present)) == 1
        # Etags keep growing after the restart: none is ever handed out twice.
        newest = max(etag for key, (_, etag) in acked.items() if key.startswith(b"put/"))
        again = kv.Put(kv_pb2.PutRequest(key=b"put/after", value=b"x")).etag
        assert again > newest
    assert server.stop() == 0
    with contextlib.suppress(FileNotFoundError):
        assert "Traceback" not in server.log.read_text()
