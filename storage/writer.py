"""The partition's single writer: one thread that owns the write connection.

Whatever is queued when the thread wakes is committed in one transaction and one fsync
(group commit): under load, 64 concurrent Puts cost one fsync, not 64. With a commit wait
set, a writer whose last group held several writes sleeps that long once before
committing, to gather more (PostgreSQL's commit_delay and commit_siblings, in short).

Each batch is timed (wall-clock nanoseconds, so spans can be drawn from them afterwards)
and handed to an optional `WriteObserver`; storage itself knows nothing of metrics or
traces, services/ turns the timings into both.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import apsw

from keyspan.storage.errors import CommitFailed, DiskFullError, StorageFaultError, UnavailableError
from keyspan.storage.handoff import Handoff, reply
from keyspan.storage.mutations import Bulk, Mutation, Reclaim, SweepBatch
from keyspan.storage.shard import Shard
from keyspan.storage.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_STOP = object()
# The commit wait applies only after a group of at least this many writes: a lone writer
# (c=1) never waits.
COMMIT_WAIT_SIBLINGS = 4
# True in a task whose writes `WriteObserver.on_write` should see (services/ sets it for
# an RPC whose span is sampled). A plain flag: storage knows nothing of tracing, and a
# write nobody traces costs the loop one lookup instead of an observer call.
OBSERVE_WRITES: contextvars.ContextVar[bool] = contextvars.ContextVar("keyspan_observe_writes", default=False)


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """When one group-commit batch went through its stages (time.time_ns() values)."""

    partition_id: str
    size: int
    dequeued_ns: int  # the writer took the batch off the queue
    applied_ns: int  # every statement ran; COMMIT (with its WAL fsync) starts
    committed_ns: int  # COMMIT returned: the batch is durable
    failed: bool  # an SQLite fault aborted the batch
    # when each write of the batch was queued, in batch order (filled only for an observer)
    queued_ns: tuple[int, ...] = ()
    # entries the batch wrote: a Put, Delete or Patch one (none when refused or a no-op),
    # a BulkPut batch its accepted entries, a sweep its deletes
    written: int = 0


class WriteObserver(Protocol):
    """Receives the writer's timings. Must be cheap and must not raise.

    Per-write work that needs no task context (a queue-wait histogram: see
    timing.queued_ns) belongs in on_batch, off the event loop."""

    def on_batch(self, timing: BatchTiming) -> None:
        """Called on the writer thread after every batch."""

    def on_write(self, queued_ns: int, timing: BatchTiming) -> None:
        """Called on the event loop, in the context of the task that awaited `submit`,
        once its mutation's batch is done (not when the wait was cancelled), when
        OBSERVE_WRITES is set in that context."""


class PartitionWriter:
    """Owns the partition's only write connection, on a thread of its own.

    A write whose RPC is cancelled after queueing still commits; its result is dropped.
    Callers must treat a cancelled Put as "maybe applied".
    """

    def __init__(
        self,
        shard: Shard,
        *,
        max_batch: int = 256,
        commit_wait_s: float = 0.0,
        observer: WriteObserver | None = None,
    ) -> None:
        self._shard, self._max_batch, self.observer = shard, max_batch, observer
        self._commit_wait_s, self._last_size = commit_wait_s, 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._handoff = Handoff(self._queue)
        self._carry: list[Any] = []
        self._closed = False
        # The fault of a commit that may have reached the disk: no write goes in after it.
        self.stopped_by: StorageFaultError | None = None
        self.batches = 0
        self.mutations = 0
        # Writes refused by a storage fault, by reason: "disk_full", or "io" for any other.
        self.faults = {"disk_full": 0, "io": 0}
        # A full disk refuses every write until space is freed: said at most every 10 s.
        self._disk_full_log = ThrottledLog(log, "disk full: writes refused", "writes")
        # Refused after a commit's I/O error: that fault was logged with its traceback; its
        # refusals are one line at most every 10 s (they were a traceback each, 2,880 lines
        # for 50 Puts).
        self._stopped_log = ThrottledLog(
            log,
            "writes refused: the partition stopped after an I/O error in a commit; restart the server",
            "writes",
        )
        self._thread = threading.Thread(target=self._run, name=f"writer-{shard.partition_id}", daemon=True)
        self._thread.start()

    async def submit(self, mutation: Mutation) -> Any:
        """Queue one mutation and wait for its outcome; raises its KeyspanError."""
        if self._closed:
            raise UnavailableError(f"partition {self._shard.partition_id} is closing")
        if self.stopped_by is not None:
            raise self._refusal(self.stopped_by)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()
        # [queued_ns, BatchTiming]: the writer fills in the timing before settling `done`.
        stamp: list[Any] = [time.time_ns(), None]
        self._handoff.put(loop, (mutation, done, stamp))
        try:
            return await done
        finally:
            if self.observer is not None and stamp[1] is not None and OBSERVE_WRITES.get():
                self.observer.on_write(stamp[0], stamp[1])

    def close(self, timeout_s: float = 30.0) -> None:
        """Commit what is queued, stop the thread and wait for it (at most timeout_s)."""
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout_s)

    def _collect(self, block: bool) -> tuple[list[tuple[asyncio.AbstractEventLoop, Any]], bool]:
        """The next batch, at most max_batch writes, as (loop, write) pairs; and whether
        the stop sentinel was seen. Blocks for the first write only when `block`."""
        batch, self._carry, stop = self._carry, [], False
        may_wait = self._commit_wait_s > 0 and self._last_size >= COMMIT_WAIT_SIBLINGS
        while len(batch) < self._max_batch:
            try:
                got = self._queue.get() if block and not batch else self._queue.get_nowait()
            except queue.Empty:
                if not may_wait:
                    break
                # Writers are busy (the last group was big): wait once for more, so that
                # one fsync and one pair of thread wake-ups serve a bigger group.
                may_wait = False
                time.sleep(self._commit_wait_s)
                continue
            if got is _STOP:
                stop = True
                break
            loop, items = got
            batch.extend((loop, item) for item in items)
        if len(batch) > self._max_batch:
            batch, self._carry = batch[: self._max_batch], batch[self._max_batch :]
        self._last_size = len(batch)
        return batch, stop

    def _run(self) -> None:
        stopping = False
        while True:
            batch, saw_stop = self._collect(block=not stopping)
            stopping = stopping or saw_stop
            if batch:
                self._commit(batch)
            if stopping and not self._carry:
                break
        # Whatever reached the queue after the stop sentinel is refused, never dropped, and
        # so is what the loop hands over from now on (Handoff.seal).
        refused = UnavailableError(f"partition {self._shard.partition_id} is closed")
        self._handoff.seal(refused)
        while True:
            try:
                got = self._queue.get_nowait()
            except queue.Empty:
                return
            if got is not _STOP:
                loop, items = got
                reply(loop, [(done, refused) for _, done, _ in items])

    def _commit(self, batch: list[tuple[asyncio.AbstractEventLoop, Any]]) -> None:
        if self.stopped_by is not None:  # queued before the stop: refused, never written
            refused = self._refusal(self.stopped_by, len(batch))
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
            for loop, (_, done, _) in batch:
                by_loop.setdefault(loop, []).append((done, refused))
            for loop, pairs in by_loop.items():
                reply(loop, pairs)
            return
        reclaims = [entry for entry in batch if type(entry[1][0]) is Reclaim]
        if reclaims:  # after the writes, which are answered first: see Shard.reclaim
            batch = [entry for entry in batch if type(entry[1][0]) is not Reclaim]
        if batch:
            self._commit_writes(batch)
        for loop, (m, done, _) in reclaims:
            reply(loop, [(done, self._reclaim(m))])

    def _reclaim(self, m: Reclaim) -> Any:
        """A reclaim step's outcome; never after a commit that may have reached the disk
        failed (the partition stopped), and never an exception out of this thread."""
        if self.stopped_by is not None:
            return self._refusal(self.stopped_by)
        try:
            return self._shard.reclaim(m)
        except Exception as err:  # SQLite's own are returned by Shard.reclaim
            fault = StorageFaultError(self._shard.partition_id, err)
            fault.__cause__ = err
            return fault

    def _commit_writes(self, batch: list[tuple[asyncio.AbstractEventLoop, Any]]) -> None:
        outcomes, timing = self._apply([item for _, item in batch])
        self.batches += 1
        self.mutations += timing.written
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for (loop, (_, done, stamp)), outcome in zip(batch, outcomes, strict=True):
            stamp[1] = timing
            by_loop.setdefault(loop, []).append((done, outcome))
        for loop, pairs in by_loop.items():
            reply(loop, pairs)

    def _apply(self, batch: list[Any]) -> tuple[list[Any], BatchTiming]:
        """Commit the batch; return one outcome per mutation and the batch's timing."""
        dequeued_ns = time.time_ns()
        failed = False
        try:
            outcomes: list[Any] = self._shard.apply_batch([m for m, _, _ in batch])
        except Exception as err:
            # An SQLite fault (disk full, I/O error): nothing of the batch was committed.
            # Every waiter gets the same error object, so the edge reports it once.
            fault = self._fault(err, len(batch))
            outcomes, failed = [fault] * len(batch), True
        committed_ns = time.time_ns()
        applied_ns = min(max(self._shard.last_applied_ns, dequeued_ns), committed_ns)
        queued_ns = () if self.observer is None else tuple(stamp[0] for _, _, stamp in batch)
        written = 0 if failed else sum(map(_written, (m for m, _, _ in batch), outcomes))
        timing = BatchTiming(
            self._shard.partition_id,
            len(batch),
            dequeued_ns,
            applied_ns,
            committed_ns,
            failed,
            queued_ns,
            written,
        )
        if self.observer is not None:
            try:
                self.observer.on_batch(timing)
            except Exception:  # a broken observer must not stop the writer
                log.exception("write observer failed", extra={"partition_id": timing.partition_id})
        return outcomes, timing

    def _refusal(self, stopped_by: StorageFaultError, writes: int = 1) -> StorageFaultError:
        refused = StorageFaultError(
            self._shard.partition_id,
            RuntimeError(
                f"takes no more writes after an I/O error in a commit ({stopped_by}); restart the server"
            ),
        )
        refused.__cause__ = stopped_by
        refused._keyspan_reported = True  # type: ignore[attr-defined]  # its cause was, once
        self.faults["io"] += writes
        self._stopped_log.note(writes, partition_id=self._shard.partition_id)
        return refused

    def _fault(self, err: Exception, writes: int) -> StorageFaultError:
        partition_id = self._shard.partition_id
        if isinstance(err, CommitFailed):
            self.faults["io"] += writes
            fault = StorageFaultError(partition_id, err.__cause__ or err, may_have_applied=True)
            self.stopped_by = fault
            log.error(
                "partition stopped taking writes: a commit failed and may be on disk; restart the server",
                extra={"partition_id": partition_id, "cause": str(err)},
            )
        elif not isinstance(err, apsw.FullError):
            self.faults["io"] += writes
            fault = StorageFaultError(partition_id, err)  # logged with its traceback at the edge
        else:
            self.faults["disk_full"] += writes
            fault = DiskFullError(partition_id, err)
            self._disk_full_log.note(writes, partition_id=partition_id, cause=str(err))
        fault.__cause__ = err
        return fault


def _written(mutation: Mutation, outcome: Any) -> int:
    """Entries `mutation` wrote, from its outcome (see BatchTiming.written)."""
    if isinstance(outcome, BaseException) or outcome is False:  # refused, or nothing to delete
        return 0
    if isinstance(mutation, Bulk):
        return int(outcome)
    if isinstance(mutation, SweepBatch):
        return int(outcome[1])
    if isinstance(mutation, Reclaim):  # moves pages, writes no entry
        return 0
    return 1
