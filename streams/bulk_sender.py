"""The client side of BulkPut: sorted entries out in byte-budget batches, acks in, the rest re-sent.

One implementation serves `AsyncClient.bulk_put` (one attempt) and `bulk_put_ex`
(retried under a RetryPolicy). Batches are cut by a byte budget, not by count: a gRPC
message costs about 75 µs of Python CPU whatever its size, so small entries must share
messages. A few batches are in flight on a stream at once; each answer says how many of
that batch's first entries were committed (a prefix, whole or not at all), and the rest
is sent again as a new batch, routed by its first key (the server's `next_key`). After a
failure, every unanswered batch is sent again with the same entries, so an entry is
never written with a value other than its own. Entries must be sorted by key with no
duplicates; the sender checks this as it reads them and raises InvalidArgument
(``entries[i].key``) at the first that is not, once every batch read before it is in
(re-sent as a failure needs): the batch it was cutting is not sent, so the entries before
the refused one in that batch are not written, as when the server refuses a batch. An
entry the server refuses (a TTL or value out of bounds) is named the same way, by its
place in the whole load, not in its batch. An item that is no entry (None, a str, a
tuple of 4) or has a field of the wrong type is a TypeError or ValueError named so too
(``entries[i]``, ``entries[i].ttl_s``), raised as it is read.
"""

from __future__ import annotations

import asyncio
import collections
import re
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from keyspan.storage.errors import key_text
from keyspan.streams import calls
from keyspan.streams.arguments import check_ttl
from keyspan.streams.entry import Entry, encode_value, key_bytes
from keyspan.streams.errors import (
    ClientClosed,
    InvalidArgument,
    KeyspanClientError,
    ResourceExhausted,
    Unavailable,
    from_rpc_error,
)
from keyspan.streams.retry import DEFAULT_POLICY, RetryPolicy, Stall, retrying
from keyspan.streams.router import MAX_MESSAGE_BYTES
from keyspan.v1 import kv_pb2

if TYPE_CHECKING:
    from keyspan.streams.client import AsyncClient

DEFAULT_BATCH_BYTES = 1 << 20
# A batch is cut after the entry that reaches batch_bytes, and each entry adds a few bytes
# of framing: half the 16 MiB message limit leaves room for both.
MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 2
# What one BulkPut message may carry (gRPC's limit less room for the request's framing),
# counting each entry's own framing (field tags and lengths, ttl_s, json) as ENTRY_FRAMING.
# An entry that would take a batch past it starts the next one: a big value after smaller
# ones built a message over the limit, which gRPC failed locally and the load retried
# as unavailable for a minute. One that cannot fit in a message at all is refused.
# The largest value a server takes (--max-value-bytes at most 16 MiB less 64 KiB) with the
# largest key fits in it, alone: 16 KiB less than the limit.
MESSAGE_BUDGET = MAX_MESSAGE_BYTES - (16 << 10)
ENTRY_FRAMING = 32
MAX_BATCH_ENTRIES = 50_000  # the server takes up to 100,000
BATCHES_IN_FLIGHT = 3
ONE_ATTEMPT = RetryPolicy(max_attempts=1)
_ENTRY_FIELD = re.compile(r"entries\[(\d+)\](.*)")

BulkItem = tuple[Any, Any] | tuple[Any, Any, float] | Entry | kv_pb2.Entry
ENTRY_SHAPES = "a (key, value) or (key, value, ttl_s) tuple, an Entry or a kv_pb2.Entry"
_PAIR = (tuple, list)
_FIELDS = ("key", "value", "ttl_s")
_END = object()  # the end of the items (None is an item, and a wrong one)


@dataclass
class BulkPutResult:
    """Counts so far (progress) or in all (result). Each entry is counted once, when acked."""

    entries: int = 0
    bytes: int = 0
    batches: int = 0
    retries: int = 0
    elapsed_s: float = 0.0


def check_batch_bytes(batch_bytes: int) -> int:
    if isinstance(batch_bytes, bool) or not isinstance(batch_bytes, int):
        raise TypeError(f"batch_bytes: must be a whole number of bytes, not {batch_bytes!r}")
    if not 1 <= batch_bytes <= MAX_BATCH_BYTES:
        raise ValueError(f"batch_bytes: must be between 1 and {MAX_BATCH_BYTES}, not {batch_bytes}")
    return batch_bytes


