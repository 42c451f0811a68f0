"""Retry helpers on tenacity: scan_ex (resume after the last delivered key) and update (etag
read-modify-write). bulk_put_ex lives in bulk_sender.py and uses the same policy.

Only UNAVAILABLE and DEADLINE_EXCEEDED are retried (gRPC reports a reset connection as
UNAVAILABLE), plus WrongPartition when the router learned a new owner from it; every
other error surfaces at once. Attempts are bounded per *stall*: the counter and the
clock restart whenever an attempt made progress, so a long scan survives sporadic
failures while a dead server still fails within `max_attempts` / `max_stall_s`.

`@retry` on an async generator never retries (tenacity wraps its creation, not its
iteration), so the stream helpers loop over `AsyncRetrying` with a resume cursor.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from keyspan.storage.keys import key_successor
from keyspan.streams.arguments import check_flag, check_timeout, check_ttl
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.streams.entry import Entry, KeyLike, encode_value, key_range, point_key, stored_as_json
from keyspan.streams.errors import DeadlineExceeded, EtagMismatch, Unavailable, WrongPartition, is_retryable

if TYPE_CHECKING:
    from keyspan.streams.client import AsyncClient
    from keyspan.streams.router import Router


MAX_ATTEMPTS = 1_000_000
MAX_SECONDS = 365 * 86400.0  # a year, as a call's timeout
MAX_BACKOFF_S = 3600.0


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded per stall (time without progress).

    The defaults wait 10.6 s in all on average before giving up (the 15 waits' ceilings
    add up to 21 s; over 6.4 s 99 times in 100): long enough to ride through a server
    restarting on the same data dir (down 3-5 s here). With 8 attempts (2.6 s on average,
    under 0.9 s 1 time in 100) scan_ex and bulk_put_ex gave up 1.4-2.2 s after its SIGTERM.
    """

    max_attempts: int = 16
    max_stall_s: float = 60.0
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        # Checked when made, naming the field: inf or NaN backoffs made scan_ex sleep for
        # ever, and a str failed later in a comparison that named nothing.
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts: must be a whole number, not {type(self.max_attempts).__name__}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"max_attempts: must be between 1 and {MAX_ATTEMPTS}, not {self.max_attempts}")
        for name, low, high in (
            ("max_stall_s", 0.0, MAX_SECONDS),
            ("initial_backoff_s", 0.0, MAX_BACKOFF_S),
            ("max_backoff_s", 0.0, MAX_BACKOFF_S),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name}: must be a number of seconds, not {type(value).__name__}")
            if not low < value <= high:  # NaN fails too
                raise ValueError(f"{name}: must be above {low:g} and at most {high:g} seconds, not {value}")
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(
                f"initial_backoff_s: must be at most max_backoff_s ({self.max_backoff_s}), "
                f"not {self.initial_backoff_s}"
            )


DEFAULT_POLICY = RetryPolicy()
# Etag races mean another writer made progress, so a read-modify-write may take many turns.
UPDATE_POLICY = RetryPolicy(max_attempts=200, max_stall_s=30.0, initial_backoff_s=0.002, max_backoff_s=0.1)


class Stall:
    """Counts failed attempts and time since the last progress; `mark()` records progress."""

    def __init__(self, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):  # made before anything is sent
            raise TypeError(f"policy: must be a RetryPolicy, not {type(policy).__name__}")
        self.policy = policy
        self.failures = 0
        self.retries = 0
        self._since = time.monotonic()

    def mark(self) -> None:
        self.failures, self._since = 0, time.monotonic()

    def __call__(self, state: RetryCallState) -> bool:
        """tenacity stop: called once per retryable failure; True gives up."""
        self.failures += 1
        give_up = (
            self.failures >= self.policy.max_attempts
            or time.monotonic() - self._since > self.policy.max_stall_s
        )
        self.retries += not give_up
        return give_up

    def wait(self, state: RetryCallState) -> float:
        """Full jitter on an exponential ceiling; at least what RetryInfo asked for."""
        ceiling = min(
            self.policy.max_backoff_s, self.policy.initial_backoff_s * 2 ** min(self.failures - 1, 60)
        )
        delay = random.uniform(0, ceiling)
        err = state.outcome.exception() if state.outcome is not None else None
        if isinstance(err, Unavailable) and err.retry_after_s:
            delay = max(delay, min(err.retry_after_s, self.policy.max_backoff_s))
        return delay


def retrying(
    stall: Stall,
    router: Router | None = None,
    extra: Callable[[BaseException], bool] | None = None,
    metrics: ClientMetrics | None = None,
    method: str = "",
) -> AsyncRetrying:
    """AsyncRetrying that retries only retryable errors (and `extra`), re-raising the last;
    each retry is counted in `metrics` under `method`."""

    def predicate(err: BaseException) -> bool:
        if is_retryable(err) or (extra is not None and extra(err)):
            return True
        return isinstance(err, WrongPartition) and router is not None and router.on_wrong_partition(err)

    return AsyncRetrying(
        retry=retry_if_exception(predicate), stop=stall, wait=stall.wait, reraise=True,
        before_sleep=_count(metrics, method),
    )  # fmt: skip


def _count(metrics: ClientMetrics | None, method: str) -> Callable[[RetryCallState], None] | None:
    if metrics is None:
        return None
    return lambda _state: metrics.retried(method)


