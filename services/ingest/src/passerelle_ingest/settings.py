"""The ingest service's settings (``PASSERELLE_*`` environment variables)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from passerelle_platform.settings import DEV_PREFIX, PlatformSettings
from passerelle_xarchive import ArchiveLimits


class Settings(PlatformSettings):
    """Settings of the ingest service."""

    http_port: int = 8000
    secret_key: SecretStr = SecretStr(DEV_PREFIX + "session-signing-key")
    """Signs session cookies and CSRF tokens."""
    operator_name: str = "the passerelle collective"
    """Who runs this node, shown on every page."""
    operator_contact: str = ""
    """How to reach the operator (an e-mail address or a URL), shown on every page."""
    privacy_policy_url: str = ""
    """The operator's privacy policy, linked from every page."""
    demo_archive: Path | None = None
    """Demonstrations only (``just demo``): an example X archive the upload page offers."""
    public_url: str = "http://127.0.0.1:8000"
    """The address people reach this node at (OAuth redirects, secure cookies on https)."""
    session_max_age_seconds: int = Field(default=30 * 24 * 3600, gt=0)
    max_upload_bytes: int = Field(default=4 * 1024**3, gt=0)
    """Largest upload accepted (a whole archive with media can be several GB)."""
    max_upload_files: int = Field(default=200, gt=0)
    archive_max_inflated_bytes: int = Field(default=8 * 1024**3, gt=0)
    """Cap on the inflated size of the members read (decompression bombs)."""
    archive_max_compression_ratio: float = Field(default=100.0, gt=1)
    archive_max_edges: int = Field(default=25_000_000, gt=0)
    """Follow entries per archive (following + followers, before de-duplication)."""
    archive_max_members: int = Field(default=500_000, gt=0)
    upload_tmp_dir: Path | None = None
    """Where uploads and edge payloads wait while parsed (default: the system's)."""

    def archive_limits(self) -> ArchiveLimits:
        """The archive reader's caps, from these settings."""
        return ArchiveLimits(
            max_archive_bytes=self.max_upload_bytes,
            max_members=self.archive_max_members,
            max_inflated_bytes=self.archive_max_inflated_bytes,
            max_compression_ratio=self.archive_max_compression_ratio,
            max_edges=self.archive_max_edges,
        )

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("secret_key",)
