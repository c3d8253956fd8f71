"""The bluesky sender service process: wiring only (read this first).

Settings → runtime (logging, tracing, metrics, database, NATS) → handlers → HTTP.
"""

from __future__ import annotations

from pathlib import Path

from passerelle_bluesky_sender import __version__
from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.handlers import build_router
from passerelle_bluesky_sender.service import BlueskySender
from passerelle_bluesky_sender.settings import Settings
from passerelle_contracts.streams import BLUESKY_ERASURES, BLUESKY_FOLLOWS
from passerelle_platform.runtime import ServiceRuntime
from passerelle_platform.settings import settings_or_exit

SERVICE = "bluesky_sender"
CONSUMERS = (BLUESKY_FOLLOWS, BLUESKY_ERASURES)


def create_sender(settings: Settings, *, clock: Clock | None = None) -> BlueskySender:
    """The runtime and the sender's parts, without starting them (tests use this)."""
    runtime = ServiceRuntime(
        SERVICE,
        __version__,
        settings,
        consumers=CONSUMERS,
        migrations=Path(__file__).parent / "migrations",
    )
    sender = BlueskySender(runtime, settings, clock=clock)
    runtime.include(build_router(sender))
    return sender


def create_runtime(settings: Settings) -> ServiceRuntime:
    """Everything the process runs, without starting it."""
    return create_sender(settings).runtime


def main() -> None:
    """Console script entry point: ``passerelle-bluesky-sender``."""
    settings = settings_or_exit(Settings)
    runtime = create_runtime(settings)
    runtime.serve(runtime.plain_app())


if __name__ == "__main__":
    main()
