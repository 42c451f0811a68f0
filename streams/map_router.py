"""MapRouter: the client's Router interface over a cluster's partition map.

It has the shape of the client's StaticRouter (streams/router.py):

    router.stub_for_key(key) -> stub                      # the owner of key
    router.pieces(start, end) -> [(start, end, stub)]     # the range cut per partition, key order
    router.on_wrong_partition(detail)                     # a keyspan.v1.WrongPartition detail

Stubs come from `stub_factory(address)` (sync `kv_pb2_grpc.KVStub(grpc.insecure_channel(a))`
or the aio equivalent), one per address, cached. The map is a PartitionMap kept fresh by
a MapWatcher (async clients) or by `refresh()`, a callable that fetches control's GetMap
(sync clients); a WrongPartition detail newer than the map is used at once as a hint for
its range until the map catches up, so a retry goes straight to the new owner.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keyspan.storage.errors import UnavailableError
from keyspan.storage.keys import KeyRange
from keyspan.streams.partition_map import PartitionMap
from keyspan.v1 import control_pb2, errors_pb2


class MapRouter:
    def __init__(
        self,
        partition_map: PartitionMap,
        stub_factory: Callable[[str], Any],
        refresh: Callable[[], control_pb2.PartitionMap | None] | None = None,
    ) -> None:
        self.map, self._factory, self._refresh = partition_map, stub_factory, refresh
        self._stubs: dict[str, Any] = {}
        self._hints: list[tuple[KeyRange, str, int]] = []

    def _stub(self, address: str) -> Any:
        if address not in self._stubs:
            self._stubs[address] = self._factory(address)
        return self._stubs[address]

    def address_for_key(self, key: bytes) -> str:
        self._hints = [h for h in self._hints if h[2] > self.map.version]
        for key_range, address, _ in self._hints:
            if key in key_range:
                return address
        entry = self.map.locate(key)
        if not entry.routable:
            raise entry.unavailable()
        return entry.address

    def stub_for_key(self, key: bytes) -> Any:
        """The stub of the node that owns key; UnavailableError when its owner is down."""
        return self._stub(self.address_for_key(key))

    def pieces(self, start: bytes, end: bytes | None) -> list[tuple[bytes, bytes | None, Any]]:
        """[start, end) cut at partition bounds, each piece with its owner's stub."""
        out = []
        for piece, entry in self.map.pieces(start, end):
            if not entry.routable:
                raise entry.unavailable()
            out.append((piece.start, piece.end, self._stub(entry.address)))
        return out

    def on_wrong_partition(self, detail: errors_pb2.WrongPartition) -> None:
        """Learn from a WrongPartition: hint its range to its owner, refresh the map if stale."""
        if detail.map_version > self.map.version and detail.address:
            end = detail.end if detail.HasField("end") else None
            self._hints.append((KeyRange(detail.start, end), detail.address, detail.map_version))
        if self._refresh is not None and detail.map_version >= self.map.version:
            fresh = self._refresh()
            if fresh is not None:
                self.map.apply(fresh)
        if not len(self.map):
            raise UnavailableError("no partition map yet (control not reached)", retry_after_s=0.5)
