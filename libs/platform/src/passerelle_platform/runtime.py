"""What every service process does the same way: the wiring around its handlers.

A :class:`ServiceRuntime` owns the settings, logging, tracing, metrics, database
and NATS connection of one process, answers the ``health`` request/reply and
serves ``/healthz``, ``/readyz`` and ``/metrics``. Services only add routers.

The process starts in any order relative to NATS: HTTP comes up at once, the
NATS connection is made in the background (``/readyz`` is 503 until then) and
survives NATS restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from faststream.nats import NatsBroker, NatsRouter
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from passerelle_contracts import HealthReply, HealthRequest, health_subject
from passerelle_contracts.streams import Consumer
from passerelle_platform.broker import ensure_streams, make_broker, watch_dead_letters
from passerelle_platform.db import count_database_errors, database_url, make_engine, migrate
from passerelle_platform.logging import REDACTOR, configure_logging
from passerelle_platform.metrics import ServiceMetrics
from passerelle_platform.settings import PlatformSettings
from passerelle_platform.telemetry import configure_tracing, scrub_server_span

Hook = Callable[[], Awaitable[None]]


class ServiceRuntime:
    """The shared machinery of one service process."""

    def __init__(
        self,
        service: str,
        version: str,
        settings: PlatformSettings,
        *,
        consumers: Sequence[Consumer] = (),
        migrations: Path | None = None,
    ) -> None:
        self.service = service
        self.version = version
        self.settings = settings
        self.consumers = tuple(consumers)
        self.log = configure_logging(
            service, settings.region, settings.log_level, settings.log_format
        )
        REDACTOR.remember(settings.secret_fields().values())
        self.tracer_provider = configure_tracing(
            service, version, settings.region, settings.trace_file
        )
        self.metrics = ServiceMetrics(service, version, settings.region)
        self.broker: NatsBroker = make_broker(
            settings.nats_url, service, self.tracer_provider, self.metrics
        )
        self.engine: Engine | None = None
        if migrations is not None:
            self.engine = make_engine(database_url(settings, service))
            count_database_errors(self.engine, self.metrics.database_errors)
        self._migrations = migrations
        self.started_at = datetime.now(UTC)
        self._streams_ready = False
        self._db_ready = migrations is None
        self._connect_task: asyncio.Task[None] | None = None
        self._stop_dead_letters: Hook | None = None
        self.on_connected: list[Hook] = []
        self.on_shutdown: list[Hook] = []
        self._health_router = NatsRouter()
        self._health_router.subscriber(health_subject(service))(self._answer_health)
        self.broker.include_router(self._health_router)

    # --- health -------------------------------------------------------------------------

    def checks(self) -> dict[str, bool]:
        """Each dependency and whether it is usable right now."""
        connection = self.broker._connection  # noqa: SLF001 - None before the first connect
        return {
            "nats": bool(connection is not None and connection.is_connected),
            "streams": self._streams_ready,
            "database": self._db_ready,
        }

    def health(self) -> HealthReply:
        """This service's health, as told over NATS and HTTP."""
        checks = self.checks()
        return HealthReply(
            region=self.settings.region,
            service=self.service,
            service_version=self.version,
            status="up" if all(checks.values()) else "degraded",
            started_at=self.started_at,
            checks=checks,
        )

    async def _answer_health(self, _request: HealthRequest) -> HealthReply:
        return self.health()

    # --- lifecycle ----------------------------------------------------------------------

    def include(self, router: NatsRouter) -> None:
        """Add a service's handlers to the broker (before start)."""
        self.broker.include_router(router)

    async def start(self) -> None:
        """Migrate the database, then connect to NATS in the background."""
        if self.engine is not None and self._migrations is not None:
            await asyncio.to_thread(migrate, self.engine, self._migrations, self.service)
            self._db_ready = True
        self._connect_task = asyncio.create_task(self._connect(), name="nats-connect")

    async def _connect(self) -> None:
        delay = self.settings.nats_connect_retry_seconds
        while True:
            try:
                await self.broker.connect()
                await ensure_streams(self.broker, replicas=self.settings.stream_replicas)
                break
            except Exception as error:  # noqa: BLE001 - keep trying whatever went wrong
                self.log.warning(
                    "waiting for nats", error=type(error).__name__, url=self.settings.nats_url
                )
                await asyncio.sleep(delay)
        await self.broker.start()
        self._stop_dead_letters = await watch_dead_letters(
            self.broker, self.consumers, self.metrics
        )
        for hook in self.on_connected:
            await hook()
        # What exists now (modules, settings, ORM metadata, the broker) lives as long as
        # the process: out of the collector's full passes, which would otherwise walk it
        # all (~100 ms seen in the middle of a newcomer's match).
        gc.collect()
        gc.freeze()
        # Ready only once every subscriber listens: a request sent on "ready" must find one.
        self._streams_ready = True
        self.metrics.nats_connected.set(1)
        self.log.info("connected", consumers=[c.durable for c in self.consumers])

    async def stop(self) -> None:
        """Stop consuming, close NATS and the database, flush spans."""
        for hook in self.on_shutdown:
            await hook()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        connection = self.broker._connection  # noqa: SLF001 - closed below if drain fails
        try:
            if self._stop_dead_letters is not None:
                await self._stop_dead_letters()
            await self.broker.stop()
        except Exception as error:  # noqa: BLE001 - NATS may already be gone (Ctrl-C stops all)
            self.log.info("nats closed without draining", error=type(error).__name__)
            # A connection that cannot drain (NATS away) would go on reconnecting forever.
            if connection is not None and not connection.is_closed:
                with contextlib.suppress(Exception):
                    await connection.close()
        if self.engine is not None:
            self.engine.dispose()
        self.tracer_provider.shutdown()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        """ASGI lifespan: start with the HTTP server, stop with it."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # --- HTTP ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        """``/healthz`` (the process lives), ``/readyz`` (it can work), ``/metrics``."""

        async def healthz(_request: Request) -> Response:
            return JSONResponse({"status": "alive", "service": self.service})

        async def readyz(_request: Request) -> Response:
            reply = self.health()
            return JSONResponse(
                reply.model_dump(mode="json"), status_code=200 if reply.status == "up" else 503
            )

        async def metrics(_request: Request) -> Response:
            return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

        return [
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
        ]

    def instrument(self, app: ASGIApp) -> ASGIApp:
        """Wrap an ASGI app with tracing (W3C context in) and latency metrics."""
        timed = _LatencyMiddleware(app, self.metrics)
        return OpenTelemetryMiddleware(
            timed,
            tracer_provider=self.tracer_provider,
            excluded_urls="healthz,readyz,metrics",
            server_request_hook=scrub_server_span,
        )

    def plain_app(self) -> ASGIApp:
        """The HTTP app of a service without web pages: only the operational routes."""
        return self.instrument(Starlette(routes=self.routes(), lifespan=self.lifespan))

    def serve(self, app: ASGIApp) -> None:
        """Run ``app`` with uvicorn until SIGINT/SIGTERM (then stop cleanly)."""
        config = uvicorn.Config(
            app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
        uvicorn.Server(config).run()

    def check_database(self) -> bool:
        """A trivial query, for readiness."""
        if self.engine is None:
            return True
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True


class _LatencyMiddleware:
    """Observe request durations by route template (never the raw path: no ids in labels)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_latency.labels(template, f"{status['code'] // 100}xx").observe(
                time.perf_counter() - started
            )
