"""The sender's own Prometheus metrics, on the runtime's registry (``/metrics``).

Labels never carry a DID, a handle or a person: only outcomes, reasons from a fixed
set, call names and windows.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

NETWORK = "bluesky"


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.follows = Counter(
            "passerelle_follows_total",
            "Follow requests finished, by outcome and reason (counted when their result is out).",
            ["network", "outcome", "reason"],
            registry=registry,
        )
        self.requests = Counter(
            "passerelle_follow_requests_total",
            "Follow requests recorded in the ledger (redeliveries included).",
            ["network"],
            registry=registry,
        )
        self.backlog = Gauge(
            "passerelle_follow_backlog",
            "Follows waiting in the ledger: pending, in_flight, or paused (broken link).",
            ["network", "state"],
            registry=registry,
        )
        self.accounts = Gauge(
            "passerelle_linked_accounts",
            "Linked accounts by state (active, broken) and with a backlog.",
            ["network", "state"],
            registry=registry,
        )
        self.points_used = Gauge(
            "passerelle_rate_budget_points_used",
            "Write points used in the trailing window by accounts that have a backlog.",
            ["network", "window"],
            registry=registry,
        )
        self.points_allowed = Gauge(
            "passerelle_rate_budget_points_allowed",
            "Write points those accounts are allowed in the window (limit × accounts).",
            ["network", "window"],
            registry=registry,
        )
        self.points_spent = Counter(
            "passerelle_rate_budget_points_spent_total",
            "Write points spent by the sender's calls.",
            ["network"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "passerelle_rate_limited_total",
            "429 answers received, by what was limited (write, login, ip, other).",
            ["network", "scope"],
            registry=registry,
        )
        self.remote_calls = Counter(
            "passerelle_remote_calls_total",
            "Calls to PDSes and directories, by method and outcome (2xx, 4xx, 429, timeout...).",
            ["network", "method", "outcome"],
            registry=registry,
        )
        self.remote_latency = Histogram(
            "passerelle_remote_call_duration_seconds",
            "Latency of calls to PDSes and directories.",
            ["network", "method"],
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.sessions = Counter(
            "passerelle_bluesky_sessions_total",
            "Sessions made: createSession (login) or refreshSession (refresh), or links broken.",
            ["kind"],
            registry=registry,
        )
        self.links = Counter(
            "passerelle_links_total",
            "Link requests answered, by result (linked, verified, or an error code).",
            ["network", "result"],
            registry=registry,
        )

    def observe_call(self, method: str, outcome: str, seconds: float) -> None:
        self.remote_calls.labels(NETWORK, method, outcome).inc()
        self.remote_latency.labels(NETWORK, method).observe(seconds)
