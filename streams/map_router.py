"""MapRouter: the client's Router interface (streams/router.py) over a cluster's map.

    router = MapRouter.watching(control_address, open_channel)   # inside the event loop
    router.stub_for_key(key) -> KVStub            # the owner of key
    router.pieces(start, end) -> [(start, end, KVStub)]   # cut per partition, key order
    router.stubs() -> [KVStub]                    # every node that owns a partition
    router.on_wrong_partition(err) -> bool        # learn from a WrongPartition; True: retry now
    await router.close()                          # stop watching, close the channels

Stubs are `KVStub(open_channel(address))`, one channel per node address, opened lazily
(pass the client's `open_channel` so its channel options apply; sync channels work too).
The map is a PartitionMap kept fresh by a MapWatcher on control's WatchMap (async
clients), or by a `refresh()` callable that fetches GetMap (sync clients). A WrongPartition
newer than the map is used at once as a hint for its range until the map catches up, so
the retry goes straight to the new owner. A partition whose owner is down raises
the client's keyspan.streams.errors.Unavailable (with retry_after_s) before any call is made.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

from keyspan.storage.errors import UnavailableError
from keyspan.storage.keys import KeyRange
from keyspan.streams.errors import Unavailable
from keyspan.streams.partition_map import MapWatcher, PartitionMap
from keyspan.v1 import control_pb2, errors_pb2, kv_pb2_grpc


class MapRouter:
    def __init__(
        self,
        partition_map: PartitionMap,
        open_channel: Callable[[str], Any] = grpc.aio.insecure_channel,
        refresh: Callable[[], control_pb2.PartitionMap | None] | None = None,
        watcher: MapWatcher | None = None,
    ) -> None:
        self.map, self._open_channel, self._refresh, self._watcher = (
            partition_map,
            open_channel,
            refresh,
            watcher,
        )
        self._channels: dict[str, tuple[Any, kv_pb2_grpc.KVStub]] = {}
        self._hints: list[tuple[KeyRange, str, int]] = []

    @classmethod
    def watching(
        cls,
        control_address: str,
        open_channel: Callable[[str], Any] = grpc.aio.insecure_channel,
        on_update: Callable[[], None] | None = None,
    ) -> MapRouter:
        """A router fed by control's WatchMap; call inside the running event loop.

        `on_update` is called after each newer map arrives (the client counts refreshes)."""
        watcher = MapWatcher(control_address, on_update=on_update)
        watcher.start()
        return cls(watcher.map, open_channel, watcher=watcher)

    async def wait_for_map(self, timeout_s: float = 10.0) -> bool:
        """Wait for the first map (a watching router starts empty)."""
        return self._watcher is not None and await self._watcher.wait_for(1, timeout_s)

    def _stub(self, address: str) -> kv_pb2_grpc.KVStub:
        if address not in self._channels:
            channel = self._open_channel(address)
            self._channels[address] = (channel, kv_pb2_grpc.KVStub(channel))
        return self._channels[address][1]

    def address_for_key(self, key: bytes) -> str:
        self._hints = [h for h in self._hints if h[2] > self.map.version]
        for key_range, address, _ in self._hints:
            if key in key_range:
                return address
        entry = self.map.locate(key)
        if not entry.routable:
            raise entry.unavailable()
        return entry.address

    def stub_for_key(self, key: bytes) -> kv_pb2_grpc.KVStub:
        """The stub of the node that owns key; the client's Unavailable when its owner is down
        (retryable: the helpers back off and ask again)."""
        try:
            return self._stub(self.address_for_key(key))
        except UnavailableError as err:
            raise Unavailable(str(err), err.retry_after_s) from None

    def pieces(self, start: bytes, end: bytes | None) -> list[tuple[bytes, bytes | None, kv_pb2_grpc.KVStub]]:
        """[start, end) cut at partition bounds, each piece with its owner's stub."""
        out = []
        try:
            for piece, entry in self.map.pieces(start, end):
                if not entry.routable:
                    raise entry.unavailable()
                out.append((piece.start, piece.end, self._stub(entry.address)))
        except UnavailableError as err:
            raise Unavailable(str(err), err.retry_after_s) from None
        return out

    def stubs(self) -> list[kv_pb2_grpc.KVStub]:
        """Every owner's stub; Unavailable while a partition has no routable owner (its
        stats would be missing from an answer that claims every partition)."""
        for entry in self.map.entries:
            if not entry.routable:
                err = entry.unavailable()
                raise Unavailable(str(err), err.retry_after_s)
        return [self._stub(a) for a in dict.fromkeys(e.address for e in self.map.entries)]

    def on_wrong_partition(self, err: Any) -> bool:
        """Learn from a WrongPartition (the client's error, or the keyspan.v1.WrongPartition
        detail). True when a retry may now reach the owner."""
        detail: errors_pb2.WrongPartition = getattr(err, "detail", err)
        learned = False
        if detail.map_version > self.map.version and detail.address:
            end = detail.end if detail.HasField("end") else None
            self._hints.append((KeyRange(detail.start, end), detail.address, detail.map_version))
            learned = True
        if self._refresh is not None and detail.map_version >= self.map.version:
            fresh = self._refresh()
            learned = (fresh is not None and self.map.apply(fresh)) or learned
        if learned or self.map.version > detail.map_version:
            return True
        if not detail.address:
            # The node knows no owner (a partition between owners, a new control.db
            # recovering): asked again, the client's map says Unavailable (retryable) or
            # routes to the owner once there is one; the hops are bounded.
            return True
        # The same map on both sides: a call sent before this client's map changed, to the
        # node that then lost the key. A retry goes where both maps now agree the key is.
        return self._routes_to(detail.key, detail.address)

    def _routes_to(self, key: bytes, address: str) -> bool:
        try:
            return self.address_for_key(key) == address
        except UnavailableError:
            return False

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
        channels = [c for c, _ in self._channels.values()]
        self._channels.clear()
        for channel in channels:
            closed = channel.close()
            if inspect.isawaitable(closed):
                await closed
