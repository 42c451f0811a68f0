"""Prometheus metrics: real servers on 127.0.0.1, real scrapes of /metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from obs_helpers import FakeControl, sample, scrape
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keyspan.services.common.control_metrics import CONTROL_METRICS, register_control_metrics
from keyspan.services.common.metrics import RpcMetrics
from keyspan.services.common.registrar import Registrar
from keyspan.services.common.rpc_telemetry import RpcTelemetry
from keyspan.services.common.storage_metrics import PartitionCollector
from keyspan.storage.mutations import Bulk, Put
from keyspan.storage.shardset import ShardSet
from keyspan.streams.client_metrics import ClientMetrics
from keyspan.v1 import kv_pb2, kv_pb2_grpc

KV = "keyspan.v1.KV"


@pytest.mark.asyncio
async def test_rpcs_are_counted_and_timed_by_method_and_code(start_server, channel_to) -> None:
    server = await start_server(metrics_address="127.0.0.1:0")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    for i in range(3):
        await kv.Put(kv_pb2.PutRequest(key=b"a%d" % i, value=b"v"))
    await kv.Get(kv_pb2.GetRequest(key=b"a1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await kv.Patch(kv_pb2.PatchRequest(key=b"missing", merge_patch="{}"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError):
        await kv.Put(kv_pb2.PutRequest(key=b"", value=b"v"))

    m = await scrape(server)
    put = {"grpc_service": KV, "grpc_method": "Put", "grpc_type": "unary"}
    assert sample(m, "keyspan_rpc_handled_total", **put, grpc_code="OK") == 3
    assert sample(m, "keyspan_rpc_handled_total", **put, grpc_code="INVALID_ARGUMENT") == 1
    assert sample(m, "keyspan_rpc_handled_total", grpc_method="Patch", grpc_code="NOT_FOUND") == 1
    assert sample(m, "keyspan_rpc_duration_seconds_count", **put, grpc_code="OK") == 3
    assert sample(m, "keyspan_rpc_duration_seconds_sum", **put, grpc_code="OK") > 0
    assert sample(m, "keyspan_rpc_in_flight", grpc_service=KV, grpc_method="Put") == 0
    assert sample(m, "keyspan_write_batch_size_count") >= 3
    assert sample(m, "keyspan_write_commit_seconds_count") >= 3
    # every write that reached a writer (the 3 Puts and the Patch) waited in its queue once
    assert sample(m, "keyspan_write_queue_wait_seconds_count") == 4
    assert sample(m, "keyspan_build_info", component="serve") == 1


@pytest.mark.asyncio
async def test_streams_count_messages_and_duration(start_server, channel_to) -> None:
    server = await start_server(metrics_address="127.0.0.1:0")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    for i in range(5):
        await kv.Put(kv_pb2.PutRequest(key=b"b%d" % i, value=b"v"))

    async def requests():
        yield kv_pb2.ScanRequest(start=b"b", end=b"c", credits=10)

    batches = [b async for b in kv.Scan(requests())]
    m = await scrape(server)
    scan = {"grpc_service": KV, "grpc_method": "Scan"}
    assert sample(m, "keyspan_rpc_handled_total", **scan, grpc_type="bidi_stream", grpc_code="OK") == 1
    assert sample(m, "keyspan_rpc_stream_messages_received_total", **scan) == 1
    assert sample(m, "keyspan_rpc_stream_messages_sent_total", **scan) == len(batches)
    assert sample(m, "keyspan_rpc_stream_duration_seconds_count", **scan) == 1


@pytest.mark.asyncio
async def test_health_watch_streams_with_telemetry_on(start_server, channel_to) -> None:
    """Health's Watch is a coroutine that writes its answers (not an async generator)."""
    server = await start_server(metrics_address="127.0.0.1:0")
    health = health_pb2_grpc.HealthStub(channel_to(server))
    watch = health.Watch(health_pb2.HealthCheckRequest(service=KV))
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    assert not watch.done()  # it stays open for the next change
    watch.cancel()
    codes: list[str] = []
    for _ in range(50):  # the server hears of the cancel a moment later
        m = await scrape(server)
        handled = m["keyspan_rpc_handled"].samples
        codes = [s.labels["grpc_code"] for s in handled if s.labels.get("grpc_method") == "Watch"]
        if codes:
            break
        await asyncio.sleep(0.1)
    assert codes == ["CANCELLED"]


