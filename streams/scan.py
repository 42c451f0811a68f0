"""The server side of Scan: credits in, batches of entries out, resumable anywhere."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from keyspan.storage.errors import KeyspanError
from keyspan.storage.keys import KeyRange, key_successor, range_of
from keyspan.storage.limits import Limits, check_credits, check_paths, check_projection
from keyspan.storage.shard import Row
from keyspan.storage.shardset import Partition, ShardSet
from keyspan.streams.stopping import RESUME_SCAN, server_stopping, unless_stopping
from keyspan.v1 import kv_pb2

BATCH_BYTES = 256 * 1024  # per response: a message costs ~75 us of Python CPU at any size
# The most a response carries: gRPC's 16 MiB message limit less room for its framing. A
# value may be up to 16 MiB less 64 KiB (--max-value-bytes), so one alone always fits.
MESSAGE_BUDGET = (16 << 20) - (32 << 10)
BATCH_ROWS = 10_000
# After `done`, how long a stream waits for the close its client promised (close_after_done).
LINGER_S = 10.0


def entry_of(row: Row) -> kv_pb2.Entry:
    return kv_pb2.Entry(
        key=row.key,
        value=row.value,
        etag=row.etag,
        expires_at_ms=row.expires_at_ms or 0,
        json=row.json,
    )


def response_of(rows: list[Row], resume_key: bytes, done: bool) -> kv_pb2.ScanResponse:
    """A ScanResponse of rows, built in place: the scan's per-row cost on the event loop.

    Adding to the repeated field directly, and leaving proto3 defaults unset, is about 5x
    cheaper per row than building Entry messages and copying them in; the bytes on the
    wire are the same as entry_of's.
    """
    response = kv_pb2.ScanResponse(resume_key=resume_key, done=done)
    add = response.entries.add
    for row in rows:
        if row.expires_at_ms or row.json:
            add(
                key=row.key,
                value=row.value,
                etag=row.etag,
                expires_at_ms=row.expires_at_ms or 0,
                json=row.json,
            )
        else:
            add(key=row.key, value=row.value, etag=row.etag)
    return response


class _Credits:
    """Credits granted by the client, topped up by a task reading its later requests."""

    def __init__(self, first: int) -> None:
        self.left = first
        self._more = asyncio.Event()
        self.closed = False
        self.error: KeyspanError | None = None  # a later request refused

    async def pump(self, requests: AsyncIterator[kv_pb2.ScanRequest]) -> None:
        try:
            async for request in requests:
                self.left += check_credits(request.credits)
                self._more.set()
        except KeyspanError as err:
            self.error = err
        finally:
            self.closed = True
            self._more.set()

    async def wait(self, stopping: asyncio.Event) -> bool:
        """Wait for credits; False when the client closed its side with none left.
        Raises UnavailableError once the server is stopping."""
        while self.left <= 0 or self.error is not None:
            if self.error is not None:
                raise self.error
            if self.closed:
                return False
            self._more.clear()
            await unless_stopping(self._more.wait(), stopping, RESUME_SCAN)
        if stopping.is_set():  # between batches of a scan that still has credits
            raise server_stopping(RESUME_SCAN)
        return True


async def linger(pump: asyncio.Task[None], stopping: asyncio.Event) -> None:
    """After `done`, for a client that set close_after_done: wait until it closes its side
    (the `pump` reading its requests ends), LINGER_S passes or the server begins to stop.

    The client grants ahead of what it reads, so a grant can be on its way when `done`
    is sent. Ended at once, the stream would refuse that grant, and grpc.aio then fails
    the client's call and drops the responses it has not read (grpc/grpc#36066); held
    open, the pump reads the grant and it is ignored.
    """
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((pump, stop), timeout=LINGER_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()


def _rest(common: KeyRange, cursor: bytes | None, reverse: bool) -> KeyRange | None:
    """What is left to read of `common` when the scan has reached `cursor`."""
    if reverse:
        upper = common.end if cursor is None or (common.end is not None and common.end < cursor) else cursor
        return None if upper is not None and upper <= common.start else KeyRange(common.start, upper)
    assert cursor is not None
    lower = max(cursor, common.start)
    return None if common.end is not None and lower >= common.end else KeyRange(lower, common.end)


def _after(row: Row, reverse: bool) -> bytes:
    """The resume key right after `row` in the scan's direction."""
    return row.key if reverse else key_successor(row.key)


