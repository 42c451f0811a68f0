"""keyspan.v1.Control over a ClusterState: sessions, the map stream and the admin RPCs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from keyspan.services.config import parse_address
from keyspan.services.control.cluster import DOWN, SUSPECT, UP, ClusterState
from keyspan.storage.errors import (
    ConfigError,
    InvalidArgumentError,
    UnavailableError,
)
from keyspan.streams.partition_map import to_message
from keyspan.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
NODE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_CAPACITY = 1000
MAX_COUNT = 2**63 - 1  # SQLite's INTEGER


def _check_registration(reg: control_pb2.Register) -> None:
    """A node's registration goes into the map every client routes by: check it first."""
    if not NODE_ID.match(reg.node_id):
        raise InvalidArgumentError("register.node_id", "must be 1..64 characters of [A-Za-z0-9_.-]")
    for name in ("address", "probe_address"):
        address = getattr(reg, name)
        if name == "probe_address" and not address:
            continue  # a node may run without a probe port
        try:
            _, port = parse_address(address, f"register.{name}")
        except ConfigError:
            port = 0
        if not 0 < port < 65536:
            raise InvalidArgumentError(f"register.{name}", f"{address[:100]!r} is not HOST:PORT")
    if reg.disk_id and not NODE_ID.match(reg.disk_id):
        raise InvalidArgumentError("register.disk_id", "must be empty or 1..64 characters of [A-Za-z0-9_.-]")
    if reg.capacity > MAX_CAPACITY:
        raise InvalidArgumentError("register.capacity", f"must be 0 (meaning 1) to {MAX_CAPACITY}")


STATUS = {
    UP: control_pb2.NODE_STATUS_UP,
    SUSPECT: control_pb2.NODE_STATUS_SUSPECT,
    DOWN: control_pb2.NODE_STATUS_DOWN,
}


