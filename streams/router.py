"""Routers: which server a client call goes to.

The client sends every call through a Router. A router answers three questions and
hears one piece of news; that is the whole interface a cluster-aware router implements:

- ``stub_for_key(key) -> KVStub``: the stub of the server that owns `key`;
- ``pieces(start, end) -> list[(start, end, KVStub)]``: the range [start, end) cut into
  consecutive subranges in key order, each with the stub that serves it (end None is
  +infinity; a single piece is fine when one server answers the whole range);
- ``stubs() -> list[KVStub]``: every distinct server, for calls about all of them (Stats);
- ``on_wrong_partition(err) -> bool``: a server said it does not own ``err.key``; update
  what the router knows from the error's fields (range, address, map version) and return
  True when a retry may now reach the owner, False when nothing changed;
- ``async close()``: close the channels.

Stubs are created lazily, inside the running event loop (grpc.aio channels belong to
the loop they were created in). Channel options live here, in one place.
"""

from __future__ import annotations

from typing import Protocol

import grpc

from keyspan.streams.errors import WrongPartition
from keyspan.v1 import kv_pb2_grpc

MAX_MESSAGE_BYTES = 16 << 20
CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),  # retries are ours (streams/retry.py), with resume cursors
    # A restarted server is reached within a second of coming back, as the gateway reaches
    # its nodes: with gRPC's default backoff (growing 1.6x to 120 s) a thick client still
    # failed to connect 6.5 s after a node restarted from a 10 s outage, and scan_ex gave up.
    # Not grpc.min_reconnect_backoff_ms: gRPC takes it as the connect timeout too (20 s by
    # default), and a handshake slower than 100 ms would then never complete.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]

Piece = tuple[bytes, bytes | None, kv_pb2_grpc.KVStub]


class Router(Protocol):
    def stub_for_key(self, key: bytes) -> kv_pb2_grpc.KVStub: ...

    def pieces(self, start: bytes, end: bytes | None) -> list[Piece]: ...

    def stubs(self) -> list[kv_pb2_grpc.KVStub]: ...

    def on_wrong_partition(self, err: WrongPartition) -> bool: ...

    async def close(self) -> None: ...


def open_channel(address: str) -> grpc.aio.Channel:
    """An insecure grpc.aio channel with the client's options; call inside the event loop."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


class StaticRouter:
    """Every key and every range goes to one address (`keyspan serve`, or a gateway)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: kv_pb2_grpc.KVStub | None = None

    def _the_stub(self) -> kv_pb2_grpc.KVStub:
        if self._stub is None:
            self._channel = open_channel(self.address)
            self._stub = kv_pb2_grpc.KVStub(self._channel)
        return self._stub

    def stub_for_key(self, key: bytes) -> kv_pb2_grpc.KVStub:
        return self._the_stub()

    def pieces(self, start: bytes, end: bytes | None) -> list[Piece]:
        # One server crosses its own partitions inside a Scan, so one piece is enough.
        return [(start, end, self._the_stub())]

    def stubs(self) -> list[kv_pb2_grpc.KVStub]:
        return [self._the_stub()]

    def on_wrong_partition(self, err: WrongPartition) -> bool:
        # One address knows no other owner: a retry would reach the same server.
        return False

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None