def _oversize(rows: list[Row], limit: int) -> int | None:
    """The index of the first projected row (a JSON document) over `limit`, if any."""
    return next((i for i, row in enumerate(rows) if row.json and len(row.value) > limit), None)


async def serve_scan(
    shards: ShardSet,
    requests: AsyncIterator[kv_pb2.ScanRequest],
    limits: Limits,
    stopping: asyncio.Event,
) -> AsyncIterator[kv_pb2.ScanResponse]:
    """Stream the first request's range in batches, never past the credits granted.

    A projection (paths) over the value limit ends the stream RESOURCE_EXHAUSTED, after
    the entries before it. After `done`, a client that set close_after_done keeps the
    stream until it closes its side (`linger`).

    Once `stopping` is set, the stream ends before its next batch with UNAVAILABLE: the
    client resumes from the last resume_key it got.
    """
    # A stream opened with no request in yet does not hold a shutdown either.
    first = await unless_stopping(anext(requests, None), stopping, RESUME_SCAN)
    if first is None:
        return
    key_range = range_of(first.start, first.end if first.HasField("end") else None)
    paths = check_paths(list(first.paths), distinct=True)
    credits = _Credits(check_credits(first.credits))
    remaining = first.limit or None
    pump = asyncio.create_task(credits.pump(requests))

    async def read(partition: Partition, todo: KeyRange, want: int) -> tuple[list[Row], bool]:
        return await shards.scan_batch(
            partition,
            todo,
            reverse=first.reverse,
            paths=paths,
            max_rows=want,
            max_bytes=BATCH_BYTES,
            max_projection_bytes=limits.max_value_bytes,
            max_message_bytes=MESSAGE_BUDGET,
        )

    try:
        # Up to the first part of the range not held here: the stream ends there with
        # the on_missing error (WrongPartition, or UNAVAILABLE while serve starts).
        parts, gap = shards.held(key_range, reverse=first.reverse)
        cursor = key_range.end if first.reverse else key_range.start
        for index, (partition, common) in enumerate(parts):
            last_part = index == len(parts) - 1 and gap is None
            more_here = False  # known to hold a row past the cursor (from the last batch)
            while (todo := _rest(common, cursor, first.reverse)) is not None:
                # `done` carries no entry, so it needs no credit: out of credits where the
                # rest may be empty (a new part), ask before waiting for more.
                if credits.left <= 0 and not more_here and (await read(partition, todo, 0))[1]:
                    break
                if not await credits.wait(stopping):
                    return
                want = min(credits.left, BATCH_ROWS, remaining or BATCH_ROWS)
                rows, exhausted = await read(partition, todo, want)
                more_here = not exhausted
                if paths and (big := _oversize(rows, limits.max_value_bytes)) is not None:
                    if big:
                        yield response_of(rows[:big], _after(rows[big - 1], first.reverse), False)
                    check_projection(rows[big].value, limits.max_value_bytes, rows[big].key)
                if rows:
                    cursor = _after(rows[-1], first.reverse)
                    credits.left -= len(rows)
                    if remaining is not None:
                        remaining -= len(rows)
                done = remaining == 0 or (exhausted and last_part)
                if rows or done:
                    yield response_of(rows, cursor or b"", done)
                if done:
                    if first.close_after_done:
                        await linger(pump, stopping)
                    return
                if exhausted:
                    break
        if gap is not None:
            raise shards.on_missing(gap)
        yield kv_pb2.ScanResponse(resume_key=cursor or b"", done=True)
        if first.close_after_done:
            await linger(pump, stopping)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
