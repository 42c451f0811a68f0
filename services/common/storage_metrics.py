"""Partition gauges (computed on scrape) and the write path's histograms and spans.

`PartitionCollector` reads the same `partition_stats` the Stats RPC reports, on the
scrape thread, so /metrics and Stats always agree. Cardinality is bounded: at most
`max_series` partitions get series of their own, the busiest ones (reads + writes since
the previous scrape, ties by partition id); node-wide totals always cover every partition.

`StorageTelemetry` is the writer's `WriteObserver`: batch size, queue wait and commit
latency histograms (no partition label, so their size is fixed), all observed on the
writer thread, and, when the RPC's span is sampled, child spans drawn after the fact
from the writer's timestamps on the event loop:
``storage.write`` > ``storage.queue_wait``, ``storage.transaction``, ``storage.commit``.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from keyspan.storage.shardset import DroppedCounts, Partition, ShardSet, now_ms, partition_stats
from keyspan.storage.writer import BatchTiming

from .metrics import BATCH_BUCKETS, LATENCY_BUCKETS, le_label

log = logging.getLogger(__name__)


class PartitionCollector(Collector):
    """Per-partition and node-wide storage series, computed when Prometheus scrapes."""

    def __init__(self, shards: ShardSet, max_series: int = 100) -> None:
        self._shards, self.max_series = shards, max_series
        self._last_ops: dict[str, int] = {}
        self._lock = threading.Lock()

    def hottest(self, partitions: list[Partition]) -> list[Partition]:
        """The partitions that get series of their own this scrape (all when few enough)."""
        with self._lock:
            ops = {p.id: p.reads + p.writer.mutations for p in partitions}
            recent = {pid: n - self._last_ops.get(pid, 0) for pid, n in ops.items()}
            self._last_ops = ops
        if len(partitions) <= self.max_series:
            return partitions
        ranked = sorted(partitions, key=lambda p: (-recent[p.id], p.id))
        return ranked[: self.max_series]

    def collect(self) -> Iterator[Metric]:
        partitions, dropped = self._shards.counted()
        chosen = self.hottest(partitions)
        fams = _partition_families()
        for p in chosen:
            try:
                s = partition_stats(p)
            except Exception:  # closed (dropped, moved) since the list was taken
                log.debug("partition stats skipped", extra={"partition_id": p.id}, exc_info=True)
                continue
            now = now_ms()
            lag_s = 0.0 if s.oldest_expired_ms is None else max(0.0, (now - s.oldest_expired_ms) / 1000)
            for name, value in (
                ("approximate_entries", s.approximate_entries),
                ("bytes", s.bytes),
                ("expired_entries", s.expired_entries),
                ("sweep_lag_seconds", lag_s),
                ("revision", s.revision),
                ("reads", p.reads),
                ("writes", p.writer.mutations),
            ):
                fams[name].add_metric([p.id], value)
        yield from fams.values()
        yield from self._node_families(partitions, dropped, len(chosen))

    def _node_families(
        self, partitions: list[Partition], dropped: DroppedCounts, shown: int
    ) -> Iterator[Metric]:
        yield GaugeMetricFamily("keyspan_partitions", "Partitions held by this process.", len(partitions))
        yield GaugeMetricFamily(
            "keyspan_partitions_without_series",
            "Partitions over --max-partition-series that got no series of their own this scrape.",
            len(partitions) - shown,
        )
        yield CounterMetricFamily(
            "keyspan_node_reads",
            "Reads over every partition this process has held.",
            sum(p.reads for p in partitions) + dropped.reads,
        )
        yield CounterMetricFamily(
            "keyspan_node_writes",
            "Writes committed over every partition this process has held.",
            sum(p.writer.mutations for p in partitions) + dropped.writes,
        )
        yield CounterMetricFamily(
            "keyspan_node_reclaimed_bytes",
            "Bytes of free pages given back to the file system (shrinking shard files) over "
            "every partition this process has held; a reclaim follows each background sweep.",
            sum(p.shard.reclaimed_bytes for p in partitions) + dropped.reclaimed_bytes,
        )
        faults = CounterMetricFamily(
            "keyspan_node_write_faults",
            "Writes refused by a storage fault over every partition this process has held, by "
            "reason: disk_full, or io for any other SQLite fault (see the server log).",
            labels=["reason"],
        )
        for reason in ("disk_full", "io"):
            held = sum(p.writer.faults[reason] for p in partitions)
            faults.add_metric([reason], held + dropped.faults[reason])
        yield faults
        yield GaugeMetricFamily(
            "keyspan_sqlite_memory_bytes",
            "Memory SQLite holds in this process, page caches mostly (soft limit: --sqlite-memory-mb).",
            self._shards.sqlite_memory_bytes(),
        )
        yield from _read_path_families(self._shards)
        free, capacity = _disk(self._shards.data_dir)
        yield GaugeMetricFamily(
            "keyspan_data_dir_free_bytes", "Bytes free to keyspan on the data dir's filesystem.", free
        )
        yield GaugeMetricFamily(
            "keyspan_data_dir_capacity_bytes", "Size of the data dir's filesystem in bytes.", capacity
        )


def _read_path_families(shards: ShardSet) -> Iterator[Metric]:
    """Where point reads were served: the row cache, the event loop, the read threads."""
    reads = shards.reads
    yield CounterMetricFamily(
        "keyspan_inline_reads",
        "Point reads run on the event loop (--inline-read-budget-ms); "
        "other row-cache misses ran on the read threads.",
        reads.inline_reads,
    )
    yield CounterMetricFamily(
        "keyspan_inline_read_pauses",
        "Times two over-budget inline reads in a row sent point reads to the read threads for a while.",
        reads.inline_pauses,
    )
    cache = shards.row_cache
    if cache is None:
        return
    yield CounterMetricFamily("keyspan_row_cache_hits", "Gets answered from the row cache.", cache.hits)
    yield CounterMetricFamily(
        "keyspan_row_cache_misses", "Gets that the row cache could not answer.", cache.misses
    )
    yield GaugeMetricFamily(
        "keyspan_row_cache_entries", "Rows (and known-absent keys) cached.", cache.entries
    )
    yield GaugeMetricFamily(
        "keyspan_row_cache_bytes", "What the cached rows count against --row-cache-mb, in bytes.", cache.bytes
    )


def _partition_families() -> dict[str, Metric]:
    gauges = {
        "approximate_entries": "Entries stored, expired ones included until swept.",
        "bytes": "Bytes on disk (database file and WAL).",
        "expired_entries": "Entries past their TTL, not yet swept (invisible to reads).",
        "sweep_lag_seconds": "Age of the oldest expired entry still stored; 0 when none.",
        "revision": "The partition's revision (the etag of its latest write).",
    }
    fams: dict[str, Metric] = {
        name: GaugeMetricFamily(f"keyspan_partition_{name}", text, labels=["partition_id"])
        for name, text in gauges.items()
    }
    fams["reads"] = CounterMetricFamily(
        "keyspan_partition_reads", "Reads served (Gets, scan batches).", labels=["partition_id"]
    )
    fams["writes"] = CounterMetricFamily(
        "keyspan_partition_writes",
        "Entries written (a Put, Delete or Patch one, a BulkPut batch its entries, a sweep its deletes).",
        labels=["partition_id"],
    )
    return fams


def _disk(path: Path) -> tuple[int, int]:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class _ThreadCounts:
    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts, self.total = [0] * buckets, 0.0


class ThreadLocalHistogram(Collector):
    """A histogram observed without a lock: each thread counts into buckets of its own (a
    bisect and two additions), and a scrape adds them up.

    prometheus_client's Histogram takes a lock on every observation; on the write path
    (three observations per batch and one per write, all on the writer thread) that
    measured ~5% of Put throughput with metrics on.
    """

    def __init__(
        self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self._bounds = tuple(float(b) for b in buckets)
        self._local = threading.local()
        self._threads: list[_ThreadCounts] = []
        self._lock = threading.Lock()
        registry.register(self)

    def observe(self, value: float) -> None:
        mine = self._mine()
        mine.counts[bisect.bisect_left(self._bounds, value)] += 1
        mine.total += value

    def observe_all(self, values: Iterable[float]) -> None:
        """observe() each of `values`."""
        mine, bounds = self._mine(), self._bounds
        counts, total = mine.counts, 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1
            total += value
        mine.total += total

    def _mine(self) -> _ThreadCounts:
        mine: _ThreadCounts | None = getattr(self._local, "counts", None)
        if mine is None:
            mine = self._local.counts = _ThreadCounts(len(self._bounds) + 1)
            with self._lock:
                self._threads.append(mine)
        return mine

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            threads = list(self._threads)
        counts, total = [0] * (len(self._bounds) + 1), 0.0
        for t in threads:
            for i, n in enumerate(t.counts):
                counts[i] += n
            total += t.total
        buckets, cumulative = [], 0
        for bound, n in zip((*(le_label(b) for b in self._bounds), "+Inf"), counts, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class StorageTelemetry:
    """The writers' WriteObserver: histograms on the writer thread, spans on the loop."""

    def __init__(self, registry: CollectorRegistry | None, tracer: trace.Tracer | None) -> None:
        self._tracer = tracer
        self._batch_size: ThreadLocalHistogram | None = None
        self._commit = self._transaction = self._queue_wait = self._batch_size
        if registry is not None:
            self._batch_size = ThreadLocalHistogram(
                "keyspan_write_batch_size",
                "Entries written per group-commit transaction (one that wrote none is not counted).",
                BATCH_BUCKETS,
                registry,
            )
            self._commit = ThreadLocalHistogram(
                "keyspan_write_commit_seconds",
                "Time of COMMIT, which includes the WAL fsync when synchronous=FULL.",
                LATENCY_BUCKETS,
                registry,
            )
            self._transaction = ThreadLocalHistogram(
                "keyspan_write_transaction_seconds",
                "Time of a batch's statements, before COMMIT.",
                LATENCY_BUCKETS,
                registry,
            )
            self._queue_wait = ThreadLocalHistogram(
                "keyspan_write_queue_wait_seconds",
                "Time a write waited for the partition's writer thread.",
                LATENCY_BUCKETS,
                registry,
            )

    def on_batch(self, timing: BatchTiming) -> None:
        if self._batch_size is not None:
            if timing.written:  # a batch that wrote nothing (an empty sweep) is not a write
                self._batch_size.observe(timing.written)
            self._transaction.observe(  # type: ignore[union-attr]
                (timing.applied_ns - timing.dequeued_ns) / 1e9
            )
            self._commit.observe((timing.committed_ns - timing.applied_ns) / 1e9)  # type: ignore[union-attr]
            dequeued = timing.dequeued_ns
            self._queue_wait.observe_all(  # type: ignore[union-attr]
                max(0, dequeued - queued) / 1e9 for queued in timing.queued_ns
            )

    def on_write(self, queued_ns: int, timing: BatchTiming) -> None:
        if self._tracer is None or not trace.get_current_span().is_recording():
            return
        attributes = {"keyspan.partition_id": timing.partition_id, "keyspan.batch_size": timing.size}
        write = self._tracer.start_span("storage.write", start_time=queued_ns, attributes=attributes)
        if timing.failed:
            write.set_status(trace.Status(trace.StatusCode.ERROR, "storage fault"))
        context = trace.set_span_in_context(write)
        for name, start, end in (
            ("storage.queue_wait", queued_ns, timing.dequeued_ns),
            ("storage.transaction", timing.dequeued_ns, timing.applied_ns),
            ("storage.commit", timing.applied_ns, timing.committed_ns),
        ):
            self._tracer.start_span(name, context=context, start_time=max(start, queued_ns)).end(end_time=end)
        write.end(end_time=timing.committed_ns)
