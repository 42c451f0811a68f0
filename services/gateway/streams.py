"""The three KV streams at the gateway, stitched across partitions and nodes in key order.

- Scan: the range is read piece by piece (one piece per partition, in key order or
  reverse), each from its owner through a node Scan stream opened with the credits the
  client has left; the client's later credits are forwarded to the open piece. A piece
  that answers WrongPartition is re-cut from the cursor with the fresher map. Each piece
  asks its node to hold the stream after done (close_after_done) and is closed once its
  done is read; a client that asked the same is held for after the scan's done.
- BulkPut: each batch goes to the owner of its first key, on one stream per node; the
  node's answer (accepted, next_key) goes back unchanged.
- Sweep: each piece is swept by its owner; progress is summed.

Once the gateway begins to stop (`stopping`), Scan and BulkPut end at their next
resumable point with UNAVAILABLE, as on a node (keyspan.streams.stopping).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from keyspan.services.gateway.routing import (
    MAX_ATTEMPTS,
    Router,
    is_transport_failure,
    node_unreachable,
    relay,
    wrong_partition_of,
)
from keyspan.storage.errors import KeyspanError, UnavailableError
from keyspan.storage.keys import KeyRange, key_successor, range_of
from keyspan.storage.limits import MAX_CREDITS, check_credits, check_paths
from keyspan.streams.calls import FINISH_S, finish, status_error
from keyspan.streams.calls import write as write_request
from keyspan.streams.partition_map import MapEntry
from keyspan.streams.scan import linger
from keyspan.streams.stopping import RERUN_SWEEP, RESEND_BATCHES, RESUME_SCAN, unless_stopping
from keyspan.v1 import kv_pb2


class _Flow:
    """The client's credits: `total` granted so far and `delivered` entries sent back.

    The pump only counts; each piece's own forwarder task is the only writer to that
    piece's node stream, so no write outlives its piece or waits on another's.
    """

    def __init__(self, first: int) -> None:
        self.total, self.delivered = first, 0
        self.closed = False
        self.error: KeyspanError | None = None  # a later request refused
        self._more = asyncio.Event()
        self._forward = asyncio.Event()

    @property
    def left(self) -> int:
        return self.total - self.delivered

    async def pump(self, requests: AsyncIterator[kv_pb2.ScanRequest]) -> None:
        try:
            async for request in requests:
                self.total += check_credits(request.credits)
                self._more.set()
                self._forward.set()
        except KeyspanError as err:
            self.error = err
        finally:
            self.closed = True
            self._more.set()
            self._forward.set()

    async def wait(self, stopping: asyncio.Event) -> bool:
        while self.left <= 0 or self.error is not None:
            if self.error is not None:
                raise self.error
            if self.closed:
                return False
            self._more.clear()
            await unless_stopping(self._more.wait(), stopping, RESUME_SCAN)
        return True

    async def forward(self, call: Any, total_at_open: int, piece_over: asyncio.Event) -> None:
        """Pass the credits granted after the piece opened on to its node stream, and the
        client's half-close too: a node left waiting for credits nobody will send would
        hold the scan open for ever, where a direct one ends it once the credits run out.
        Returns once `piece_over` is set (and `wake` called), after any write under way."""
        seen = total_at_open
        while not piece_over.is_set():
            while self.total > seen and not piece_over.is_set():
                delta = min(self.total - seen, MAX_CREDITS)
                await write_request(call, kv_pb2.ScanRequest(credits=delta))
                seen += delta
            if self.closed:
                await call.done_writing()
                return
            await self._forward.wait()
            self._forward.clear()

    def wake(self) -> None:
        self._forward.set()


def _next_piece(
    router: Router, lo: bytes, hi: bytes | None, reverse: bool
) -> tuple[KeyRange, MapEntry, bool]:
    pieces = router.map.pieces(lo, hi)
    piece, entry = pieces[-1] if reverse else pieces[0]
    if not entry.routable:
        raise entry.unavailable()
    return piece, entry, len(pieces) == 1


async def _close_piece(
    call: Any, forwarder: asyncio.Task[None] | None, piece_over: asyncio.Event, flow: _Flow
) -> None:
    """A piece's node stream after its done: let the forwarder finish the grant it may be
    sending, then close our side, so the node (asked to hold the stream for this) ends it
    with OK instead of seeing a cancel."""
    piece_over.set()
    flow.wake()
    if forwarder is not None:
        with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(FINISH_S):
                await forwarder
    await finish(call)


async def scan_through(
    router: Router,
    requests: AsyncIterator[kv_pb2.ScanRequest],
    context: grpc.aio.ServicerContext,
    stopping: asyncio.Event,
) -> AsyncIterator[kv_pb2.ScanResponse]:
    first = await unless_stopping(anext(requests, None), stopping, RESUME_SCAN)
    if first is None:
        return
    whole = range_of(first.start, first.end if first.HasField("end") else None)
    paths = check_paths(list(first.paths), distinct=True)
    flow = _Flow(check_credits(first.credits))
    pump = asyncio.create_task(flow.pump(requests))
    limit_left = first.limit or None
    lo, hi = whole.start, whole.end
    misses = 0  # WrongPartition answers in a row
    try:
        while True:
            piece, entry, last_piece = _next_piece(router, lo, hi, first.reverse)
            # Out of credits at a piece's start, the piece may still be empty, and `done`
            # needs no credit, even for a client that has closed its side: it is opened
            # with one credit of ours (`borrowed`), and an entry it sends waits here for
            # the client's next grant (or ends the stream, once no grant can come).
            borrowed = flow.left <= 0 and flow.error is None
            if not borrowed and not await flow.wait(stopping):
                return
            request = kv_pb2.ScanRequest(
                start=piece.start,
                limit=limit_left or 0,
                paths=paths,
                reverse=first.reverse,
                close_after_done=True,  # the piece is closed below once its done is read
            )
            if piece.end is not None:
                request.end = piece.end
            call = router.channels.stub(entry.address).Scan()
            piece_done = False
            piece_over = asyncio.Event()
            forwarder: asyncio.Task[None] | None = None
            try:
                request.credits = 1 if borrowed else min(flow.left, MAX_CREDITS)
                total_at_open = flow.total - (flow.left - request.credits)
                await write_request(call, request)  # the range first; more credits only after it
                forwarder = asyncio.create_task(flow.forward(call, total_at_open, piece_over))
                while (
                    response := await unless_stopping(call.read(), stopping, RESUME_SCAN)
                ) is not grpc.aio.EOF:
                    n = len(response.entries)
                    if n > flow.left and not await flow.wait(stopping):  # the borrowed credit's entry
                        return
                    if n:
                        flow.delivered += n
                        last_key = response.entries[-1].key
                        lo, hi = (lo, last_key) if first.reverse else (key_successor(last_key), hi)
                        if limit_left is not None:
                            limit_left -= n
                    piece_done = response.done
                    done = piece_done and (last_piece or limit_left == 0)
                    if n or done:
                        yield kv_pb2.ScanResponse(
                            entries=response.entries,
                            resume_key=lo if not first.reverse else hi or b"",
                            done=done,
                        )
                    if piece_done:
                        await _close_piece(call, forwarder, piece_over, flow)
                    if done:
                        if first.close_after_done:
                            await linger(pump, stopping)
                        return
                    if piece_done:
                        break
            except grpc.aio.AioRpcError as err:
                wrong = wrong_partition_of(err)
                # Bounded as unary calls are: a node that kept answering WrongPartition (a
                # map that does not settle) held the scan for ever.
                if wrong is not None and (misses := misses + 1) < MAX_ATTEMPTS:
                    await router.after_wrong_partition(wrong)
                    continue
                if wrong is not None:
                    raise UnavailableError(
                        "scan: routing did not settle; resume from the last resume_key", 0.5
                    ) from None
                if is_transport_failure(err):
                    raise node_unreachable(entry, err) from None
                await relay(context, err)
            finally:
                if forwarder is not None:
                    forwarder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await forwarder
                call.cancel()
            if flow.error is not None:  # a later request was refused: say so, not OK
                raise flow.error
            if not piece_done:
                return  # the node ended the stream without done: the client went away
            misses = 0
            if first.reverse:
                hi = piece.start
            else:
                assert piece.end is not None
                lo = piece.end
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump


async def bulk_put_through(
    router: Router,
    requests: AsyncIterator[kv_pb2.BulkPutRequest],
    context: grpc.aio.ServicerContext,
    stopping: asyncio.Event,
) -> AsyncIterator[kv_pb2.BulkPutResponse]:
    calls: dict[str, Any] = {}
    pending = aiter(requests)
    try:
        while (request := await unless_stopping(anext(pending, None), stopping, RESEND_BATCHES)) is not None:
            if not request.entries:
                yield kv_pb2.BulkPutResponse(accepted=0)
                continue
            yield await _forward_batch(router, calls, request, context)
        # The caller half-closed with every batch answered: so do the node streams, which
        # then end OK (cancelled, each counted as a CANCELLED BulkPut on its node). At
        # most FINISH_S: a node that does not end its stream is cancelled below.
        await asyncio.gather(*(finish(call) for call in calls.values()))
    finally:
        for call in calls.values():
            call.cancel()


async def _forward_batch(
    router: Router, calls: dict[str, Any], request: kv_pb2.BulkPutRequest, context: grpc.aio.ServicerContext
) -> kv_pb2.BulkPutResponse:

    for _ in range(MAX_ATTEMPTS):
        entry = router.owner(request.entries[0].key)
        call = calls.get(entry.address)
        if call is not None and call.done():  # the node ended it after its last answer
            call = None  # (a restart): this batch was never sent on it, so a new stream
        if call is None:
            call = calls[entry.address] = router.channels.stub(entry.address).BulkPut()
        try:
            await write_request(call, request)
            response = await call.read()
            if response is grpc.aio.EOF:  # the node ended the stream before answering
                if await call.code() != grpc.StatusCode.OK:
                    raise await status_error(call)
                raise node_unreachable(entry)
            return response  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as err:
            calls.pop(entry.address, None)
            wrong = wrong_partition_of(err)
            if wrong is not None:
                await router.after_wrong_partition(wrong)
                continue
            if is_transport_failure(err):
                raise node_unreachable(entry, err) from None
            await relay(context, err)
    raise UnavailableError("bulk put: routing did not settle; retry the batch", retry_after_s=0.5)


async def sweep_through(
    router: Router,
    requests: AsyncIterator[kv_pb2.SweepRequest],
    context: grpc.aio.ServicerContext,
    stopping: asyncio.Event,
) -> AsyncIterator[kv_pb2.SweepResponse]:
    first = await unless_stopping(anext(requests, None), stopping, RERUN_SWEEP)
    if first is None:
        return
    whole = range_of(first.start, first.end if first.HasField("end") else None)
    scanned = deleted = misses = 0
    started, rate = time.monotonic(), first.max_deletes_per_s
    lo: bytes | None = whole.start
    while lo is not None and (whole.end is None or lo < whole.end):
        piece, entry = router.map.pieces(lo, whole.end)[0]
        if not entry.routable:
            raise entry.unavailable()
        # The rate is the whole sweep's: each node paces its own piece from its start, so
        # the next piece waits for the deletes so far (900 went in 0.06 s at 200 a second).
        if rate and (ahead_s := deleted / rate - (time.monotonic() - started)) > 0:
            await unless_stopping(asyncio.sleep(ahead_s), stopping, RERUN_SWEEP)
        request = kv_pb2.SweepRequest(start=piece.start, max_deletes_per_s=first.max_deletes_per_s)
        if piece.end is not None:
            request.end = piece.end
        base_scanned, base_deleted = scanned, deleted
        call = router.channels.stub(entry.address).Sweep(iter([request]))
        try:
            while (progress := await unless_stopping(call.read(), stopping, RERUN_SWEEP)) is not grpc.aio.EOF:
                scanned, deleted = base_scanned + progress.scanned, base_deleted + progress.deleted
                if not progress.done:
                    yield kv_pb2.SweepResponse(scanned=scanned, deleted=deleted)
        except grpc.aio.AioRpcError as err:
            # A node that does not hold the piece (a repair under way) refuses it whole,
            # before sweeping anything: cut the rest again from a fresher map. It was
            # relayed, a FAILED_PRECONDITION its client could do nothing with.
            wrong = wrong_partition_of(err)
            if wrong is not None and (misses := misses + 1) < MAX_ATTEMPTS:
                await router.after_wrong_partition(wrong)
                continue
            if wrong is not None:
                raise UnavailableError("sweep: routing did not settle; run the sweep again", 0.5) from None
            if is_transport_failure(err):
                raise node_unreachable(entry, err) from None
            await relay(context, err)
        finally:
            call.cancel()  # the node's sweep ends with ours (a no-op once it is over)
        lo, misses = piece.end, 0
    yield kv_pb2.SweepResponse(scanned=scanned, deleted=deleted, done=True)
