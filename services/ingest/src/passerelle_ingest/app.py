"""The ingest service process: the HTTP edge (web pages + JSON API) and its wiring.

Settings → runtime (logging, tracing, metrics, database, NATS) → routers → HTTP.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from fastapi import FastAPI
from starlette.types import ASGIApp

from passerelle_ingest import __version__
from passerelle_ingest.api import build_api
from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ApiError, api_error_handler
from passerelle_ingest.importer import ArchiveImporter
from passerelle_ingest.matches import build_matches_api
from passerelle_ingest.metrics import IngestMetrics
from passerelle_ingest.people import People
from passerelle_ingest.sessions import SessionSigner
from passerelle_ingest.settings import Settings
from passerelle_ingest.signin import SignIn
from passerelle_ingest.signin_api import build_signin_api
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
    assert runtime.engine is not None
    people = People(runtime.engine)
    tmp_dir = settings.upload_tmp_dir or Path(tempfile.gettempdir()) / "passerelle-ingest"
    metrics = IngestMetrics(runtime.metrics.registry)
    importer = ArchiveImporter(
        runtime.engine,
        runtime.broker,
        settings.region,
        settings.archive_limits(),
        tmp_dir,
        metrics,
    )
    signer = SessionSigner(settings.secret_key, settings.session_max_age_seconds)
    app.add_exception_handler(ApiError, api_error_handler)
    app.router.routes.extend(runtime.routes())
    auth = Auth(signer, people)
    app.include_router(build_api(runtime, settings, people, importer, auth))
    sign_in = SignIn(runtime.broker, people, settings.region)
    app.include_router(build_signin_api(settings, sign_in, auth))
    app.include_router(
        build_matches_api(runtime, settings.region, settings.request_timeout_seconds, auth)
    )
    app.include_router(build_web(runtime, settings, people, importer, auth, sign_in))
    return runtime.instrument(app), runtime


def main() -> None:
    """Console script entry point: ``passerelle-ingest``."""
    settings = settings_or_exit(Settings)
    app, runtime = create_app(settings)
    runtime.serve(app)


if __name__ == "__main__":
    main()
