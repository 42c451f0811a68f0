"""How the gateway reaches the owner of a key: channels per node, retries on WrongPartition.

A node's own status (ABORTED, INVALID_ARGUMENT, its UNAVAILABLE with RetryInfo...) is
relayed to the caller unchanged, details included. A node that cannot be reached becomes
UNAVAILABLE with RetryInfo; a partition whose owner is down in the map is answered
UNAVAILABLE without a call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from keyspan.services.config import GRPC_MAX_MESSAGE_BYTES
from keyspan.storage.errors import UnavailableError, key_text
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.errors import never_sent
from keyspan.streams.partition_map import MapEntry, MapWatcher
from keyspan.v1 import errors_pb2, kv_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_ATTEMPTS = 6
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
    # a restarted node is reached within a second, not after gRPC's default backoff (up to
    # 120 s). Not grpc.min_reconnect_backoff_ms: gRPC takes it as the connect timeout too
    # (20 s by default), and a node slower than 100 ms to shake hands was never reached.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def wrong_partition_of(err: grpc.aio.AioRpcError) -> errors_pb2.WrongPartition | None:
    if err.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(errors_pb2.WrongPartition.DESCRIPTOR):
            wrong = errors_pb2.WrongPartition()
            detail.Unpack(wrong)
            return wrong
    return None


def is_transport_failure(err: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE that the node did not send itself (no RetryInfo): it cannot be reached."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    return not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in (status.details if status else ()))


async def relay(context: grpc.aio.ServicerContext, err: grpc.aio.AioRpcError) -> NoReturn:
    """Answer the caller with the node's status, details and all."""
    await context.abort(err.code(), err.details() or "", tuple(err.trailing_metadata() or ()))
    raise AssertionError("abort returned")


class NodeChannels:
    """One channel per node address, opened on first use."""

    def __init__(self, interceptors: Sequence[Any] = ()) -> None:
        self._channels: dict[str, tuple[grpc.aio.Channel, kv_pb2_grpc.KVStub]] = {}
        self._interceptors = list(interceptors)  # tracing: the trace goes on to the node

    def stub(self, address: str) -> kv_pb2_grpc.KVStub:
        if address not in self._channels:
            channel = grpc.aio.insecure_channel(
                address, options=CHANNEL_OPTIONS, interceptors=self._interceptors or None
            )
            self._channels[address] = (channel, kv_pb2_grpc.KVStub(channel))
        return self._channels[address][1]

    async def close(self) -> None:
        channels = [c for c, _ in self._channels.values()]
        self._channels.clear()
        await asyncio.gather(*(c.close() for c in channels))


class Router:
    def __init__(
        self, watcher: MapWatcher, channels: NodeChannels, metrics: ClientMetrics | None = None
    ) -> None:
        self.watcher, self.channels, self.metrics = watcher, channels, metrics

    @property
    def map(self) -> Any:
        return self.watcher.map

    def owner(self, key: bytes) -> MapEntry:
        entry = self.map.locate(key)
        if not entry.routable:
            raise entry.unavailable()
        return entry

    async def after_wrong_partition(self, wrong: errors_pb2.WrongPartition) -> None:
        """Wait for the map the node answered from (or any newer one), briefly."""
        if self.metrics is not None:
            self.metrics.redirected(wrong.partition_id)
        wanted = max(wrong.map_version, self.map.version + 1)
        if not await self.watcher.wait_for(wanted, timeout_s=1.0):
            log.info("map not refreshed after WrongPartition", extra={"map_version": self.map.version})

    async def call(self, key: bytes, fn: Callable[[kv_pb2_grpc.KVStub], Awaitable[T]]) -> T:
        """Run fn on the owner of key; re-route on WrongPartition. Raises AioRpcError to relay."""
        for _ in range(MAX_ATTEMPTS):
            entry = self.owner(key)
            try:
                return await fn(self.channels.stub(entry.address))
            except grpc.aio.AioRpcError as err:
                wrong = wrong_partition_of(err)
                if wrong is not None:
                    await self.after_wrong_partition(wrong)
                    continue
                if is_transport_failure(err):
                    raise node_unreachable(entry, err) from None
                raise
        raise UnavailableError(f"key {key_text(key)}: routing did not settle; retry", retry_after_s=0.5)


def node_unreachable(entry: MapEntry, err: grpc.aio.AioRpcError | None = None) -> UnavailableError:
    """UNAVAILABLE for a call the node's connection failed; `err` is gRPC's failure (None
    when a stream ended with no answer). Unless the call was never sent, a write may have
    committed on the node: the caller is told so (ErrorInfo reason CONNECTION_LOST)."""
    lost = err is None or not never_sent(err.details() or "")
    what = "lost the connection to" if lost else "cannot reach"
    return UnavailableError(
        f"{what} node {entry.node_id} at {entry.address} (partition {entry.partition_id})",
        retry_after_s=0.25,
        may_have_applied=lost,
    )