@pytest.mark.asyncio
async def test_partition_metrics_agree_with_the_stats_rpc(start_server, channel_to) -> None:
    server = await start_server(metrics_address="127.0.0.1:0", split_points="m")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    for i in range(4):
        await kv.Put(kv_pb2.PutRequest(key=b"c%d" % i, value=b"v"))
    await kv.Put(kv_pb2.PutRequest(key=b"x", value=b"v"))
    await kv.Get(kv_pb2.GetRequest(key=b"x"))
    stats = await kv.Stats(kv_pb2.StatsRequest())
    m = await scrape(server)
    for part in stats.partitions:
        pid = part.partition_id
        entries = sample(m, "keyspan_partition_approximate_entries", partition_id=pid)
        assert entries == part.approximate_entries
        assert sample(m, "keyspan_partition_expired_entries", partition_id=pid) == part.expired_entries
        assert sample(m, "keyspan_partition_revision", partition_id=pid) == part.revision
        assert sample(m, "keyspan_partition_bytes", partition_id=pid) > 0
    assert sample(m, "keyspan_partition_writes_total", partition_id="p0000") == 4
    assert sample(m, "keyspan_partition_reads_total", partition_id="p0001") == 1
    assert sample(m, "keyspan_partitions") == 2
    assert sample(m, "keyspan_data_dir_free_bytes") > 0


@pytest.mark.asyncio
async def test_point_reads_are_counted_where_they_were_served(start_server, channel_to) -> None:
    server = await start_server(metrics_address="127.0.0.1:0")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    await kv.Put(kv_pb2.PutRequest(key=b"x", value=b"v"))
    for key in (b"x", b"x", b"absent", b"absent"):  # each read once from SQLite, then cached
        await kv.Get(kv_pb2.GetRequest(key=key))
    m = await scrape(server)
    assert sample(m, "keyspan_row_cache_misses_total") == 2
    assert sample(m, "keyspan_row_cache_hits_total") == 2
    assert sample(m, "keyspan_row_cache_entries") == 2  # the row and the known-absent key
    assert sample(m, "keyspan_row_cache_bytes") > 0
    assert sample(m, "keyspan_inline_reads_total") == 2
    assert sample(m, "keyspan_inline_read_pauses_total") == 0

    off = await start_server(metrics_address="127.0.0.1:0", row_cache_mb=0, inline_read_budget_ms=0)
    kv = kv_pb2_grpc.KVStub(channel_to(off))
    await kv.Get(kv_pb2.GetRequest(key=b"x"))
    m = await scrape(off)
    assert sample(m, "keyspan_inline_reads_total") == 0  # the read went to a read thread
    assert "keyspan_row_cache_hits" not in m


@pytest.mark.asyncio
async def test_sweep_lag_is_the_age_of_the_oldest_expired_entry(start_server) -> None:
    server = await start_server(metrics_address="127.0.0.1:0", split_points="")
    partition = server.shards.partitions[0]
    expired_at = time.time_ns() // 1_000_000 - 5_000
    await partition.write(Put(b"old", b"v", False, expired_at, 0, False))
    m = await scrape(server)
    assert sample(m, "keyspan_partition_expired_entries", partition_id="p0000") == 1
    assert 5 <= sample(m, "keyspan_partition_sweep_lag_seconds", partition_id="p0000") < 60
    await server.sweeper.sweep_once()
    m = await scrape(server)
    assert sample(m, "keyspan_partition_sweep_lag_seconds", partition_id="p0000") == 0


@pytest.mark.asyncio
async def test_the_bytes_a_sweep_gives_back_are_counted(start_server) -> None:
    server = await start_server(metrics_address="127.0.0.1:0", split_points="")
    partition = server.shards.partitions[0]
    expired_at = time.time_ns() // 1_000_000 - 1
    keys = [b"k%06d" % i for i in range(20_000)]
    await partition.write(Bulk(keys, [b"v" * 100] * len(keys), None, [expired_at] * len(keys)))
    m = await scrape(server)
    assert sample(m, "keyspan_node_reclaimed_bytes_total") == 0
    size = sample(m, "keyspan_partition_bytes", partition_id="p0000")
    await server.sweeper.sweep_once()
    m = await scrape(server)
    reclaimed = sample(m, "keyspan_node_reclaimed_bytes_total")
    assert reclaimed == server.sweeper.reclaimed_bytes > 2_000_000
    assert sample(m, "keyspan_partition_approximate_entries", partition_id="p0000") == 0
    assert sample(m, "keyspan_partition_bytes", partition_id="p0000") < size


