"""Typed settings for each process, documented here once and checked at start-up.

Sources apply in order: the defaults below, then `KEYSPAN_<NAME>` environment variables,
then command-line flags (click reads both; flags win). Every field carries the help text
that `--help`, the README and the Helm values repeat. `ProcessConfig` holds what every
process shares; each process's config extends it.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from keyspan.storage.errors import ConfigError

DEFAULT_ADDRESS = "127.0.0.1:7420"
GRPC_MAX_MESSAGE_BYTES = 16 << 20
# gRPC's own default is 1000: a burst of a few thousand concurrent calls from one client
# then had hundreds cancelled before the event loop could start them.
DEFAULT_MAX_PENDING_CALLS = 10_000
# Open KV streams a process allows: ~2 MB each at worst (answers a client has not read).
DEFAULT_MAX_STREAMS = 256


def parse_address(address: str, name: str = "address", *, listen: bool = False) -> tuple[str, int]:
    """(HOST, PORT) of HOST:PORT, the port 0..65535 in ASCII digits; ConfigError naming
    `name` for anything else. A gRPC target to dial (`--control`) may carry a scheme
    (`dns:///control.svc:7400`). One to `listen` on is a host name, an IPv4 address or an
    IPv6 address in brackets (`[::1]:7420`), kept so: gRPC refused `[127.0.0.1]:7420` or
    `::1:7420` only when it came to listen, with a log line of its own and "in use"."""
    host, sep, port = address.rpartition(":")
    digits = port.isascii() and port.isdigit()  # int() refused "²", which isdigit() takes
    if not sep or not host or not digits or not 0 <= int(port) < 65536 or host != host.strip():
        raise ConfigError(f"{name}: {address!r} is not HOST:PORT")
    if not listen:
        return host, int(port)
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{name}: {host[1:-1]!r} in {address!r} is not an IPv6 address") from None
    elif any(c in host for c in ":[]/ "):
        raise ConfigError(
            f"{name}: {address!r} is not HOST:PORT (a host name or IPv4 address, or an IPv6 "
            "address in brackets: [::1]:7420)"
        )
    return host, int(port)


def otlp_target(endpoint: str) -> str:
    """HOST:PORT of an OTLP endpoint given as HOST:PORT or http(s)://HOST:PORT."""
    return urlsplit(endpoint).netloc if "://" in endpoint else endpoint


def check_sentry_dsn(dsn: str) -> None:
    """Raise ConfigError unless dsn looks like SCHEME://PUBLIC_KEY@HOST[:PORT]/PROJECT_ID."""
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        parts = None
    project = parts.path.rstrip("/").rpartition("/")[2] if parts else ""
    if parts is None or parts.scheme not in ("http", "https") or not parts.username or not parts.hostname:
        raise ConfigError("sentry_dsn: expected SCHEME://PUBLIC_KEY@HOST/PROJECT_ID")
    if not project.isdigit():
        raise ConfigError(f"sentry_dsn: the project id {project!r} must be a number")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


@dataclass(frozen=True)
class Bounds:
    """A number setting's range: validate() refuses a value outside it, --help shows it."""

    low: float
    high: float
    above: bool = False  # low itself is out of range
    why: str = ""  # said after the range, e.g. " (a day)"

    def holds(self, value: float) -> bool:
        return (self.low < value if self.above else self.low <= value) and value <= self.high

    def says(self) -> str:
        low, high = _number(self.low), _number(self.high)
        span = f"above {low} and at most {high}" if self.above else f"between {low} and {high}"
        return span + self.why


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


