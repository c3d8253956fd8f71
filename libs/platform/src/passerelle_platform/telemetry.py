"""OpenTelemetry tracing: one trace from the HTTP edge through NATS to every service.

Exporters: OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set; a JSON-lines file when
``PASSERELLE_TRACE_FILE`` is set (tests, debugging); otherwise spans are made (so
context still propagates) but exported nowhere.

Also here: :class:`TraceParents` (work queued in a ledger joins the trace its request
came in) and :func:`scrub_server_span` (request spans keep no query string, client
address or User-Agent).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
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
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


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


class TraceParents:
    """The trace each queued piece of work came in, so the work joins it when it is done.

    A sender records a follow request in its ledger and makes the remote call later
    (rate budgets, batching): without this, the remote call would start a trace of
    its own and a person's step (a batch of follows) would not be one trace from
    their click to the remote API. Intake remembers the W3C ``traceparent`` of each
    request (by its key, e.g. the follow id); the work on those keys runs inside a
    span whose parent is the first remembered one, linked to the others.

    Kept in memory and bounded (oldest forgotten first): after a restart, or for
    work queued behind more than ``capacity`` others, the work starts a new trace.
    """

    def __init__(
        self, capacity: int = 50_000, tracer_provider: trace.TracerProvider | None = None
    ) -> None:
        self.capacity = capacity
        self.tracer_provider = tracer_provider  # None: the process's (set at start)
        self._parents: OrderedDict[str, str] = OrderedDict()
        self._propagator = TraceContextTextMapPropagator()

    def remember(self, key: str, headers: Mapping[str, str] | None) -> None:
        """Keep the ``traceparent`` a message carried (if any) for ``key``."""
        parent = (headers or {}).get("traceparent")
        if not parent:
            return
        self._parents[key] = parent
        if len(self._parents) > self.capacity:
            self._parents.popitem(last=False)

    def __len__(self) -> int:
        return len(self._parents)

    @contextmanager
    def resumed(
        self, keys: Iterable[str], name: str, attributes: Mapping[str, str | int] | None = None
    ) -> Iterator[Span]:
        """A span for the work on ``keys``, in the trace the first of them came in."""
        contexts: list[SpanContext] = []
        seen: set[str] = set()
        for key in keys:
            parent = self._parents.get(key)
            if parent is None or parent in seen:
                continue
            seen.add(parent)
            span_context = trace.get_current_span(
                self._propagator.extract({"traceparent": parent})
            ).get_span_context()
            if span_context.is_valid:
                contexts.append(span_context)
        parent_context = (
            trace.set_span_in_context(NonRecordingSpan(contexts[0])) if contexts else None
        )
        links = [Link(c) for c in contexts[1:MAX_LINKS]]
        tracer = trace.get_tracer(
            "passerelle_platform.telemetry", tracer_provider=self.tracer_provider
        )
        with tracer.start_as_current_span(
            name,
            context=parent_context,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=dict(attributes or {}),
            # Work raises to wait (budgets, leases): not an error of this span; the
            # remote calls inside carry their own status.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            yield span


#: Links kept on a span for work that came in several traces (the first is the parent).
MAX_LINKS = 32

#: This process's memory of queued work's traces (one per process, like the provider).
trace_parents = TraceParents()


#: What the ASGI instrumentation records about a request that can hold secrets (query
#: strings carry OAuth codes and states) or personal data (the person's address, their
#: browser), under the old and the new semantic conventions.
_URL_ATTRIBUTES = ("http.target", "http.url", "url.full")
_DROPPED_ATTRIBUTES = (
    "url.query",
    "net.peer.ip",
    "net.peer.port",
    "client.address",
    "client.port",
    "network.peer.address",
    "network.peer.port",
    "http.client_ip",
    "http.user_agent",
    "user_agent.original",
)
REDACTED = "REDACTED"


def scrub_server_span(span: Span, _scope: Mapping[str, object]) -> None:
    """Server-request hook: keep the path of a request, not its query or who sent it.

    The span's attributes are set before the hook runs; overwriting them is the only
    way the instrumentation leaves to keep them out of the exported span.
    """
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(key, value.split("?", 1)[0])
    for key in _DROPPED_ATTRIBUTES:
        if key in attributes:
            span.set_attribute(key, REDACTED)
