"""Queued work joins the trace it came in; request spans keep no query string or client."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from passerelle_platform.telemetry import REDACTED, TraceParents, scrub_server_span


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def headers_in(tracer: trace.Tracer, name: str) -> tuple[dict[str, str], trace.SpanContext]:
    with tracer.start_as_current_span(name) as span:
        headers: dict[str, str] = {}
        inject(headers)
        return headers, span.get_span_context()


def test_work_joins_the_first_trace_and_links_the_others() -> None:
    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("test")
    parents = TraceParents(capacity=10, tracer_provider=tracer_provider)
    first, first_context = headers_in(tracer, "publish 1")
    second, second_context = headers_in(tracer, "publish 2")
    parents.remember("f1", first)
    parents.remember("f2", second)
    parents.remember("f3", None)  # a message without a trace context
    with (
        parents.resumed(["f3", "f1", "f2"], "follow process", {"n": 3}),
        tracer.start_as_current_span("remote call"),
    ):
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    work, call = spans["follow process"], spans["remote call"]
    assert work.context is not None
    assert work.parent is not None
    assert call.parent is not None
    assert work.context.trace_id == first_context.trace_id
    assert work.parent.span_id == first_context.span_id
    assert [link.context.span_id for link in work.links] == [second_context.span_id]
    assert call.parent.span_id == work.context.span_id
    assert work.kind == trace.SpanKind.CONSUMER


def test_forgotten_work_starts_a_trace_of_its_own() -> None:
    tracer_provider, exporter = provider()
    parents = TraceParents(capacity=2, tracer_provider=tracer_provider)
    tracer = tracer_provider.get_tracer("test")
    for key in ("a", "b", "c"):
        parents.remember(key, headers_in(tracer, key)[0])
    assert len(parents) == 2  # the oldest is forgotten
    with parents.resumed(["a"], "work"):
        pass
    (work,) = [s for s in exporter.get_finished_spans() if s.name == "work"]
    assert work.parent is None


def test_request_spans_keep_the_path_only() -> None:
    tracer_provider, exporter = provider()
    tracer = tracer_provider.get_tracer("test")
    attributes = {
        "http.target": "/auth/mastodon/callback?code=SECRET&state=S",
        "http.url": "http://edge/auth/mastodon/callback?code=SECRET&state=S",
        "net.peer.ip": "203.0.113.9",
        "http.user_agent": "Mozilla/5.0 (someone's browser)",
        "http.route": "/auth/mastodon/callback",
    }
    with tracer.start_as_current_span("GET", attributes=attributes) as span:
        scrub_server_span(span, {})
    (finished,) = exporter.get_finished_spans()
    kept = dict(finished.attributes or {})
    assert kept["http.target"] == "/auth/mastodon/callback"
    assert kept["http.url"] == "http://edge/auth/mastodon/callback"
    assert kept["net.peer.ip"] == REDACTED
    assert kept["http.user_agent"] == REDACTED
    assert kept["http.route"] == "/auth/mastodon/callback"
