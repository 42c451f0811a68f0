"""OpenTelemetry traces over OTLP/gRPC, carried between processes in gRPC metadata.

Off unless `--otlp-endpoint` is set. Each process gets its own `TracerProvider` (no
global one is installed, so several servers can share a test process) with a
parent-based ratio sampler (`--trace-sample-ratio`: a caller's sampled decision is
followed, new traces are kept with that probability) and a `BatchSpanProcessor`: spans
are exported from a background thread, so a slow or dead collector never blocks or fails
an RPC; spans that do not fit the queue are dropped.

Servers trace every RPC in `rpc_telemetry.RpcTelemetry.wrap` with `Tracing.tracer`
(GrpcProcess wraps every handler with it at registration). Clients and the gateway add
`client_interceptors(config)` to their channels:
``grpc.aio.insecure_channel(target, interceptors=client_interceptors(config))``.
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from keyspan import __version__
from keyspan.services.config import ProcessConfig, otlp_target

EXPORT_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 3.0
_client_providers: dict[tuple[str, float, str], TracerProvider] = {}
_client_lock = threading.Lock()


def new_provider(endpoint: str, ratio: float, service_name: str) -> TracerProvider:
    """A provider that batches spans to the OTLP/gRPC collector at `endpoint`."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=otlp_target(endpoint), insecure=True, timeout=EXPORT_TIMEOUT_S)
    provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=EXPORT_TIMEOUT_S * 1000))
    provider._keyspan_exporter = exporter  # type: ignore[attr-defined]
    return provider


def shutdown_provider(provider: TracerProvider, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Export what is queued, for at most about timeout_s: with a dead collector the SDK
    would retry each batch for its whole export timeout, so after timeout_s the exporter
    is shut down, which drops the rest."""
    stopping = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    stopping.start()
    stopping.join(timeout_s)
    if stopping.is_alive():
        provider._keyspan_exporter.shutdown()  # type: ignore[attr-defined]
        stopping.join(EXPORT_TIMEOUT_S)


class Tracing:
    """A process's tracer provider. Its sampler keeps every new root span: the RPC
    interceptor (`rpc_telemetry.ServerSampler`) has already applied --trace-sample-ratio
    when it asks for one; child spans follow their parent."""

    def __init__(self, config: ProcessConfig, component: str) -> None:
        self.provider = new_provider(config.otlp_endpoint, 1.0, f"keyspan-{component}")
        self.tracer = self.provider.get_tracer("keyspan")

    def flush(self, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))  # type: ignore[no-any-return]

    def shutdown(self) -> None:
        """Export what is queued (for at most SHUTDOWN_TIMEOUT_S), then stop the exporter."""
        shutdown_provider(self.provider)


def client_interceptors(config: ProcessConfig, service_name: str = "keyspan-client") -> list[Any]:
    """Interceptors that trace a channel's calls and send their context to the server.

    Empty when config has no otlp_endpoint. Providers are shared per (endpoint, ratio,
    service name) within the process; `shutdown_client_tracing()` flushes them.
    """
    if not config.otlp_endpoint:
        return []
    key = (config.otlp_endpoint, config.trace_sample_ratio, service_name)
    with _client_lock:
        provider = _client_providers.get(key)
        if provider is None:
            provider = _client_providers[key] = new_provider(*key)
    return list(aio_client_interceptors(tracer_provider=provider))


def shutdown_client_tracing() -> None:
    """Flush and stop the providers `client_interceptors` made."""
    with _client_lock:
        providers = list(_client_providers.values())
        _client_providers.clear()
    for provider in providers:
        shutdown_provider(provider)