def wire_entry(key: bytes, value: bytes, is_json: bool = False, ttl_s: float = 0.0) -> kv_pb2.Entry:
    """A BulkPut entry, setting only the fields that differ from their defaults (each
    keyword costs about a microsecond, and a load builds millions of these)."""
    if ttl_s:
        return kv_pb2.Entry(key=key, value=value, json=is_json, ttl_s=ttl_s)
    if is_json:
        return kv_pb2.Entry(key=key, value=value, json=True)
    return kv_pb2.Entry(key=key, value=value)


def to_wire(item: BulkItem) -> kv_pb2.Entry:
    """A BulkPut entry from (key, value), (key, value, ttl_s) (a tuple or a list), an Entry
    or a kv_pb2.Entry.

    Anything else is a TypeError. A field that is not what it should be is a TypeError or
    a ValueError whose message starts with the field's name (`key: `, `value: `, `ttl_s: `).
    """
    if isinstance(item, _PAIR):  # the common case first: a load builds millions of these
        if len(item) == 2:
            key, value = item
            raw, is_json = encode_value(value, False)
            return wire_entry(key_bytes(key), raw, is_json)
        if len(item) == 3:
            key, value, ttl_s = item
            raw, is_json = encode_value(value, False)
            return wire_entry(key_bytes(key), raw, is_json, check_ttl(ttl_s))
    elif isinstance(item, kv_pb2.Entry):
        return item
    elif isinstance(item, Entry):
        value, is_json = encode_value(item.value, item.is_json)
        return wire_entry(key_bytes(item.key), value, is_json, item.ttl_s)
    raise TypeError(f"must be {ENTRY_SHAPES}, not {_shape(item)}")


def _shape(item: object) -> str:
    if item is None:
        return "None"
    if isinstance(item, _PAIR):
        return f"a {type(item).__name__} of {len(item)}"
    return type(item).__name__


def _named(err: TypeError | ValueError, index: int) -> TypeError | ValueError:
    """to_wire's error for the entry at `index` of the load: `entries[3].key: ...`."""
    field, _, rule = str(err).partition(": ")
    text = f"entries[{index}].{field}: {rule}" if field in _FIELDS else f"entries[{index}]: {err}"
    return TypeError(text) if isinstance(err, TypeError) else ValueError(text)


class _Batch:
    """Entries sent as one BulkPutRequest; `first` is the first one's index in the load."""

    __slots__ = ("entries", "first", "nbytes")

    def __init__(self, entries: list[kv_pb2.Entry], nbytes: int, first: int) -> None:
        self.entries, self.nbytes, self.first = entries, nbytes, first

    def split(self, accepted: int) -> tuple[_Batch, _Batch]:
        head, tail = self.entries[:accepted], self.entries[accepted:]
        head_bytes = sum(len(e.key) + len(e.value) for e in head)
        rest = _Batch(tail, self.nbytes - head_bytes, self.first + accepted)
        return _Batch(head, head_bytes, self.first), rest

    def in_load(self, err: KeyspanClientError) -> KeyspanClientError:
        """The server names a refused entry by its place in this batch (`entries[3].value`):
        name it by its place in the whole load instead, as the order check does, and by
        its key (a load's input is often sorted first, so the place alone is not enough)."""
        if isinstance(err, InvalidArgument) and (found := _ENTRY_FIELD.fullmatch(err.field)):
            index = int(found[1])
            field = f"entries[{self.first + index}]{found[2]}"
            named = f" (key {key_text(self.entries[index].key)})" if index < len(self.entries) else ""
            return type(err)(f"{field}{named}: {err.rule}", field, err.rule)
        return err


