"""Prometheus metrics: one registry per process, served at ``/metrics``.

Names follow Prometheus conventions (``passerelle_`` prefix, ``_total`` for
counters, base units); labels never carry personal data.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServiceMetrics:
    """The metrics every service exports; services add their own on ``registry``."""

    def __init__(self, service: str, version: str, region: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.info = Gauge(
            "passerelle_service_info",
            "Constant 1, labelled with the service's identity.",
            ["service", "version", "region"],
            registry=self.registry,
        )
        self.info.labels(service, version, region).set(1)
        self.nats_connected = Gauge(
            "passerelle_nats_connected",
            "1 while the service holds a NATS connection.",
            registry=self.registry,
        )
        self.messages_handled = Counter(
            "passerelle_messages_handled_total",
            "Messages handled by a durable consumer, by outcome (ack, nack, dead_letter).",
            ["consumer", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "passerelle_dead_letters_total",
            "Messages moved to the dead-letter stream after exhausting their deliveries.",
            ["stream", "consumer"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "passerelle_database_errors_total",
            "Errors the database driver raised (no connection, connection lost, failed "
            "statement), by kind.",
            ["error"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "passerelle_http_request_duration_seconds",
            "HTTP request latency by route template and status class.",
            ["route", "status"],
            registry=self.registry,
        )
