"""The JSON API under ``/api``."""

from __future__ import annotations

from fastapi import APIRouter

from passerelle_ingest.settings import Settings
from passerelle_ingest.status import SystemStatus, system_status
from passerelle_platform.runtime import ServiceRuntime


def build_api(runtime: ServiceRuntime, settings: Settings) -> APIRouter:
    """Routes of the JSON API."""
    router = APIRouter(prefix="/api")

    @router.get("/health", response_model=SystemStatus, tags=["operations"])
    async def health() -> SystemStatus:
        """Each service's status, asked over NATS right now."""
        return await system_status(
            runtime.broker, settings.region, settings.request_timeout_seconds
        )

    return router