class _Source:
    """Pulls items, checks their order, and cuts them into batches of about `batch_bytes`."""

    def __init__(self, items: Iterable[BulkItem] | AsyncIterable[BulkItem], batch_bytes: int) -> None:
        self._sync = iter(items) if isinstance(items, Iterable) else None
        self._async = aiter(items) if self._sync is None else None  # type: ignore[arg-type]
        self._batch_bytes, self._index, self._previous = batch_bytes, 0, b""
        self._held: kv_pb2.Entry | None = None  # checked, and starts the next batch
        self.exhausted = False

    async def _next_item(self) -> Any:
        """The next item, or _END."""
        if self._sync is not None:
            return next(self._sync, _END)
        return await anext(self._async, _END)  # type: ignore[arg-type]

    async def next_batch(self) -> _Batch | None:
        entries: list[kv_pb2.Entry] = []
        nbytes = framed = 0
        first = self._index - (self._held is not None)
        while nbytes < self._batch_bytes and len(entries) < MAX_BATCH_ENTRIES:
            if self._held is not None:
                entry, self._held = self._held, None
            elif self.exhausted or (entry := await self._checked_next()) is None:
                break
            size = len(entry.key) + len(entry.value)
            if entries and framed + size + ENTRY_FRAMING > MESSAGE_BUDGET:
                self._held = entry
                break
            entries.append(entry)
            nbytes, framed = nbytes + size, framed + size + ENTRY_FRAMING
        return _Batch(entries, nbytes, first) if entries else None

    async def _checked_next(self) -> kv_pb2.Entry | None:
        """The next item as a wire entry, its key in order and its size one a message can
        carry; None at the end."""
        item = await self._next_item()
        if item is _END:
            self.exhausted = True
            return None
        try:
            entry = to_wire(item)
        except (TypeError, ValueError) as err:
            raise _named(err, self._index) from None
        if entry.key <= self._previous:
            if not entry.key:
                rule = "must not be empty"
            elif entry.key == self._previous:
                rule = "is a duplicate; bulk_put needs sorted, unique keys"
            else:
                rule = "sorts before the entry before; bulk_put needs sorted, unique keys"
            field = f"entries[{self._index}].key"
            raise InvalidArgument(f"{field} (key {key_text(entry.key)}): {rule}", field, rule)
        if len(entry.key) + len(entry.value) + ENTRY_FRAMING > MESSAGE_BUDGET:
            most = MESSAGE_BUDGET - ENTRY_FRAMING - len(entry.key)
            field, rule = (
                f"entries[{self._index}].value",
                f"is {len(entry.value)} bytes; a message carries at most {most}",
            )
            raise ResourceExhausted(f"{field} (key {key_text(entry.key)}): {rule}", field, rule)
        self._previous, self._index = entry.key, self._index + 1
        return entry


