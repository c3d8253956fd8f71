"""The matching service's settings (``PASSERELLE_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from passerelle_contracts import MAX_FOLLOWS_PER_MESSAGE
from passerelle_platform.settings import PlatformSettings


class Settings(PlatformSettings):
    """Settings of the matching service."""

    http_port: int = 8101
    trust_archive_claims: bool = False
    """Auto-follow people whose X identity is only *claimed* by their own archive.

    An archive's ``account.js`` can be edited, so by default only ``verified`` X
    identities are auto-followed; claimed ones wait for a person to pick them. A
    closed community (or the local dev stack) may turn this on; the service then
    warns loudly at start. Disputed identities (two people claiming one X id) are
    never auto-followed, whatever this says.
    """
    tmp_dir: Path | None = None
    """Where archive payloads are spooled while they are loaded (default: the system's)."""
    outbox_interval_seconds: float = Field(default=15.0, gt=0)
    """How often follow requests left unpublished (after a crash, an outage) are retried."""
    totals_interval_seconds: float = Field(default=60.0, gt=0)
    """How often the match and follow-request gauges are counted again (one GROUP BY)."""
    compact_interval_seconds: float = Field(default=5.0, gt=0)
    """How often edges loaded since the last time join the target index (PostgreSQL)."""
    archive_batch: int = Field(default=32, ge=1, le=1024)
    """``archive.imported`` messages fetched together and loaded in one transaction
    (one transaction per archive costs more than loading a small one)."""
    follows_per_message: int = Field(default=100, ge=1, le=MAX_FOLLOWS_PER_MESSAGE)
    """Follow requests carried by one ``follow.requested.<network>`` message (a newcomer
    awaited by thousands is a few dozen messages, not thousands of PubAcks)."""