@pytest.mark.asyncio
async def test_only_the_busiest_partitions_get_series_beyond_the_limit(tmp_path: Path) -> None:
    shards = ShardSet(tmp_path)
    shards.open([(f"p{i}", r) for i, r in enumerate(_ranges(b"bcdef"))])
    try:
        collector = PartitionCollector(shards, max_series=2)
        registry = CollectorRegistry()
        registry.register(collector)
        generate_latest(registry)  # the baseline for "since the last scrape"
        for key, n in ((b"c1", 3), (b"e1", 5), (b"a1", 1)):
            for i in range(n):
                await shards.write(key, Put(key + b"%d" % i, b"v", False, None, 0, False))
        m = families(registry)
        shown = {s.labels["partition_id"] for s in m["keyspan_partition_writes"].samples}
        assert shown == {"p2", "p4"}  # ranges [c, d) and [e, f): the two busiest
        assert sample(m, "keyspan_partitions_without_series") == 4
        assert sample(m, "keyspan_node_writes_total") == 9
    finally:
        shards.close()


@pytest.mark.asyncio
async def test_node_counters_keep_what_a_dropped_partition_counted(tmp_path: Path) -> None:
    shards, registry = await two_partitions_three_writes_one_read(tmp_path)
    try:
        shards.drop_partition("p0")  # [, m): reassigned to another node, say
        m = families(registry)
        assert sample(m, "keyspan_node_writes_total") == 3
        assert sample(m, "keyspan_node_reads_total") == 1
        assert sample(m, "keyspan_partitions") == 1
    finally:
        shards.close()


