"""A cap on the KV streams (Scan, BulkPut, Sweep) one process has open at once.

Each open stream costs memory whether or not its client reads: a Scan granted credits
by a client that then stops reading leaves its answers queued in gRPC, ~650 KB a stream
in a probe (2,000 such streams held 1.35 GB and slowed every Put 3x). Past the cap a new
stream is refused at once with UNAVAILABLE (ErrorInfo STREAM_LIMIT, RetryInfo), before
anything of it runs; the streams already open go on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from keyspan.storage.errors import StreamLimitError

LIMITED_PREFIX = "/keyspan.v1.KV/"


class StreamSlots:
    """Counts the open KV streams of a process; `wrap` is its registrar Wrap."""

    def __init__(self, limit: int) -> None:
        self.limit, self.open = limit, 0

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not (method.startswith(LIMITED_PREFIX) and handler.stream_stream):
            return handler
        return grpc.stream_stream_rpc_method_handler(
            self._limited(handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _limited(self, behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def limited(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if self.open >= self.limit:
                raise StreamLimitError(self.limit)
            self.open += 1
            try:
                async for response in behavior(requests, context):
                    yield response
            finally:
                self.open -= 1

        return limited
