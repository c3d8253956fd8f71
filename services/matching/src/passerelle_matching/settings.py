"""The matching service's settings (``PASSERELLE_*`` environment variables)."""

from __future__ import annotations

from passerelle_platform.settings import PlatformSettings


class Settings(PlatformSettings):
    """Settings of the matching service."""

    http_port: int = 8101