class MapHub:
    """The published map; WatchMap streams and sessions wait on it."""

    def __init__(self) -> None:
        self.current = control_pb2.PartitionMap()
        self.closed = False
        self._changed = asyncio.Condition()

    async def publish(self, message: control_pb2.PartitionMap) -> None:
        async with self._changed:
            if message.version > self.current.version:
                self.current = message
                self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            self.closed = True
            self._changed.notify_all()

    async def newer_than(self, version: int) -> control_pb2.PartitionMap | None:
        """The first map newer than `version`; None once the hub closed."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.closed or self.current.version > version)
            return None if self.closed else self.current


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(
        self,
        state: ClusterState,
        call: Callable[..., Awaitable[Any]],
        hub: MapHub,
        heartbeat_interval_s: float,
        on_register: Callable[[str, str], None],
        down_after_s: float = 0.0,
    ) -> None:
        self._state, self._call, self._hub = state, call, hub
        self._heartbeat_interval_s, self._down_after_s = heartbeat_interval_s, down_after_s
        self._on_register = on_register

    # -- sessions ------------------------------------------------------------------------

    async def Session(
        self, request_iterator: AsyncIterator[control_pb2.NodeMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.ControlMessage]:
        first = await anext(request_iterator, None)
        if first is None:
            return
        if not first.HasField("register"):
            raise InvalidArgumentError("register", "a session must start with register")
        reg = first.register
        _check_registration(reg)
        await self._call(
            self._state.register,
            reg.node_id,
            reg.address,
            reg.probe_address,
            reg.capacity,
            list(reg.hosted),
            None,  # the time: read on the store's thread (ClusterState._clock)
            reg.disk_id,
            dict(reg.hosted_revisions),
        )
        self._on_register(reg.node_id, reg.probe_address)
        log.info("node session", extra={"node_id": reg.node_id, "address": reg.address})
        yield control_pb2.ControlMessage(
            welcome=control_pb2.Welcome(
                node_id=reg.node_id,
                heartbeat_interval_s=self._heartbeat_interval_s,
                down_after_s=self._down_after_s,
            )
        )
        acks: asyncio.Queue[control_pb2.HeartbeatAck] = asyncio.Queue()
        reader = asyncio.create_task(self._read_session(reg.node_id, reg.disk_id, request_iterator, acks))
        waiter: asyncio.Task[control_pb2.PartitionMap | None] | None = None
        acked: asyncio.Task[control_pb2.HeartbeatAck] | None = None
        sent = 0
        try:
            while not reader.done():
                if waiter is None:
                    waiter = asyncio.create_task(self._hub.newer_than(sent))
                if acked is None:
                    acked = asyncio.create_task(acks.get())
                await asyncio.wait({waiter, acked, reader}, return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    message = waiter.result()
                    waiter = None
                    if message is None:
                        break
                    sent = message.version
                    yield control_pb2.ControlMessage(assignment=control_pb2.Assignment(map=message))
                if acked.done():
                    # after any assignment it waited beside: the node has that map first
                    ack, acked = acked.result(), None
                    yield control_pb2.ControlMessage(heartbeat_ack=ack)
        finally:
            for task in (waiter, acked):
                if task is not None:  # else it would wait for the next map version to end
                    task.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
            log.info("node session ended", extra={"node_id": reg.node_id})

    async def _read_session(
        self,
        node_id: str,
        disk_id: str,
        requests: AsyncIterator[control_pb2.NodeMessage],
        acks: asyncio.Queue[control_pb2.HeartbeatAck],
    ) -> None:
        async for message in requests:
            if message.HasField("heartbeat"):
                stats = [
                    (p.partition_id, p.approximate_entries, p.bytes, p.revision)
                    for p in message.heartbeat.partitions
                ]
                for i, (_, entries, size, revision) in enumerate(stats):
                    if max(entries, size, revision) > MAX_COUNT:  # a uint64 that SQLite cannot store
                        raise InvalidArgumentError(
                            f"heartbeat.partitions[{i}]", f"counts must be at most {MAX_COUNT}"
                        )
                await self._call(self._state.heartbeat, node_id, stats, disk_id=disk_id)
                if message.heartbeat.map_version > self._state.map.version:  # a new control.db
                    await self._call(self._state.observe_version, message.heartbeat.map_version)
                if message.heartbeat.sequence:  # recorded: the map it is answered at is published
                    acks.put_nowait(
                        control_pb2.HeartbeatAck(
                            sequence=message.heartbeat.sequence, map_version=self._hub.current.version
                        )
                    )
            elif message.HasField("ack"):
                await self._call(self._state.ack, node_id, list(message.ack.hosted))
                if message.ack.failed:
                    log.error(
                        "node failed to open partitions",
                        extra={"node_id": node_id, "failed": list(message.ack.failed)},
                    )

    # -- the map ------------------------------------------------------------------------

    async def GetMap(self, request: control_pb2.GetMapRequest, context: grpc.aio.ServicerContext) -> Any:
        if not self._hub.current.version:
            raise UnavailableError("the cluster has no map yet", retry_after_s=0.5)
        return self._hub.current

    async def WatchMap(
        self, request: control_pb2.WatchMapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[control_pb2.PartitionMap]:
        version = request.after_version
        current = self._hub.current.version
        if current and version > current:  # it holds a map of an earlier control.db
            await self._call(self._state.observe_version, version)
        while (message := await self._hub.newer_than(version)) is not None:
            version = message.version
            yield message

    # -- admin --------------------------------------------------------------------------

    def _node_info(self, row: dict[str, Any]) -> control_pb2.NodeInfo:
        owned = self._state.map.owned_by(row["node_id"])
        return control_pb2.NodeInfo(
            node_id=row["node_id"],
            address=row["address"],
            probe_address=row["probe_address"] or "",
            status=STATUS.get(row["status"], control_pb2.NODE_STATUS_UNSPECIFIED),
            cordoned=bool(row["cordoned"]),
            draining=bool(row["draining"]),
            partitions=len(owned),
            entries=row["entries"] or 0,
            bytes=row["bytes"] or 0,
            last_heartbeat_ms=row["last_heartbeat_ms"] or 0,
            capacity=row["capacity"] or 1,
            probe=row["probe"] or "",
        )

    async def ListNodes(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> control_pb2.ListNodesResponse:
        rows = await self._call(self._state.store.nodes)
        return control_pb2.ListNodesResponse(
            nodes=[self._node_info(r) for r in rows], map_version=self._state.map.version
        )

    async def _flags(self, node_id: str, **flags: int) -> control_pb2.NodeInfo:
        row = await self._call(self._state.set_flags, node_id, **flags)
        return self._node_info(row)

    async def DrainNode(self, request: control_pb2.NodeRequest, context: Any) -> control_pb2.NodeInfo:
        return await self._flags(request.node_id, draining=1, cordoned=1)

    async def CordonNode(self, request: control_pb2.NodeRequest, context: Any) -> control_pb2.NodeInfo:
        return await self._flags(request.node_id, cordoned=1)

    async def UncordonNode(self, request: control_pb2.NodeRequest, context: Any) -> control_pb2.NodeInfo:
        return await self._flags(request.node_id, cordoned=0, draining=0)

    async def RemoveNode(self, request: control_pb2.RemoveNodeRequest, context: Any) -> Any:
        moved = await self._call(self._state.remove, request.node_id, request.force)
        return control_pb2.RemoveNodeResponse(reassigned=moved, map_version=self._state.map.version)

    async def RepairPartition(self, request: control_pb2.RepairPartitionRequest, context: Any) -> Any:
        await self._call(self._state.repair, request.partition_id, request.to_node_id, request.force)
        return to_message(self._state.map.version, self._state.map.entries)
