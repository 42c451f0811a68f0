"""Helpers of the observability tests: scrape /metrics, read one sample, receive OTLP traces
and Sentry events."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from keyspan.services.server import KeyspanServer


async def scrape(server: KeyspanServer) -> dict[str, Any]:
    """The server's /metrics as {family name: family}."""
    url = f"http://127.0.0.1:{server.observability.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    return {f.name: f for f in text_string_to_metric_families(body)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of the one sample called `name` whose labels include `labels`."""
    family = families[name.removesuffix("_total").removesuffix("_count").removesuffix("_sum")]
    values = [s.value for s in family.samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(values) == 1, (name, labels, values)
    return float(values[0])


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace receiver: a sync gRPC server on its own threads."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{self.port}"
        self._server.start()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Any]:
        with self._lock:
            return [span for _, span in self.spans if span.name == name]

    def service_of(self, span: Any) -> str:
        with self._lock:
            return next(service for service, s in self.spans if s is span)

    def close(self) -> None:
        self._server.stop(None).wait()


class SentryEndpoint:
    """A local HTTP endpoint that records the events the Sentry SDK posts to it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        events = self.events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.split(b"\n")
                for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                    if json.loads(header).get("type") == "event":
                        events.append(json.loads(payload))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.dsn = f"http://publickey@127.0.0.1:{self._server.server_port}/42"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class FakeControl:
    """A control plane's state, as register_control_metrics reads it."""

    def nodes_by_status(self) -> dict[str, int]:
        return {"up": 2, "down": 1}

    def partitions_by_state(self) -> dict[str, int]:
        return {"serving": 7, "moving": 1}

    def map_version(self) -> int:
        return 42

    def heartbeat_ages_s(self) -> dict[str, float]:
        return {"n1": 0.5, "n2": 31.0}

    def operations_in_flight(self) -> dict[str, int]:
        return {"move": 1}
