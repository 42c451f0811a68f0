"""The one wrapper that measures every RPC handler: its span and its metrics.

For each call, unary or streaming, it continues the caller's trace from the gRPC metadata
(W3C traceparent) and opens the SERVER span `/<service>/<method>` when the sampler keeps
it; it counts the call, times it, counts stream messages, and records the final status
code on both. It wraps outside the error mapping (errors.wrap_errors), so it sees the code
the error mapper chose (the opentelemetry-instrumentation-grpc aio server interceptor does not see codes
set with abort_with_status, and cost ~30% of Get throughput at 1% sampling here, because it
builds the span's attributes and wraps the context even for calls it does not record).
Per-method labels and counts are set up once per method, not per call; the counts are
plain numbers (metrics.MethodCounts), not locked prometheus_client children.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from keyspan.storage.writer import OBSERVE_WRITES

from .metrics import MethodCounts, RpcMetrics

# Codes that mean the server failed, not the caller: the span is marked as an error.
SERVER_FAULT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS})
# Methods counted and timed but never traced (prefixes of full method names).
_UNTRACED = ("/grpc.health.v1.Health/",)
# An Enum member's .name is a descriptor call; the label is looked up on every call.
_CODE_NAMES = {code: code.name for code in grpc.StatusCode}


class _MetadataGetter(Getter[Any]):
    def get(self, carrier: Any, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key]
        return values or None

    def keys(self, carrier: Any) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def _kind(handler: grpc.RpcMethodHandler) -> str:
    if handler.unary_unary:
        return "unary"
    if handler.unary_stream:
        return "server_stream"
    return "bidi_stream" if handler.stream_stream else "client_stream"


def _final_code(context: grpc.aio.ServicerContext, err: BaseException | None) -> grpc.StatusCode:
    if isinstance(err, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    if err is not None and not isinstance(err, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if err is None else grpc.StatusCode.UNKNOWN


class _Method:
    """What is fixed for one method and kind: its labels and its counts."""

    def __init__(self, full_name: str, kind: str, metrics: RpcMetrics | None) -> None:
        service, _, name = full_name.rpartition("/")
        self.full_name, self.kind = full_name, kind
        self.service, self.name = service.lstrip("/") or "unknown", name or full_name
        self.counts = None if metrics is None else metrics.method(self.service, self.name, kind)


class _UnsampledSpan(NonRecordingSpan):
    """The span of a call whose new trace is not sampled. Its ids are drawn when something
    first asks for them (a log line, a fault report, a traced outgoing call), not on
    every call: most unsampled calls never need them."""

    def __init__(self, rng: random.Random) -> None:  # no super().__init__: no ids yet
        self._random = rng
        self._context: SpanContext | None = None  # type: ignore[assignment]

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(
                trace_id=self._random.getrandbits(128) or 1,
                span_id=self._random.getrandbits(64) or 1,
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.DEFAULT),
            )
        return self._context


class ServerSampler:
    """Decides, per call, between a real SERVER span and a cheap unsampled one.

    A call that carries trace context (`traceparent`) goes to the SDK, which follows the
    caller's decision. A new trace is kept with probability `ratio` (the tracer's own
    sampler must then keep every root: `Tracing` sets it so); one that is not kept gets a NonRecordingSpan
    with random ids drawn here on first use, without the SDK's span machinery (~10x
    cheaper), so logs and Sentry events still carry a trace_id and callees see "not
    sampled".
    """

    def __init__(self, tracer: trace.Tracer, ratio: float) -> None:
        self.tracer, self.ratio = tracer, ratio
        self._random = random.Random()

    def start(self, method: _Method, context: grpc.aio.ServicerContext) -> trace.Span:
        metadata = context.invocation_metadata() or ()
        parent = None
        for key, _ in metadata:
            if key == "traceparent":
                parent = propagate.extract(metadata, getter=_GETTER)
                break
        else:
            if self._random.random() >= self.ratio:
                return _UnsampledSpan(self._random)
        span = self.tracer.start_span(method.full_name, context=parent, kind=SpanKind.SERVER)
        if span.is_recording():
            span.set_attributes(
                {"rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.name}
            )
        return span


class _Call:
    """One RPC: its span (if sampled or continued) and clock; finished exactly once."""

    __slots__ = ("method", "span", "started", "token", "writes_token")

    def __init__(
        self, method: _Method, sampler: ServerSampler | None, context: grpc.aio.ServicerContext
    ) -> None:
        self.method, self.span, self.token, self.writes_token = method, None, None, None
        if sampler is not None:
            span = self.span = sampler.start(method, context)
            self.token = otel_context.attach(trace.set_span_in_context(span))
            if span.is_recording():  # its writes get storage spans (StorageTelemetry.on_write)
                self.writes_token = OBSERVE_WRITES.set(True)
        if method.counts is not None:
            method.counts.in_flight += 1
        self.started = time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext, err: BaseException | None) -> None:
        elapsed = time.perf_counter() - self.started
        code = _final_code(context, err)
        span = self.span
        if span is not None:
            if span.is_recording():
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in SERVER_FAULT_CODES:
                    span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
            if self.writes_token is not None:
                with contextlib.suppress(ValueError):  # reset from another context: leave it
                    OBSERVE_WRITES.reset(self.writes_token)
            otel_context.detach(self.token)
        counts = self.method.counts
        if counts is not None:
            counts.finished(_CODE_NAMES[code], elapsed)


async def _counted(requests: AsyncIterator[Any], counts: MethodCounts) -> AsyncIterator[Any]:
    async for request in requests:
        counts.received += 1
        yield request


class RpcTelemetry:
    """Spans and metrics of every RPC; either may be off (None)."""

    def __init__(self, metrics: RpcMetrics | None, sampler: ServerSampler | None) -> None:
        self._metrics, self._sampler = metrics, sampler
        self._methods: dict[tuple[str, str], _Method] = {}

    def _method(self, name: str, kind: str) -> _Method:
        found = self._methods.get((name, kind))
        if found is None:
            found = self._methods[(name, kind)] = _Method(name, kind, self._metrics)
        return found

    def wrap(self, name: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler`, counted, timed and traced (a registrar.Wrap: applied once per method).
        Health checks are counted and timed, not traced: probes every few seconds would
        be most of the spans."""
        method = self._method(name, _kind(handler))
        sampler = None if name.startswith(_UNTRACED) else self._sampler
        wrap = grpc.unary_unary_rpc_method_handler
        if handler.unary_unary:
            behavior = self._unary(handler.unary_unary, method, sampler)
        elif handler.unary_stream:
            behavior, wrap = (
                self._stream(handler.unary_stream, method, sampler),
                grpc.unary_stream_rpc_method_handler,
            )
        elif handler.stream_stream:
            behavior, wrap = (
                self._stream(handler.stream_stream, method, sampler),
                grpc.stream_stream_rpc_method_handler,
            )
        elif handler.stream_unary:
            behavior, wrap = (
                self._unary(handler.stream_unary, method, sampler),
                grpc.stream_unary_rpc_method_handler,
            )
        else:
            return handler
        return wrap(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    @staticmethod
    def _unary(
        behavior: Callable[..., Awaitable[Any]], method: _Method, sampler: ServerSampler | None
    ) -> Any:
        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            call = _Call(method, sampler, context)
            if method.counts is not None and method.kind == "client_stream":
                request = _counted(request, method.counts)
            try:
                response = await behavior(request, context)
            except BaseException as err:
                call.finish(context, err)
                raise
            call.finish(context, None)
            return response

        return unary

    @staticmethod
    def _stream(behavior: Callable[..., Any], method: _Method, sampler: ServerSampler | None) -> Any:
        if inspect.iscoroutinefunction(behavior):
            # A handler that sends with context.write() (grpc.health's Watch) and returns
            # nothing: timed and counted as a call, its messages not counted.
            return RpcTelemetry._unary(behavior, method, sampler)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call = _Call(method, sampler, context)
            counts = method.counts
            if counts is not None and method.kind == "bidi_stream":
                request = _counted(request, counts)
            try:
                async for response in behavior(request, context):
                    if counts is not None:
                        counts.sent += 1
                    yield response
            except BaseException as err:
                call.finish(context, err)
                raise
            call.finish(context, None)

        return stream
