"""Control's watch on every node's health probe (grpc.health.v1 Health.Watch).

One task per node follows the node's `keyspan.v1.KV` status on its probe port. A broken
or refused stream reports UNREACHABLE at once, so a killed node turns SUSPECT before its
heartbeats are missed; the watch reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)
KV_SERVICE = "keyspan.v1.KV"


class ProbeWatchers:
    def __init__(self, report: Callable[[str, str], Awaitable[None]]) -> None:
        self._report = report
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}

    def watch(self, node_id: str, probe_address: str) -> None:
        """Follow `probe_address` for node_id, replacing a watch on another address."""
        current = self._tasks.get(node_id)
        if current is not None:
            if current[0] == probe_address and not current[1].done():
                return
            current[1].cancel()
        if not probe_address:
            self._tasks.pop(node_id, None)
            return
        task = asyncio.create_task(self._run(node_id, probe_address), name=f"probe-{node_id}")
        self._tasks[node_id] = (probe_address, task)

    def forget(self, node_id: str) -> None:
        entry = self._tasks.pop(node_id, None)
        if entry is not None:
            entry[1].cancel()

    async def close(self) -> None:
        tasks = [t for _, t in self._tasks.values()]
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _run(self, node_id: str, probe_address: str) -> None:
        delay_s = 0.1
        last = ""
        while True:
            try:
                async with grpc.aio.insecure_channel(probe_address) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    async for response in stub.Watch(health_pb2.HealthCheckRequest(service=KV_SERVICE)):
                        status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                        delay_s = 0.1
                        if status != last:
                            last = status
                            await self._report(node_id, status)
            except grpc.aio.AioRpcError as err:
                log.debug("probe broke", extra={"node_id": node_id, "code": err.code().name})
            if last != "UNREACHABLE":
                last = "UNREACHABLE"
                await self._report(node_id, last)
            await asyncio.sleep(delay_s)
            delay_s = min(1.0, delay_s * 2)
