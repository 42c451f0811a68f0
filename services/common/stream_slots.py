"""A cap on the KV streams (Scan, BulkPut, Sweep) one process has open at once.

Each open stream costs memory whether or not its client reads: a Scan granted credits
by a client that then stops reading leaves its answers queued in gRPC, ~2 MB a stream
in a probe (2,000 such streams over 200,000 entries held 3.5 GB; 256 held 690 MB). Past the cap a new
stream is refused with UNAVAILABLE (ErrorInfo STREAM_LIMIT, RetryInfo) once its first
request is in, before anything of it runs; the streams already open go on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from keyspan.storage.errors import StreamLimitError

LIMITED_PREFIX = "/keyspan.v1.KV/"
FIRST_REQUEST_WAIT_S = 1.0


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
                # Refused only once the client's first request is in (or after a second):
                # a stream ended before it arrives can fail the client's first write in its
                # own gRPC, as INTERNAL "Internal error from Core" with no status details
                # (grpc/grpc#36066): 36 of 400 refusals in a probe, without the reason or
                # the retry delay.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(anext(aiter(requests), None), FIRST_REQUEST_WAIT_S)
                raise StreamLimitError(self.limit)
            self.open += 1
            try:
                async for response in behavior(requests, context):
                    yield response
            finally:
                self.open -= 1

        return limited
