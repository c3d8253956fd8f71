"""The bluesky sender service's settings (``PASSERELLE_*`` environment variables).

Every tunable of linking, sessions, the rate budget and the scheduler is here, with
Bluesky's documented limits as defaults. Times are seconds on the service's clock
(see :mod:`passerelle_bluesky_sender.clock`).
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from passerelle_platform.settings import DEV_PREFIX, PlatformSettings


class Settings(PlatformSettings):
    """Settings of the bluesky sender service."""

    http_port: int = 8102
    encryption_keys: SecretStr = SecretStr(DEV_PREFIX + "encryption-key")
    """Comma-separated Fernet keys; the first encrypts, all decrypt (rotation)."""

    # --- identity -------------------------------------------------------------------------
    bluesky_handle_resolver_url: str = "https://public.api.bsky.app"
    """A service answering ``com.atproto.identity.resolveHandle`` (an AppView or a PDS)."""
    bluesky_plc_url: str = "https://plc.directory"
    """The DID PLC directory: ``GET {url}/{did}`` returns a ``did:plc`` document."""
    bluesky_allow_http: bool = False
    """Accept ``http://`` PDS endpoints in DID documents (local test servers only)."""
    bluesky_http_timeout_seconds: float = Field(default=20.0, gt=0)
    """Timeout of one call to a PDS, the directory or the resolver (real seconds)."""
    bluesky_http_max_connections: int = Field(default=16, ge=1)
    """Connections per PDS or directory host (four times as many in all)."""

    # --- sessions -------------------------------------------------------------------------
    bluesky_session_max_age_seconds: float = Field(default=3600.0, gt=0)
    """Refresh an access token at the latest this long after it was issued."""
    bluesky_session_refresh_margin_seconds: float = Field(default=300.0, ge=0)
    """Refresh an access token this long before it expires."""
    bluesky_logins_per_5min: int = Field(default=30, ge=1)
    bluesky_logins_per_day: int = Field(default=300, ge=1)

    # --- rate budget (per account) --------------------------------------------------------
    bluesky_points_per_hour: int = Field(default=5000, ge=3)
    bluesky_points_per_day: int = Field(default=35000, ge=3)
    bluesky_create_cost: int = Field(default=3, ge=1)
    bluesky_max_writes_per_call: int = Field(default=200, ge=1, le=200)

    # --- scheduler ------------------------------------------------------------------------
    bluesky_max_concurrent_accounts: int = Field(default=32, ge=1)
    """How many accounts may have a call to their PDS in flight at once."""
    bluesky_batch_linger_seconds: float = Field(default=2.0, ge=0)
    """Wait this long for a small batch to fill before sending it (big batches go at once)."""
    bluesky_sync_interval_seconds: float = Field(default=300.0, ge=0)
    """Re-read the newest follow records of an account at most this often (real seconds;
    always before deciding about a call whose outcome is unknown)."""
    bluesky_backlog_refresh_seconds: float = Field(default=30.0, gt=0)
    """How often the whole ledger's backlog is re-read (real seconds; other replicas' work)."""
    bluesky_retry_base_seconds: float = Field(default=5.0, gt=0)
    bluesky_retry_max_seconds: float = Field(default=3600.0, gt=0)
    bluesky_max_attempts: int = Field(default=12, ge=1)
    """A follow whose call failed this many times (5xx, timeouts) fails for good."""
    bluesky_check_targets: bool = True
    """Look targets up before following (deleted accounts fail instead of being followed)."""
    bluesky_target_check_ttl_seconds: float = Field(default=24 * 3600.0, ge=0)
    """How long a target account's status (active, deleted...) is trusted."""
    bluesky_rate_limit_margin_seconds: float = Field(default=1.0, ge=0)
    """Wait this much past a server's announced reset before trying again."""

    bluesky_replica_id: str | None = Field(default=None, max_length=64)
    """Who holds an account's lease while working on it (default ``hostname:http_port``).
    Replicas sharing a database need distinct ids; a restarted replica with the same id
    takes its accounts back at once (others wait for the lease to expire)."""

    # --- intake and results ---------------------------------------------------------------
    bluesky_intake_batch: int = Field(default=500, ge=1)
    """Messages pulled together, and follow requests recorded in one transaction at most
    (a message may carry several; it is never split), then acked."""
    bluesky_result_publish_concurrency: int = Field(default=1000, ge=1)
    """Results in flight to the stream at once (acks awaited together)."""
    bluesky_metrics_interval_seconds: float = Field(default=15.0, gt=0)
    """How often the backlog and budget gauges are refreshed (real seconds)."""

    # --- clock (tests and benchmarks only) ------------------------------------------------
    bluesky_clock_speedup: float = Field(default=1.0, gt=0)
    """Run the scheduler's clock this many times faster than real time (``env=dev`` only)."""
    bluesky_clock_origin: float | None = None
    """Epoch seconds at which the fast clock equals real time (default: process start)."""

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("encryption_keys",)

    @model_validator(mode="after")
    def _check_bluesky(self) -> Settings:
        if self.env != "dev":
            if self.bluesky_clock_speedup != 1.0:
                raise ValueError("PASSERELLE_BLUESKY_CLOCK_SPEEDUP is only allowed with env=dev")
            # Imported here: settings stay importable without the crypto module's deps.
            from passerelle_bluesky_sender.crypto import parse_keys

            parse_keys(self.encryption_keys.get_secret_value(), dev=False)
        if self.bluesky_points_per_day < self.bluesky_points_per_hour:
            raise ValueError("PASSERELLE_BLUESKY_POINTS_PER_DAY must be >= the hourly budget")
        return self
