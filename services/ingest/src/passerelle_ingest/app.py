"""The ingest service process: the HTTP edge (web pages + JSON API) and its wiring.

Settings → runtime (logging, tracing, metrics, database, NATS) → routers → HTTP.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp

from passerelle_ingest import __version__
from passerelle_ingest.api import build_api
from passerelle_ingest.settings import Settings
from passerelle_ingest.web import build_web
from passerelle_platform.runtime import ServiceRuntime
from passerelle_platform.settings import settings_or_exit

SERVICE = "ingest"


def create_app(settings: Settings) -> tuple[ASGIApp, ServiceRuntime]:
    """The edge's ASGI app and its runtime, not yet started (tests use this too)."""
    runtime = ServiceRuntime(
        SERVICE, __version__, settings, migrations=Path(__file__).parent / "migrations"
    )
    app = FastAPI(
        title="passerelle",
        version=__version__,
        lifespan=runtime.lifespan,
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
        # One tracing path for every service (our ASGI middleware), not FastAPI's own.
        telemetry={
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        },
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.router.routes.extend(runtime.routes())
    app.include_router(build_api(runtime, settings))
    app.include_router(build_web(runtime, settings))
    return runtime.instrument(app), runtime


def main() -> None:
    """Console script entry point: ``passerelle-ingest``."""
    settings = settings_or_exit(Settings)
    app, runtime = create_app(settings)
    runtime.serve(app)


if __name__ == "__main__":
    main()
