"""A real OTLP/gRPC trace receiver for the real-process workflows and the perf scripts.

A sync gRPC server on its own threads (the exporters are sync; see TOOLCHAIN §5).
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, with its resource's service.name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.endpoint = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                service = attributes.get("service.name", "")
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[tuple[str, Any]]:
        """(service name, span) of every span called `name`."""
        with self._lock:
            return [(service, span) for service, span in self.spans if span.name == name]

    def close(self) -> None:
        self._server.stop(None).wait()
