"""AsyncClient: keyspan.v1.KV for Python applications, routed, with typed errors.

    async with AsyncClient("127.0.0.1:7420") as kv:
        etag = await kv.put("user/ann", {"age": 41})
        entry = await kv.get("user/ann", json=True)
        async for e in kv.scan("user/", "user0"):
            ...

Every call goes through a Router (streams/router.py) and has a deadline: `timeout_s`
(default 5 s) for unary calls and `stream_timeout_s` (default 300 s) for streams, both
overridable per call; a timeout is a number of seconds above 0 and at most a year
(stream_timeout_s None: no deadline). Failed calls raise the exceptions of
streams/errors.py. A call answered with WrongPartition is sent again when the router
learned the owner from it. The plain methods do not retry otherwise; scan_ex, bulk_put_ex
and update do. An argument of the wrong type is a TypeError, and one out of its range (a
timeout, an if_etag, a limit, batch_bytes) a ValueError, each naming it and raised before
anything is sent (streams/arguments.py). After close(), calls raise ClientClosed, and so
do the calls close() cut short (a scan's next read, a call in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import grpc

from keyspan.storage.errors import key_text
from keyspan.storage.keys import key_successor
from keyspan.storage.limits import check_conditions, check_keep_ttl
from keyspan.streams import bulk_sender, calls, jsontext, retry
from keyspan.streams.arguments import (
    check_address,
    check_flag,
    check_number,
    check_path_values,
    check_paths,
    check_timeout,
    check_ttl,
    check_uint64,
)
from keyspan.streams.bulk_sender import MESSAGE_BUDGET, BulkItem, BulkPutResult
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.entry import (
    Entry,
    KeyLike,
    Stats,
    SweepProgress,
    document,
    encode_value,
    json_text,
    key_range,
    point_key,
    server_rule,
)
from keyspan.streams.errors import (
    ClientClosed,
    KeyspanClientError,
    ResourceExhausted,
    Unavailable,
    WrongPartition,
    from_rpc_error,
)
from keyspan.streams.retry import DEFAULT_POLICY, UPDATE_POLICY, RetryPolicy
from keyspan.streams.router import Router, StaticRouter, open_channel
from keyspan.v1 import kv_pb2

DEFAULT_ADDRESS = "127.0.0.1:7420"
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_STREAM_TIMEOUT_S = 300.0
MAX_ROUTING_HOPS = 3
# Scan flow control: keep about two server batches (up to 256 KiB each) granted ahead of the reader.
SCAN_BATCH_BYTES = 256 * 1024  # the server packs responses to about this (streams/scan.py)
SCAN_FIRST_CREDITS = 256
SCAN_MIN_WINDOW, SCAN_MAX_WINDOW = 16, 10_000


def _if_etag(if_etag: int) -> int:
    return check_uint64(if_etag, "if_etag", "no precondition")


def _json_arg(value: Any, name: str) -> str:
    """A patch argument's JSON text: bytes are JSON text already, anything else is encoded."""
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError as err:
            raise ValueError(f"{name}: JSON text must be UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        return json_text(jsonlib.dumps, value, name)
    except TypeError:  # a Decimal inside (a number get decoded exactly): written as it is
        return jsontext.to_utf8(json_text(jsontext.dumps, value, name)).decode()


class _CreditWindow:
    """Entries granted but not yet consumed stay near two batches' worth of bytes."""

    def __init__(self) -> None:
        self.outstanding = self.window = SCAN_FIRST_CREDITS
        self._seen_entries = self._seen_bytes = 0

    def consumed(self, batch: list[kv_pb2.Entry]) -> int:
        """Record a consumed batch; return the credits to grant now (0: none yet)."""
        self.outstanding -= len(batch)
        self._seen_entries += len(batch)
        self._seen_bytes += sum(len(e.key) + len(e.value) + 16 for e in batch)
        average = self._seen_bytes / self._seen_entries
        self.window = max(SCAN_MIN_WINDOW, min(SCAN_MAX_WINDOW, int(2 * SCAN_BATCH_BYTES / average)))
        grant = self.window - self.outstanding
        if grant <= 0 or (self.outstanding > 0 and grant < self.window // 4):
            return 0
        self.outstanding += grant
        return grant


def _scan_request(
    start: bytes, end: bytes | None, limit: int, paths: list[str] | None, reverse: bool, credits: int
) -> kv_pb2.ScanRequest:
    request = kv_pb2.ScanRequest(
        start=start,
        limit=limit,
        paths=paths or [],
        reverse=reverse,
        credits=credits,
        close_after_done=True,
    )
    if end is not None:
        request.end = end
    return request


async def _granted(call: Any, credits: int) -> bool:
    """Send credits; False when the call had already ended with OK (the server finished
    first). A stream that ended with an error raises it, as a read would have."""
    try:
        await calls.write(call, kv_pb2.ScanRequest(credits=credits))
    except calls.StreamEnded:
        return False
    return True


class AsyncClient:
    """The asyncio client. Create and use it inside one event loop (its gRPC channels
    belong to it); close it (or use `async with`) to close its channels."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        router: Router | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if router is None:
            check_address(address)
        self.timeout_s = check_timeout(timeout_s, "timeout_s")
        self.stream_timeout_s = check_timeout(stream_timeout_s, "stream_timeout_s", none_ok=True)
        self.router: Router = router if router is not None else StaticRouter(address)
        self.metrics = metrics  # retries, map refreshes, WrongPartition redirects
        self._closed = False
        # Set by close(): a stream call made on a channel as close() closed it never starts,
        # and its first write waits for ever; bulk_put_ex races its writes with this.
        self.closed_event = asyncio.Event()
        # The loop it was made in, or else first used in: its channels belong to that one.
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    @classmethod
    async def for_cluster(
        cls,
        control: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S,
        map_timeout_s: float = 10.0,
        metrics: ClientMetrics | None = None,
    ) -> AsyncClient:
        """A thick client for a cluster: it watches control's map and calls each key's owner.

        It waits for the first map (Unavailable after map_timeout_s); afterwards it keeps
        routing with its cached map while control is away.
        """
        from keyspan.streams.map_router import MapRouter

        check_address(control, "control")
        check_timeout(map_timeout_s, "map_timeout_s")
        router = MapRouter.watching(
            control, open_channel, on_update=metrics.map_refreshed if metrics else None
        )
        if not await router.wait_for_map(map_timeout_s):
            await router.close()
            raise Unavailable(f"no partition map from control at {control} within {map_timeout_s} s")
        return cls(router=router, timeout_s=timeout_s, stream_timeout_s=stream_timeout_s, metrics=metrics)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the router's channels; idempotent. Calls still open on them end with
        ClientClosed, and calls made afterwards raise it."""
        self._closed = True
        self.closed_event.set()
        await self.router.close()

    def live_router(self) -> Router:
        """The router, for a call about to start; ClientClosed once the client is closed
        (a router would otherwise open a new channel that nothing closes), RuntimeError in
        another event loop than its own."""
        if self._closed:
            raise ClientClosed("this keyspan AsyncClient is closed")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            if self._loop is not None:
                raise self._other_loop()
            self._loop = loop
        return self.router

    def _other_loop(self) -> RuntimeError:
        # Its channels would fail in this loop ("Event loop is closed", or a call that
        # never completes while the first loop is not running).
        first = "closed" if self._loop is None or self._loop.is_closed() else "still open"
        return RuntimeError(
            f"this keyspan AsyncClient belongs to the event loop it was first used in "
            f"({first}), not to this one: its gRPC channels work in that loop only. Make an "
            "AsyncClient in each loop (each asyncio.run() makes a new one), or use the "
            "blocking Client, which runs its own"
        )

    def raise_if_closed(self) -> None:
        """Raise ClientClosed in place of the CancelledError that grpc.aio raises in a call
        whose channel close() closed. Left as it was, asyncio would take that error for the
        calling task's own cancellation (a TaskGroup would swallow it); a task that is
        really being cancelled keeps its CancelledError."""
        if not self._closed:
            return
        task = asyncio.current_task()
        if task is None or not task.cancelling():
            raise ClientClosed("this keyspan AsyncClient was closed during the call") from None

    def _deadline(self, timeout_s: float | None, stream: bool = False) -> float | None:
        if timeout_s is not None:
            return check_timeout(timeout_s, "timeout_s")
        return self.stream_timeout_s if stream else self.timeout_s

    async def _unary(self, method: str, key: bytes, request: Any, timeout_s: float | None) -> Any:
        """Call `method` on the key's owner; follow WrongPartition when the router learns.

        Nodes whose maps disagree (control restarting, a partition reassigned) can send a
        call from one to the other: after MAX_ROUTING_HOPS that is Unavailable (retry in a
        moment), as a gateway answers, not a WrongPartition; no node took the call.
        """
        for _ in range(MAX_ROUTING_HOPS):
            stub = self.live_router().stub_for_key(key)
            try:
                return await getattr(stub, method)(request, timeout=self._deadline(timeout_s))
            except grpc.RpcError as rpc_error:
                err = from_rpc_error(rpc_error)
            except asyncio.CancelledError:
                self.raise_if_closed()
                raise
            if not (isinstance(err, WrongPartition) and self.router.on_wrong_partition(err)):
                raise err
            if self.metrics is not None:
                self.metrics.redirected(err.partition_id)
        raise Unavailable(
            f"key {key_text(key)}: routing did not settle after {MAX_ROUTING_HOPS} redirections "
            "(the nodes' maps disagree while they change); retry",
            retry_after_s=0.5,
        )

    async def get(
        self,
        key: KeyLike,
        paths: str | list[str] | None = None,
        json: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> Entry | None:
        """The entry, or None when absent or expired. With json=True a JSON document's value
        is decoded; with paths (a list of JSON paths, or one as a str) it is the projection
        {path: value} (decoded when json=True)."""
        raw = point_key(key)
        paths = check_paths(paths, "paths")
        check_flag(json, "json")
        response = await self._unary("Get", raw, kv_pb2.GetRequest(key=raw, paths=paths), timeout_s)
        if not response.found:
            return None
        entry = Entry.from_wire(response, decode_json=json, key=raw)
        if paths and json and not response.json:
            return Entry(raw, document(response.value), entry.etag, entry.expires_at, True)
        return entry

    async def put(
        self,
        key: KeyLike,
        value: Any,
        ttl_s: float = 0,
        if_etag: int = 0,
        if_absent: bool = False,
        json: bool = False,
        *,
        keep_ttl: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """Write the value and return its new etag. bytes and str are stored as bytes unless
        json=True; dict, list, numbers, bool and None are always stored as JSON documents.
        keep_ttl=True keeps the expiry the entry has when the write applies (ttl_s must
        then be 0). Raises EtagMismatch when if_etag / if_absent does not hold."""
        raw = point_key(key)
        data, is_json = encode_value(value, check_flag(json, "json"))
        request = kv_pb2.PutRequest(
            key=raw,
            value=data,
            ttl_s=check_ttl(ttl_s),
            if_etag=_if_etag(if_etag),
            if_absent=check_flag(if_absent, "if_absent"),
            json=is_json,
            keep_ttl=check_flag(keep_ttl, "keep_ttl"),
        )
        server_rule(check_conditions, request.if_etag, request.if_absent)
        server_rule(check_keep_ttl, request.keep_ttl, request.ttl_s)
        if len(data) > MESSAGE_BUDGET // 2:  # else it fits: not counted exactly
            _fits_a_message("value", request.ByteSize())
        return (await self._unary("Put", raw, request, timeout_s)).etag

    async def delete(self, key: KeyLike, if_etag: int = 0, *, timeout_s: float | None = None) -> bool:
        """Delete the entry; False when there was none. Raises EtagMismatch on a stale if_etag."""
        raw = point_key(key)
        request = kv_pb2.DeleteRequest(key=raw, if_etag=_if_etag(if_etag))
        return (await self._unary("Delete", raw, request, timeout_s)).deleted

    async def patch(
        self,
        key: KeyLike,
        merge: Any = None,
        set: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        remove: str | list[str] | None = None,
        if_etag: int = 0,
        *,
        json: bool = True,
        timeout_s: float | None = None,
    ) -> Entry:
        """Merge-patch (RFC 7396), then set paths to JSON values, then remove paths, atomically.
        `merge` and the `set` values are JSON values, or bytes of JSON text sent as written;
        `set` maps JSON path to value, `remove` is a list of paths (or one as a str).
        Returns the whole new document, decoded; with json=False as the server's JSON text
        (bytes). Raises NotFound, NotJson, EtagMismatch."""
        raw = point_key(key)
        check_flag(json, "json")
        request = kv_pb2.PatchRequest(
            key=raw,
            merge_patch=_json_arg(merge, "merge") if merge is not None else "",
            set=[
                kv_pb2.PathValue(path=p, value=_json_arg(v, f"set[{p!r}]"))
                for p, v in check_path_values(set, "set")
            ],
            remove=check_paths(remove, "remove"),
            if_etag=_if_etag(if_etag),
        )
        parts = [("merge", len(request.merge_patch))]
        parts += [(f"set[{pv.path!r}]", len(pv.path) + len(pv.value)) for pv in request.set]
        if 4 * sum(size for _, size in parts) > MESSAGE_BUDGET:  # characters: 4 bytes at most each
            _fits_a_message(max(parts, key=lambda part: part[1])[0], request.ByteSize())
        response = await self._unary("Patch", raw, request, timeout_s)
        value = document(response.value) if json else response.value
        return Entry(raw, value, response.etag, None, True)

    async def stats(self, *, timeout_s: float | None = None) -> Stats:
        """Every partition of every server the router knows, in key order."""
        responses = []
        for stub in self.live_router().stubs():
            try:
                responses.append(await stub.Stats(kv_pb2.StatsRequest(), timeout=self._deadline(timeout_s)))
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
            except asyncio.CancelledError:
                self.raise_if_closed()
                raise
        return Stats.from_wire(responses)

    async def scan_batches(
        self,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        limit: int = 0,
        paths: str | list[str] | None = None,
        reverse: bool = False,
        json: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[list[Entry]]:
        """The range's entries as the server batches them, piece by piece of the router.
        Credits are granted as batches are consumed (never more than about two batches
        ahead). No retry: a broken stream raises; scan_ex resumes."""
        check_uint64(limit, "limit", "no limit")
        paths = check_paths(paths, "paths")
        check_flag(reverse, "reverse")
        check_flag(json, "json")
        pieces = self.live_router().pieces(start, end)
        remaining = limit
        for piece_start, piece_end, stub in reversed(pieces) if reverse else pieces:
            piece = self._scan_piece(
                stub, piece_start, piece_end, remaining, paths, reverse, json, self._deadline(timeout_s, True)
            )
            async with contextlib.aclosing(piece):
                async for batch in piece:
                    yield batch
                    if limit:
                        remaining -= len(batch)
            if limit and remaining <= 0:
                return

    async def _scan_piece(
        self,
        stub: Any,
        start: bytes,
        end: bytes | None,
        limit: int,
        paths: list[str] | None,
        reverse: bool,
        json: bool,
        timeout_s: float | None,
    ) -> AsyncIterator[list[Entry]]:
        """One server's part of a scan, a batch at a time, with credits as batches are taken.

        Credits are granted ahead, so a grant can be on its way when the server sends
        `done`. The scan asks the server to hold the stream until the client closes its
        side (close_after_done), and closes it after `done`. A server that ends the
        stream at once anyway (one from before close_after_done) makes grpc fail the
        whole call locally and drop the responses not read yet: the piece then opens a
        new stream right after the last entry it delivered. That is flow-control
        bookkeeping, not a retry: errors from the server raise.
        """
        while True:
            call = stub.Scan(timeout=timeout_s)
            window = _CreditWindow()
            try:
                await calls.write(call, _scan_request(start, end, limit, paths, reverse, window.outstanding))
                while (response := await call.read()) is not grpc.aio.EOF:
                    if response.done:  # closed before the last batch is handed out, as a
                        await calls.finish(call)  # consumer may stop right after it
                    if response.entries:
                        batch = [Entry.from_wire(e, json) for e in response.entries]
                        if reverse:
                            end = batch[-1].key
                        else:
                            start = key_successor(batch[-1].key)
                        yield batch
                        if limit:
                            limit -= len(batch)
                            if limit <= 0:
                                return
                    if response.done:
                        return
                    grant = window.consumed(response.entries)  # type: ignore[arg-type]
                    if grant and not call.done() and not await _granted(call, grant):
                        break  # the call ended under the grant: reopen after the cursor
                else:
                    raise Unavailable("Scan stream ended before the range was done")
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
            except asyncio.CancelledError:
                self.raise_if_closed()
                raise
            finally:
                call.cancel()

    async def scan(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int = 0,
        paths: str | list[str] | None = None,
        reverse: bool = False,
        json: bool = False,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Entry]:
        """Entries of [start, end) in key order (descending with reverse), at most `limit`
        (0: all). start None is the first key, end None +infinity. `paths` projects each
        JSON document, as in get. No retry; see scan_ex."""
        lower, upper = key_range(start, end)
        batches = self.scan_batches(
            lower, upper, limit=limit, paths=paths, reverse=reverse, json=json, timeout_s=timeout_s
        )
        async with contextlib.aclosing(batches):
            async for batch in batches:
                for entry in batch:
                    self.raise_if_closed()  # close() cut the scan short: not the batch in hand either
                    yield entry

    async def bulk_put(
        self,
        items: Iterable[BulkItem] | AsyncIterable[BulkItem],
        *,
        batch_bytes: int = bulk_sender.DEFAULT_BATCH_BYTES,
        on_progress: Callable[[BulkPutResult], None] | None = None,
        timeout_s: float | None = None,
    ) -> BulkPutResult:
        """Load sorted (key, value) pairs, (key, value, ttl_s) or Entry items in byte-budget
        batches, in one attempt: a failure raises, with what was acked already committed."""
        return await bulk_sender.send_all(
            self,
            items,
            policy=None,
            batch_bytes=batch_bytes,
            on_progress=on_progress,
            timeout_s=self._deadline(timeout_s, True),
        )

    async def sweep(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        max_deletes_per_s: float = 0,
        *,
        timeout_s: float | None = None,
    ) -> AsyncIterator[SweepProgress]:
        """Delete the range's expired entries; yield the running totals after each batch,
        and a last report with done=True. max_deletes_per_s 0 is no limit."""
        lower, upper = key_range(start, end)
        check_number(max_deletes_per_s, "max_deletes_per_s", "a number of deletes per second (0: no limit)")
        scanned = deleted = 0
        started = time.monotonic()
        for piece_start, piece_end, stub in self.live_router().pieces(lower, upper):
            # The rate is the whole sweep's: each server paces its own piece from its start.
            if (
                max_deletes_per_s
                and (ahead_s := deleted / max_deletes_per_s - (time.monotonic() - started)) > 0
            ):
                await asyncio.sleep(ahead_s)
            base_scanned, base_deleted = scanned, deleted
            request = kv_pb2.SweepRequest(start=piece_start, max_deletes_per_s=max_deletes_per_s)
            if piece_end is not None:
                request.end = piece_end
            call = stub.Sweep(timeout=self._deadline(timeout_s, True))
            try:
                await calls.write(call, request)
                while (response := await call.read()) is not grpc.aio.EOF:
                    scanned, deleted = base_scanned + response.scanned, base_deleted + response.deleted
                    if not response.done:
                        yield SweepProgress(scanned, deleted, False)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
            except asyncio.CancelledError:
                self.raise_if_closed()
                raise
            finally:
                call.cancel()
        yield SweepProgress(scanned, deleted, True)

    # -- retrying helpers (streams/retry.py, streams/bulk_sender.py) ------------------------

    def scan_ex(
        self,
        start: KeyLike | None = None,
        end: KeyLike | None = None,
        limit: int = 0,
        paths: str | list[str] | None = None,
        reverse: bool = False,
        json: bool = False,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Entry]:
        """scan that resumes after the last delivered key: every entry once, in order."""
        return retry.scan_ex(
            self,
            start,
            end,
            limit=limit,
            paths=paths,
            reverse=reverse,
            json=json,
            policy=policy,
            timeout_s=timeout_s,
        )

    async def bulk_put_ex(
        self,
        items: Iterable[BulkItem] | AsyncIterable[BulkItem],
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        batch_bytes: int = bulk_sender.DEFAULT_BATCH_BYTES,
        on_progress: Callable[[BulkPutResult], None] | None = None,
        timeout_s: float | None = None,
    ) -> BulkPutResult:
        """bulk_put that re-sends and re-routes until every entry is in."""
        return await bulk_sender.bulk_put_ex(
            self,
            items,
            policy=policy,
            batch_bytes=batch_bytes,
            on_progress=on_progress,
            timeout_s=self._deadline(timeout_s, True),
        )

    async def update(
        self,
        key: KeyLike,
        fn: Callable[[Any], Any],
        *,
        json: bool = False,
        ttl_s: float | None = None,
        policy: RetryPolicy = UPDATE_POLICY,
        timeout_s: float | None = None,
    ) -> Entry:
        """Read-modify-write under the etag, retried on ABORTED; see retry.update. `fn` may be
        a plain function or an async one (its result is awaited). timeout_s is the deadline
        of each read and write; the policy bounds the retries."""
        return await retry.update(self, key, fn, json=json, ttl_s=ttl_s, policy=policy, timeout_s=timeout_s)


__all__ = ["AsyncClient", "BulkPutResult", "Entry", "KeyspanClientError", "Stats"]


def _fits_a_message(field: str, size: int) -> None:
    """ResourceExhausted naming `field` when a request of `size` bytes is past what one gRPC
    message carries: gRPC refused it with its own text ("CLIENT: Sent message larger than
    max"), with no field or rule to branch on."""
    if size > MESSAGE_BUDGET:
        rule = f"makes a request of {size} bytes; a message carries at most {MESSAGE_BUDGET}"
        raise ResourceExhausted(f"{field}: {rule}", field, rule)
