"""`keyspan node`: a data node. Serves keyspan.v1.KV for the partitions control assigns it.

Start-up: the node id is read from (or written to) `<data>/node_id`, the catalogue's
partitions are reopened from disk, then the session with control reconciles them; the
node reports SERVING once it reconciled, or after --sync-timeout-s without control (it
then serves what its disk holds). The probe port serves grpc.health.v1 only, with
`keyspan.v1.KV` SERVING while the node is in sync with its assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from keyspan.services.common.process import Health, server_options
from keyspan.services.config import NodeConfig
from keyspan.services.node.fence import OwnershipFence
from keyspan.services.node.reconcile import missing_key_error
from keyspan.services.node.session import NodeSession
from keyspan.services.server import KV_SERVICE, StorageProcess
from keyspan.storage.errors import ConfigError, KeyspanError
from keyspan.streams.partition_map import PartitionMap

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def resolve_node_id(config: NodeConfig) -> tuple[str, str]:
    """(node id, disk id) persisted in the data dir, written on first start: the node id
    from --id (or random), the disk id random. Control refuses a known node id that
    registers with another disk id (Register.disk_id)."""
    path = config.data / "node_id"
    config.data.mkdir(parents=True, exist_ok=True)
    if path.exists():
        node_id = path.read_text().strip()
        if config.id and config.id != node_id:
            raise ConfigError(f"id: {config.data} belongs to node {node_id!r}, not {config.id!r}")
    else:
        node_id = config.id or f"node-{uuid.uuid4().hex[:8]}"
        path.write_text(node_id + "\n")
    disk = config.data / "disk_id"
    if not disk.exists():  # a new data dir, or one from before disk ids: it is this disk
        disk.write_text(uuid.uuid4().hex + "\n")
    return node_id, disk.read_text().strip()


class NodeProcess(StorageProcess):
    name = "node"
    config: NodeConfig

    def __init__(self, config: NodeConfig) -> None:
        self.map = PartitionMap()
        self.node_id = ""
        self.session: NodeSession | None = None
        self.fence: OwnershipFence | None = None
        self.probe_health = Health()
        self.probe_server: grpc.aio.Server | None = None
        self.probe_port = 0
        super().__init__(config)  # the shard set, sweeper and KV servicer (StorageProcess)

    async def _start_probe(self) -> None:
        await self.probe_health.set("", SERVING)
        await self.probe_health.set(KV_SERVICE, NOT_SERVING)
        if not self.config.probe_address:
            return
        self.probe_server = grpc.aio.server(options=server_options())
        health_pb2_grpc.add_HealthServicer_to_server(self.probe_health, self.probe_server)
        try:
            self.probe_port = self.probe_server.add_insecure_port(self.config.probe_address)
        except RuntimeError:
            raise OSError(f"cannot listen on probe address {self.config.probe_address}") from None
        await self.probe_server.start()

    async def _synced(self, in_sync: bool) -> None:
        """After each reconciliation: the probe's keyspan.v1.KV is SERVING only when every
        assigned partition is open."""
        await self.probe_health.set(KV_SERVICE, SERVING if in_sync else NOT_SERVING)
        if not in_sync:
            log.error("not in sync: partitions failed to open", extra={"node_id": self.node_id})

    async def on_start(self) -> None:
        self.node_id, disk_id = await asyncio.to_thread(resolve_node_id, self.config)
        self.fence = OwnershipFence(self.node_id)
        self.shards.gate = self.fence.check
        self.fence.start()
        await asyncio.to_thread(self.shards.open, ())
        await self._start_probe()
        self.session = NodeSession(
            control_address=self.config.control,
            node_id=self.node_id,
            disk_id=disk_id,
            address=self.address,
            probe_address=self._probe_address(),
            capacity=self.config.capacity,
            shards=self.shards,
            partition_map=self.map,
            on_synced=self._synced,
            fence=self.fence,
        )
        self.shards.on_missing = functools.partial(
            missing_key_error, self.node_id, self.map, failures=self.session.failures
        )
        self.shards.start_below = self.map.start_below
        self.shards.should_hold = lambda: [e.range for e in self.map.owned_by(self.node_id)]
        self.session.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.session.settled(), self.config.sync_timeout_s)
        if self.session.refused is not None:
            refused = f"control {self.config.control} refused this node: {self.session.refused}"
            await self.on_stop()  # the session, the probe port and the shards this start opened
            raise KeyspanError(refused)
        if not self.session.synced.is_set():
            log.warning(
                "control not reached; serving the partitions on disk", extra={"node_id": self.node_id}
            )
        self.session.started = True
        self.sweeper.start()

    def described(self) -> dict[str, Any]:
        return {**super().described(), "node_id": self.node_id, "control": self.config.control}

    def _probe_address(self) -> str:
        if not self.probe_server:
            return ""
        return f"{self.config.probe_address.rpartition(':')[0]}:{self.probe_port}"

    async def stop(self, grace_s: float | None = None) -> None:
        await self.probe_health.enter_graceful_shutdown()
        await super().stop(grace_s)

    async def on_stop(self) -> None:
        if self.session is not None:
            await self.session.stop()
        if self.fence is not None:
            await self.fence.stop()
        await self.sweeper.stop()
        if self.probe_server is not None:
            await self.probe_server.stop(None)
        await asyncio.to_thread(self.shards.close)
