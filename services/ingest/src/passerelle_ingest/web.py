"""The web pages: the journey from "I have my X archive" to "my follows are being made".

Server-rendered (Jinja2), working without JavaScript; scripts only enhance (the
archive is opened in the browser, live counts). Every text goes through gettext
(``i18n.py``): the language comes from ``?lang=``, then a cookie, then
``Accept-Language``. Pages use the same session cookie and CSRF token as the JSON
API, and call the same logic (``SignIn``, ``People``, ``ArchiveImporter``, the
matching service over request/reply).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlencode

from babel.support import Translations
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, SecretStr
from sqlalchemy import select
from sqlmodel import Session as DbSession
from sqlmodel import col
from starlette.datastructures import FormData

from passerelle_contracts.base import NETWORKS, Network
from passerelle_contracts.events import Direction
from passerelle_contracts.rpc import (
    CountReply,
    MatchCount,
    MatchItem,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchState,
    MatchSummaryReply,
    MatchSummaryRequest,
)
from passerelle_ingest import i18n
from passerelle_ingest.api import form_uploads, read_upload_form
from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ARCHIVE_STATUS, UPLOAD_STATUS, ApiError
from passerelle_ingest.importer import (
    PAYLOAD_TTL_SECONDS,
    ArchiveImporter,
    ImportOutcome,
    ImportUnavailableError,
    UploadRejectedError,
)
from passerelle_ingest.lifecycle import change_consents, erase_person
from passerelle_ingest.models import ArchiveImport, Person
from passerelle_ingest.people import Consents, People
from passerelle_ingest.sessions import COOKIE, Session
from passerelle_ingest.settings import Settings
from passerelle_ingest.signin import SignIn
from passerelle_ingest.status import system_status
from passerelle_platform.broker import ServiceUnavailableError, ask
from passerelle_platform.runtime import ServiceRuntime
from passerelle_xarchive import ArchiveError
from passerelle_xarchive.messages import MESSAGES as ARCHIVE_MESSAGES
from passerelle_xarchive.messages import human_bytes

TEMPLATES: Final = Path(__file__).parent / "templates"
STATIC: Final = Path(__file__).parent / "static"
STATIC_TYPES: Final = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
LANG_COOKIE: Final = "passerelle_lang"
FORM_COOKIE: Final = "passerelle_form"
"""A random value binding sign-in forms to this browser (CSRF before there is a session)."""
PAGE_SIZE: Final = 50
SEARCHING_FOR: Final = timedelta(minutes=5)
"""How long after an upload an empty result reads as "still looking"."""
FOLLOWS_PER_HOUR: Final[Mapping[Network, float]] = {"bluesky": 1666.0, "mastodon": 400.0 / 24}
"""Each network's documented follow rate per account (the senders stay within it)."""
NETWORK_LABELS: Final[Mapping[Network, str]] = {"bluesky": "Bluesky", "mastodon": "Mastodon"}
DIRECTIONS: Final[tuple[Direction, ...]] = ("following", "follower")
SELECTABLE: Final = ("proposed", "selected")
BROWSER_ARCHIVE_ERRORS: Final = (
    "not_a_zip",
    "truncated",
    "corrupt",
    "encrypted",
    "unsupported_compression",
    "ambiguous_archive",
    "missing_follow_files",
)
"""Archive errors the upload script finds itself, before sending anything."""
HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "translate later"
    """Mark a message for extraction; it is translated where it is shown."""
    return message


