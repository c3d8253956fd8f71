"""The sender's parts, assembled once per process: linking, following, intake, erasure."""

from __future__ import annotations

import socket
from collections.abc import Sequence

from passerelle_contracts import Event, FollowRequest
from passerelle_contracts.streams import MASTODON_FOLLOWS
from passerelle_mastodon_sender.api import MastodonApi
from passerelle_mastodon_sender.clock import Clock, clock_from
from passerelle_mastodon_sender.db import Database
from passerelle_mastodon_sender.following import Follower
from passerelle_mastodon_sender.instances import InstanceDirectory
from passerelle_mastodon_sender.intake import FollowIntake
from passerelle_mastodon_sender.leases import Leases
from passerelle_mastodon_sender.ledger import Ledger
from passerelle_mastodon_sender.linking import Linker
from passerelle_mastodon_sender.metrics import SenderMetrics
from passerelle_mastodon_sender.settings import Settings
from passerelle_mastodon_sender.store import Store
from passerelle_mastodon_sender.vault import Vault
from passerelle_platform.broker import PagePublisher, publish_event
from passerelle_platform.runtime import ServiceRuntime


class MastodonSender:
    """Everything the handlers call; started once NATS is connected."""

    def __init__(
        self, settings: Settings, runtime: ServiceRuntime, clock: Clock | None = None
    ) -> None:
        if runtime.engine is None:
            raise ValueError("the mastodon sender needs its database")
        self.settings = settings
        self.runtime = runtime
        self.log = runtime.log
        self.clock = clock or clock_from(
            settings.mastodon_clock_speedup,
            settings.mastodon_clock_origin,
            settings.mastodon_clock_start,
        )
        self.vault = Vault.from_setting(
            settings.encryption_keys.get_secret_value(), dev=settings.env == "dev"
        )
        if self.vault.derived:
            self.log.warning(
                "using an encryption key derived from a development placeholder; "
                "set PASSERELLE_ENCRYPTION_KEYS to Fernet keys for real data"
            )
        self.db = Database(runtime.engine)
        self.store = Store(self.db.engine)
        self.ledger = Ledger(self.db.engine)
        self.leases = Leases(
            self.db.engine,
            settings.mastodon_replica_id or f"{socket.gethostname()}:{settings.http_port}",
        )
        self.api = MastodonApi(
            InstanceDirectory(
                settings.mastodon_instance_urls,
                settings.mastodon_instance_urls_file,
                allow_http=settings.mastodon_allow_http,
            ),
            timeout=settings.mastodon_http_timeout_seconds,
            max_connections=settings.mastodon_http_max_connections,
            per_instance=settings.mastodon_instance_max_concurrency,
        )
        self.metrics = SenderMetrics(runtime.metrics.registry)
        self.follower = Follower(
            settings=settings,
            clock=self.clock,
            db=self.db,
            store=self.store,
            ledger=self.ledger,
            leases=self.leases,
            api=self.api,
            vault=self.vault,
            metrics=self.metrics,
            publish=self.publish,
            publish_results=PagePublisher(
                runtime.broker,
                runtime.tracer_provider.get_tracer("passerelle_mastodon_sender.results"),
                concurrency=settings.mastodon_result_publish_concurrency,
            ),
            region=settings.region,
            log=self.log,
        )
        self.linker = Linker(
            settings=settings,
            clock=self.clock,
            db=self.db,
            store=self.store,
            ledger=self.ledger,
            api=self.api,
            vault=self.vault,
            follower=self.follower,
            publish=self.publish,
            region=settings.region,
            log=self.log,
        )
        self.intake = FollowIntake(
            MASTODON_FOLLOWS,
            self.accept,
            batch=settings.mastodon_intake_batch,
            metrics=runtime.metrics,
            log=self.log,
        )
        runtime.on_connected.append(self.start)
        runtime.on_shutdown.append(self.stop)

    async def publish(self, event: Event) -> bool:
        return await publish_event(self.runtime.broker, event)

    async def start(self) -> None:
        rotated = await self.db.run(self.store.rotate_secrets, self.vault)
        if rotated:
            self.log.info("stored secrets re-encrypted with the first key", count=rotated)
        await self.follower.start()
        await self.intake.start(self.runtime.broker)

    async def stop(self) -> None:
        await self.intake.stop()
        await self.follower.stop()
        await self.api.aclose()
        self.db.close()

    async def accept(self, requests: Sequence[FollowRequest]) -> None:
        """Record follow requests in the ledger and wake the lanes concerned."""
        intake = await self.db.run(self.ledger.accept, requests, self.clock.now())
        if intake.republish:
            self.follower.results_pending()
        self.follower.wake(intake.persons)