@dataclass(frozen=True, kw_only=True)
class ProcessConfig:
    """Settings every keyspan process has."""

    address: str = field(
        default=DEFAULT_ADDRESS,
        metadata=_help("HOST:PORT the gRPC server listens on (an IPv6 host in brackets: [::1]:7420)."),
    )
    shutdown_grace_s: float = field(
        default=10.0,
        metadata=_help(
            "Seconds in-flight calls get to finish on SIGTERM (a Scan or BulkPut stream ends at "
            "once at its next resumable point, with UNAVAILABLE).",
            bounds=Bounds(0, 3600),
        ),
    )
    max_pending_calls: int = field(
        default=DEFAULT_MAX_PENDING_CALLS,
        metadata=_help(
            "Calls that may wait for the server to start them (a burst of concurrent calls). "
            "Past this gRPC cancels new calls at random, and all of them past 3x this; the "
            "client sees CANCELLED. gRPC's own default is 1000.",
            bounds=Bounds(1, 1_000_000),
        ),
    )
    max_streams: int = field(
        default=DEFAULT_MAX_STREAMS,
        metadata=_help(
            "Scan, BulkPut and Sweep streams the server keeps open at once. Past this a new "
            "one is refused with UNAVAILABLE (ErrorInfo STREAM_LIMIT, RetryInfo 1 s) before "
            "it runs; each open stream may hold ~2 MB of answers its client has not read.",
            bounds=Bounds(1, 1_000_000),
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=_help("DEBUG, INFO, WARNING or ERROR.", choices=["DEBUG", "INFO", "WARNING", "ERROR"]),
    )
    log_format: str = field(
        default="auto",
        metadata=_help(
            "json (one event per line), text, or auto (text on a terminal, json otherwise).",
            choices=["auto", "json", "text"],
        ),
    )

    metrics_address: str = field(
        default="",
        metadata=_help("HOST:PORT where Prometheus scrapes /metrics (port 0 picks one); empty = off."),
    )
    otlp_endpoint: str = field(
        default="",
        metadata=_help(
            "HOST:PORT (or http://HOST:PORT) of an OTLP/gRPC collector for traces; empty = tracing off."
        ),
    )
    trace_sample_ratio: float = field(
        default=1.0,
        metadata=_help(
            "Share of new traces recorded, 0..1, when --otlp-endpoint is set; a caller's sampled "
            "decision is always followed. Lower it (0.01) on busy production nodes.",
            bounds=Bounds(0, 1),
        ),
    )
    sentry_dsn: str = field(
        default="", metadata=_help("Sentry DSN that server faults are reported to; empty = off.")
    )
    sentry_environment: str = field(
        default="production", metadata=_help("Environment name attached to Sentry events.")
    )

    def validate(self) -> Any:
        for f in fields(self):  # NaN passes every range check below, and inf most
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name}: {value} must be a finite number")
            bounds = f.metadata.get("bounds")
            if bounds is not None and not bounds.holds(value):
                raise ConfigError(f"{f.name}: {value} must be {bounds.says()}")
        parse_address(self.address, listen=True)
        if self.metrics_address:
            parse_address(self.metrics_address, "metrics_address", listen=True)
        if self.otlp_endpoint:
            parse_address(otlp_target(self.otlp_endpoint), "otlp_endpoint")
        if self.sentry_dsn:
            check_sentry_dsn(self.sentry_dsn)
        if not self.sentry_environment.strip():
            raise ConfigError("sentry_environment: must not be empty")
        return self


