"""What every keyspan process shares: a grpc.aio server whose handlers map errors to
statuses (and are measured and traced when observability is on), health and
reflection, and an orderly start and stop.

Health is NOT_SERVING from the moment the port is bound until `on_start` has finished
(shards open and checked, map loaded), then SERVING. `stop` runs in order: health
NOT_SERVING (health watches and resumable streams end at once, UNAVAILABLE), the server
stops taking calls and gives in-flight ones the grace period, then `on_stop` (writers
drain, files close).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from keyspan import __version__
from keyspan.services.common.errors import wrap_errors
from keyspan.services.common.logging import quiet_client_gone
from keyspan.services.common.observability import Observability
from keyspan.services.common.registrar import Registrar, compose
from keyspan.services.common.stream_slots import StreamSlots
from keyspan.services.common.taskdump import describe_tasks
from keyspan.services.config import DEFAULT_MAX_PENDING_CALLS, GRPC_MAX_MESSAGE_BYTES, ProcessConfig
from keyspan.storage.openfiles import raise_open_files_limit

log = logging.getLogger(__name__)
# The most often a server accepts a client's keepalive ping on a connection with no data
# going out: below the 30 s every keyspan client pings at.
MIN_CLIENT_PING_INTERVAL_MS = 10_000
MAX_CONNECTION_IDLE_MS = 300_000  # a client connection with no call open for 5 minutes is closed


def server_options(max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS) -> list[tuple[str, int]]:
    """The options of every keyspan gRPC server (and of the perf suite's echo)."""
    return [
        ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", GRPC_MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        # Calls that arrive faster than the event loop starts them wait in gRPC's core;
        # between the soft and the hard limit it cancels new ones at random.
        ("grpc.server.max_pending_requests", max_pending_calls),
        ("grpc.server.max_pending_requests_hard_limit", 3 * max_pending_calls),
        # keyspan's clients ping every 30 s while a call is open (streams/router.py). gRPC's
        # server default takes a ping sent with no data in between more often than every
        # 5 minutes as abuse: at the third it closed the connection ("too_many_pings"),
        # so an idle stream (a map watch, a scan waiting on its reader) died after ~90 s.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
        # and the server pings its clients, so a connection whose peer vanished is closed
        # (with its streams) within a minute and a half, not after gRPC's default 2 hours.
        # The ping's wait is the HTTP/2 ping timeout: with gRPC's 60 s default it was 120 s.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.ping_timeout_ms", 20_000),
        # Keepalive pings go only where a call is open: a connection with none, from a
        # client that vanished, was held for good (a descriptor each). One idle this long
        # is closed (GOAWAY); a live client connects again at its next call.
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
    ]


HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

# Extra server interceptors (auth, ...), outermost first. Tracing, RPC metrics and error
# mapping are not interceptors: they wrap each handler at registration (registrar.py).
interceptor_factories: list[Callable[[ProcessConfig], grpc.aio.ServerInterceptor]] = []


def _check_can_listen(address: str) -> None:
    """Raise OSError saying why `address` cannot be listened on (a host that does not
    resolve, a port in use, an address not this host's), before gRPC tries it: gRPC's
    own refusal says less, and prints a line of its C core's log."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return  # gRPC judges
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise OSError(f"the host {host!r} does not resolve ({err.strerror})") from None
    if int(port) == 0:
        return  # gRPC picks a free port
    failures: list[OSError] = []
    for family, kind, proto, _, where in found:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind(where)
            except OSError as err:
                failures.append(err)
    # gRPC serves a name (localhost) on the addresses it can bind, one at least: a port in
    # use on any of them, or none bindable, is refused.
    if any(err.errno == errno.EADDRINUSE for err in failures):
        raise OSError(errno.EADDRINUSE, "the port is in use")
    if len(failures) == len(found):
        if failures[0].errno == errno.EADDRNOTAVAIL:
            raise OSError(errno.EADDRNOTAVAIL, "not an address of this host")
        raise failures[0]


class Health(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health (Check, Watch and List) over the statuses set here, for every
    keyspan server and a node's probe port.

    Once `enter_graceful_shutdown` is called every status is NOT_SERVING for good, and a
    Watch is sent NOT_SERVING and ends UNAVAILABLE: a watcher (a load balancer, control
    watching a node) keeps its stream open for good, and the server's stop would wait the
    whole grace period for it. grpc_health's own servicer kept those streams open, and
    ending its Watch by cancelling it raced with its writes (a NOT_SERVING sent twice, or
    a call left open to the end of the grace).
    """

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {"": health_pb2.HealthCheckResponse.SERVING}
        self._changed = asyncio.Event()  # set, and replaced, at every change
        self._closing = False

    async def set(self, service: str, status: int) -> None:
        if not self._closing:
            self._statuses[service] = status
            self._announce()

    async def enter_graceful_shutdown(self) -> None:
        if not self._closing:
            self._closing = True
            self._statuses = dict.fromkeys(self._statuses, health_pb2.HealthCheckResponse.NOT_SERVING)
            self._announce()

    def _announce(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def List(self, request: health_pb2.HealthListRequest, context: Any) -> Any:
        """Every service's status, "" (the whole server) among them."""
        statuses = {name: health_pb2.HealthCheckResponse(status=s) for name, s in self._statuses.items()}
        return health_pb2.HealthListResponse(statuses=statuses)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last = None
        while True:
            changed = self._changed  # taken before the status is read: no change is missed
            closing = self._closing
            status = self._statuses.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != last:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                last = status
            if closing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            await changed.wait()


class GrpcProcess:
    """Base of serve, node, control and gateway. Subclasses register their servicers in
    `register` and name them in `services`; they open what they serve in `on_start`."""

    name = "keyspan"

    def __init__(self, config: ProcessConfig) -> None:
        self.config = config.validate()
        quiet_client_gone()
        # Set when stop() begins: long-lived streams end at their next resumable point
        # with UNAVAILABLE instead of holding the shutdown for the whole grace period.
        self.stopping = asyncio.Event()
        self.health = Health()
        self.observability = Observability(self.config, self.name)
        self.server = grpc.aio.server(
            interceptors=[make(config) for make in interceptor_factories] or None,
            options=server_options(self.config.max_pending_calls),
        )
        # Telemetry (when on) outside error mapping, applied to each handler once at
        # registration: see registrar.py for why these are not interceptors.
        # KV streams past --max-streams are refused (UNAVAILABLE, STREAM_LIMIT) inside the
        # error mapping, before anything of them runs.
        self.streams = StreamSlots(self.config.max_streams)
        wraps = (*self.observability.handler_wrappers(), wrap_errors, self.streams.wrap)
        registrar: Any = Registrar(self.server, compose(*wraps))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registrar)
        services = self.register(registrar)
        # The asyncio servicer, named: enable_server_reflection would pick the sync one for
        # the registrar, which is not a grpc.aio.Server, and the wrappers serve only async.
        reflected = [*services, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(reflected), registrar
        )
        self.services = services
        self.port = 0
        self._stopped = False

    def register(self, server: grpc.aio.Server) -> list[str]:
        """Add the servicers; return their full service names."""
        return []

    async def on_start(self) -> None:
        """Open what the process serves; health turns SERVING after this returns."""

    def described(self) -> dict[str, Any]:
        """What the start-up line says of this process besides its address (its data dir,
        its node id, its control)."""
        return {}

    async def on_stop(self) -> None:
        """Close what on_start opened, after the server stopped taking calls."""

    async def set_health(self, status: int) -> None:
        for service in ("", *self.services):
            await self.health.set(service, status)

    @property
    def address(self) -> str:
        return f"{self.config.address.rpartition(':')[0]}:{self.port}"

    async def start(self) -> int:
        """Listen, run on_start, then report SERVING. Returns the bound port."""
        started = time.monotonic()
        # Every shard connection and client connection is a descriptor: take what the
        # hard limit allows before opening anything (the soft 1024 runs out at ~100 partitions).
        open_files = raise_open_files_limit()
        await self.set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            _check_can_listen(self.config.address)
        except OSError as err:
            await self.server.stop(None)
            raise OSError(f"cannot listen on {self.config.address}: {err.strerror or err}") from None
        try:
            self.port = self.server.add_insecure_port(self.config.address)
        except RuntimeError:
            await self.server.stop(None)
            raise OSError(
                f"cannot listen on {self.config.address} (in use, or not an address of this host)"
            ) from None
        await self.server.start()
        try:
            await asyncio.to_thread(self.observability.start, self.address)
            await self.on_start()
        except BaseException:
            await self.server.stop(None)
            await asyncio.to_thread(self.observability.stop)
            raise
        if self.stopping.is_set():  # told to stop while starting: never report SERVING
            return self.port
        await self.set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            extra={
                "component": self.name,
                "version": __version__,
                "address": self.address,
                **self.described(),
                "start_ms": round((time.monotonic() - started) * 1000, 1),
                "open_files_limit": open_files,
            },
        )
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop serving; safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.shutdown_grace_s if grace_s is None else grace_s)
        await self.on_stop()
        await asyncio.to_thread(self.observability.stop)
        log.info("stopped", extra={"component": self.name})


