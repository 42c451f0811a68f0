"""keyspan.v1.KV at the gateway: each call goes to the owner of its key, by the watched map."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from keyspan.services.gateway.routing import Router, is_transport_failure, node_unreachable, relay
from keyspan.services.gateway.streams import bulk_put_through, scan_through, sweep_through
from keyspan.storage.errors import UnavailableError
from keyspan.storage.limits import Limits
from keyspan.v1 import kv_pb2, kv_pb2_grpc


class GatewayServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, router: Router, call_timeout_s: float, stopping: asyncio.Event) -> None:
        self._router, self._timeout_s, self._stopping = router, call_timeout_s, stopping
        self._limits = Limits()

    def _deadline(self, context: grpc.aio.ServicerContext) -> float:
        """The node call's deadline: what is left of the caller's, as keyspan serve would
        work to it; --call-timeout-s only for a caller that set none. (Every node call had
        --call-timeout-s: a caller's 30 s Put ended DEADLINE_EXCEEDED after 10 s, and a
        1 s one left the node working to 10 s.)"""
        remaining = context.time_remaining()
        return self._timeout_s if remaining is None else max(remaining, 0.001)

    async def _unary(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        key = self._limits.key(request.key)
        timeout_s = self._deadline(context)
        try:
            return await self._router.call(
                key, lambda stub: getattr(stub, method)(request, timeout=timeout_s)
            )
        except grpc.aio.AioRpcError as err:
            await relay(context, err)

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Get", request, context)

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Put", request, context)

    async def Delete(self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Delete", request, context)

    async def Patch(self, request: kv_pb2.PatchRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._unary("Patch", request, context)

    async def Stats(self, request: kv_pb2.StatsRequest, context: grpc.aio.ServicerContext) -> Any:
        """Every node's partitions that the map assigns to it, merged in key order;
        UNAVAILABLE while one has no routable owner (the answer claims every partition)."""
        if not len(self._router.map):  # an empty answer would claim an empty store
            raise UnavailableError("no partition map yet (control not reached)", retry_after_s=0.5)
        for entry in self._router.map.entries:
            if not entry.routable:
                raise entry.unavailable()
        owners = {e.address: e for e in self._router.map.entries}
        assigned = {(e.partition_id, e.address) for e in self._router.map.entries}

        async def ask(address: str) -> kv_pb2.StatsResponse:
            try:
                return await self._router.channels.stub(address).Stats(
                    request, timeout=self._deadline(context)
                )
            except grpc.aio.AioRpcError as err:
                if is_transport_failure(err):
                    raise node_unreachable(owners[address], err) from None
                await relay(context, err)

        answers = await asyncio.gather(*(ask(a) for a in owners))
        response = kv_pb2.StatsResponse()
        parts = [
            p
            for address, a in zip(owners, answers, strict=True)
            for p in a.partitions
            if (p.partition_id, address) in assigned
        ]
        for p in sorted(parts, key=lambda p: p.start):
            response.partitions.append(p)
            response.approximate_entries += p.approximate_entries
            response.bytes += p.bytes
        return response

    def Scan(self, request_iterator: AsyncIterator[kv_pb2.ScanRequest], context: Any) -> Any:
        return scan_through(self._router, request_iterator, context, self._stopping)

    def BulkPut(self, request_iterator: AsyncIterator[kv_pb2.BulkPutRequest], context: Any) -> Any:
        return bulk_put_through(self._router, request_iterator, context, self._stopping)

    def Sweep(self, request_iterator: AsyncIterator[kv_pb2.SweepRequest], context: Any) -> Any:
        return sweep_through(self._router, request_iterator, context, self._stopping)