@pytest.mark.asyncio
async def test_node_counters_do_not_fall_in_a_scrape_while_a_partition_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape that came while a partition left (its writer closing) found it neither held
    nor yet counted as dropped: the node totals fell for it, read by Prometheus as a reset."""
    shards, registry = await two_partitions_three_writes_one_read(tmp_path)
    try:
        seen: list[tuple[float, float]] = []
        scrapers: list[threading.Thread] = []

        def scrape() -> None:
            m = families(registry)
            seen.append((sample(m, "keyspan_node_writes_total"), sample(m, "keyspan_node_reads_total")))

        def scrape_meanwhile(wait_s: float | None) -> None:  # as the metrics server's thread would
            scrapers.append(threading.Thread(target=scrape))
            scrapers[-1].start()
            scrapers[-1].join(wait_s)

        leaving = shards.locate(b"a")
        close, count = leaving.writer.close, shards.dropped.add
        monkeypatch.setattr(leaving.writer, "close", lambda: (scrape_meanwhile(None), close()))
        # As the partition is counted as dropped: a scrape then waits for that to end.
        monkeypatch.setattr(shards.dropped, "add", lambda p: (scrape_meanwhile(0.2), count(p)))
        shards.drop_partition("p0")  # [, m)
        for scraper in scrapers:
            scraper.join()
        scrape()
        assert seen == [(3, 1)] * 3
    finally:
        shards.close()


def _ranges(points: bytes) -> list:
    from keyspan.storage.shardset import ranges_from_split_points

    return ranges_from_split_points([bytes([p]) for p in points])


def test_control_metrics_come_from_the_registered_source() -> None:
    registry = CollectorRegistry()
    register_control_metrics(registry, FakeControl())
    m = families(registry)
    assert set(CONTROL_METRICS) <= set(m)
    assert sample(m, "keyspan_control_nodes", status="down") == 1
    assert sample(m, "keyspan_control_partitions", state="moving") == 1
    assert sample(m, "keyspan_control_map_version") == 42
    assert sample(m, "keyspan_control_heartbeat_age_seconds", node_id="n2") == 31
    assert sample(m, "keyspan_control_operations_in_flight", kind="move") == 1


def test_client_metrics_count_retries_refreshes_and_redirects() -> None:
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    metrics.retried("Put")
    metrics.retried("Put")
    metrics.map_refreshed()
    metrics.redirected("p1")
    m = families(registry)
    assert sample(m, "keyspan_client_retries_total", method="Put") == 2
    assert sample(m, "keyspan_client_map_refreshes_total") == 1
    assert sample(m, "keyspan_client_wrong_partition_redirects_total") == 1


@pytest.mark.asyncio
async def test_no_metrics_endpoint_and_no_telemetry_wrapper_when_off(start_server) -> None:
    server = await start_server()
    assert server.observability.metrics_port is None
    assert server.observability.handler_wrappers() == []


@pytest.mark.asyncio
async def test_client_streams_count_messages_in() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)

    async def total(requests, context):
        return b"%d" % sum([len(r) async for r in requests])

    handler = grpc.method_handlers_generic_handler(
        "test.Upload", {"Send": grpc.stream_unary_rpc_method_handler(total)}
    )
    server = grpc.aio.server()
    Registrar(server, RpcTelemetry(metrics, None).wrap).add_generic_rpc_handlers([handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            send = channel.stream_unary("/test.Upload/Send")
            assert await send(iter([b"ab", b"c", b"def"])) == b"6"
    finally:
        await server.stop(None)
    m = families(registry)
    assert sample(m, "keyspan_rpc_stream_messages_received_total", grpc_method="Send") == 3
    assert sample(m, "keyspan_rpc_handled_total", grpc_type="client_stream", grpc_code="OK") == 1


def test_the_lock_free_write_path_histogram_exposes_what_prometheus_would() -> None:
    import threading

    from prometheus_client import Histogram

    from keyspan.services.common.metrics import LATENCY_BUCKETS
    from keyspan.services.common.storage_metrics import ThreadLocalHistogram

    reference, ours = CollectorRegistry(), CollectorRegistry()
    expected = Histogram("w_seconds", "doc", buckets=LATENCY_BUCKETS, registry=reference)
    got = ThreadLocalHistogram("w_seconds", "doc", LATENCY_BUCKETS, ours)
    values = [0.0001, 0.0002, 0.0005, 0.003, 0.00025, 0.5, 1, 20]
    for v in values:
        expected.observe(v)
    other = threading.Thread(
        target=lambda: [got.observe(v) for v in values[:5]]
    )  # two threads' counts add up
    other.start()
    other.join()
    for v in values[5:]:
        got.observe(v)
    lines = [line for line in generate_latest(reference).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours).decode().splitlines() == lines


def test_the_lock_free_rpc_series_expose_what_prometheus_client_would() -> None:
    from prometheus_client import Counter, Gauge, Histogram

    from keyspan.services.common.metrics import LATENCY_BUCKETS, RPC_LABELS, STREAM_BUCKETS

    reference, ours = CollectorRegistry(), CollectorRegistry()
    handled = Counter(
        "keyspan_rpc_handled", "RPCs finished, by final status code.", RPC_LABELS, registry=reference
    )
    duration = Histogram(
        "keyspan_rpc_duration_seconds",
        "Time from the call's arrival to its status; for streams, the stream's whole life.",
        RPC_LABELS,
        buckets=LATENCY_BUCKETS,
        registry=reference,
    )
    stream = Histogram(
        "keyspan_rpc_stream_duration_seconds",
        "Life of streaming RPCs (Scan, BulkPut, Sweep), in wider buckets.",
        RPC_LABELS[:3],
        buckets=STREAM_BUCKETS,
        registry=reference,
    )
    in_flight = Gauge("keyspan_rpc_in_flight", "RPCs being served now.", RPC_LABELS[:2], registry=reference)
    received = Counter(
        "keyspan_rpc_stream_messages_received",
        "Messages read from clients on streaming RPCs.",
        RPC_LABELS[:2],
        registry=reference,
    )
    sent = Counter(
        "keyspan_rpc_stream_messages_sent",
        "Messages sent to clients on streaming RPCs.",
        RPC_LABELS[:2],
        registry=reference,
    )
    metrics = RpcMetrics(ours)
    calls = [  # method, kind, code, seconds, messages in, messages out
        ("Get", "unary", "OK", 0.0002),
        ("Get", "unary", "OK", 0.0031),
        ("Get", "unary", "INVALID_ARGUMENT", 0.00001),
        ("Scan", "bidi_stream", "OK", 2.5),
        ("Put", "unary", "ABORTED", 12.0),
    ]
    methods = {}
    for name, kind, code, seconds in calls:
        if name not in methods:
            methods[name] = metrics.method(KV, name, kind)
            for family in (in_flight, received, sent):
                family.labels(KV, name)
        counts = methods[name]
        counts.in_flight += 1
        in_flight.labels(KV, name).inc()
        if kind != "unary":
            counts.received += 2
            received.labels(KV, name).inc(2)
            counts.sent += 3
            sent.labels(KV, name).inc(3)
        counts.finished(code, seconds)
        in_flight.labels(KV, name).dec()
        handled.labels(KV, name, kind, code).inc()
        duration.labels(KV, name, kind, code).observe(seconds)
        if kind != "unary":
            stream.labels(KV, name, kind).observe(seconds)
    methods["Get"].in_flight += 1  # one call still running
    in_flight.labels(KV, "Get").inc()

    def exposed(registry: CollectorRegistry) -> list[str]:
        lines = [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]
        return sorted(lines)  # prometheus_client orders a family's children by first use

    assert exposed(ours) == exposed(reference)


@pytest.mark.asyncio
async def test_reflection_and_health_list_work_with_telemetry_on(start_server, channel_to) -> None:
    # Reflection's sync servicer, registered through the telemetry wrappers, failed every
    # call with UNKNOWN ("'async for' requires an object with __aiter__"); Health's List,
    # left to the generated sync stub, did too.
    server = await start_server(metrics_address="127.0.0.1:0")

    def reflect() -> list[str]:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            return list(ProtoReflectionDescriptorDatabase(channel).get_services())

    assert "keyspan.v1.KV" in await asyncio.to_thread(reflect)
    listed = await health_pb2_grpc.HealthStub(channel_to(server)).List(health_pb2.HealthListRequest())
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        KV: health_pb2.HealthCheckResponse.SERVING,
    }
    # counted under the code each call ended with: never UNKNOWN (the client may end a
    # call itself once it has read its answer, which the server counts as CANCELLED)
    m = await scrape(server)
    codes = {
        s.labels["grpc_code"]
        for s in m["keyspan_rpc_handled"].samples
        if s.labels.get("grpc_method") == "ServerReflectionInfo"
    }
    assert "UNKNOWN" not in codes, codes


@pytest.mark.asyncio
async def test_the_registrar_refuses_a_sync_servicer_when_it_is_registered() -> None:
    server = grpc.aio.server()
    registrar = Registrar(server, lambda name, handler: handler)
    with pytest.raises(TypeError, match="ServerReflectionInfo"):
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.ReflectionServicer([KV]), registrar
        )


@pytest.mark.asyncio
async def test_writes_count_entries_written_not_queued_mutations(start_server, channel_to) -> None:
    # A BulkPut batch of 200 entries counted as one write, and an empty sweep as one.
    server = await start_server(metrics_address="127.0.0.1:0", split_points="m")
    kv = kv_pb2_grpc.KVStub(channel_to(server))
    bulk = kv.BulkPut()
    await bulk.write(
        kv_pb2.BulkPutRequest(entries=[kv_pb2.Entry(key=b"a%03d" % i, value=b"v") for i in range(200)])
    )
    assert (await bulk.read()).accepted == 200
    await bulk.done_writing()
    sweep = kv.Sweep()
    await sweep.write(kv_pb2.SweepRequest())
    await sweep.done_writing()
    assert [r async for r in sweep][-1].deleted == 0
    m = await scrape(server)
    assert sample(m, "keyspan_partition_writes_total", partition_id="p0000") == 200
    assert sample(m, "keyspan_partition_writes_total", partition_id="p0001") == 0
    assert sample(m, "keyspan_write_batch_size_sum") == 200
    assert sample(m, "keyspan_write_batch_size_count") == 1


def families(registry: CollectorRegistry) -> dict[str, Any]:
    """What a scrape of the registry shows, by metric family."""
    return {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}


async def two_partitions_three_writes_one_read(tmp_path: Path) -> tuple[ShardSet, CollectorRegistry]:
    """Partitions p0 [, m) and p1 [m, ), written a, b and x, read a once; and a registry
    scraping them."""
    shards = ShardSet(tmp_path)
    shards.open([(f"p{i}", r) for i, r in enumerate(_ranges(b"m"))])
    try:
        registry = CollectorRegistry()
        registry.register(PartitionCollector(shards))
        for key in (b"a", b"b", b"x"):
            await shards.write(key, Put(key, b"v", False, None, 0, False))
        await shards.get(b"a")
    except BaseException:
        shards.close()
        raise
    return shards, registry
