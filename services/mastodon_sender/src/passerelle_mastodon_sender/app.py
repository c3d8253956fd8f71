"""The mastodon sender service process: wiring only (read this first).

Settings → runtime (logging, tracing, metrics, database, NATS) → handlers → HTTP.
"""

from __future__ import annotations

from pathlib import Path

from passerelle_contracts.streams import MASTODON_ERASURES, MASTODON_FOLLOWS
from passerelle_mastodon_sender import __version__
from passerelle_mastodon_sender.clock import Clock
from passerelle_mastodon_sender.handlers import build_router
from passerelle_mastodon_sender.service import MastodonSender
from passerelle_mastodon_sender.settings import Settings
from passerelle_platform.runtime import ServiceRuntime
from passerelle_platform.settings import settings_or_exit

SERVICE = "mastodon_sender"
CONSUMERS = (MASTODON_FOLLOWS, MASTODON_ERASURES)


def create_sender(settings: Settings, clock: Clock | None = None) -> MastodonSender:
    """The sender and its runtime, not started (tests use this to reach the sender).

    ``clock`` replaces the one the settings describe.
    """
    runtime = ServiceRuntime(
        SERVICE,
        __version__,
        settings,
        consumers=CONSUMERS,
        migrations=Path(__file__).parent / "migrations",
    )
    sender = MastodonSender(settings, runtime, clock)
    runtime.include(build_router(sender))
    return sender


def create_runtime(settings: Settings) -> ServiceRuntime:
    """Everything the process runs, without starting it."""
    return create_sender(settings).runtime


def main() -> None:
    """Console script entry point: ``passerelle-mastodon-sender``."""
    settings = settings_or_exit(Settings)
    runtime = create_runtime(settings)
    runtime.serve(runtime.plain_app())


if __name__ == "__main__":
    main()
