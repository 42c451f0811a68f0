"""Writing to a gRPC stream that may have just ended.

grpc.aio reports a write to a stream whose call has ended in one of two ways, depending on
whether its event loop has seen the end yet: `asyncio.InvalidStateError` ("RPC already
finished"), or an AioRpcError INTERNAL "Internal error from Core" that takes the place of
the status the server sent (grpc/grpc#36066). Both happen when a server is killed while a
client streams to it, so a bulk load read "internal: Internal error from Core" and stopped
instead of re-sending. `write` turns them into the stream's own status, or into UNAVAILABLE
when grpc.aio has lost it, so the usual handling (retry, relay, resume) applies.

After that INTERNAL, grpc.aio counts the call as ended but never ends it in grpc's core, so
`call.cancel()` does nothing: the responses not read yet stay queued there, the call's
status never arrives, and grpc.aio's task waiting for it (_handle_status_once_received)
stays pending with the call and its unread responses until the event loop ends. A Scan
whose credit grant crossed the end of its stream left one behind (`keyspan dump` of three
entries did in 14 runs of 20). `write` ends such a call in core.

Either way `write` raises `StreamEnded` (an UNAVAILABLE AioRpcError) when the stream had
ended with OK, or with a status grpc.aio lost: a caller that granted credits ahead may then
reopen after its cursor. A stream that ended with an error raises that error instead.

Keyspan's own scans avoid the race: they ask the server to hold the stream after `done`
(close_after_done) and `finish` it themselves, so their grants never meet an ended stream.
The handling above stays for servers that end at once, and for streams ended by an error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

_CORE_WRITE_FAILURE = "Internal error from Core"
# How long a stream whose last response has been read may take to send its status.
FINISH_S = 10.0


class StreamEnded(grpc.aio.AioRpcError):
    """A request could not be sent because the stream had ended with OK, or with a
    status grpc.aio lost (see above). Its code is UNAVAILABLE, so callers that only know
    AioRpcError treat it as a broken stream."""


async def write(call: Any, request: Any) -> None:
    """`call.write(request)`; raises an AioRpcError when the call has ended meanwhile."""
    try:
        await call.write(request)
    except asyncio.InvalidStateError:  # the end was seen first: its status says why
        if await call.code() == grpc.StatusCode.OK:
            initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
            details = "the stream ended before this request was sent"
            raise StreamEnded(grpc.StatusCode.UNAVAILABLE, initial, trailing, details) from None
        raise await status_error(call) from None
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.INTERNAL and err.details() == _CORE_WRITE_FAILURE:
            _end_in_core(call)
            raise StreamEnded(
                grpc.StatusCode.UNAVAILABLE,
                err.initial_metadata(),
                err.trailing_metadata(),
                f"the stream ended while a request was being sent (gRPC: {_CORE_WRITE_FAILURE})",
            ) from None
        raise


async def status_error(call: Any) -> grpc.aio.AioRpcError:
    """The error of a streaming call that has ended, with its status (a stream call is not
    awaitable: `await call` raised TypeError)."""
    code = await call.code()
    initial, trailing = await call.initial_metadata(), await call.trailing_metadata()
    return grpc.aio.AioRpcError(code, initial, trailing, await call.details())


def _end_in_core(call: Any) -> None:
    """Cancel a call that grpc.aio marked as ended without ending it in core (see above).

    call.cancel() checks grpc.aio's own status first, so this reaches past it; without that
    private attribute (another grpc version) nothing is done.
    """
    core_call = getattr(call, "_cython_call", None)
    if core_call is not None:
        core_call.cancel("a request could not be sent: the stream had ended")


async def finish(call: Any) -> None:
    """Close our side of a stream whose last response (`done`) has been read, and wait for
    its status, at most FINISH_S: a server asked with close_after_done holds the stream
    until this close, then ends it with OK. The status itself no longer matters (every
    entry has arrived); a stream that ended meanwhile, or a server that does not answer,
    is left to the caller's `call.cancel()`.
    """
    with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
        async with asyncio.timeout(FINISH_S):
            await call.done_writing()
            await call.code()
