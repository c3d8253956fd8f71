"""The bluesky sender service's settings (``PASSERELLE_*`` environment variables)."""

from __future__ import annotations

from pydantic import SecretStr

from passerelle_platform.settings import DEV_PREFIX, PlatformSettings


class Settings(PlatformSettings):
    """Settings of the bluesky sender service."""

    http_port: int = 8102
    encryption_keys: SecretStr = SecretStr(DEV_PREFIX + "encryption-key")
    """Comma-separated Fernet keys; the first encrypts, all decrypt (rotation)."""

    @classmethod
    def required_secrets(cls) -> tuple[str, ...]:
        return ("encryption_keys",)