class _Sender:
    def __init__(self, client: AsyncClient, source: _Source, stall: Stall, timeout_s: float | None) -> None:
        self.client, self.source, self.stall, self.timeout_s = client, source, stall, timeout_s
        self.pending: collections.deque[_Batch] = collections.deque()  # re-sends go first
        self.result = BulkPutResult()
        self.refusal: Exception | None = None  # an item of the source the client refused
        self.on_progress: Callable[[BulkPutResult], None] | None = None
        self._started = time.monotonic()

    async def _next(self) -> _Batch | None:
        """The next batch: what is to be sent again first, then the source's. Once the
        source holds an item the client refuses (out of order, a bad TTL, too big for a
        message), it gives no more, so the load ends with what was read before it in (the
        batches sent, the rest of a batch a partition boundary cut, re-sends after a
        broken stream), and send_all raises the refusal then. The batch it was cutting is
        not sent, as when the server refuses a batch."""
        if self.pending:
            return self.pending.popleft()
        if self.refusal is not None:
            return None
        try:
            return await self.source.next_batch()
        except (KeyspanClientError, TypeError, ValueError) as refusal:
            self.refusal = refusal
            return None

    def _acked(self, batch: _Batch, accepted: int) -> None:
        if accepted <= 0:
            raise KeyspanClientError("BulkPut accepted no entry of a batch routed by its own first key")
        if accepted < len(batch.entries):
            batch, rest = batch.split(accepted)
            self.pending.appendleft(rest)
        r = self.result
        r.entries, r.bytes, r.batches = r.entries + len(batch.entries), r.bytes + batch.nbytes, r.batches + 1
        r.retries, r.elapsed_s = self.stall.retries, time.monotonic() - self._started
        self.stall.mark()
        if self.on_progress is not None:
            self.on_progress(r)

    async def pump(self) -> None:
        """Send until the source and the re-sends are empty; one attempt of the retry loop."""
        in_flight: collections.deque[_Batch] = collections.deque()
        call: Any = None
        call_stub: Any = None
        try:
            while True:
                while len(in_flight) < BATCHES_IN_FLIGHT and (batch := await self._next()) is not None:
                    stub = self.client.live_router().stub_for_key(batch.entries[0].key)
                    if call is not None and stub is not call_stub:
                        if in_flight:  # drain this server before switching to the next
                            self.pending.appendleft(batch)
                            break
                        await _finish(call)
                        call = None
                    if call is None:
                        call, call_stub = stub.BulkPut(timeout=self.timeout_s), stub
                    in_flight.append(batch)  # from here on "maybe sent": re-sent if the stream fails
                    await self._unless_closed(calls.write(call, kv_pb2.BulkPutRequest(entries=batch.entries)))
                if not in_flight:
                    if self.pending:
                        continue
                    break
                response = await call.read()
                if response is grpc.aio.EOF:
                    raise Unavailable(
                        "BulkPut stream ended before answering every batch", may_have_applied=True
                    )
                self._acked(in_flight.popleft(), response.accepted)
            if call is not None:
                await _finish(call)
        except grpc.RpcError as err:
            # The server answers every batch before a refused one, so a refusal is about
            # the oldest batch still in flight.
            refused = in_flight[0] if in_flight else None
            self.pending.extendleft(reversed(in_flight))
            self.client.raise_if_closed()
            error = from_rpc_error(err)
            raise (refused.in_load(error) if refused is not None else error) from None
        except BaseException as err:
            self.pending.extendleft(reversed(in_flight))
            if call is not None:
                call.cancel()
            if isinstance(err, Exception) and not isinstance(err, ClientClosed):
                # grpc.aio's InvalidStateError on a call close() ended
                self.client.raise_if_closed()
            raise

    async def _unless_closed(self, write: Any) -> None:
        """`write`, or ClientClosed once the client closes first: a call made on a channel
        as close() closed it never starts, and its write waited for ever (a task in a
        TaskGroup held the group with it)."""
        closed = self.client.closed_event
        if closed.is_set():
            write.close()
            raise ClientClosed("this keyspan AsyncClient is closed")
        writing = asyncio.ensure_future(write)
        stop = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait((writing, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not writing.done():
                writing.cancel()
        if writing.cancelled():
            raise ClientClosed("this keyspan AsyncClient was closed during the call")
        writing.result()


async def _finish(call: Any) -> None:
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def send_all(
    client: AsyncClient,
    items: Iterable[BulkItem] | AsyncIterable[BulkItem],
    *,
    policy: RetryPolicy | None,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    on_progress: Callable[[BulkPutResult], None] | None = None,
    timeout_s: float | None = None,
) -> BulkPutResult:
    """Load every item; with a policy, retry retryable failures until all are in.

    batch_bytes out of 1..MAX_BATCH_BYTES is a ValueError, raised before anything is read,
    as the TypeErrors for arguments of the wrong type are."""
    check_batch_bytes(batch_bytes)
    if isinstance(items, str | bytes | bytearray | Mapping) or not isinstance(
        items, Iterable | AsyncIterable
    ):
        raise TypeError(
            f"items: must be an iterable or async iterable of entries, not {type(items).__name__}"
        )
    if on_progress is not None and not callable(on_progress):
        raise TypeError(
            f"on_progress: must be a function of the BulkPutResult, not {type(on_progress).__name__}"
        )
    stall = Stall(policy or ONE_ATTEMPT)
    sender = _Sender(client, _Source(items, batch_bytes), stall, timeout_s)
    sender.on_progress = on_progress
    try:
        async for attempt in retrying(stall, client.router, metrics=client.metrics, method="BulkPut"):
            with attempt:
                await sender.pump()
    except asyncio.CancelledError:
        client.raise_if_closed()
        raise
    if sender.refusal is not None:  # every batch read before it is in
        raise sender.refusal
    sender.result.retries = stall.retries
    sender.result.elapsed_s = time.monotonic() - sender._started
    return sender.result


async def bulk_put_ex(
    client: AsyncClient,
    items: Iterable[BulkItem] | AsyncIterable[BulkItem],
    *,
    policy: RetryPolicy = DEFAULT_POLICY,
    batch_bytes: int = DEFAULT_BATCH_BYTES,
    on_progress: Callable[[BulkPutResult], None] | None = None,
    timeout_s: float | None = None,
) -> BulkPutResult:
    """Load sorted entries, re-routing by next_key and re-sending what was not acked, until
    every entry is in. Returns the counts; `on_progress` hears them after every ack."""
    return await send_all(
        client, items, policy=policy, batch_bytes=batch_bytes, on_progress=on_progress, timeout_s=timeout_s
    )
