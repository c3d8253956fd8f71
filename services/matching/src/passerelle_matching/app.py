"""The matching service process: wiring only (read this first).

Settings → runtime (logging, tracing, metrics, database, NATS) → service →
handlers → HTTP.
"""

from __future__ import annotations

from pathlib import Path

from passerelle_contracts.streams import (
    MATCHING_ARCHIVES,
    MATCHING_CONSENTS,
    MATCHING_ERASURES,
    MATCHING_IDENTITIES,
    MATCHING_RESULTS,
)
from passerelle_matching import __version__
from passerelle_matching.federation import create_matching_service
from passerelle_matching.handlers import build_router
from passerelle_matching.intake import ArchiveIntake
from passerelle_matching.service import MatchingService
from passerelle_matching.settings import Settings
from passerelle_platform.runtime import ServiceRuntime
from passerelle_platform.settings import settings_or_exit

SERVICE = "matching"
CONSUMERS = (
    MATCHING_ARCHIVES,
    MATCHING_IDENTITIES,
    MATCHING_CONSENTS,
    MATCHING_RESULTS,
    MATCHING_ERASURES,
)
MIGRATIONS = Path(__file__).parent / "migrations"
TRUST_WARNING = (
    "PASSERELLE_TRUST_ARCHIVE_CLAIMS is ON: X identities claimed by an archive alone "
    "(account.js can be edited) will be AUTO-FOLLOWED. Only for a closed community or "
    "local development; never on a public node."
)


def create_service(settings: Settings) -> MatchingService:
    """Everything the process runs, without starting it (tests use this too)."""
    runtime = ServiceRuntime(
        SERVICE,
        __version__,
        settings,
        consumers=CONSUMERS,
        migrations=MIGRATIONS,
    )
    if settings.trust_archive_claims:
        runtime.log.warning(TRUST_WARNING, setting="trust_archive_claims")
    service = create_matching_service(runtime, settings)  # federated when configured
    runtime.include(build_router(service))
    intake = ArchiveIntake(service, batch=settings.archive_batch)

    async def start_intake() -> None:
        await intake.start(runtime.broker)

    runtime.on_connected.append(service.start_drainer)
    runtime.on_connected.append(start_intake)
    runtime.on_shutdown.append(intake.stop)
    runtime.on_shutdown.append(service.close)
    return service


def create_runtime(settings: Settings) -> ServiceRuntime:
    """The process's runtime (its service is reachable from the handlers)."""
    return create_service(settings).runtime


def main() -> None:
    """Console script entry point: ``passerelle-matching``."""
    settings = settings_or_exit(Settings)
    runtime = create_runtime(settings)
    runtime.serve(runtime.plain_app())


if __name__ == "__main__":
    main()