DIRECTION_LABELS: Final[Mapping[Direction, str]] = {
    "following": N_("You followed them on X"),
    "follower": N_("They followed you on X"),
}
STATE_LABELS: Final = {
    "proposed": N_("Not chosen yet"),
    "selected": N_("Selected"),
    "requested": N_("Waiting to be followed"),
    "followed": N_("Followed"),
    "already_following": N_("Already followed"),
    "failed": N_("Could not be followed"),
    "declined": N_("Left out"),
}
TRUST_LABELS: Final = {
    "claimed": N_("Unverified claim"),
    "disputed": N_("Disputed"),
}
TRUST_LEGEND: Final = N_(
    "“Unverified claim”: this person says the X account is theirs, but X has not confirmed "
    "it. “Disputed”: more than one person says so. Check their profile before following."
)
ERROR_MESSAGES: Final = {
    # The edge's own refusals.
    "csrf": N_("This form expired. Reload the page and try again."),
    "not_signed_in": N_("Please sign in first."),
    "confirm": N_("Tick the box to confirm, then try again."),
    "no_archive": N_("Choose your X archive (the .zip file) first."),
    "unexpected_file": N_(
        "Only account.js, follower.js and following.js (and their numbered parts) are accepted."
    ),
    "too_large": N_(
        "This file is larger than %(limit)s, the most this service accepts. "
        "Use a browser that can open the archive itself, so that only the lists are sent."
    ),
    "unavailable": N_(
        "passerelle cannot take archives right now. Please try again in a few minutes."
    ),
    "matching_unavailable": N_(
        "Your people cannot be shown right now. Please try again in a few minutes."
    ),
    "upload_failed": N_("The upload was interrupted. Check your connection and try again."),
    # Signing in and linking (answers of the senders).
    "invalid_identifier": N_(
        "This is not a Bluesky handle. Check its spelling, for example alice.bsky.social."
    ),
    "unknown_handle": N_(
        "No Bluesky account has this handle. Check its spelling, for example alice.bsky.social."
    ),
    "invalid_credentials": N_(
        "Bluesky did not accept this handle and app password. Check both, or create a new "
        "app password."
    ),
    "wrong_password": N_(
        "Bluesky did not accept this handle and app password. Check both, or create a new "
        "app password."
    ),
    "identity_mismatch": N_(
        "Bluesky signed in another account than this handle. Check the handle and try again."
    ),
    "account_unavailable": N_("This Bluesky account is suspended or deactivated."),
    "registration_refused": N_(
        "This Mastodon server refused to let passerelle register. Ask its administrators, "
        "or download the Mastodon import file instead."
    ),
    "not_app_password": N_(
        "This is your main Bluesky password. Please create an app password instead, as "
        "explained below."
    ),
    "account_takendown": N_("Bluesky has taken this account down, so it cannot be used."),
    "account_deactivated": N_("This Bluesky account is deactivated."),
    "account_suspended": N_("This Bluesky account is suspended."),
    "directory_unreachable": N_(
        "Bluesky's directory cannot be reached right now. Please try again in a few minutes."
    ),
    "pds_unreachable": N_(
        "Your Bluesky server cannot be reached right now. Please try again in a few minutes."
    ),
    "no_pds": N_("This Bluesky account has no server that passerelle can reach."),
    "unknown_instance": N_(
        "No Mastodon server answers at this address. Check its spelling, "
        "for example mastodon.social."
    ),
    "instance_unreachable": N_(
        "This Mastodon server does not answer right now. Please try again in a few minutes."
    ),
    "not_mastodon": N_("The server at this address does not speak Mastodon's language."),
    "invalid_code": N_("Your Mastodon server did not confirm the sign-in. Please start again."),
    "reauthorize": N_("Your Mastodon server asks for the permission again. Please start again."),
    "token_revoked": N_("The permission given on your Mastodon server was withdrawn."),
    "rate_limited": N_("Too many attempts for now. Please wait a few minutes and try again."),
    "oauth_state": N_(
        "This sign-in took too long or was started in another window. Please start again."
    ),
    "access_denied": N_(
        "You did not allow passerelle on your Mastodon server, so nothing was linked."
    ),
    "account_taken": N_(
        "This account is already linked to someone else here. Sign in with it instead."
    ),
    "sender_unavailable": N_(
        "This network cannot be reached right now. Please try again in a few minutes."
    ),
    "bad_reply": N_("The network gave an unexpected answer. Please try again later."),
}
GENERIC_ERROR: Final = N_("Something went wrong. Please try again in a few minutes.")
REASON_MESSAGES: Final = {
    "not_found": N_("the account no longer exists"),
    "target_not_found": N_("the account no longer exists"),
    "invalid_target": N_("the account no longer exists"),
    "target_erased": N_("the person left passerelle"),
    "follow_cap": N_("your account follows as many people as the network allows"),
    "rejected": N_("the person declined the follow request"),
    "blocked": N_("the account blocks you, or you block it"),
    "self_follow": N_("this is your own account"),
    "not_linked": N_("your account on this network is no longer linked"),
    "unlinked": N_("your account on this network is no longer linked"),
    "token_revoked": N_("the permission to follow for you was withdrawn"),
    "credential_revoked": N_("the permission to follow for you was withdrawn"),
    "account_takendown": N_("your account was taken down"),
    "account_deactivated": N_("your account is deactivated"),
    "account_suspended": N_("your account is suspended"),
    "target_deactivated": N_("the account is deactivated"),
    "target_takendown": N_("the account was taken down"),
    "target_suspended": N_("the account is suspended"),
    "remote_error": N_("the network refused, without saying why"),
    "reauthorize_required": N_("your Mastodon server asks for the permission again"),
}
OTHER_REASON: Final = N_("another reason (%(code)s)")

ReplyT = TypeVar("ReplyT", bound=BaseModel)


@dataclass(frozen=True)
class Operator:
    """Who runs this node, as every page shows it."""

    name: str
    contact: str
    contact_href: str
    privacy_policy_url: str


@dataclass
class Ui:
    """One request's language: its translations, formats and switcher links."""

    lang: str
    translations: Translations
    env: Environment
    formats: i18n.Formats
    switch_cookie: bool

    def _(self, message: str, **params: str) -> str:
        text: str = self.translations.gettext(message)
        return text % params if params else text

    def error(self, code: str, params: Mapping[str, str] | None = None) -> str:
        """The translated message for an error code (a generic one for unknown codes)."""
        template = ERROR_MESSAGES.get(code, GENERIC_ERROR)
        return self._(template, **dict(params or {}))

    def archive_error(self, error: ArchiveError) -> str:
        return self._(error.template, **error.params)

    def reason(self, code: str | None) -> str:
        if code in REASON_MESSAGES:
            return self._(REASON_MESSAGES[code])
        return self._(OTHER_REASON, code=code or "?")


@dataclass
class Visitor:
    """Who is on the page: a signed-in person, or nobody yet."""

    session: Session | None = None
    person: Person | None = None
    accounts: dict[str, str] = field(default_factory=dict)


