"""keyspan.v1.KV over the partitions of this process: convert, call, answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from keyspan.storage.errors import InvalidArgumentError
from keyspan.storage.limits import (
    Limits,
    check_conditions,
    check_keep_ttl,
    check_paths,
    check_projection,
    expiry_ms,
)
from keyspan.storage.mutations import Delete, Patch, Put
from keyspan.storage.shardset import ShardSet, now_ms
from keyspan.streams.bulk_put import serve_bulk_put
from keyspan.streams.scan import serve_scan
from keyspan.streams.sweep import serve_sweep
from keyspan.v1 import kv_pb2, kv_pb2_grpc


class KVServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, shards: ShardSet, limits: Limits, stopping: asyncio.Event) -> None:
        self._shards, self._limits = shards, limits
        # Set when the server begins to stop: Scan and BulkPut streams end at their next
        # resumable point (UNAVAILABLE), so they do not hold the shutdown.
        self._stopping = stopping

    async def Get(self, request: kv_pb2.GetRequest, context: grpc.aio.ServicerContext) -> kv_pb2.GetResponse:
        key = self._limits.key(request.key)
        paths = check_paths(request.paths, distinct=True) if request.paths else ()
        row = await self._shards.get(key, paths, self._limits.max_value_bytes)
        if row is None:
            return kv_pb2.GetResponse(found=False)
        return kv_pb2.GetResponse(
            found=True,
            value=check_projection(row.value, self._limits.max_value_bytes, key) if paths else row.value,
            etag=row.etag,
            expires_at_ms=row.expires_at_ms or 0,
            json=row.json,
        )

    async def Put(self, request: kv_pb2.PutRequest, context: grpc.aio.ServicerContext) -> kv_pb2.PutResponse:
        key = self._limits.key(request.key)
        check_conditions(request.if_etag, request.if_absent)
        check_keep_ttl(request.keep_ttl, request.ttl_s)
        put = Put(
            key,
            self._limits.value(request.value),
            request.json,
            expiry_ms(request.ttl_s, now_ms()),
            request.if_etag,
            request.if_absent,
            request.keep_ttl,
        )
        return kv_pb2.PutResponse(etag=await self._shards.write(key, put))

    async def Delete(
        self, request: kv_pb2.DeleteRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.DeleteResponse:
        key = self._limits.key(request.key)
        return kv_pb2.DeleteResponse(deleted=await self._shards.write(key, Delete(key, request.if_etag)))

    async def Patch(
        self, request: kv_pb2.PatchRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.PatchResponse:
        key = self._limits.key(request.key)
        if not (request.merge_patch or request.set or request.remove):
            raise InvalidArgumentError("merge_patch", "a patch needs merge_patch, set or remove")
        self._limits.value(request.merge_patch.encode(), "merge_patch")
        for i, step in enumerate(request.set):  # can never apply: refused whatever the entry
            self._limits.value(step.value.encode(), f"set[{i}].value")
        patch = Patch(
            key,
            request.merge_patch,
            tuple((s.path, s.value) for s in request.set),
            tuple(request.remove),
            request.if_etag,
            self._limits.max_value_bytes,
        )
        result = await self._shards.write(key, patch)
        return kv_pb2.PatchResponse(etag=result.etag, value=result.value)

    async def Stats(
        self, request: kv_pb2.StatsRequest, context: grpc.aio.ServicerContext
    ) -> kv_pb2.StatsResponse:
        response = kv_pb2.StatsResponse()
        for s in await self._shards.stats():
            part = response.partitions.add(
                partition_id=s.partition_id,
                start=s.range.start,
                approximate_entries=s.approximate_entries,
                bytes=s.bytes,
                expired_entries=s.expired_entries,
                revision=s.revision,
            )
            if s.range.end is not None:
                part.end = s.range.end
            response.approximate_entries += s.approximate_entries
            response.bytes += s.bytes
        return response

    def Scan(
        self, request_iterator: AsyncIterator[kv_pb2.ScanRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[kv_pb2.ScanResponse]:
        return serve_scan(self._shards, request_iterator, self._limits, self._stopping)

    def BulkPut(
        self,
        request_iterator: AsyncIterator[kv_pb2.BulkPutRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kv_pb2.BulkPutResponse]:
        return serve_bulk_put(self._shards, request_iterator, self._limits, self._stopping)

    def Sweep(
        self,
        request_iterator: AsyncIterator[kv_pb2.SweepRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[kv_pb2.SweepResponse]:
        return serve_sweep(self._shards, request_iterator, self._stopping)