@dataclass(frozen=True, kw_only=True)
class StorageConfig(ProcessConfig):
    """Settings of a process that holds partitions (serve, node)."""

    data: Path = field(
        default=Path("keyspan-data"), metadata=_help("Directory of the shard files and catalogue.")
    )
    synchronous: str = field(
        default="FULL",
        metadata=_help(
            "SQLite synchronous: FULL (a write is durable when acknowledged) or NORMAL "
            "(faster; the last commits may be lost on power loss).",
            choices=["FULL", "NORMAL"],
        ),
    )
    max_value_bytes: int = field(
        default=1 << 20,
        metadata=_help(
            "Largest value accepted; larger gets RESOURCE_EXHAUSTED.",
            bounds=Bounds(1, GRPC_MAX_MESSAGE_BYTES - 64 * 1024, why=" (the gRPC message limit less 64 KiB)"),
        ),
    )
    read_threads: int = field(
        default=2, metadata=_help("Threads that run SQLite scans and slow point reads.", bounds=Bounds(1, 64))
    )
    inline_read_budget_ms: float = field(
        default=1.0,
        metadata=_help(
            "A Get runs on the event loop while such reads take under this many ms (a hand-off "
            "to a read thread costs ~0.1-0.3 ms of CPU); two slower ones in a row send Gets to "
            "the read threads for a second. 0: every read on the read threads.",
            bounds=Bounds(0, 1000),
        ),
    )
    row_cache_mb: int = field(
        default=64,
        metadata=_help(
            "MiB of recently read rows kept in memory, so a repeated Get makes no SQLite call "
            "(a write evicts its keys when it commits). 0: no row cache.",
            bounds=Bounds(0, 1 << 20),
        ),
    )
    max_write_batch: int = field(
        default=256,
        metadata=_help("Most writes committed in one group-commit transaction.", bounds=Bounds(1, 10_000)),
    )
    sqlite_memory_mb: int = field(
        default=256,
        metadata=_help(
            "MiB SQLite may hold across all partitions, its page caches mostly: a soft limit, "
            "past which it reuses cache pages instead of growing (each partition has several "
            "connections of up to 16 MiB of cache). 0: no limit.",
            bounds=Bounds(0, 1 << 20),
        ),
    )
    group_commit_wait_ms: float = field(
        default=3.0,
        metadata=_help(
            "When a partition's last group commit held 4 or more writes, its writer waits "
            "this long once for more before committing: fewer fsyncs and thread wake-ups "
            "per write under load, at most this much added latency. 0: commit at once.",
            bounds=Bounds(0, 100),
        ),
    )
    sweep_interval_s: float = field(
        default=30.0,
        metadata=_help(
            "Seconds between background sweeps of expired entries, each followed by a reclaim "
            "that shrinks shard files once deletes have freed a sixteenth of one. A pass costs "
            "about 1 ms of CPU a partition even with nothing to do (4 partitions at 0.1 s: 5% "
            "of a core).",
            bounds=Bounds(0.1, 86400, why=" (a day)"),
        ),
    )
    max_partition_series: int = field(
        default=100,
        metadata=_help(
            "Most partitions with metric series of their own; beyond it only the busiest "
            "(reads + writes since the last scrape) get them.",
            bounds=Bounds(0, 100_000),
        ),
    )

    def validate(self) -> Any:
        super().validate()
        return self


@dataclass(frozen=True, kw_only=True)
class ServeConfig(StorageConfig):
    """`keyspan serve`: the all-in-one server."""

    split_points: str = field(
        default="g,n,u",
        metadata=_help(
            "Comma-separated keys where a new data dir's partitions are cut "
            "(text, or 0x-prefixed hex). Only used when the data dir is created."
        ),
    )

    def validate(self) -> Any:
        super().validate()
        self.split_keys()
        return self

    def split_keys(self) -> list[bytes]:
        return parse_split_points(self.split_points)


