"""A write to a stream that has just ended raises the stream's status, never INTERNAL.

grpc.aio's two ways of failing such a write are reproduced by a stand-in call (a unit test
of failure handling); test_restarts in integration/ kills a real server under a load.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from keyspan.streams import calls

pytestmark = pytest.mark.asyncio
TRAILING = grpc.aio.Metadata(("grpc-status-details-bin", b"\x08\x0e"))


class EndedCall:
    """A stream-stream call that ended with `code` before the write."""

    def __init__(
        self, write_error: BaseException, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        self.write_error, self._code = write_error, code

    async def write(self, request: Any) -> None:
        raise self.write_error

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def details(self) -> str:
        return "Socket closed"

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return TRAILING


async def test_an_end_seen_first_raises_the_stream_status() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await calls.write(EndedCall(asyncio.InvalidStateError("RPC already finished.")), object())
    assert (ended.value.code(), ended.value.details()) == (grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert ended.value.trailing_metadata() == TRAILING  # rich details stay readable
    assert not isinstance(ended.value, calls.StreamEnded)  # an error end: not to reopen after


async def test_an_end_that_was_ok_is_unavailable_for_the_unsent_request() -> None:
    with pytest.raises(calls.StreamEnded) as ended:
        await calls.write(EndedCall(asyncio.InvalidStateError(), grpc.StatusCode.OK), object())
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_grpc_internal_error_from_core_is_unavailable() -> None:
    core = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "Internal error from Core"
    )
    with pytest.raises(calls.StreamEnded) as ended:  # the status is lost: reopening is safe
        await calls.write(EndedCall(core), object())
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "Internal error from Core" in (ended.value.details() or "")


async def test_any_other_status_is_raised_as_it_is() -> None:
    refused = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "a fault"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await calls.write(EndedCall(refused), object())
    assert raised.value is refused
