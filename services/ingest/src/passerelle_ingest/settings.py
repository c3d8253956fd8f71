"""The ingest service's settings (``PASSERELLE_*`` environment variables)."""

from __future__ import annotations

from pydantic import SecretStr

from passerelle_platform.settings import DEV_PREFIX, PlatformSettings


class Settings(PlatformSettings):
    """Settings of the ingest service."""

    http_port: int = 8000
    secret_key: SecretStr = SecretStr(DEV_PREFIX + "session-signing-key")
    """Signs session cookies and CSRF tokens."""
    operator_name: str = "the passerelle collective"
    """Who runs this node, shown on every page."""

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("secret_key",)