def config_fields(cls: type) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, default, metadata) for each field of a config dataclass."""
    return [(f.name, f.default, dict(f.metadata)) for f in fields(cls)]


@dataclass(frozen=True, kw_only=True)
class ControlConfig(ProcessConfig):
    """`keyspan control`: the partition map and the node registry."""

    address: str = field(
        default="127.0.0.1:7400",
        metadata=_help("HOST:PORT the gRPC server listens on (an IPv6 host in brackets: [::1]:7420)."),
    )

    data: Path = field(default=Path("keyspan-control"), metadata=_help("Directory of control.db."))
    partitions: int = field(
        default=8,
        metadata=_help(
            "Partitions of a new cluster, cut evenly by the first key byte (1..256).", bounds=Bounds(1, 256)
        ),
    )
    split_points: str = field(
        default="",
        metadata=_help(
            "Comma-separated split keys of a new cluster (text, or 0x-prefixed hex); "
            "overrides --partitions. Only used when control.db is created."
        ),
    )
    min_nodes: int = field(
        default=1,
        metadata=_help(
            "Nodes that must be up before a new cluster's partitions are assigned.", bounds=Bounds(1, 10_000)
        ),
    )
    heartbeat_interval_s: float = field(
        default=1.0,
        metadata=_help(
            "Seconds between node heartbeats (below --suspect-after-s).", bounds=Bounds(0, 3600, above=True)
        ),
    )
    suspect_after_s: float = field(
        default=3.0,
        metadata=_help(
            "Seconds without a heartbeat before a node is SUSPECT (below --down-after-s).",
            bounds=Bounds(0, 3600, above=True),
        ),
    )
    down_after_s: float = field(
        default=6.0,
        metadata=_help(
            "Seconds without a heartbeat before a node is DOWN (its partitions UNAVAILABLE).",
            bounds=Bounds(0, 3600, above=True),
        ),
    )
    recovery_wait_s: float = field(
        default=15.0,
        metadata=_help(
            "On a new control.db whose nodes hold partitions on their disks (control.db was "
            "lost): seconds a partition no registered node holds waits for its node to "
            "register before it is assigned, empty, to another.",
            bounds=Bounds(0, 3600),
        ),
    )
    backup_interval_s: float = field(
        default=300.0,
        metadata=_help(
            "Seconds between copies of control.db to control.db.backup beside it (SQLite's online "
            "backup, replacing the last copy whole), and one at start; 0: none.",
            bounds=Bounds(0, 86400, why=" (a day)"),
        ),
    )

    def validate(self) -> Any:
        super().validate()
        if not 0 < self.heartbeat_interval_s < self.suspect_after_s < self.down_after_s:
            raise ConfigError("need 0 < heartbeat_interval_s < suspect_after_s < down_after_s")
        self.split_keys()
        return self

    def split_keys(self) -> list[bytes]:
        return parse_split_points(self.split_points)


@dataclass(frozen=True, kw_only=True)
class NodeConfig(StorageConfig):
    """`keyspan node`: a data node that joins a cluster."""

    address: str = field(
        default="127.0.0.1:7410",
        metadata=_help("HOST:PORT the gRPC server listens on (an IPv6 host in brackets: [::1]:7420)."),
    )

    control: str = field(default="127.0.0.1:7400", metadata=_help("HOST:PORT of keyspan control."))
    id: str = field(
        default="",
        metadata=_help("Node id; persisted in the data dir on first start (default: a new random id)."),
    )
    probe_address: str = field(
        default="",
        metadata=_help("HOST:PORT of a plain grpc.health.v1 probe port (empty: none)."),
    )
    capacity: int = field(
        default=1, metadata=_help("Relative weight when partitions are assigned.", bounds=Bounds(1, 1000))
    )
    sync_timeout_s: float = field(
        default=5.0,
        metadata=_help(
            "Seconds a starting node waits to reconcile with control before serving its disk.",
            bounds=Bounds(0, 3600),
        ),
    )

    def validate(self) -> Any:
        super().validate()
        parse_address(self.control, "control")
        if self.probe_address:
            parse_address(self.probe_address, "probe_address", listen=True)
        return self


@dataclass(frozen=True, kw_only=True)
class GatewayConfig(ProcessConfig):
    """`keyspan gateway`: keyspan.v1.KV routed to the nodes by the watched map."""

    control: str = field(default="127.0.0.1:7400", metadata=_help("HOST:PORT of keyspan control."))
    call_timeout_s: float = field(
        default=10.0,
        metadata=_help(
            "Deadline of each unary call to a node when its caller set none (a caller's deadline "
            "is passed on: what is left of it).",
            bounds=Bounds(0, 3600, above=True),
        ),
    )

    def validate(self) -> Any:
        super().validate()
        parse_address(self.control, "control")
        return self


def parse_split_points(text: str) -> list[bytes]:
    keys = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part.startswith("0x"):
            try:
                key = bytes.fromhex(part[2:])
            except ValueError:
                raise ConfigError(f"split_points: {part!r} is not valid hex") from None
        else:
            try:
                key = part.encode()
            except UnicodeEncodeError:  # bytes the shell passed that are not UTF-8
                raise ConfigError(
                    f"split_points: {part.encode(errors='surrogateescape')!r} is not UTF-8 text; "
                    "give it as hex (0x...)"
                ) from None
        if not key:  # an empty key would cut nothing: refused at the start, exit 4, naming no setting
            raise ConfigError(
                f"split_points: {part!r} is an empty key; a split point is a key of 1 byte or more"
            )
        keys.append(key)
    return keys
