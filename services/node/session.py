"""A node's session with control: register, heartbeat, reconcile each assignment, ack.

The session reconnects forever with backoff (0.1 s doubling to 2 s); while control is
away the node keeps serving what it hosts and answers from its last map.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from keyspan.services.node.fence import OwnershipFence
from keyspan.services.node.reconcile import reconcile
from keyspan.storage.shardset import ShardSet
from keyspan.storage.throttled_log import ThrottledLog
from keyspan.streams.partition_map import PartitionMap
from keyspan.streams.stopping import cancel_and_wait
from keyspan.v1 import control_pb2, control_pb2_grpc, kv_pb2

log = logging.getLogger(__name__)


class NodeSession:
    def __init__(
        self,
        *,
        control_address: str,
        node_id: str,
        disk_id: str,
        address: str,
        probe_address: str,
        capacity: int,
        shards: ShardSet,
        partition_map: PartitionMap,
        on_synced: Callable[[bool], Awaitable[None]],
        fence: OwnershipFence | None = None,
    ) -> None:
        self.control_address, self.node_id, self.disk_id = control_address, node_id, disk_id
        self.address, self.probe_address, self.capacity = address, probe_address, capacity
        self.shards, self.map = shards, partition_map
        self.on_synced = on_synced
        self.fence = fence
        self._beats = 0  # heartbeats sent by this process, over all its sessions
        self.synced = asyncio.Event()
        self.connected = False
        # Why control refused the registration (a wrong disk or an invalid field), once it
        # has: that does not pass by retrying, so the node's start fails with it.
        self.refused: str | None = None
        self._refused = asyncio.Event()
        self.started = False  # set once the node's start is over (a refusal then closes its partitions)
        # {partition id: why} for the assigned partitions that failed to open, as of the
        # last reconciliation (the node's answers for their keys say why).
        self.failures: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._not_control_log = ThrottledLog(
            log,
            "the --control address is not a keyspan control (it does not serve keyspan.v1.Control: "
            "a node or a gateway?); serving the partitions on disk until it is",
            "attempts",
        )

    async def settled(self) -> None:
        """Until the node is in sync with its assignment, or control refused it."""
        synced = asyncio.create_task(self.synced.wait())
        refused = asyncio.create_task(self._refused.wait())
        try:
            await asyncio.wait({synced, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            synced.cancel()
            refused.cancel()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control-session")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _register(self) -> control_pb2.NodeMessage:
        return control_pb2.NodeMessage(
            register=control_pb2.Register(
                node_id=self.node_id,
                disk_id=self.disk_id,
                address=self.address,
                probe_address=self.probe_address,
                capacity=self.capacity,
                hosted=[p.id for p in self.shards.partitions],
                hosted_revisions={p.id: p.shard.revision for p in self.shards.partitions},
            )
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            outbox: asyncio.Queue[control_pb2.NodeMessage] = asyncio.Queue()
            outbox.put_nowait(self._register())
            beats: asyncio.Task[None] | None = None
            sender: asyncio.Task[None] | None = None
            try:
                async with grpc.aio.insecure_channel(self.control_address) as channel:
                    # Written by a task of ours, not read by grpc from a generator: a call
                    # that failed left grpc's reading task pending on the queue, and asyncio
                    # logged "Task was destroyed but it is pending" and a failed aclose().
                    call = control_pb2_grpc.ControlStub(channel).Session()
                    sender = asyncio.create_task(_send(call, outbox))
                    async for message in call:
                        self.connected, attempt = True, 0
                        if message.HasField("welcome"):
                            interval_s = message.welcome.heartbeat_interval_s or 1.0
                            if self.fence is not None:
                                self.fence.configure(message.welcome.down_after_s)
                            beats = asyncio.create_task(self._heartbeats(outbox, interval_s))
                        elif message.HasField("assignment"):
                            outbox.put_nowait(await self._apply(message.assignment.map))
                        elif message.HasField("heartbeat_ack") and self.fence is not None:
                            ack = message.heartbeat_ack
                            self.fence.acknowledged(ack.sequence, ack.map_version, self.map.version)
            except grpc.aio.AioRpcError as err:
                if err.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
                    self.refused = err.details() or err.code().name
                    self._refused.set()
                    log.error("control refused the registration", extra={"error": self.refused})
                    if self.started:
                        # Removed, or its id registered from another disk: the partitions are
                        # not this process's any more (their files stay). It served them
                        # beside the process control now knows by that id. It stays out: a
                        # new registration would join it again as a node with no partitions,
                        # and take the ones left unassigned.
                        log.error(
                            "closing every partition and leaving the cluster: control no longer knows "
                            "this process as its node; stop it",
                            extra={"node_id": self.node_id},
                        )
                        await reconcile(self.shards, self.node_id, PartitionMap())
                        return
                elif err.code() == grpc.StatusCode.UNIMPLEMENTED:  # said at INFO every second
                    self._not_control_log.note(control=self.control_address)
                else:
                    log.info(
                        "control session broke",
                        extra={"code": err.code().name, "control": self.control_address},
                    )
            except Exception:
                # A fault of this node's own (applying a map): it ended the session task, and
                # the node sent no heartbeat and took no map again. A new session registers
                # afresh and is given the map again.
                log.exception("control session failed; starting a new one", extra={"node_id": self.node_id})
                attempt = max(attempt, 4)  # the next try ~1 s later: a fault that repeats is not a loop
            finally:
                self.connected = False
                helpers = [task for task in (beats, sender) if task is not None]
                for task in helpers:
                    task.cancel()
                # Their CancelledErrors come back as results; this task's own is raised. (A
                # suppress() around each await swallowed a stop() that came meanwhile: the
                # session went on reconnecting, and the node never stopped on SIGTERM.)
                await asyncio.gather(*helpers, return_exceptions=True)
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))
            attempt = min(attempt + 1, 10)

    async def _apply(self, message: control_pb2.PartitionMap) -> control_pb2.NodeMessage:
        self.map.apply(message)
        hosted, failed = await reconcile(self.shards, self.node_id, self.map, self.failures)
        await self.on_synced(not failed)
        if not failed:
            self.synced.set()
        return control_pb2.NodeMessage(
            ack=control_pb2.Ack(map_version=self.map.version, hosted=hosted, failed=failed)
        )

    async def _heartbeats(self, outbox: asyncio.Queue[control_pb2.NodeMessage], interval_s: float) -> None:
        while True:
            try:
                # the partitions open now, also while another is opening or failed to open
                # (the Stats RPC refuses then; a heartbeat that reported none zeroed them all)
                stats = await self.shards.stats(complete=False)
            except Exception:  # a partition closed under the count: report none this time
                log.debug("stats skipped", exc_info=True)
                stats = []
            self._beats += 1
            beat = control_pb2.Heartbeat(map_version=self.map.version, sequence=self._beats)
            for s in stats:
                beat.partitions.append(
                    kv_pb2.PartitionStats(
                        partition_id=s.partition_id,
                        approximate_entries=s.approximate_entries,
                        bytes=s.bytes,
                        expired_entries=s.expired_entries,
                        revision=s.revision,
                    )
                )
            outbox.put_nowait(control_pb2.NodeMessage(heartbeat=beat))
            if self.fence is not None:
                self.fence.sent(self._beats)
            await asyncio.sleep(interval_s)


async def _send(call: Any, outbox: asyncio.Queue[control_pb2.NodeMessage]) -> None:
    """Write what is queued to the session until it ends (its reader says how)."""
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        while True:
            await call.write(await outbox.get())
