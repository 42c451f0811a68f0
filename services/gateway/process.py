"""`keyspan gateway`: stateless keyspan.v1.KV in front of the nodes, routed by the watched map.

It keeps nothing but a cached map, fed by control's WatchMap stream; when control is
away it routes with the last map it saw. Health turns SERVING once the first map came.
"""

from __future__ import annotations

from typing import Any

import grpc

from keyspan.services.common.process import GrpcProcess
from keyspan.services.common.tracing import client_interceptors
from keyspan.services.config import GatewayConfig
from keyspan.services.gateway.routing import NodeChannels, Router
from keyspan.services.gateway.servicer import GatewayServicer
from keyspan.services.server import KV_SERVICE
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.partition_map import MapWatcher
from keyspan.v1 import kv_pb2_grpc


class GatewayProcess(GrpcProcess):
    name = "gateway"
    config: GatewayConfig

    def __init__(self, config: GatewayConfig) -> None:
        self.watcher = MapWatcher(config.control)
        self.channels = NodeChannels(client_interceptors(config, "keyspan-gateway"))
        self.router = Router(self.watcher, self.channels)
        super().__init__(config)
        if self.observability.registry is not None:
            # The gateway is a client of the nodes: its redirects and map refreshes count too.
            metrics = ClientMetrics(self.observability.registry)
            self.router.metrics, self.watcher.on_update = metrics, metrics.map_refreshed

    def register(self, server: grpc.aio.Server) -> list[str]:
        kv_pb2_grpc.add_KVServicer_to_server(
            GatewayServicer(self.router, self.config.call_timeout_s, self.stopping), server
        )
        return [KV_SERVICE]

    def described(self) -> dict[str, Any]:
        return {"control": self.config.control}

    async def on_start(self) -> None:
        self.watcher.start()
        # NOT_SERVING until the first map arrives, however long control takes, unless the
        # gateway is told to stop meanwhile (SIGTERM with control away).
        while not self.stopping.is_set() and not await self.watcher.wait_for(1, timeout_s=0.5):
            continue

    async def on_stop(self) -> None:
        await self.watcher.stop()
        await self.channels.close()
