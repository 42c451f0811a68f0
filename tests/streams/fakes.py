"""Fakes that inject RPC failures in front of a REAL server's stub (no fake servers).

`FlakyRouter` wraps a StaticRouter; its stub passes every call to the real stub, except
where the `Plan` says to fail: a unary call that raises a status before reaching the
server (an UNAVAILABLE in gRPC's words for a call never sent), or after the server
answered it (`Lost`: the connection dropped on the way back), or a stream that breaks
after N reads (responses already received are dropped, as when a connection resets).
Every request sent is recorded.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import grpc

from keyspan.streams.calls import StreamEnded
from keyspan.streams.errors import WrongPartition
from keyspan.streams.router import StaticRouter


def rpc_error(code: grpc.StatusCode, details: str = "injected") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def unsent_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """What gRPC raises for a call it could not send (UNAVAILABLE: no connection)."""
    if code == grpc.StatusCode.UNAVAILABLE:
        return rpc_error(code, "failed to connect to all addresses; last error: injected")
    return rpc_error(code)


@dataclass(frozen=True)
class Lost:
    """A unary call that reaches the server and is answered, whose answer is lost."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    details: str = "Stream removed (Socket closed)"


@dataclass
class StreamFault:
    """Break a stream: after `after_reads` responses read, the next read raises `code`.
    With `on_write`, the write of request number `after_writes` raises instead: `code`,
    as for a stream the server ended with that error, or with `ended` what
    `calls.write` raises for a stream that had ended with OK."""

    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    after_reads: int = 0
    on_write: bool = False
    after_writes: int = 0
    ended: bool = False


@dataclass
class Plan:
    """What to break, in order of calls; `None` in a stream list lets that call through."""

    unary: dict[str, collections.deque[grpc.StatusCode | Lost | None]] = field(default_factory=dict)
    streams: dict[str, collections.deque[StreamFault | None]] = field(default_factory=dict)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[tuple[str, Any]] = field(default_factory=list)

    def fail_unary(self, method: str, *codes: grpc.StatusCode | Lost | None) -> None:
        self.unary.setdefault(method, collections.deque()).extend(codes)

    def fail_stream(self, method: str, *faults: StreamFault | None) -> None:
        self.streams.setdefault(method, collections.deque()).extend(faults)


class FlakyCall:
    def __init__(self, method: str, call: Any, fault: StreamFault | None, plan: Plan) -> None:
        self.method, self._call, self._fault, self._plan = method, call, fault, plan
        self.reads = self.writes = 0

    async def write(self, request: Any) -> None:
        fault = self._fault
        if fault is not None and fault.on_write and self.writes == fault.after_writes:
            self._call.cancel()
            if fault.ended:
                raise StreamEnded(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())
            raise rpc_error(fault.code)
        self.writes += 1
        self._plan.requests.append((self.method, request))
        await self._call.write(request)

    async def read(self) -> Any:
        fault = self._fault
        if fault is not None and not fault.on_write and self.reads == fault.after_reads:
            self._call.cancel()
            raise rpc_error(fault.code)
        self.reads += 1
        return await self._call.read()

    async def done_writing(self) -> None:
        await self._call.done_writing()

    async def code(self) -> Any:
        return await self._call.code()

    def done(self) -> bool:
        return bool(self._call.done())

    def cancel(self) -> bool:
        return bool(self._call.cancel())


class FlakyStub:
    def __init__(self, real: Any, plan: Plan) -> None:
        self._real, self._plan = real, plan

    def __getattr__(self, method: str) -> Any:
        real = getattr(self._real, method)
        plan = self._plan

        if method in ("Scan", "BulkPut", "Sweep"):

            def open_stream(**kw: Any) -> FlakyCall:
                plan.calls[method] += 1
                faults = plan.streams.get(method)
                return FlakyCall(method, real(**kw), faults.popleft() if faults else None, plan)

            return open_stream

        async def unary(request: Any, **kw: Any) -> Any:
            plan.calls[method] += 1
            plan.requests.append((method, request))
            codes = plan.unary.get(method)
            code = codes.popleft() if codes else None
            if isinstance(code, Lost):
                await real(request, **kw)
                raise rpc_error(code.code, code.details)
            if code is not None:
                raise unsent_error(code)
            return await real(request, **kw)

        return unary


class FlakyRouter(StaticRouter):
    """StaticRouter whose stub injects the plan's failures."""

    def __init__(self, address: str, plan: Plan) -> None:
        super().__init__(address)
        self.plan = plan
        self.wrong_partitions: list[WrongPartition] = []
        self._flaky: FlakyStub | None = None

    def _the_stub(self) -> Any:
        if self._flaky is None:
            self._flaky = FlakyStub(super()._the_stub(), self.plan)
        return self._flaky

    def on_wrong_partition(self, err: WrongPartition) -> bool:
        self.wrong_partitions.append(err)
        return False