async def scan_ex_batches(
    client: AsyncClient,
    start: KeyLike | None = None,
    end: KeyLike | None = None,
    *,
    limit: int = 0,
    paths: str | list[str] | None = None,
    reverse: bool = False,
    json: bool = False,
    policy: RetryPolicy = DEFAULT_POLICY,
    timeout_s: float | None = None,
) -> AsyncIterator[list[Entry]]:
    """scan_ex, a server batch at a time (what the blocking Client pulls across threads)."""
    lower, upper = key_range(start, end)
    remaining = limit
    stall = Stall(policy)
    async for attempt in retrying(stall, client.router, metrics=client.metrics, method="Scan"):
        with attempt:
            batches = client.scan_batches(
                lower, upper, limit=remaining, paths=paths, reverse=reverse, json=json, timeout_s=timeout_s
            )
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    # Move the cursor past the batch before handing it out: delivered means done.
                    if reverse:
                        upper = batch[-1].key
                    else:
                        lower = key_successor(batch[-1].key)
                    stall.mark()
                    yield batch
                    if limit:
                        remaining -= len(batch)
                        if remaining <= 0:
                            return
                    if upper is not None and lower >= upper:
                        # Nothing is left (the last key was the range's first, or the one
                        # before its end): a stream broken before its `done` was resumed
                        # with start >= end, refused INVALID_ARGUMENT.
                        return


async def scan_ex(
    client: AsyncClient,
    start: KeyLike | None = None,
    end: KeyLike | None = None,
    *,
    limit: int = 0,
    paths: str | list[str] | None = None,
    reverse: bool = False,
    json: bool = False,
    policy: RetryPolicy = DEFAULT_POLICY,
    timeout_s: float | None = None,
) -> AsyncIterator[Entry]:
    """Every entry of [start, end) exactly once and in order, resuming broken streams.

    After a retryable failure a new stream opens right after the last entry delivered
    (start = successor of its key; for reverse, end = its key), so nothing is lost or
    repeated. Raises the last error once the policy gives up; others at once.
    """
    batches = scan_ex_batches(
        client,
        start,
        end,
        limit=limit,
        paths=paths,
        reverse=reverse,
        json=json,
        policy=policy,
        timeout_s=timeout_s,
    )
    async with contextlib.aclosing(batches):
        async for batch in batches:
            for entry in batch:
                client.raise_if_closed()  # close() cut the scan short: not the batch in hand either
                yield entry


async def update(
    client: AsyncClient,
    key: KeyLike,
    fn: Callable[[Any], Any],
    *,
    json: bool = False,
    ttl_s: float | None = None,
    policy: RetryPolicy = UPDATE_POLICY,
    timeout_s: float | None = None,
) -> Entry:
    """Read-modify-write one entry: store fn(current value) under the etag that was read.

    ttl_s None (the default) keeps the entry's expiry, as Patch does (the write asks the
    server to keep it: the same instant, to the millisecond); 0 writes it with none, a
    number sets a new one. (It wrote with none by default, so an update made an expiring
    entry permanent; then it re-sent the time left, which each update moved later by its
    round trip.)

    `fn` gets the current value (decoded JSON when json=True, else bytes), or None when
    the key is absent, in which case the write is a must-not-exist create; what it returns
    (awaited, when it is awaitable: `fn` may be an async function) is stored as put stores
    it, so a dict, list or number is a JSON document even with json=False, and the entry
    returned says so (`is_json`). On ABORTED (someone wrote in between) the whole
    read-fn-write turn repeats, so `fn` must be free of side effects. UNAVAILABLE is
    retried when the write was not applied (the server refused it, or it was never sent).
    A write that may have applied is raised instead, because repeating it could apply
    `fn` twice: DEADLINE_EXCEEDED, and UNAVAILABLE with `may_have_applied` (the connection
    was lost after the write went out, as when a node is killed). Reads are always
    retried. Returns the entry as written.
    """
    raw = point_key(key)
    if not callable(fn):
        raise TypeError(f"fn: must be a function of the current value, not {type(fn).__name__}")
    if ttl_s is not None:
        check_ttl(ttl_s)
    check_flag(json, "json")
    if timeout_s is not None:
        check_timeout(timeout_s, "timeout_s")
    stall = Stall(policy)
    phase = "read"

    def predicate(err: BaseException) -> bool:
        if isinstance(err, EtagMismatch):
            return True
        if phase == "write" and (
            isinstance(err, DeadlineExceeded) or (isinstance(err, Unavailable) and err.may_have_applied)
        ):
            return False
        return is_retryable(err)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(predicate), stop=stall, wait=stall.wait, reraise=True,
        before_sleep=_count(client.metrics, "Update"),
    ):  # fmt: skip
        with attempt:
            phase = "read"
            current = await client.get(raw, json=json, timeout_s=timeout_s)
            value = fn(current.value if current is not None else None)
            if inspect.isawaitable(value):
                value = await value
            phase = "write"
            if ttl_s is None:  # keep: the entry read is the one written over (if_etag)
                ttl, keep, expires_at = 0.0, True, current.expires_at if current is not None else None
            else:
                ttl, keep = ttl_s, False
                expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s) if ttl_s else None
            if current is None:
                etag = await client.put(
                    raw, value, ttl_s=ttl, if_absent=True, json=json, keep_ttl=keep, timeout_s=timeout_s
                )
            else:
                etag = await client.put(
                    raw, value, ttl_s=ttl, if_etag=current.etag, json=json, keep_ttl=keep, timeout_s=timeout_s
                )
            is_json = stored_as_json(value, json)
            if not is_json:  # bytes, as get answers them (a str was handed back as a str)
                value = encode_value(value, False)[0]
            return Entry(raw, value, etag, expires_at, is_json)
    raise AssertionError("unreachable: AsyncRetrying re-raises the last error")
