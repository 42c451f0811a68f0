"""The bare grpc.aio limit: keyspan.v1.KV answered without storage.

It speaks keyspan's own service, so the very same client harness drives it and the ratio
keyspan/echo isolates what storage and the servicer cost. Get answers a value of the
configured size; writes answer an etag; Scan streams the asked-for number of entries in
~64 KiB batches; BulkPut acknowledges each batch. One process, one event loop, the same
server options and start-up as keyspan's.

    python -m integration.perf.echo 127.0.0.1:PORT VALUE_BYTES
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from keyspan.services.common.process import freeze_startup_objects, server_options
from keyspan.v1 import kv_pb2, kv_pb2_grpc

BATCH_BYTES = 64 * 1024


class EchoKV(kv_pb2_grpc.KVServicer):
    def __init__(self, value_bytes: int) -> None:
        self._get = kv_pb2.GetResponse(found=True, value=b"v" * value_bytes, etag=1)
        entry = kv_pb2.Entry(key=b"user%016x" % 0, value=b"v" * value_bytes, etag=1)
        self._per_batch = max(1, BATCH_BYTES // entry.ByteSize())
        self._batch = [entry] * self._per_batch

    async def Get(self, request: kv_pb2.GetRequest, context: object) -> kv_pb2.GetResponse:
        return self._get

    async def Put(self, request: kv_pb2.PutRequest, context: object) -> kv_pb2.PutResponse:
        return kv_pb2.PutResponse(etag=1)

    async def Patch(self, request: kv_pb2.PatchRequest, context: object) -> kv_pb2.PatchResponse:
        return kv_pb2.PatchResponse(etag=1, value=self._get.value)

    async def Scan(
        self, requests: AsyncIterator[kv_pb2.ScanRequest], context: object
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        first = await anext(requests)
        left = first.limit or 1_000_000
        while left > 0:
            n = min(left, self._per_batch)
            left -= n
            yield kv_pb2.ScanResponse(entries=self._batch[:n], resume_key=b"r", done=left == 0)

    async def BulkPut(
        self, requests: AsyncIterator[kv_pb2.BulkPutRequest], context: object
    ) -> AsyncIterator[kv_pb2.BulkPutResponse]:
        async for request in requests:
            yield kv_pb2.BulkPutResponse(accepted=len(request.entries))


async def serve(address: str, value_bytes: int) -> None:
    server = grpc.aio.server(options=server_options())
    kv_pb2_grpc.add_KVServicer_to_server(EchoKV(value_bytes), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(address)
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    freeze_startup_objects()  # as keyspan's processes do
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
