"""Long-lived streams of a real `keyspan serve` survive the clients' keepalive pings."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from integration.conftest import ServeProcess
from keyspan.services.common.process import MIN_CLIENT_PING_INTERVAL_MS
from keyspan.streams.router import CHANNEL_OPTIONS
from keyspan.v1 import kv_pb2, kv_pb2_grpc

# The client's own options, pinging at just over the least interval the server accepts,
# so that the strikes gRPC counts come in 45 s instead of 90.
PING_MS = MIN_CLIENT_PING_INTERVAL_MS + 1_000
IDLE_S = 4 * PING_MS / 1000  # gRPC closed the connection at the third ping before the fix


async def idle_scan_then_resume(address: str) -> list[bytes]:
    options = [(k, PING_MS if k == "grpc.keepalive_time_ms" else v) for k, v in CHANNEL_OPTIONS]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        for key in (b"a1", b"a2"):
            await kv.Put(kv_pb2.PutRequest(key=key, value=key))
        call = kv.Scan()
        await call.write(kv_pb2.ScanRequest(start=b"a", end=b"b", credits=1))
        keys = [e.key for e in (await call.read()).entries]
        pending = asyncio.ensure_future(call.read())
        with pytest.raises(asyncio.TimeoutError):  # nothing to read: the stream waits, alive
            await asyncio.wait_for(asyncio.shield(pending), IDLE_S)
        await call.write(kv_pb2.ScanRequest(credits=10))
        response = await pending
        while True:
            keys += [e.key for e in response.entries]
            if response.done:
                return keys
            response = await call.read()


@pytest.mark.quick
@pytest.mark.timeout(120)
def test_an_idle_stream_outlives_the_clients_keepalive_pings(serve_process: ServeProcess) -> None:
    assert dict(CHANNEL_OPTIONS)["grpc.keepalive_time_ms"] >= 2 * MIN_CLIENT_PING_INTERVAL_MS
    server = serve_process.start()
    assert asyncio.run(idle_scan_then_resume(server.address)) == [b"a1", b"a2"]
    assert server.stop() == 0
