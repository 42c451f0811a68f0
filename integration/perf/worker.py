"""One client process: grpc.aio, many concurrent calls, HdrHistogram per operation.

The same code drives keyspan and the echo limit. A worker connects, warms up, waits for
the run's common start time, runs its share, and writes one JSON result file (histograms
encoded) that `aggregate` merges. In coordinator mode you start workers yourself, on any
machine, with the same spec and start time: `keyspan bench worker SPEC.json OUT.json I`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
from hdrh.histogram import HdrHistogram

from integration.perf.keys import ValueShape, chooser, record_key, sorted_key
from integration.perf.workloads import WORKLOADS, RunSpec
from keyspan.streams import AsyncClient
from keyspan.streams.errors import Unavailable
from keyspan.streams.map_router import MapRouter
from keyspan.v1 import kv_pb2, kv_pb2_grpc

Route = Callable[[bytes], kv_pb2_grpc.KVStub]
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
CALLS_PER_CHANNEL = 32
VALUE_POOL = 64


def new_histogram() -> HdrHistogram:
    """Microseconds, 1 us .. 10 min, 3 significant digits."""
    return HdrHistogram(1, 600_000_000, 3)


class Recorder:
    def __init__(self) -> None:
        self.hists: dict[str, HdrHistogram] = {}
        self.errors: dict[str, Counter[str]] = {}

    def ok(self, op: str, started_ns: int) -> None:
        if op not in self.hists:
            self.hists[op] = new_histogram()
        self.hists[op].record_value(max(1, (time.perf_counter_ns() - started_ns) // 1000))

    def error(self, op: str, code: grpc.StatusCode) -> None:
        self.errors.setdefault(op, Counter())[code.name] += 1

    def to_json(self) -> dict[str, Any]:
        ops = set(self.hists) | set(self.errors)
        return {
            op: {
                "hist": self.hists[op].encode().decode() if op in self.hists else "",
                "errors": dict(self.errors.get(op, {})),
            }
            for op in sorted(ops)
        }


class Client:
    """The operations of the workloads, over one stub."""

    def __init__(self, spec: RunSpec, worker: int, rng: random.Random) -> None:
        self.spec, self.rng, self.worker = spec, rng, worker
        self.shape = ValueShape(spec.fields, spec.field_bytes, spec.json)
        self.values = [self.shape.make(rng) for _ in range(VALUE_POOL)]
        self.key_of = record_key if spec.keys == "ycsb" else sorted_key
        self.inserted = 0
        workload = WORKLOADS[spec.workload]
        self.choose = chooser(spec.distribution or workload.distribution, spec.records, self.latest, rng)
        self.ops, self.weights = list(workload.mix), list(workload.mix.values())

    def latest(self) -> int:
        return self.spec.records - 1 + self.inserted * self.spec.processes

    def value(self) -> bytes:
        return self.values[self.rng.randrange(VALUE_POOL)]

    async def run(self, route: Route, op: str) -> None:
        """One operation; `route(key)` is the stub that serves key (the owner, in a cluster)."""
        if op == "read":
            key = self.key_of(self.choose.next())
            await route(key).Get(kv_pb2.GetRequest(key=key))
        elif op in ("update", "put"):
            key = self.key_of(self.choose.next())
            if self.spec.json and op == "update":
                field = f"$.field{self.rng.randrange(self.spec.fields)}"
                setter = kv_pb2.PathValue(path=field, value=self.shape.field_value(self.rng))
                await route(key).Patch(kv_pb2.PatchRequest(key=key, set=[setter]))
            else:
                await route(key).Put(kv_pb2.PutRequest(key=key, value=self.value(), json=self.spec.json))
        elif op == "insert":
            n = self.spec.records + self.worker + self.inserted * self.spec.processes
            self.inserted += 1
            key = self.key_of(n)
            await route(key).Put(kv_pb2.PutRequest(key=key, value=self.value(), json=self.spec.json))
        elif op == "scan":
            # In a cluster a short scan reads the start key's partition (YCSB E's scans are
            # short; one crossing a partition end returns that partition's part).
            start = self.key_of(self.choose.next())
            await self.scan(route(start), start, 1 + self.rng.randrange(self.spec.max_scan))
        elif op == "rmw":
            key = self.key_of(self.choose.next())
            stub = route(key)
            got = await stub.Get(kv_pb2.GetRequest(key=key))
            put = kv_pb2.PutRequest(key=key, value=self.value(), json=self.spec.json, if_etag=got.etag)
            put.if_absent = not got.found
            await stub.Put(put)
        else:
            raise ValueError(f"unknown operation {op!r}")

    @staticmethod
    async def scan(stub: kv_pb2_grpc.KVStub, start: bytes, limit: int) -> int:
        call = stub.Scan()
        await call.write(kv_pb2.ScanRequest(start=start, limit=limit, credits=limit))
        await call.done_writing()
        rows = 0
        async for batch in call:
            rows += len(batch.entries)
        return rows


async def _ops(spec: RunSpec, worker: int, routes: list[Route], rec: Recorder) -> tuple[int, float]:
    rng = random.Random(worker * 7919 + int(spec.start_at))
    client = Client(spec, worker, rng)
    with contextlib.suppress(grpc.aio.AioRpcError):
        await client.run(routes[0], "read")  # warm the path up before the clock starts
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    started = time.perf_counter()
    stop_at = started + spec.duration_s
    callers = spec.processes * spec.concurrency

    def share(i: int) -> int:
        """This caller's part of --operations, the remainder spread one each: with fewer
        operations than callers the run was timed instead, and otherwise rounded down."""
        index = worker * spec.concurrency + i
        return spec.operations // callers + (index < spec.operations % callers)

    async def caller(i: int) -> None:
        route, done, quota = routes[i % len(routes)], 0, share(i)
        while (done < quota) if spec.operations else (time.perf_counter() < stop_at):
            op = rng.choices(client.ops, client.weights)[0]
            t0 = time.perf_counter_ns()
            try:
                await client.run(route, op)
            except grpc.aio.AioRpcError as err:
                rec.error(op, err.code())
            except Unavailable:  # a cluster partition whose owner is down: no call was made
                rec.error(op, grpc.StatusCode.UNAVAILABLE)
            else:
                rec.ok(op, t0)
            done += 1

    await asyncio.gather(*(caller(i) for i in range(spec.concurrency)))
    return 0, time.perf_counter() - started


async def _bulk_load(
    spec: RunSpec, worker: int, stubs: list[kv_pb2_grpc.KVStub], rec: Recorder
) -> tuple[int, float]:
    """Load this worker's contiguous slice of the sorted keys through one BulkPut stream."""
    key_of = record_key if spec.keys == "ycsb" else sorted_key
    keys = sorted(key_of(n) for n in range(spec.records))
    chunk = -(-len(keys) // spec.processes)
    share = keys[worker * chunk : (worker + 1) * chunk]
    shape = ValueShape(spec.fields, spec.field_bytes, spec.json)
    rng = random.Random(worker)
    values = [shape.make(rng) for _ in range(VALUE_POOL)]
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    began = time.perf_counter()
    call = stubs[0].BulkPut()
    window = asyncio.Semaphore(4)
    sent: asyncio.Queue[tuple[int, int]] = asyncio.Queue()

    async def send() -> None:
        batch, size = kv_pb2.BulkPutRequest(), 0
        for i, key in enumerate(share):
            value = values[i % VALUE_POOL]
            if spec.json:
                batch.entries.add(key=key, value=value, json=True)
            else:  # leaving the proto3 default unset halves the client's cost per entry
                batch.entries.add(key=key, value=value)
            size += len(key) + len(value) + 8
            if size >= spec.batch_bytes or i == len(share) - 1:
                await window.acquire()
                await call.write(batch)
                await sent.put((len(batch.entries), time.perf_counter_ns()))
                batch, size = kv_pb2.BulkPutRequest(), 0
        await call.done_writing()

    accepted = 0
    writer = asyncio.create_task(send())
    async for reply in call:
        n, started = await sent.get()
        window.release()
        rec.ok("bulk_batch", started)
        if reply.accepted != n:
            rec.error("bulk_batch", grpc.StatusCode.FAILED_PRECONDITION)
        accepted += reply.accepted
    await writer
    return accepted, time.perf_counter() - began


async def _full_scan(spec: RunSpec, stubs: list[kv_pb2_grpc.KVStub], rec: Recorder) -> tuple[int, float]:
    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    started = time.perf_counter_ns()
    call = stubs[0].Scan()
    await call.write(kv_pb2.ScanRequest(start=b"", limit=spec.records, credits=1_000_000))
    rows, granted = 0, 1_000_000
    async for batch in call:
        rows += len(batch.entries)
        if granted - rows < 500_000 and not batch.done:
            await call.write(kv_pb2.ScanRequest(credits=500_000))
            granted += 500_000
    rec.ok("full_scan", started)
    return rows, (time.perf_counter_ns() - started) / 1e9


async def run_worker(spec: RunSpec, worker: int) -> dict[str, Any]:
    if spec.kind == "cluster":
        return await _run_cluster_worker(spec, worker)
    channels = [
        grpc.aio.insecure_channel(spec.addresses[i % len(spec.addresses)], options=CHANNEL_OPTIONS)
        for i in range(max(1, -(-spec.concurrency // CALLS_PER_CHANNEL)))
    ]
    rec = Recorder()
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), 30)
        stubs = [kv_pb2_grpc.KVStub(c) for c in channels]
        mode = WORKLOADS[spec.workload].mode
        if mode == "bulk_load":
            rows, elapsed = await _bulk_load(spec, worker, stubs, rec)
        elif mode == "full_scan":
            rows, elapsed = await _full_scan(spec, stubs, rec)
        else:
            routes = [_fixed(stub) for stub in stubs]
            rows, elapsed = await _ops(spec, worker, routes, rec)
    finally:
        for channel in channels:
            await channel.close()
    return {"worker": worker, "elapsed_s": elapsed, "rows": rows, "ops": rec.to_json(), "spec": asdict(spec)}


def _fixed(stub: kv_pb2_grpc.KVStub) -> Route:
    """The route of a serve or gateway target: every key goes to the same stub."""
    return lambda _key: stub


async def _run_cluster_worker(spec: RunSpec, worker: int) -> dict[str, Any]:
    """A thick client of a cluster (spec.addresses = [control]): each key goes to its owner
    by the watched map; bulk load and full scan go through keyspan's AsyncClient."""
    router = MapRouter.watching(spec.addresses[0])
    rec = Recorder()
    try:
        if not await router.wait_for_map(30):
            raise RuntimeError(f"no partition map from control at {spec.addresses[0]}")
        mode = WORKLOADS[spec.workload].mode
        client = AsyncClient(router=router)
        if mode == "bulk_load":
            rows, elapsed = await _thick_bulk_load(spec, worker, client, rec)
        elif mode == "full_scan":
            started = time.perf_counter_ns()
            rows = 0
            async for _ in client.scan(limit=spec.records):
                rows += 1
            rec.ok("full_scan", started)
            elapsed = (time.perf_counter_ns() - started) / 1e9
        else:
            rows, elapsed = await _ops(spec, worker, [router.stub_for_key], rec)
    finally:
        await router.close()
    return {"worker": worker, "elapsed_s": elapsed, "rows": rows, "ops": rec.to_json(), "spec": asdict(spec)}


async def _thick_bulk_load(
    spec: RunSpec, worker: int, client: AsyncClient, rec: Recorder
) -> tuple[int, float]:
    key_of = record_key if spec.keys == "ycsb" else sorted_key
    keys = sorted(key_of(n) for n in range(spec.records))
    chunk = -(-len(keys) // spec.processes)
    shape = ValueShape(spec.fields, spec.field_bytes, spec.json)
    rng = random.Random(worker)
    values = [shape.make(rng) for _ in range(VALUE_POOL)]
    share = keys[worker * chunk : (worker + 1) * chunk]
    items = (kv_pb2.Entry(key=k, value=values[i % VALUE_POOL], json=spec.json) for i, k in enumerate(share))
    began = time.perf_counter_ns()
    result = await client.bulk_put_ex(items)
    rec.ok("bulk_batch", began)
    return result.entries, (time.perf_counter_ns() - began) / 1e9


def worker_main(spec_json: str, out: str, worker: int) -> None:
    """Entry of a client process (multiprocessing target, or `keyspan bench worker`)."""
    spec = RunSpec(**json.loads(spec_json))
    result = asyncio.run(run_worker(spec, worker))
    Path(out).write_text(json.dumps(result))
