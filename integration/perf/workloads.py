"""The workloads: YCSB core A-F and the baseline's single-op shapes, as operation mixes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Workload:
    name: str
    mix: dict[str, float]
    distribution: str = "zipfian"
    about: str = ""
    mode: str = "ops"  # ops | bulk_load | full_scan


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("A", {"read": 0.5, "update": 0.5}, about="update heavy: 50% read, 50% update"),
        Workload("B", {"read": 0.95, "update": 0.05}, about="read mostly: 95% read, 5% update"),
        Workload("C", {"read": 1.0}, about="read only"),
        Workload("D", {"read": 0.95, "insert": 0.05}, "latest", "read latest: 95% read, 5% insert"),
        Workload("E", {"scan": 0.95, "insert": 0.05}, about="short ranges: 95% scan (1-100), 5% insert"),
        Workload("F", {"read": 0.5, "rmw": 0.5}, about="read-modify-write: Get then Put if_etag"),
        Workload("get", {"read": 1.0}, "uniform", "Get of existing keys (baseline)"),
        Workload("put", {"put": 1.0}, "uniform", "Put over existing keys (baseline)"),
        Workload("load", {}, about="bulk load through BulkPut, sorted", mode="bulk_load"),
        Workload("scan", {}, about="one full Scan of every record", mode="full_scan"),
    ]
}


@dataclass(frozen=True)
class RunSpec:
    """What every client process of one run gets: JSON-able, so coordinator mode can ship it."""

    addresses: list[str]
    kind: str = "serve"
    workload: str = "A"
    records: int = 10_000
    fields: int = 10
    field_bytes: int = 100
    json: bool = True
    keys: str = "ycsb"  # ycsb (hashed user keys) | sorted (16-byte sorted keys)
    distribution: str = ""  # empty: the workload's own
    concurrency: int = 16  # concurrent calls per process
    processes: int = 1
    duration_s: float = 5.0
    operations: int = 0  # 0: run for duration_s
    max_scan: int = 100
    batch_bytes: int = 256 * 1024  # BulkPut message budget
    start_at: float = 0.0  # Unix time every process starts measuring at
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def value_bytes(self) -> int:
        return self.fields * self.field_bytes
