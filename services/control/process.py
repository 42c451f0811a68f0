"""`keyspan control`: the process that keeps the map and the registry and serves Control.

Every ClusterState call runs on one worker thread (SQLite never runs on the event loop,
and one thread keeps the store's changes in order). After each call, a new map version is
published to WatchMap streams and node sessions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from keyspan.services.common.process import GrpcProcess
from keyspan.services.config import ControlConfig
from keyspan.services.control.cluster import ClusterState, Liveness, uniform_split_points
from keyspan.services.control.metrics_source import ControlSnapshot
from keyspan.services.control.probes import ProbeWatchers
from keyspan.services.control.servicer import ControlServicer, MapHub
from keyspan.services.control.store import ControlStore
from keyspan.streams.partition_map import to_message
from keyspan.streams.stopping import cancel_and_wait
from keyspan.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)
CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name


class ControlProcess(GrpcProcess):
    name = "control"
    config: ControlConfig

    def __init__(self, config: ControlConfig) -> None:
        self.hub = MapHub()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="control-db")
        self.state: ClusterState | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._backups: asyncio.Task[None] | None = None
        self.probes = ProbeWatchers(self._report_probe)
        self.snapshot = ControlSnapshot()
        super().__init__(config)
        if self.observability.registry is not None:
            self.observability.register_control(self.snapshot)

    def register(self, server: grpc.aio.Server) -> list[str]:
        servicer = ControlServicer(
            _LazyState(self),  # type: ignore[arg-type]
            self.call,
            self.hub,
            self.config.heartbeat_interval_s,
            self.probes.watch,
            self.config.down_after_s,
        )
        control_pb2_grpc.add_ControlServicer_to_server(servicer, server)
        return [CONTROL_SERVICE]

    async def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a ClusterState method on the store's thread, then publish a new map."""
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._executor, functools.partial(self._apply, fn, *args, **kwargs)
        )
        await self.publish()
        return result

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """On the store's thread: run fn, then refresh the gauges' snapshot."""
        try:
            return fn(*args, **kwargs)
        finally:
            if self.state is not None and self.observability.registry is not None:
                self.snapshot.refresh(self.state)

    async def publish(self) -> None:
        assert self.state is not None
        current = self.state.map
        if current.version > self.hub.current.version:
            await self.hub.publish(to_message(current.version, current.entries))

    def _open(self) -> ClusterState:
        store = ControlStore(self.config.data / "control.db")
        liveness = Liveness(
            suspect_after_s=self.config.suspect_after_s, down_after_s=self.config.down_after_s
        )
        state = ClusterState(store, liveness, self.config.min_nodes, self.config.recovery_wait_s)
        split = self.config.split_keys() or uniform_split_points(self.config.partitions)
        state.create(split)
        state.restarted()
        return state

    def described(self) -> dict[str, Any]:
        return {"data": str(self.config.data)}

    async def on_start(self) -> None:
        loop = asyncio.get_running_loop()
        self.state = await loop.run_in_executor(self._executor, self._open)
        await self.publish()
        for node in await self.call(self.state.store.nodes):
            self.probes.watch(node["node_id"], node["probe_address"] or "")
        self._ticker = asyncio.create_task(self._tick_forever(), name="liveness")
        if self.config.backup_interval_s:
            await self.back_up()  # a database that just opened and passed its check
            self._backups = asyncio.create_task(self._back_up_forever(), name="backup")

    async def back_up(self) -> None:
        """Copy control.db to control.db.backup; a failure is logged, and the last copy stays."""
        assert self.state is not None
        target = self.config.data / "control.db.backup"
        try:
            await self.call(self.state.store.backup, target)
        except (OSError, sqlite3.Error) as err:  # a full disk: the next attempt may pass
            log.error("control.db backup failed", extra={"target": str(target), "cause": str(err)})

    async def _back_up_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.backup_interval_s)
            await self.back_up()

    async def _report_probe(self, node_id: str, status: str) -> None:
        assert self.state is not None
        await self.call(self.state.probe, node_id, status)

    async def _tick_forever(self) -> None:
        assert self.state is not None
        period_s = min(self.config.heartbeat_interval_s, self.config.suspect_after_s / 4)
        while True:
            await asyncio.sleep(period_s)
            await self.call(self.state.tick)  # the time is read on the store's thread

    async def stop(self, grace_s: float | None = None) -> None:
        await self.hub.close()  # ends WatchMap and Session streams, so the grace is not spent on them
        await super().stop(grace_s)

    async def on_stop(self) -> None:
        for task in (self._ticker, self._backups):
            await cancel_and_wait(task)
        await self.probes.close()
        if self.state is not None:
            state = self.state
            await asyncio.get_running_loop().run_in_executor(self._executor, state.store.close)
        self._executor.shutdown(wait=True)


class _LazyState:
    """The servicer is registered before on_start opens the store; this forwards to it."""

    def __init__(self, process: ControlProcess) -> None:
        self._process = process

    def __getattr__(self, name: str) -> Any:
        state = self._process.state
        if state is None:
            from keyspan.storage.errors import UnavailableError

            raise UnavailableError("control is starting", retry_after_s=0.5)
        return getattr(state, name)
