"""An OTLP/HTTP trace receiver on loopback (protobuf), standing in for the collector.

The services export to it exactly as they export to the OpenTelemetry Collector in
Kubernetes (``OTEL_EXPORTER_OTLP_ENDPOINT``); tests read the spans it received.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan


def _text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    return "" if kind is None else str(getattr(value, kind))


@dataclass
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)
    status: str = ""

    def text(self) -> str:
        """Everything a span tells an operator, as one string (to look for secrets)."""
        return " ".join([self.name, self.status, *self.attributes.values()])


class OtlpCollector:
    """Receives ``POST /v1/traces`` and keeps every span."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = [
            Span(
                service=resource.get("service.name", ""),
                name=span.name,
                kind=ProtoSpan.SpanKind.Name(span.kind),
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_id=span.parent_span_id.hex(),
                attributes={a.key: _text(a.value) for a in span.attributes},
                resource=resource,
                links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                status=span.status.message,
            )
            for resource_spans in request.resource_spans
            for resource in [{a.key: _text(a.value) for a in resource_spans.resource.attributes}]
            for scope in resource_spans.scope_spans
            for span in scope.spans
        ]
        with self.lock:
            self.spans.extend(received)

    def snapshot(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[Span]], Any], timeout: float, what: str) -> Any:
        """Poll the received spans until ``found`` returns something true."""
        deadline = time.monotonic() + timeout
        while True:
            result = found(self.snapshot())
            if result:
                return result
            if time.monotonic() > deadline:
                names = [(s.service, s.name) for s in self.snapshot()][-60:]
                raise AssertionError(f"{what}: not within {timeout}s; last spans: {names}")
            time.sleep(0.3)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ancestry(span: Span, spans: list[Span]) -> Iterator[Span]:
    """``span``, its parent, its parent's parent… as far as the received spans go."""
    by_id = {s.span_id: s for s in spans if s.trace_id == span.trace_id}
    current: Span | None = span
    seen: set[str] = set()
    while current is not None and current.span_id not in seen:
        seen.add(current.span_id)
        yield current
        current = by_id.get(current.parent_id) if current.parent_id else None
