"""The all-in-one server (`keyspan serve`): KV, health and reflection over local partitions."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from keyspan.services.common.process import GrpcProcess
from keyspan.services.config import ServeConfig, StorageConfig
from keyspan.services.node.kv import KVServicer
from keyspan.storage.errors import KeyspanError, UnavailableError
from keyspan.storage.keys import KeyRange
from keyspan.storage.limits import Limits
from keyspan.storage.shardset import ShardSet, ShardSetOptions, ranges_from_split_points
from keyspan.streams.sweep import Sweeper
from keyspan.v1 import kv_pb2, kv_pb2_grpc

KV_SERVICE = kv_pb2.DESCRIPTOR.services_by_name["KV"].full_name


def shardset_for(config: StorageConfig) -> ShardSet:
    return ShardSet(
        config.data,
        ShardSetOptions(
            synchronous=config.synchronous,
            read_threads=config.read_threads,
            inline_read_budget_s=config.inline_read_budget_ms / 1000,
            row_cache_bytes=config.row_cache_mb << 20,
            max_write_batch=config.max_write_batch,
            commit_wait_s=config.group_commit_wait_ms / 1000,
            sqlite_memory_bytes=config.sqlite_memory_mb << 20,
        ),
    )


class StorageProcess(GrpcProcess):
    """A process that holds partitions and serves keyspan.v1.KV over them (serve, node):
    its shard set, sweeper, KV servicer and partition gauges."""

    config: StorageConfig

    def __init__(self, config: StorageConfig) -> None:
        self.shards = shardset_for(config)
        self.sweeper = Sweeper(self.shards, config.sweep_interval_s)
        super().__init__(config)
        self.observability.watch_shards(self.shards, self.sweeper)

    def described(self) -> dict[str, Any]:
        return {"data": str(self.config.data), "partitions": len(self.shards.partitions)}

    def register(self, server: grpc.aio.Server) -> list[str]:
        limits = Limits(max_value_bytes=self.config.max_value_bytes)
        kv_pb2_grpc.add_KVServicer_to_server(KVServicer(self.shards, limits, self.stopping), server)
        return [KV_SERVICE]


class KeyspanServer(StorageProcess):
    """One `keyspan serve` process; tests run it in-process on port 0."""

    name = "serve"
    config: ServeConfig

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.shards.on_missing = self._not_open
        self.shards.should_hold = lambda: (KeyRange(),)  # serve's partitions tile the key space

    def _not_open(self, key: bytes) -> KeyspanError:
        """No partition holds `key`: serve's partitions tile the key space, so they are not
        open yet (the port takes calls while health says NOT_SERVING) or no longer. A
        WrongPartition here, which clients do not retry, stopped a load that met a restart."""
        when = "stopping" if self.stopping.is_set() else "starting"
        return UnavailableError(f"the server is {when}: its partitions are not open", retry_after_s=0.2)

    async def on_start(self) -> None:
        ranges = ranges_from_split_points(self.config.split_keys())
        initial = [(f"p{i:04d}", r) for i, r in enumerate(ranges)]
        await asyncio.to_thread(self.shards.open, initial)
        self.sweeper.start()

    async def on_stop(self) -> None:
        await self.sweeper.stop()
        await asyncio.to_thread(self.shards.close)