def freeze_startup_objects() -> None:
    """Take what exists once the process has started out of the cyclic collector's sight.

    Modules, servicers, open shards and channels live as long as the process; left in
    the collector's generations, every full collection walks them all again (the
    collector was ~8% of a busy node's CPU under perf, ~5% of Put throughput).
    """
    gc.collect()
    gc.freeze()


async def run_until_signal(make: Callable[[], GrpcProcess]) -> None:
    """Create and start the process, wait for SIGTERM, SIGINT or SIGHUP, then stop it cleanly.
    SIGUSR1 logs every asyncio task and what it is waiting on (services/common/taskdump.py).

    The process is made inside the running loop: grpc.aio binds its server to it.
    """
    process = make()
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        process.stopping.set()  # a start that waits on others (a gateway's first map) gives up

    def on_usr1() -> None:  # an operator's look inside a stalled process, which runs on
        log.warning(
            "asyncio tasks",
            extra={"component": process.name, "tasks": describe_tasks(loop)},
        )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    # SIGHUP, when the terminal that ran it closes, too: it killed the process with no
    # shutdown. Not when it was started with SIGHUP ignored (nohup): that stays so.
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        loop.add_signal_handler(signal.SIGHUP, on_signal)
    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    await process.start()
    freeze_startup_objects()
    await stop.wait()
    log.info("shutting down", extra={"component": process.name, "grace_s": process.config.shutdown_grace_s})
    await process.stop()
