"""A burst of concurrent calls is queued and served, not refused."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from keyspan.v1 import kv_pb2, kv_pb2_grpc

BURST = 3000  # gRPC's defaults refuse calls at random past 1000 waiting to start, and all past 3000


async def test_a_burst_of_concurrent_calls_is_served_not_cancelled(server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        kv = kv_pb2_grpc.KVStub(channel)
        puts = (kv.Put(kv_pb2.PutRequest(key=b"k%05d" % i, value=b"v")) for i in range(BURST))
        results = await asyncio.gather(*puts, return_exceptions=True)
    refused = Counter(r.code().name for r in results if isinstance(r, grpc.RpcError))
    assert refused == Counter()
    assert sum(isinstance(r, kv_pb2.PutResponse) for r in results) == BURST
