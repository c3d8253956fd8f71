"""The mastodon sender service's settings (``PASSERELLE_*`` environment variables).

Every tunable of linking, the rate budgets and the scheduler is here, with
Mastodon's own limits as defaults. Times are seconds on the service's clock (see
:mod:`passerelle_mastodon_sender.clock`) unless a name says "real".
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from passerelle_platform.settings import DEV_PREFIX, PlatformSettings


class Settings(PlatformSettings):
    """Settings of the mastodon sender service."""

    http_port: int = 8103
    encryption_keys: SecretStr = SecretStr(DEV_PREFIX + "encryption-key")
    """Comma-separated Fernet keys; the first encrypts, all decrypt (rotation)."""

    # --- where instances live ---------------------------------------------------------------
    mastodon_instance_urls: dict[str, str] = Field(default_factory=dict)
    """Domain → base URL overrides, as JSON (``{"alpha.test": "http://127.0.0.1:8001"}``).
    Any other domain is ``https://<domain>``. For test servers and private networks."""
    mastodon_instance_urls_file: Path | None = None
    """The same map in a JSON file, re-read when it changes (a test fleet's ``peers.json``)."""
    mastodon_allow_http: bool = False
    """Accept ``http://`` base URLs in the overrides (loopback test servers only)."""
    mastodon_http_timeout_seconds: float = Field(default=15.0, gt=0)
    """Timeout of one call to an instance (real seconds)."""
    mastodon_http_max_connections: int = Field(default=512, ge=1)
    """Calls in flight to all instances together."""
    mastodon_instance_max_concurrency: int = Field(default=16, ge=1)
    """Calls in flight to one instance at most (be a polite client)."""
    mastodon_instance_cache_seconds: float = Field(default=24 * 3600.0, ge=0)
    """How long what an instance said about itself (software, OAuth endpoints) is trusted."""

    # --- OAuth ------------------------------------------------------------------------------
    mastodon_client_name: str = "passerelle"
    mastodon_client_website: str | None = None
    mastodon_scopes: str = "read:accounts read:follows read:search write:follows"
    """Granular scopes asked for first (``read:search``: Mastodon's search needs it)."""
    mastodon_fallback_scopes: str = "read write follow"
    """Asked for on servers that refuse or do not honour granular scopes."""
    mastodon_pending_link_seconds: float = Field(default=900.0, gt=0)
    """How long a verified sign-in waits for the edge to name the person (real seconds)."""

    # --- rate budgets (per account / per token) ---------------------------------------------
    mastodon_follows_per_window: int = Field(default=400, ge=1)
    mastodon_follows_window_seconds: float = Field(default=86_400.0, gt=0)
    mastodon_requests_per_window: int = Field(default=300, ge=1)
    mastodon_requests_window_seconds: float = Field(default=300.0, gt=0)
    mastodon_window_guard_seconds: float = Field(default=1.0, ge=0)
    """How far our clock may be off an instance's: no call in a window's first seconds
    until the server confirms we are in it."""
    mastodon_latency_margin_seconds: float = Field(default=5.0, ge=0)
    """How late a call may reach an instance: calls this close to a window's end also
    count in the next window (the server may count them there)."""
    mastodon_request_reserve_chunk: int = Field(default=25, ge=1)
    """Request counters are saved ahead in chunks, so a restart never forgets used calls."""
    mastodon_follow_cap: int = Field(default=7_500, ge=1)
    mastodon_follow_cap_ratio: float = Field(default=1.1, gt=0)

    # --- scheduler --------------------------------------------------------------------------
    mastodon_relationships_batch: int = Field(default=40, ge=1, le=80)
    """Follows checked with one ``relationships`` call (and claimed together)."""
    mastodon_retry_base_seconds: float = Field(default=30.0, gt=0)
    mastodon_retry_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    mastodon_max_attempts: int = Field(default=8, ge=1)
    """A follow whose calls failed this many times (5xx, timeouts) fails for good."""
    mastodon_profile_refresh_seconds: float = Field(default=3600.0, gt=0)
    """Re-read the account's following/followers counts (follow cap) at most this often."""

    # --- replicas (leases) ------------------------------------------------------------------
    mastodon_replica_id: str | None = Field(default=None, min_length=1, max_length=200)
    """Who holds an account's lease while working on it (default ``hostname:http_port``).
    Replicas sharing a database need distinct ids; a restarted replica with the same id
    takes its accounts back at once (others wait for the lease to lapse)."""
    mastodon_lease_seconds: float | None = Field(default=None, gt=0)
    """How long an account stays with a replica that stops renewing (real seconds;
    default four HTTP timeouts, 60 s); a lease is renewed once half of it is gone,
    always before a call. More than twice the HTTP timeout, so a call sent under a
    lease is over before it lapses."""
    mastodon_park_after_seconds: float = Field(default=120.0, gt=0)
    """A lane whose account must wait longer than this for its budget (or its next
    retry) gives the account up until then instead of holding it (real seconds)."""
    mastodon_lease_scan_seconds: float = Field(default=5.0, gt=0)
    """How often free accounts with due work (lapsed leases, other replicas' intake)
    are looked for (real seconds)."""
    mastodon_max_lanes: int = Field(default=2_000, ge=1)
    """Accounts one replica works at once; the rest is left to the other replicas."""

    # --- intake and results -----------------------------------------------------------------
    mastodon_intake_batch: int = Field(default=200, ge=1)
    """Messages taken from NATS together, and follow requests written to the ledger in
    one transaction at most (a message may carry several; it is never split)."""
    mastodon_flush_interval_seconds: float = Field(default=0.05, gt=0)
    """Outcomes are written and published in groups at most this often (real seconds)."""
    mastodon_result_publish_concurrency: int = Field(default=256, ge=1)
    mastodon_metrics_interval_seconds: float = Field(default=5.0, gt=0)
    """How often the backlog and budget gauges are refreshed (real seconds)."""

    # --- clock (tests and benchmarks only) --------------------------------------------------
    mastodon_clock_speedup: float = Field(default=1.0, gt=0)
    """Run the service's clock this many times faster than real time (``env=dev`` only)."""
    mastodon_clock_origin: float | None = None
    """Real epoch seconds at which the clock reads ``mastodon_clock_start`` (default: start)."""
    mastodon_clock_start: float | None = None
    """What the clock reads at the origin (default: the origin itself)."""

    @property
    def mastodon_lease(self) -> float:
        """The lease duration in force (real seconds)."""
        if self.mastodon_lease_seconds is not None:
            return self.mastodon_lease_seconds
        return 4 * self.mastodon_http_timeout_seconds

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("encryption_keys",)

    @model_validator(mode="after")
    def _check_mastodon(self) -> Settings:
        if self.env != "dev":
            if (
                self.mastodon_clock_speedup != 1.0
                or self.mastodon_clock_origin is not None
                or self.mastodon_clock_start is not None
            ):
                raise ValueError(
                    "PASSERELLE_MASTODON_CLOCK_* settings are only allowed with env=dev"
                )
            from passerelle_mastodon_sender.vault import parse_keys

            parse_keys(self.encryption_keys.get_secret_value(), dev=False)
        if self.mastodon_lease <= 2 * self.mastodon_http_timeout_seconds:
            raise ValueError(
                "PASSERELLE_MASTODON_LEASE_SECONDS must be more than twice "
                "PASSERELLE_MASTODON_HTTP_TIMEOUT_SECONDS"
            )
        if not self.mastodon_allow_http:
            for domain, url in self.mastodon_instance_urls.items():
                if not url.startswith("https://"):
                    raise ValueError(
                        f"PASSERELLE_MASTODON_INSTANCE_URLS: {domain} is not https "
                        "(set PASSERELLE_MASTODON_ALLOW_HTTP=true for test servers)"
                    )
        return self
