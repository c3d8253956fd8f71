"""The sender's own metrics, on the process registry (``/metrics``).

No label names a person, an account or an instance (a one-person instance would
name its owner): counts are per outcome, reason and call only.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class SenderMetrics:
    """Follows, calls, budgets and the backlog."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.follows = Counter(
            "passerelle_follows_total",
            "Follow requests brought to an end, by outcome and failure reason.",
            ["network", "outcome", "reason"],
            registry=registry,
        )
        self.calls = Counter(
            "passerelle_mastodon_calls_total",
            "Calls to Mastodon instances, by operation and result (ok, or an error code).",
            ["operation", "result"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "passerelle_mastodon_rate_limited_total",
            "429 answers, by the counter they concerned (requests, follows).",
            ["budget"],
            registry=registry,
        )
        self.budget_used = Gauge(
            "passerelle_follow_budget_used",
            "Follows made in the current window, summed over linked accounts with work.",
            ["network"],
            registry=registry,
        )
        self.budget_allowed = Gauge(
            "passerelle_follow_budget_allowed",
            "Follows allowed in the current window, summed over linked accounts with work.",
            ["network"],
            registry=registry,
        )
        self.backlog = Gauge(
            "passerelle_follow_backlog",
            "Follow requests not yet brought to an end.",
            ["network"],
            registry=registry,
        )
        self.lanes = Gauge(
            "passerelle_mastodon_active_accounts",
            "Accounts with follows being worked on now.",
            registry=registry,
        )
        self.links = Gauge(
            "passerelle_mastodon_links",
            "Linked Mastodon accounts.",
            registry=registry,
        )
