"""OpenTelemetry tracing: one trace from the HTTP edge through NATS to every service.

Exporters: OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; a JSON-lines file when
``PASSERELLE_TRACE_FILE`` is set (tests, debugging); otherwise spans are made (so
context still propagates) but exported nowhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def configure_tracing(
    service: str, version: str, region: str, trace_file: Path | None = None
) -> TracerProvider:
    """Create and install the process's tracer provider."""
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": f"passerelle-{service.replace('_', '-')}",
                "service.version": version,
                "service.namespace": "passerelle",
                "deployment.region": region,
            }
        )
    )
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if trace_file is not None:
        trace_file.parent.mkdir(parents=True, exist_ok=True)
        stream: IO[str] = trace_file.open("a", encoding="utf-8", buffering=1)
        provider.add_span_processor(
            SimpleSpanProcessor(ConsoleSpanExporter(out=stream, formatter=_one_line))
        )
    trace.set_tracer_provider(provider)
    return provider