def _contact_href(contact: str) -> str:
    if contact.startswith(("https://", "http://", "mailto:")):
        return contact
    if "@" in contact and " " not in contact:
        return "mailto:" + contact
    return ""


def _clean_network(value: str | None, linked: list[Network]) -> Network | None:
    for network in linked:
        if value == network:
            return network
    return linked[0] if linked else None


def _clean_direction(value: str | None) -> Direction:
    return "follower" if value == "follower" else "following"


def _page_number(value: str | None) -> int:
    try:
        return max(1, min(int(value or "1"), 1_000_000))
    except ValueError:
        return 1


def build_web(
    runtime: ServiceRuntime,
    settings: Settings,
    people: People,
    importer: ArchiveImporter,
    auth: Auth,
    sign_in: SignIn,
) -> APIRouter:
    """Routes of the web pages."""
    router = APIRouter(include_in_schema=False)
    web = _Web(runtime, settings, people, importer, auth, sign_in)
    web.route(router)
    return router


def make_templates(translations: Translations) -> Environment:
    """A Jinja2 environment speaking one language."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations, newstyle=True)  # type: ignore[attr-defined]
    return env


class _Web:
    """The pages' handlers, sharing the edge's collaborators."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        settings: Settings,
        people: People,
        importer: ArchiveImporter,
        auth: Auth,
        sign_in: SignIn,
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.people = people
        self.importer = importer
        self.signer = auth.signer
        self.sign_in = sign_in
        self.secure = settings.public_url.startswith("https://")
        self.form_key = hashlib.sha256(
            b"form:" + settings.secret_key.get_secret_value().encode()
        ).digest()
        self.operator = Operator(
            name=settings.operator_name,
            contact=settings.operator_contact,
            contact_href=_contact_href(settings.operator_contact),
            privacy_policy_url=settings.privacy_policy_url,
        )
        self.languages: dict[str, tuple[Translations, Environment]] = {}
        for lang in i18n.LANGUAGES:
            translations = i18n.load_translations(lang)
            self.languages[lang] = (translations, make_templates(translations))

    def route(self, router: APIRouter) -> None:
        get, post = router.get, router.post
        get("/")(self.home)
        get("/next")(self.next_step)
        get("/signin")(self.signin_page)
        post("/signin/bluesky")(self.signin_bluesky)
        post("/signout")(self.signout)
        get("/consents")(self.consents_page)
        post("/consents")(self.consents_save)
        get("/upload")(self.upload_page)
        post("/upload")(self.upload)
        get("/results")(self.results_page)
        get("/results/live")(self.results_live)
        post("/results/select")(self.results_select)
        get("/progress")(self.progress_page)
        get("/progress/live")(self.progress_live)
        get("/account")(self.account_page)
        post("/account/link/bluesky")(self.link_bluesky)
        post("/account/unlink/{network}")(self.unlink)
        get("/account/delete")(self.delete_page)
        post("/account/delete")(self.delete)
        get("/static/{name}")(self.static)
        get("/demo/x-archive.zip")(self.demo_archive)

    # --- plumbing ---------------------------------------------------------------------

    def ui(self, request: Request) -> Ui:
        query = request.query_params.get("lang")
        lang = i18n.choose_language(
            query, request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")
        )
        translations, env = self.languages[lang]
        return Ui(lang, translations, env, i18n.Formats(lang), switch_cookie=query == lang)

    def visitor(self, request: Request) -> Visitor:
        session = self.signer.loads(request.cookies.get(COOKIE))
        if session is None:
            return Visitor()
        person = self.people.get(session.person_id)
        if person is None:
            return Visitor()
        accounts = {a.network: a.handle for a in self.people.accounts(person.id)}
        return Visitor(session, person, accounts)

    def form_token(self, request: Request) -> tuple[str, str]:
        """This browser's sign-in form value (new if it has none) and the token forms carry."""
        value = request.cookies.get(FORM_COOKIE) or secrets.token_urlsafe(24)
        token = hmac.new(self.form_key, value.encode(), "sha256").hexdigest()
        return value, token

    def check_form_token(self, request: Request, token: object) -> bool:
        value = request.cookies.get(FORM_COOKIE)
        if not value or not isinstance(token, str):
            return False
        expected = hmac.new(self.form_key, value.encode(), "sha256").hexdigest()
        return hmac.compare_digest(expected, token)

    def check_csrf(self, request: Request, visitor: Visitor, form: FormData | None) -> bool:
        assert visitor.session is not None
        token = request.headers.get("x-csrf-token")
        if token is None and form is not None:
            value = form.get("csrf_token")
            token = value if isinstance(value, str) else None
        return self.signer.check_csrf(visitor.session, token)

    def render(
        self,
        request: Request,
        ui: Ui,
        visitor: Visitor,
        template: str,
        *,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        languages = []
        for code in i18n.LANGUAGES:
            params = dict(request.query_params)
            params["lang"] = code
            languages.append((code, i18n.autonym(code), f"{request.url.path}?{urlencode(params)}"))
        page = ui.env.get_template(template).render(
            lang=ui.lang,
            dir=ui.formats.direction,
            languages=languages,
            person=visitor.person,
            csrf=self.signer.csrf_token(visitor.session) if visitor.session else "",
            operator=self.operator,
            **context,
        )
        response = HTMLResponse(page, status_code=status_code, headers=HEADERS)
        self.remember_language(ui, response)
        return response

    def remember_language(self, ui: Ui, response: Response) -> None:
        if ui.switch_cookie:
            response.set_cookie(
                LANG_COOKIE, ui.lang, max_age=365 * 24 * 3600, samesite="lax", secure=self.secure
            )

    def redirect(self, url: str, ui: Ui | None = None) -> RedirectResponse:
        response = RedirectResponse(url, status_code=303)
        if ui is not None:
            self.remember_language(ui, response)
        return response

    def sign_in_cookie(self, response: Response, person_id: str) -> None:
        response.set_cookie(
            COOKIE,
            self.signer.dumps(Session(person_id=person_id)),
            max_age=self.settings.session_max_age_seconds,
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )

    async def ask_matching(self, request: BaseModel, reply_type: type[ReplyT]) -> ReplyT:
        subject: str = type(request).subject  # type: ignore[attr-defined]
        return await ask(
            self.runtime.broker,
            request,
            subject,
            reply_type,
            wait_seconds=self.settings.request_timeout_seconds,
        )

    def latest_import(self, person_id: str) -> ArchiveImport | None:
        with DbSession(self.people.engine) as db:
            return db.scalars(
                select(ArchiveImport)
                .where(
                    col(ArchiveImport.person_id) == person_id,
                    col(ArchiveImport.state) == "published",
                )
                .order_by(col(ArchiveImport.created_at).desc())
            ).first()

    def linked_networks(self, visitor: Visitor) -> list[Network]:
        return [n for n in NETWORKS if n in visitor.accounts]

    # --- pages ------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        ui, visitor = self.ui(request), self.visitor(request)
        status = await system_status(
            self.runtime.broker, self.settings.region, self.settings.request_timeout_seconds
        )
        return self.render(
            request,
            ui,
            visitor,
            "home.html",
            page="home",
            status=status,
            erased=request.query_params.get("erased") == "1",
            start_href="/next" if visitor.person else "/signin",
            edges_ttl=ui.formats.span(timedelta(seconds=PAYLOAD_TTL_SECONDS)),
        )

    async def next_step(self, request: Request) -> Response:
        """Where the person stands in the journey, as a redirect."""
        ui, visitor = self.ui(request), self.visitor(request)
        if visitor.person is None:
            return self.redirect("/signin", ui)
        latest = await asyncio.to_thread(self.latest_import, visitor.person.id)
        if latest is not None:
            return self.redirect("/results", ui)
        if visitor.person.consent_revision == 0:
            return self.redirect("/consents", ui)
        return self.redirect("/upload", ui)

    async def signin_page(self, request: Request) -> Response:
        ui, visitor = self.ui(request), self.visitor(request)
        error_code = request.query_params.get("error")
        if visitor.person is not None and error_code is None:
            return self.redirect("/account", ui)
        return self.signin_form(request, ui, visitor, error_code=error_code)

    def signin_form(
        self,
        request: Request,
        ui: Ui,
        visitor: Visitor,
        *,
        error_code: str | None = None,
        identifier: str = "",
        status_code: int = 200,
    ) -> HTMLResponse:
        value, token = self.form_token(request)
        response = self.render(
            request,
            ui,
            visitor,
            "signin.html",
            status_code=status_code,
            page="signin",
            form_token=token,
            identifier=identifier,
            instance=request.query_params.get("instance", ""),
            error=ui.error(error_code) if error_code else None,
        )
        response.set_cookie(FORM_COOKIE, value, httponly=True, samesite="lax", secure=self.secure)
        return response

    async def signin_bluesky(self, request: Request) -> Response:
        ui, visitor = self.ui(request), self.visitor(request)
        form = await request.form()
        identifier = str(form.get("identifier") or "").strip().removeprefix("@")
        password = str(form.get("app_password") or "")
        if not self.check_form_token(request, form.get("csrf_token")):
            return self.signin_form(request, ui, visitor, error_code="csrf", status_code=403)
        if not 3 <= len(identifier) <= 256 or not password:
            return self.signin_form(
                request, ui, visitor, error_code="invalid_identifier", status_code=400
            )
        try:
            proven = await self.sign_in.bluesky(identifier, SecretStr(password), None)
        except ApiError as error:
            return self.signin_form(
                request,
                ui,
                visitor,
                error_code=error.code,
                identifier=identifier,
                status_code=error.status_code,
            )
        response = self.redirect("/next", ui)
        self.sign_in_cookie(response, proven.person.id)
        return response

    async def signout(self, request: Request) -> Response:
        visitor = self.visitor(request)
        form = await request.form()
        if visitor.session is not None and not self.check_csrf(request, visitor, form):
            return self.redirect("/account")
        response = self.redirect("/")
        response.delete_cookie(COOKIE)
        return response

    def need_person(self, request: Request) -> tuple[Ui, Visitor, Person] | Response:
        ui, visitor = self.ui(request), self.visitor(request)
        if visitor.person is None:
            return self.redirect("/signin", ui)
        return ui, visitor, visitor.person

    async def consents_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        latest = await asyncio.to_thread(self.latest_import, person.id)
        return self.render(
            request,
            ui,
            visitor,
            "consents.html",
            page="consents",
            consents=Consents(
                person.consent_matching, person.consent_auto_follow, person.consent_notifications
            ),
            saved=request.query_params.get("saved") == "1",
            has_archive=latest is not None,
        )

    async def consents_save(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        form = await request.form()
        if not self.check_csrf(request, visitor, form):
            return self.render(
                request,
                ui,
                visitor,
                "consents.html",
                status_code=403,
                page="consents",
                consents=Consents(
                    person.consent_matching,
                    person.consent_auto_follow,
                    person.consent_notifications,
                ),
                error=ui.error("csrf"),
                has_archive=True,
            )
        consents = Consents(
            matching=form.get("matching") == "on",
            auto_follow=form.get("auto_follow") == "on",
            notifications=form.get("notifications") == "on",
        )
        await change_consents(
            self.runtime.broker, self.people, self.settings.region, person.id, consents
        )
        latest = await asyncio.to_thread(self.latest_import, person.id)
        return self.redirect("/consents?saved=1" if latest else "/upload", ui)

    async def upload_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        return await self.upload_form(request, ui, visitor, person)

    async def upload_form(
        self,
        request: Request,
        ui: Ui,
        visitor: Visitor,
        person: Person,
        *,
        error: str | None = None,
        status_code: int = 200,
    ) -> HTMLResponse:
        latest = await asyncio.to_thread(self.latest_import, person.id)
        last_import = None
        if latest is not None:
            last_import = {
                "when": ui.formats.date(latest.created_at),
                "following": ui.formats.number(latest.following_count),
                "followers": ui.formats.number(latest.followers_count),
            }
        return self.render(
            request,
            ui,
            visitor,
            "upload.html",
            status_code=status_code,
            page="upload",
            last_import=last_import,
            error=error,
            upload_messages=self.upload_messages(ui),
            demo=self.settings.demo_archive is not None,
        )

    def upload_messages(self, ui: Ui) -> dict[str, str]:
        """What the upload script may say, already translated (it holds no text itself)."""
        messages = {
            "reading": ui._("Reading your archive on this computer…"),
            "sending": ui._("Sending the lists…"),
            "sending_whole": ui._(
                "Your browser cannot open the archive itself: sending the whole file…"
            ),
            "done": ui._("Received. Looking for your people…"),
            "upload_failed": ui.error("upload_failed"),
            "generic": ui._(GENERIC_ERROR),
        }
        for code in BROWSER_ARCHIVE_ERRORS:
            messages[code] = ui._(ARCHIVE_MESSAGES[code])
        return messages

    async def upload(self, request: Request) -> Response:
        """The archive (whole zip, or the files the page extracted): answered as a page or JSON."""
        wants_json = "application/json" in request.headers.get("accept", "")
        ui, visitor = self.ui(request), self.visitor(request)
        person = visitor.person
        if person is None:
            if wants_json:
                return _json_error(401, "not_signed_in", ui.error("not_signed_in"))
            return self.redirect("/signin", ui)

        async def refuse(status_code: int, message: str, code: str) -> Response:
            if wants_json:
                return _json_error(status_code, code, message)
            assert person is not None
            return await self.upload_form(
                request, ui, visitor, person, error=message, status_code=status_code
            )

        try:
            # Counted while it streams: a chunked upload declares no size.
            form = await read_upload_form(request, self.importer, self.settings.max_upload_files)
        except UploadRejectedError:
            limit_text = human_bytes(self.settings.max_upload_bytes)
            return await refuse(413, ui.error("too_large", {"limit": limit_text}), "too_large")
        try:
            if not self.check_csrf(request, visitor, form):
                return await refuse(403, ui.error("csrf"), "csrf")
            archives, files = form_uploads(form)
            try:
                outcome = await self.importer.import_upload(person.id, archives, files)
            except UploadRejectedError as error:
                return await refuse(UPLOAD_STATUS[error.code], ui.error(error.code), error.code)
            except ArchiveError as error:
                status_code = ARCHIVE_STATUS.get(error.code, 400)
                return await refuse(status_code, ui.archive_error(error), error.code)
            except ImportUnavailableError:
                return await refuse(503, ui.error("unavailable"), "unavailable")
        finally:
            await form.close()
        target = _results_after_import(outcome)
        if wants_json:
            return JSONResponse(
                {"next": target, "import_id": outcome.import_id, "state": outcome.state}
            )
        return self.redirect(target, ui)

    # --- results ----------------------------------------------------------------------

    async def results_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        return await self.results(request, ui, visitor, person, fragment=False)

    async def results_live(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        return await self.results(request, ui, visitor, person, fragment=True)

    async def results(
        self, request: Request, ui: Ui, visitor: Visitor, person: Person, *, fragment: bool
    ) -> Response:
        q = request.query_params
        linked = self.linked_networks(visitor)
        latest = await asyncio.to_thread(self.latest_import, person.id)
        context: dict[str, Any] = {
            "page": "results",
            "has_archive": latest is not None,
            "notice": _results_notice(ui, q.get("done"), q.get("count")),
            "import_notice": None,
            "unavailable": False,
            "summary": [],
            "searching": False,
            "current": None,
        }
        if latest is not None and q.get("import") == latest.id:
            context["import_notice"] = {
                "following": ui.formats.number(latest.following_count),
                "followers": ui.formats.number(latest.followers_count),
            }
        if latest is None:
            return self.render(request, ui, visitor, "results.html", **context)
        try:
            summary = await self.ask_matching(
                MatchSummaryRequest(region=self.settings.region, person_id=person.id),
                MatchSummaryReply,
            )
        except ServiceUnavailableError:
            context["unavailable"] = True
            return self.render(request, ui, visitor, "results.html", status_code=503, **context)
        counts = _Counts(summary.counts)
        context["summary"] = [
            {
                "name": network,
                "label": NETWORK_LABELS[network],
                "handle": visitor.accounts[network],
                "rows": [
                    counts.row(ui, network, direction, DIRECTION_LABELS[direction])
                    for direction in DIRECTIONS
                ],
            }
            for network in linked
        ]
        recent = datetime.now(UTC) - _aware(latest.created_at) < SEARCHING_FOR
        context["searching"] = counts.total() == 0 and recent
        if fragment:
            html = ui.env.get_template("_summary.html").render(**context)
            return HTMLResponse(html, headers=HEADERS)
        network = _clean_network(q.get("network"), linked)
        if network is None or context["searching"]:
            return self.render(request, ui, visitor, "results.html", **context)
        direction = _clean_direction(q.get("direction"))
        search = (q.get("q") or "").strip()[:100]
        page_number = _page_number(q.get("page"))
        try:
            listing = await self.ask_matching(
                MatchListRequest(
                    region=self.settings.region,
                    person_id=person.id,
                    network=network,
                    direction=direction,
                    search=search or None,
                    offset=(page_number - 1) * PAGE_SIZE,
                    limit=PAGE_SIZE,
                ),
                MatchListReply,
            )
        except ServiceUnavailableError:
            context["unavailable"] = True
            return self.render(request, ui, visitor, "results.html", status_code=503, **context)

        def href(**changes: str | int) -> str:
            params: dict[str, str | int] = {"network": network, "direction": direction}
            if search:
                params["q"] = search
            params.update(changes)
            return "/results?" + urlencode(params)

        first = (page_number - 1) * PAGE_SIZE + 1
        last = first + len(listing.items) - 1
        context.update(
            network_tabs=[
                {
                    "label": NETWORK_LABELS[n],
                    "href": href(network=n, page=1),
                    "current": n == network,
                }
                for n in linked
            ],
            direction_tabs=[
                {
                    "label": ui._(DIRECTION_LABELS[d]),
                    "href": "/results?" + urlencode({"network": network, "direction": d}),
                    "current": d == direction,
                    "count": ui.formats.number(counts.found(network, d)),
                }
                for d in DIRECTIONS
            ],
            current={
                "network": network,
                "direction": direction,
                "q": search,
                "page": page_number,
                "selectable_total": ui.formats.number(counts.selectable(network, direction)),
                "range": ui._(
                    "%(first)s–%(last)s of %(total)s",
                    first=ui.formats.number(first),
                    last=ui.formats.number(last),
                    total=ui.formats.number(listing.total),
                ),
            },
            items=[_item_view(ui, item) for item in listing.items],
            trust_legend=(
                ui._(TRUST_LEGEND) if any(i.trust in TRUST_LABELS for i in listing.items) else None
            ),
            pages={
                "prev": href(page=page_number - 1) if page_number > 1 else None,
                "next": href(page=page_number + 1) if last < listing.total else None,
            },
        )
        return self.render(request, ui, visitor, "results.html", **context)

    async def results_select(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        form = await request.form()
        network = _clean_network(str(form.get("network") or ""), self.linked_networks(visitor))
        direction = _clean_direction(str(form.get("direction") or ""))
        back: dict[str, str] = {"direction": direction}
        if network:
            back["network"] = network
        for key in ("q", "page"):
            if form.get(key):
                back[key] = str(form.get(key))
        if not self.check_csrf(request, visitor, form) or network is None:
            return self.redirect("/results?" + urlencode({**back, "done": "csrf"}), ui)
        action = form.get("action")
        region, person_id = self.settings.region, person.id
        try:
            if action in ("select_all", "clear_all"):
                reply = await self.ask_matching(
                    MatchSelectRequest(
                        region=region,
                        person_id=person_id,
                        network=network,
                        selected=action == "select_all",
                        all_in_direction=direction,
                    ),
                    CountReply,
                )
                back.update(done=str(action), count=str(reply.count))
                return self.redirect("/results?" + urlencode(back), ui)
            checked = [str(t) for t in form.getlist("targets")][:1000]
            shown = [str(t) for t in form.getlist("shown")][:1000]
            unchecked = [t for t in shown if t not in set(checked)]
            for chosen, targets in ((True, checked), (False, unchecked)):
                if targets:
                    await self.ask_matching(
                        MatchSelectRequest(
                            region=region,
                            person_id=person_id,
                            network=network,
                            selected=chosen,
                            targets=tuple(targets),
                        ),
                        CountReply,
                    )
            if action == "follow":
                reply = await self.ask_matching(
                    MatchRequestFollows(region=region, person_id=person_id, network=network),
                    CountReply,
                )
                return self.redirect(f"/progress?requested={reply.count}", ui)
        except ServiceUnavailableError:
            back["done"] = "unavailable"
            return self.redirect("/results?" + urlencode(back), ui)
        back["done"] = "saved"
        return self.redirect("/results?" + urlencode(back), ui)

    # --- progress ---------------------------------------------------------------------

    async def progress_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        requested = request.query_params.get("requested")
        notice = None
        if requested and requested.isdigit():
            notice = ui._(
                "People to be followed for you: %(count)s.",
                count=ui.formats.number(int(requested)),
            )
        try:
            context = await self.progress(ui, visitor, person)
        except ServiceUnavailableError:
            return self.render(
                request,
                ui,
                visitor,
                "progress.html",
                status_code=503,
                page="progress",
                unavailable=True,
                notice=notice,
            )
        return self.render(
            request, ui, visitor, "progress.html", page="progress", notice=notice, **context
        )

    async def progress_live(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        try:
            context = await self.progress(ui, visitor, person)
        except ServiceUnavailableError:
            return Response(status_code=503)
        page = ui.env.get_template("_progress.html").render(**context)
        return HTMLResponse(page, headers=HEADERS)

    async def progress(self, ui: Ui, visitor: Visitor, person: Person) -> dict[str, Any]:
        """Per network: people followed, waiting, failed (and why); each person counted once.

        The summary counts per direction (someone who was both followed and a follower
        is in both); the lists' totals count people.
        """
        summary = await self.ask_matching(
            MatchSummaryRequest(region=self.settings.region, person_id=person.id),
            MatchSummaryReply,
        )
        counts = _Counts(summary.counts)
        networks = []
        now = datetime.now(UTC)
        for network in self.linked_networks(visitor):
            if counts.of(network, "followed", "already_following", "requested", "failed") == 0:
                continue

            async def people(*states: MatchState, limit: int = 1) -> MatchListReply:
                return await self.ask_matching(
                    MatchListRequest(
                        region=self.settings.region,
                        person_id=person.id,
                        network=network,  # noqa: B023 - awaited within this iteration
                        states=states,
                        limit=limit,
                    ),
                    MatchListReply,
                )

            followed = (await people("followed", "already_following")).total
            waiting = (await people("requested")).total
            failures = await people("failed", limit=500)
            view: dict[str, Any] = {
                "name": network,
                "label": NETWORK_LABELS[network],
                "handle": visitor.accounts[network],
                "followed": ui.formats.number(followed),
                "waiting": ui.formats.number(waiting),
                "waiting_n": waiting,
                "failed": ui.formats.number(failures.total),
                "done": waiting == 0,
                "reasons": [],
            }
            if waiting:
                rate = FOLLOWS_PER_HOUR[network]
                finish = now + timedelta(hours=waiting / rate)
                view.update(
                    rate_note=_rate_note(ui, network),
                    eta=ui.formats.duration(finish - now),
                    eta_when=ui.formats.datetime(finish),
                    eta_iso=finish.isoformat(timespec="seconds"),
                )
            reasons = Counter(ui.reason(item.reason) for item in failures.items)
            view["reasons"] = [(r, ui.formats.number(n)) for r, n in reasons.most_common()]
            networks.append(view)
        return {"networks": networks, "done": all(n["done"] for n in networks)}

    # --- account ----------------------------------------------------------------------

    async def account_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, _person = found
        q = request.query_params
        return self.account_view(
            request,
            ui,
            visitor,
            error=ui.error(q["error"]) if q.get("error") else None,
            notice=_account_notice(ui, q.get("done")),
        )

    def account_view(
        self,
        request: Request,
        ui: Ui,
        visitor: Visitor,
        *,
        error: str | None = None,
        notice: str | None = None,
        status_code: int = 200,
        identifier: str = "",
    ) -> HTMLResponse:
        assert visitor.person is not None
        linked = self.linked_networks(visitor)
        return self.render(
            request,
            ui,
            visitor,
            "account.html",
            status_code=status_code,
            page="account",
            linked=[
                {"network": n, "label": NETWORK_LABELS[n], "handle": visitor.accounts[n]}
                for n in linked
            ],
            linked_networks=linked,
            x_username=visitor.person.x_username,
            form_token=self.signer.csrf_token(visitor.session) if visitor.session else "",
            identifier=identifier,
            instance="",
            error=error,
            notice=notice,
        )

    async def link_bluesky(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        form = await request.form()
        if not self.check_csrf(request, visitor, form):
            return self.account_view(request, ui, visitor, error=ui.error("csrf"), status_code=403)
        identifier = str(form.get("identifier") or "").strip().removeprefix("@")
        password = str(form.get("app_password") or "")
        if not 3 <= len(identifier) <= 256 or not password:
            return self.account_view(
                request, ui, visitor, error=ui.error("invalid_identifier"), status_code=400
            )
        try:
            await self.sign_in.bluesky(identifier, SecretStr(password), person.id)
        except ApiError as error:
            return self.account_view(
                request,
                ui,
                visitor,
                error=ui.error(error.code),
                status_code=error.status_code,
                identifier=identifier,
            )
        return self.redirect("/account?done=linked", ui)

    async def unlink(self, request: Request, network: str) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        form = await request.form()
        linked = self.linked_networks(visitor)
        if not self.check_csrf(request, visitor, form):
            return self.account_view(request, ui, visitor, error=ui.error("csrf"), status_code=403)
        chosen = next((n for n in linked if n == network), None)
        if chosen is None or len(linked) < 2:
            return self.redirect("/account", ui)
        try:
            await self.sign_in.unlink(person.id, chosen)
        except ApiError as error:
            return self.account_view(
                request, ui, visitor, error=ui.error(error.code), status_code=error.status_code
            )
        return self.redirect("/account?done=unlinked", ui)

    async def delete_page(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, _person = found
        return self.render(request, ui, visitor, "delete.html", page="account", error=None)

    async def delete(self, request: Request) -> Response:
        found = self.need_person(request)
        if isinstance(found, Response):
            return found
        ui, visitor, person = found
        form = await request.form()
        if not self.check_csrf(request, visitor, form) or form.get("confirm") != "yes":
            code = "confirm" if self.check_csrf(request, visitor, form) else "csrf"
            return self.render(
                request,
                ui,
                visitor,
                "delete.html",
                status_code=400,
                page="account",
                error=ui.error(code),
            )
        await self.erase(person)
        response = self.redirect("/?erased=1", ui)
        response.delete_cookie(COOKIE)
        return response

    async def erase(self, person: Person) -> None:
        """Delete everything about the person, here and (by ``user.erased``) everywhere."""
        await erase_person(self.runtime.broker, self.people, self.settings.region, person.id)

    async def demo_archive(self) -> Response:
        """The example archive of a demonstration node (``just demo``), if there is one."""
        path = self.settings.demo_archive
        if path is None or not path.is_file():
            return Response(status_code=404)
        return FileResponse(path, media_type="application/zip", filename="x-archive-demo.zip")

    async def static(self, name: str) -> Response:
        path = STATIC / name
        media_type = STATIC_TYPES.get(path.suffix)
        if media_type is None or "/" in name or name.startswith(".") or not path.is_file():
            return Response(status_code=404)
        return FileResponse(
            path, media_type=media_type, headers={"Cache-Control": "public, max-age=300"}
        )


class _Counts:
    """The matching summary, read per network, direction and state."""

    def __init__(self, counts: tuple[MatchCount, ...]) -> None:
        self._counts = counts

    def total(self) -> int:
        return sum(c.count for c in self._counts)

    def of(self, network: str, *states: str, direction: str | None = None) -> int:
        return sum(
            c.count
            for c in self._counts
            if c.network == network
            and c.state in states
            and (direction is None or c.direction == direction)
        )

    def found(self, network: str, direction: str) -> int:
        return sum(
            c.count for c in self._counts if (c.network, c.direction) == (network, direction)
        )

    def selectable(self, network: str, direction: str) -> int:
        return self.of(network, *SELECTABLE, direction=direction)

    def row(self, ui: Ui, network: str, direction: Direction, label: str) -> dict[str, str]:
        number = ui.formats.number
        return {
            "direction": direction,
            "label": ui._(label),
            "found": number(self.found(network, direction)),
            "selected": number(self.of(network, "selected", direction=direction)),
            "waiting": number(self.of(network, "requested", direction=direction)),
            "followed": number(
                self.of(network, "followed", "already_following", direction=direction)
            ),
            "failed": number(self.of(network, "failed", "declined", direction=direction)),
        }


def _item_view(ui: Ui, item: MatchItem) -> dict[str, Any]:
    return {
        "target": item.target,
        "handle": item.handle,
        "state": item.state,
        "state_label": ui._(STATE_LABELS.get(item.state, STATE_LABELS["proposed"])),
        "selectable": item.state in SELECTABLE,
        "both": len(set(item.directions)) == 2,
        "trust": item.trust,
        "trust_label": ui._(TRUST_LABELS[item.trust]) if item.trust in TRUST_LABELS else None,
        "reason": ui.reason(item.reason) if item.state == "failed" else None,
    }


def _rate_note(ui: Ui, network: Network) -> str:
    if network == "bluesky":
        return ui._(
            "Bluesky lets an account follow about %(count)s people an hour.",
            count=ui.formats.number(int(FOLLOWS_PER_HOUR["bluesky"])),
        )
    return ui._(
        "Mastodon lets an account follow %(count)s people a day.",
        count=ui.formats.number(round(FOLLOWS_PER_HOUR["mastodon"] * 24)),
    )


def _results_notice(ui: Ui, done: str | None, count: str | None) -> str | None:
    number = ui.formats.number(int(count)) if count and count.isdigit() else "0"
    notices: dict[str, Callable[[], str]] = {
        "saved": lambda: ui._("Your selection is saved."),
        "select_all": lambda: ui._("People selected: %(count)s.", count=number),
        "clear_all": lambda: ui._("The selection is cleared."),
        "csrf": lambda: ui.error("csrf"),
        "unavailable": lambda: ui.error("matching_unavailable"),
    }
    return notices[done]() if done in notices else None


def _account_notice(ui: Ui, done: str | None) -> str | None:
    if done == "linked":
        return ui._("The account is linked.")
    if done == "unlinked":
        return ui._("The account is unlinked, and its permission deleted.")
    return None


def _results_after_import(outcome: ImportOutcome) -> str:
    return "/results?" + urlencode({"import": outcome.import_id})


def _json_error(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code)


def _aware(moment: datetime) -> datetime:
    """Timestamps read back from SQLite are naive UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


__all__ = ["build_web", "make_templates"]
