"""Server-rendered pages (Jinja2; text goes through gettext for translation)."""

from __future__ import annotations

import gettext
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from passerelle_ingest.auth import Auth
from passerelle_ingest.importer import ArchiveImporter
from passerelle_ingest.people import People
from passerelle_ingest.settings import Settings
from passerelle_ingest.signin import SignIn
from passerelle_ingest.status import system_status
from passerelle_platform.runtime import ServiceRuntime

TEMPLATES = Path(__file__).parent / "templates"


def make_templates() -> Environment:
    """The Jinja2 environment with the i18n extension installed."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(gettext.NullTranslations(), newstyle=True)  # type: ignore[attr-defined]
    return env


def build_web(
    runtime: ServiceRuntime,
    settings: Settings,
    people: People,  # noqa: ARG001 - the web pages use these as they grow
    importer: ArchiveImporter,  # noqa: ARG001
    auth: Auth,  # noqa: ARG001
    sign_in: SignIn,  # noqa: ARG001
) -> APIRouter:
    """Routes of the web pages."""
    router = APIRouter(include_in_schema=False)
    templates = make_templates()

    @router.get("/", response_class=HTMLResponse)
    async def home(_request: Request) -> HTMLResponse:
        status = await system_status(
            runtime.broker, settings.region, settings.request_timeout_seconds
        )
        page = templates.get_template("home.html").render(
            status=status, operator=settings.operator_name, lang="en"
        )
        return HTMLResponse(page)

    return router
