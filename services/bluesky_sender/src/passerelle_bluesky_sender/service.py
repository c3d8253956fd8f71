"""The sender's parts, put together once per process (see ``app.py`` for the wiring).

:class:`BlueskySender` owns the HTTP client, the credential cipher, the ledger store,
the scheduler, the outbox of results and the intake of requests, and starts and stops
them with the runtime (once NATS is connected; stopped before it closes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Sequence
from typing import Any

from passerelle_bluesky_sender import __version__
from passerelle_bluesky_sender.budget import DAY, HOUR
from passerelle_bluesky_sender.clock import Clock, clock_from
from passerelle_bluesky_sender.crypto import CredentialCipher, CredentialError
from passerelle_bluesky_sender.identity import IdentityResolver
from passerelle_bluesky_sender.intake import Intake
from passerelle_bluesky_sender.linking import Linker
from passerelle_bluesky_sender.metrics import NETWORK, SenderMetrics
from passerelle_bluesky_sender.outbox import Outbox
from passerelle_bluesky_sender.scheduler import Scheduler
from passerelle_bluesky_sender.sessions import Sessions
from passerelle_bluesky_sender.settings import Settings
from passerelle_bluesky_sender.store import AccountRow, IntakeReport, Store
from passerelle_bluesky_sender.targets import TargetChecker
from passerelle_bluesky_sender.xrpc import XrpcClient
from passerelle_contracts import Event, IdentityUnlinked
from passerelle_contracts.streams import BLUESKY_FOLLOWS
from passerelle_platform.broker import BatchConsumer, publish_event
from passerelle_platform.runtime import ServiceRuntime

#: How long a fetch waits to fill its batch once requests are coming (seconds): a
#: request arriving during a quiet spell is recorded after at most this long.
INTAKE_WAIT = 0.2


class BlueskySender:
    def __init__(
        self, runtime: ServiceRuntime, settings: Settings, *, clock: Clock | None = None
    ) -> None:
        if runtime.engine is None:
            raise RuntimeError("the bluesky sender needs its database")
        self.runtime = runtime
        self.settings = settings
        self.log = runtime.log
        self.clock = clock or clock_from(
            settings.bluesky_clock_speedup, settings.bluesky_clock_origin
        )
        self.cipher = CredentialCipher.from_setting(
            settings.encryption_keys.get_secret_value(), dev=settings.env == "dev"
        )
        self.metrics = SenderMetrics(runtime.metrics.registry)
        tracer = runtime.tracer_provider.get_tracer("passerelle_bluesky_sender", __version__)
        self.xrpc = XrpcClient(
            tracer,
            self.metrics.observe_call,
            timeout=settings.bluesky_http_timeout_seconds,
            max_connections=settings.bluesky_http_max_connections,
            user_agent=f"passerelle-bluesky-sender/{__version__}",
        )
        self.store = Store(runtime.engine)
        self.resolver = IdentityResolver(
            self.xrpc,
            handle_resolver_url=settings.bluesky_handle_resolver_url,
            plc_url=settings.bluesky_plc_url,
            allow_http=settings.bluesky_allow_http,
        )
        self.sessions = Sessions(self.store, self.xrpc, self.cipher, self.clock, settings)
        self.targets = TargetChecker(
            self.store,
            self.resolver,
            self.xrpc,
            self.clock,
            ttl=settings.bluesky_target_check_ttl_seconds,
        )
        self.outbox = Outbox(
            self.store,
            runtime.broker,
            region=settings.region,
            concurrency=settings.bluesky_result_publish_concurrency,
            metrics=self.metrics,
            tracer=tracer,
            log=self.log,
        )
        self.scheduler = Scheduler(
            store=self.store,
            xrpc=self.xrpc,
            sessions=self.sessions,
            targets=self.targets,
            clock=self.clock,
            settings=settings,
            metrics=self.metrics,
            log=self.log,
            on_broken=self._on_broken,
            on_results=self.outbox.wake,
            owner=settings.bluesky_replica_id or f"{socket.gethostname()}:{settings.http_port}",
        )
        self.intake = Intake(
            self.store,
            self.clock,
            on_recorded=self._on_recorded,
            log=self.log,
            batch=settings.bluesky_intake_batch,
        )
        self.linker = Linker(
            resolver=self.resolver,
            xrpc=self.xrpc,
            store=self.store,
            cipher=self.cipher,
            clock=self.clock,
            scheduler=self.scheduler,
            sessions=self.sessions,
            publish=self.publish,
            on_results=self.outbox.wake,
            region=settings.region,
            metrics=self.metrics,
            log=self.log,
        )
        self._metrics_task: asyncio.Task[None] | None = None
        if self.cipher.derived:
            self.log.warning(
                "development encryption key: derived from PASSERELLE_ENCRYPTION_KEYS, "
                "which is not a Fernet key; never use this outside development"
            )
        if settings.bluesky_clock_speedup != 1.0:
            self.log.warning("fast clock", speedup=settings.bluesky_clock_speedup)
        # Follow requests come in fetched batches (up to ``intake_batch`` messages),
        # written to the ledger (up to ``intake_batch`` follows per transaction), then
        # acked; per-message handling would cost more than the follow at this volume.
        self.follow_consumer = BatchConsumer(
            BLUESKY_FOLLOWS,
            self.follow_requests,
            batch=settings.bluesky_intake_batch,
            fetch_timeout=INTAKE_WAIT,
        )
        runtime.on_connected.append(self.start)
        runtime.on_shutdown.append(self.stop)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.rotate_credentials()
        self.outbox.start()
        self.scheduler.start()
        self._metrics_task = asyncio.create_task(self._metrics_loop(), name="bluesky-metrics")
        for account in await asyncio.to_thread(self.store.broken_accounts):
            # Idempotent (Nats-Msg-Id): makes sure a link broken before a crash was told.
            await self._announce_broken(account)
        await self.follow_consumer.start(self.runtime.broker)

    async def stop(self) -> None:
        await self.follow_consumer.stop()
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            await asyncio.gather(self._metrics_task, return_exceptions=True)
        await self.scheduler.stop()
        await self.outbox.stop()
        await self.xrpc.close()
        if self.store.engine is not self.runtime.engine:
            self.store.engine.dispose()

    async def publish(self, event: Event) -> bool:
        return await publish_event(self.runtime.broker, event)

    # --- what the handlers call -----------------------------------------------------------

    async def follow_requests(self, messages: Sequence[Any]) -> None:
        """A pulled batch of ``follow.requested.bluesky`` messages (raw, acked here)."""
        recorded = self.intake.recorded
        try:
            await self.intake.take(messages)
        except Exception:
            # Unacked, the batch is redelivered after ack_wait; say why (FastStream is quiet).
            self.log.exception("follow requests not taken")
            raise
        finally:
            self.metrics.requests.labels(NETWORK).inc(self.intake.recorded - recorded)

    async def erase(self, person_id: str) -> None:
        had_link = await self.linker.erase(person_id)
        self.log.info("person erased", had_link=had_link)

    # --- internals ------------------------------------------------------------------------

    def _on_recorded(self, report: IntakeReport) -> None:
        if report.new_work:
            self.scheduler.notify(report.new_work)
        if report.new_results:
            self.outbox.wake()

    async def _on_broken(self, account: AccountRow, reason: str) -> None:
        del reason  # logged by the scheduler; the event says only "credential_revoked"
        await self._announce_broken(account)

    async def _announce_broken(self, account: AccountRow) -> None:
        event = IdentityUnlinked(
            region=self.settings.region,
            person_id=account.person_id,
            network=NETWORK,
            account=account.did,
            reason="credential_revoked",
        )
        try:
            await self.publish(event)
        except Exception as error:  # noqa: BLE001 - republished at the next start
            self.log.warning("identity.unlinked not published yet", error=type(error).__name__)

    async def rotate_credentials(self) -> int:
        """Re-encrypt credentials stored under an older key with the first key."""
        rows = await asyncio.to_thread(self.store.credentials_to_rotate, self.cipher.key_id)
        done = 0
        for row in rows:
            try:
                app_password = self.cipher.rotate(row.app_password)
                access = self.cipher.rotate(row.access_jwt) if row.access_jwt else None
                refresh = self.cipher.rotate(row.refresh_jwt) if row.refresh_jwt else None
            except CredentialError:
                self.log.exception(
                    "a stored credential cannot be decrypted with the configured keys"
                )
                continue
            if await asyncio.to_thread(
                functools.partial(
                    self.store.save_rotated,
                    row.did,
                    old_key_id=row.key_id,
                    key_id=self.cipher.key_id,
                    app_password=app_password,
                    access_jwt=access,
                    refresh_jwt=refresh,
                )
            ):
                done += 1
        if done:
            self.log.info("credentials re-encrypted with the current key", accounts=done)
        return done

    async def _metrics_loop(self) -> None:
        last_prune = 0.0
        while True:
            with contextlib.suppress(Exception):
                await self._update_gauges()
                now = self.clock.now()
                if now - last_prune > HOUR:
                    await asyncio.to_thread(self.store.prune_spends, now - DAY - 60)
                    last_prune = now
            await asyncio.sleep(self.settings.bluesky_metrics_interval_seconds)

    async def _update_gauges(self) -> None:
        counts = await asyncio.to_thread(self.store.counts)
        m = self.metrics
        for state in ("pending", "in_flight", "paused"):
            m.backlog.labels(NETWORK, state).set(counts.get(state, 0))
        for state in ("active", "broken"):
            m.accounts.labels(NETWORK, state).set(counts.get(f"accounts_{state}", 0))
        now = self.clock.now()
        busy = [s for s in list(self.scheduler.states.values()) if s.open_rows > 0 and s.active]
        m.accounts.labels(NETWORK, "with_backlog").set(len(busy))
        limits = {
            "hour": (HOUR, self.settings.bluesky_points_per_hour),
            "day": (DAY, self.settings.bluesky_points_per_day),
        }
        for name, (window, limit) in limits.items():
            m.points_used.labels(NETWORK, name).set(sum(s.budget.used(now, window) for s in busy))
            m.points_allowed.labels(NETWORK, name).set(limit * len(busy))
