"""Clients and workloads that drive a Cluster: through the gateway, or routed by the map.

Every write whose outcome is unknown (UNAVAILABLE, DEADLINE_EXCEEDED, a broken
connection) is resolved by reading back, so "acknowledged" is exact: a counter document
holds its count and, per worker, the sequence number of that worker's last increment.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_status import rpc_status

from keyspan.streams.errors import Unavailable
from keyspan.streams.map_router import MapRouter
from keyspan.streams.partition_map import PartitionMap
from keyspan.v1 import control_pb2, control_pb2_grpc, errors_pb2, kv_pb2, kv_pb2_grpc

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def retrying(fn: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Call fn until it stops answering UNAVAILABLE (what any client does, with RetryInfo)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wrong_partition(err: grpc.RpcError) -> errors_pb2.WrongPartition | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(errors_pb2.WrongPartition.DESCRIPTOR):
            out = errors_pb2.WrongPartition()
            detail.Unpack(out)
            return out
    return None


class Routed:
    """Calls straight to the owning node, routed by a MapRouter fed by control's GetMap."""

    def __init__(self, control_address: str) -> None:
        self._control = control_pb2_grpc.ControlStub(channel(control_address))
        self.router = MapRouter(PartitionMap(), channel, refresh=self.fetch_map)
        self.router.map.apply(self.fetch_map() or control_pb2.PartitionMap())
        self.lock = threading.Lock()

    def fetch_map(self) -> control_pb2.PartitionMap | None:
        try:
            return self._control.GetMap(control_pb2.GetMapRequest(), timeout=2)
        except grpc.RpcError:
            return None  # control away: keep routing with the map held

    def refresh(self) -> None:
        fresh = self.fetch_map()
        if fresh is not None:
            with self.lock:
                self.router.map.apply(fresh)

    def call(self, key: bytes, method: str, request: Any, timeout_s: float = 5.0) -> Any:
        """One call to the owner of key; WrongPartition re-routes, UNAVAILABLE is raised."""
        for _ in range(8):
            try:
                with self.lock:
                    stub = self.router.stub_for_key(key)
            except Unavailable:
                self.refresh()
                raise
            try:
                return getattr(stub, method)(request, timeout=timeout_s)
            except grpc.RpcError as err:
                detail = wrong_partition(err) if err.code() == grpc.StatusCode.FAILED_PRECONDITION else None
                if detail is None:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        self.refresh()
                    raise
                with self.lock:
                    self.router.on_wrong_partition(detail)
        # Nodes whose maps disagree while control restarts: every one refused the call, so
        # nothing was applied; take control's map and let the caller try again.
        self.refresh()
        raise Unavailable(f"routing for {key!r} did not settle")


@dataclass
class Tally:
    """What a workload did: acknowledged operations and retried errors by code."""

    acknowledged: Counter[bytes] = field(default_factory=Counter)
    ops: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, name: str) -> None:
        with self.lock:
            self.errors[name] += 1


class CounterWorkload:
    """Workers increment shared counters by etag read-modify-write until stopped."""

    def __init__(
        self, gateway_address: str, control_address: str, name: str, counters: int = 8, workers: int = 8
    ) -> None:
        self.keys = [f"{LETTERS[(i * 7) % 26]}/counter/{name}/{i}".encode() for i in range(counters)]
        self.tally = Tally()
        self._stop = threading.Event()
        gateway = kv_pb2_grpc.KVStub(channel(gateway_address))
        routed = Routed(control_address)
        self._callers: list[Callable[[bytes, str, Any], Any]] = []
        for i in range(workers):
            if i % 2 == 0:
                self._callers.append(
                    lambda key, method, request, g=gateway: getattr(g, method)(request, timeout=5)
                )
            else:
                self._callers.append(routed.call)
        self._threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(workers)]

    def start(self) -> CounterWorkload:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Tally:
        self._stop.set()
        for t in self._threads:
            t.join(60)
        return self.tally

    def run_for(self, seconds: float) -> Tally:
        self.start()
        time.sleep(seconds)
        return self.stop()

    def _read(
        self, call: Callable[..., Any], key: bytes, must: bool = False
    ) -> tuple[dict[str, Any], int] | None:
        """The counter document and its etag; None when stopping (unless `must`)."""
        while must or not self._stop.is_set():
            try:
                got = call(key, "Get", kv_pb2.GetRequest(key=key))
                return (json.loads(got.value) if got.found else {"n": 0, "last": {}}), got.etag
            except (grpc.RpcError, Unavailable) as err:
                self.tally.error(_name(err))
                time.sleep(0.05)
        return None

    def _work(self, worker: int) -> None:
        call, me, seq = self._callers[worker], str(worker), 0
        rng = random.Random(worker)
        while not self._stop.is_set():
            key = rng.choice(self.keys)
            read = self._read(call, key)
            if read is None:
                return
            doc, etag = read
            seq += 1
            doc["n"] += 1
            doc["last"][me] = seq
            put = kv_pb2.PutRequest(key=key, value=json.dumps(doc).encode(), json=True)
            if etag:
                put.if_etag = etag
            else:
                put.if_absent = True
            if self._put(call, key, put, me, seq):
                with self.tally.lock:
                    self.tally.acknowledged[key] += 1
                    self.tally.ops += 1

    def _put(self, call: Callable[..., Any], key: bytes, put: kv_pb2.PutRequest, me: str, seq: int) -> bool:
        """True when this increment is in the store, exactly.

        An unknown outcome (UNAVAILABLE, DEADLINE_EXCEEDED, a broken connection) may still
        apply later (a write in flight or queued), so a read-back alone could miss it. The
        same conditional Put is sent again until the answer is definite: OK means it is in
        (once: the precondition admits one write); ABORTED means the etag moved, so the
        first attempt can never apply any more, and a read-back tells whether it did.
        """
        maybe_sent = False
        while True:
            try:
                call(key, "Put", put)
                return True
            except Unavailable as err:
                self.tally.error(_name(err))  # no map, or every node refused it: nothing applied
            except grpc.RpcError as err:
                self.tally.error(_name(err))
                if err.code() == grpc.StatusCode.ABORTED:
                    break
                if err.code() not in RETRYABLE:
                    raise
                maybe_sent = True
            if not maybe_sent and self._stop.is_set():
                return False
            time.sleep(0.05)
        if not maybe_sent:
            return False
        read = self._read(call, key, must=True)
        assert read is not None
        return bool(read[0]["last"].get(me) == seq)

    def verify(self, gateway_address: str) -> dict[bytes, tuple[int, int]]:
        """Counters whose stored count differs from the acknowledged increments: key -> (stored, acked)."""
        stub = kv_pb2_grpc.KVStub(channel(gateway_address))
        wrong = {}
        for key in self.keys:
            got = retrying(lambda key=key: stub.Get(kv_pb2.GetRequest(key=key), timeout=5))
            stored = json.loads(got.value)["n"] if got.found else 0
            if stored != self.tally.acknowledged[key]:
                wrong[key] = (stored, self.tally.acknowledged[key])
        return wrong


def _name(err: BaseException) -> str:
    if isinstance(err, grpc.RpcError):
        return err.code().name
    return type(err).__name__
