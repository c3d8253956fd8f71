"""A small Mastodon-API server for tests and the local demo (one process = one instance).

It speaks the parts of the Mastodon client API that passerelle uses (OAuth apps
and the authorization-code flow, verify_credentials, instance, search with
WebFinger resolve across test instances, follow/unfollow, relationships,
following/followers), enforces Mastodon's real limits on a simulated clock, can
imitate other servers' quirks, and has ``/_test/*`` admin endpoints for tests.
See docs/testing-mastodon.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fnmatch
import hashlib
import html
import json
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .clock import SimClock, iso, parse_iso
from .state import (
    DEFAULT_SCOPES,
    QUIRKS,
    VALID_SCOPES,
    Account,
    App,
    FaultRule,
    Follow,
    Limits,
    Settings,
    Store,
    ThrottleHit,
    Token,
    has_any_scope,
    parse_scopes,
    rate_headers,
    reset_at,
    ruby_number,
)

log = logging.getLogger("tests.peers.mastodon")

AS_CONTEXT = "https://www.w3.org/ns/activitystreams"
ACTIVITY_JSON = "application/activity+json"
SESSION_COOKIE = "_mastodon_session"
NEXT_COOKIE = "_mastodon_next"
OOB = "urn:ietf:wg:oauth:2.0:oob"
PAGING_PARAMS = ("page", "min_id", "max_id", "since_id")
VAPID_KEY = (
    "BCk-QqERU0q-CfYZjcuB6lnyyOYfJ2AifKqfeGIm7Z-HiTU5T9eTG5GxVA0_OH5mMlI4UkkDTpaZwozy0TzdZ2M="
)

# Error texts as Mastodon / Doorkeeper word them.
E_TOKEN_INVALID = "The access token is invalid"
E_TOKEN_REVOKED = "The access token was revoked"
E_OUT_OF_SCOPE = "This action is outside the authorized scopes"
E_NEEDS_USER = "This method requires an authenticated user"
E_NOT_FOUND = "Record not found"
E_TOO_MANY = "Too many requests"
E_INVALID_CLIENT = (
    "Client authentication failed due to unknown client, no client authentication "
    "included, or unsupported authentication method."
)
E_INVALID_GRANT = (
    "The provided authorization grant is invalid, expired, revoked, does not match the "
    "redirection URI used in the authorization request, or was issued to another client."
)
E_ACCESS_DENIED = "The resource owner or authorization server denied the request."
E_INVALID_SCOPE = "The requested scope is invalid, unknown, or malformed."


@dataclass
class ServerOptions:
    domain: str
    data_dir: Path
    title: str | None = None
    start_time: float | None = None  # simulated epoch at start; None: real now
    speedup: float = 1.0
    peers: dict[str, str] = field(default_factory=dict)
    peers_file: Path | None = None
    limits: Limits = field(default_factory=Limits)
    settings: Settings = field(default_factory=Settings)


@dataclass
class Ctx:
    """One authenticated API call."""

    request: Request
    params: dict[str, Any]
    token: Token | None
    account: Account | None
    follow_headers: dict[str, str] | None = None

    @property
    def me(self) -> Account:
        assert self.account is not None
        return self.account


Handler = Callable[[Ctx], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


def truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in {"1", "true", "t", "yes", "on"}


def with_query(url: str, params: Mapping[str, str]) -> str:
    """Append parameters to a URL, keeping those it already has (Doorkeeper does the same)."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def read_params(request: Request) -> dict[str, Any]:
    """Query parameters merged with a JSON or form body (Rails merges them the same way)."""
    params: dict[str, Any] = dict(request.query_params)
    if request.method in {"POST", "PUT", "PATCH", "DELETE"}:
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            with contextlib.suppress(ValueError):
                body = await request.json()
                if isinstance(body, dict):
                    params.update(body)
        elif "form" in ctype:
            form = await request.form()
            for key in form:
                values = form.getlist(key)
                params[key] = values if key.endswith("[]") else values[-1]
    return params


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>{body}</body></html>",
        status_code=status,
    )


class MastodonServer:
    """The ASGI application of one instance (fault layer + Starlette routes)."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.domain = options.domain.lower()
        self.self_base = "http://127.0.0.1"
        self.clock = SimClock(options.start_time, options.speedup)
        self.settings = Settings(**asdict(options.settings))
        self.store = Store(self.domain, self.clock, options.limits)
        self.faults: list[FaultRule] = []
        self.peers: dict[str, str] = {k.lower(): v.rstrip("/") for k, v in options.peers.items()}
        self._peers_file_cache: tuple[float, dict[str, str]] = (-1.0, {})
        self._tasks: set[asyncio.Task[None]] = set()
        self.http: aiohttp.ClientSession | None = None
        self.app = Starlette(
            routes=self._routes(),
            lifespan=self._lifespan,
            exception_handlers={HTTPException: self._http_error},
        )

    # -- ASGI entry: the fault layer sees the raw connection ------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/_test"):
            rule = self._match_fault(scope["method"], scope["path"])
            if rule is not None:
                self.store.bump("faults_injected")
                if rule.latency:
                    await asyncio.sleep(rule.latency)
                if rule.drop:
                    await self._drop(send)
                    return
                if rule.status is not None:
                    await self._fault_response(rule)(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _match_fault(self, method: str, path: str) -> FaultRule | None:
        for rule in list(self.faults):
            if rule.method and rule.method.upper() != method.upper():
                continue
            if not fnmatch.fnmatchcase(path, rule.path):
                continue
            if rule.skip > 0:
                rule.skip -= 1
                continue
            rule.hits += 1
            if rule.count is not None:
                rule.count -= 1
                if rule.count <= 0:
                    self.faults.remove(rule)
            return rule
        return None

    async def _drop(self, send: Send) -> None:
        """Close the TCP connection without answering (uvicorn exposes its transport)."""
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()
            await asyncio.sleep(0.01)
            return
        # Fallback: promise a body, then fail: the client sees a truncated response.
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
        )
        raise ConnectionAbortedError("fault: dropped connection")

    def _fault_response(self, rule: FaultRule) -> Response:
        status = rule.status or 500
        headers = dict(rule.headers)
        if status == 429:
            body = rule.body or json.dumps({"error": E_TOO_MANY})
            ctype = rule.content_type or "application/json"
            if not self.settings.no_rate_limit_headers:
                now = self.clock.now()
                limits = self.store.limits
                reset = (
                    now + rule.reset_in
                    if rule.reset_in is not None
                    else reset_at(now, limits.token_period)
                )
                headers.setdefault("X-RateLimit-Limit", str(limits.token_requests))
                headers.setdefault("X-RateLimit-Remaining", "0")
                headers.setdefault("X-RateLimit-Reset", iso(reset))
        elif status in {502, 503, 504}:
            reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway"}
            text = f"{status} {reason[status]}"
            body = rule.body or (
                f"<html><head><title>{text}</title></head><body><center><h1>{text}</h1>"
                "</center><hr><center>nginx</center></body></html>"
            )
            ctype = rule.content_type or "text/html"
        else:
            body = rule.body or json.dumps({"error": "Internal server error"})
            ctype = rule.content_type or "application/json"
        return Response(body, status_code=status, headers=headers, media_type=ctype)

    # -- lifecycle -----------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        # aiohttp, not httpx: federation is most of an instance's own outgoing work, and
        # httpx cost about three times the CPU per request here (benchmarks run twenty).
        self.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=5.0), cookie_jar=aiohttp.DummyCookieJar()
        )
        try:
            yield
        finally:
            for task in list(self._tasks):
                task.cancel()
            await self.http.close()

    def spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background task failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 404:
            return error(404, E_NOT_FOUND)
        return error(status, getattr(exc, "detail", "error"))

    # -- routes --------------------------------------------------------------------------
    def _routes(self) -> list[Route]:
        read_accounts = ("read", "read:accounts")
        follow_scopes = ("follow", "write", "write:follows")
        api = self._api
        return [
            # OAuth
            Route("/api/v1/apps", api(self.h_create_app, auth="none"), methods=["POST"]),
            Route("/api/v1/apps/verify_credentials", api(self.h_verify_app), methods=["GET"]),
            Route("/oauth/authorize", self.oauth_authorize, methods=["GET", "POST", "DELETE"]),
            Route("/oauth/authorize/native", self.oauth_native, methods=["GET"]),
            Route("/oauth/token", self.oauth_token, methods=["POST"]),
            Route("/oauth/revoke", self.oauth_revoke, methods=["POST"]),
            Route("/.well-known/oauth-authorization-server", self.oauth_metadata),
            Route("/auth/sign_in", self.sign_in, methods=["GET", "POST"]),
            # API
            Route(
                "/api/v1/accounts/verify_credentials",
                api(
                    self.h_verify_credentials,
                    scopes=(*read_accounts, "profile"),
                    user=True,
                    strict_read=True,
                ),
            ),
            Route("/api/v1/instance", api(self.h_instance_v1, auth="none")),
            Route("/api/v2/instance", api(self.h_instance_v2, auth="none")),
            Route(
                "/api/v2/search",
                api(
                    self.h_search, scopes=("read", "read:search"), auth="optional", strict_read=True
                ),
            ),
            Route(
                "/api/v1/accounts/relationships",
                api(
                    self.h_relationships,
                    scopes=("read", "read:follows"),
                    user=True,
                    strict_read=True,
                ),
            ),
            Route(
                "/api/v1/accounts/lookup",
                api(self.h_lookup, scopes=read_accounts, auth="optional"),
            ),
            Route(
                "/api/v1/follow_requests",
                api(self.h_follow_requests, scopes=("follow", "read", "read:follows"), user=True),
            ),
            Route(
                "/api/v1/follow_requests/{id}/authorize",
                api(self.h_authorize_request, scopes=follow_scopes, user=True),
                methods=["POST"],
            ),
            Route(
                "/api/v1/follow_requests/{id}/reject",
                api(self.h_reject_request, scopes=follow_scopes, user=True),
                methods=["POST"],
            ),
            Route(
                "/api/v1/accounts/{id}/follow",
                api(self.h_follow, scopes=follow_scopes, user=True, follow_route=True),
                methods=["POST"],
            ),
            Route(
                "/api/v1/accounts/{id}/unfollow",
                api(self.h_unfollow, scopes=follow_scopes, user=True),
                methods=["POST"],
            ),
            Route(
                "/api/v1/accounts/{id}/following",
                api(self.h_following, scopes=read_accounts, auth="optional"),
            ),
            Route(
                "/api/v1/accounts/{id}/followers",
                api(self.h_followers, scopes=read_accounts, auth="optional"),
            ),
            Route(
                "/api/v1/accounts/{id}", api(self.h_account, scopes=read_accounts, auth="optional")
            ),
            # Federation (what other instances use)
            Route("/.well-known/webfinger", self.webfinger),
            Route("/.well-known/nodeinfo", self.nodeinfo_links),
            Route("/nodeinfo/2.0", self.nodeinfo),
            Route("/users/{username}", self.actor),
            Route("/@{username}", self.profile),
            Route("/users/{username}/followers", self.collection),
            Route("/users/{username}/following", self.collection),
            Route("/users/{username}/inbox", self.inbox, methods=["POST"]),
            Route("/inbox", self.inbox, methods=["POST"]),
            # Test administration
            Route("/_test/health", self.t_health),
            Route("/_test/reset", self.t_reset, methods=["POST"]),
            Route("/_test/accounts", self.t_accounts, methods=["GET", "POST"]),
            Route("/_test/login", self.t_login, methods=["GET", "POST"]),
            Route("/_test/follows", self.t_follows),
            Route("/_test/stats", self.t_stats),
            Route("/_test/apps", self.t_apps),
            Route("/_test/tokens", self.t_tokens),
            Route("/_test/tokens/revoke", self.t_revoke, methods=["POST"]),
            Route("/_test/faults", self.t_faults, methods=["GET", "POST", "DELETE"]),
            Route("/_test/clock", self.t_clock, methods=["GET", "POST"]),
            Route("/_test/config", self.t_config, methods=["GET", "POST"]),
            Route("/_test/peers", self.t_peers, methods=["GET", "POST"]),
        ]

    # -- the API guard: throttles, rate-limit headers, token, scopes ---------------------
    def _api(
        self,
        handler: Handler,
        *,
        scopes: tuple[str, ...] = (),
        auth: Literal["required", "optional", "none"] = "required",
        user: bool = False,
        strict_read: bool = False,
        follow_route: bool = False,
    ) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            st = self.store
            st.bump("requests")
            raw = self._bearer(request)
            token = st.tokens.get(raw) if raw else None
            live = (
                token if token and token.revoked_at is None and token.client_id in st.apps else None
            )
            account = st.accounts.get(live.account_id) if live and live.account_id else None
            paging = any(p in request.query_params for p in PAGING_PARAMS)
            limits = st.limits
            hits: list[ThrottleHit] = []
            if live is not None:
                hits.append(
                    st.hit("per_token", str(live.id), limits.token_requests, limits.token_period)
                )
                if account is not None:
                    hits.append(
                        st.hit("per_user", account.id, limits.user_requests, limits.user_period)
                    )
                    if paging:
                        hits.append(
                            st.hit(
                                "paging", account.id, limits.paging_requests, limits.paging_period
                            )
                        )
            else:
                ip = self._client_ip(request)
                hits.append(st.hit("unauthenticated", ip, limits.ip_requests, limits.ip_period))
                if paging:
                    hits.append(
                        st.hit("paging_ip", ip, limits.paging_requests, limits.paging_period)
                    )
            now = self.clock.now()
            throttled = next((h for h in hits if h.throttled), None)
            if throttled is not None:
                st.bump("throttled")
                st.bump(f"throttled.{throttled.name}")
                if follow_route and account is not None:
                    target = st.accounts.get(request.path_params.get("id", ""))
                    st.record_attempt(
                        account.id, target.id if target else "?", "refused_request_limit", 429
                    )
                return self._finish(
                    error(429, E_TOO_MANY),
                    rate_headers(throttled.limit, 0, throttled.period, now),
                )
            top = min(hits, key=lambda h: h.limit - h.count)
            headers = rate_headers(top.limit, top.limit - top.count, top.period, now)

            denied = self._authorize(raw, token, live, account, auth, scopes, user, strict_read)
            if denied is not None:
                return self._finish(denied, headers)
            params = await read_params(request)
            ctx = Ctx(request=request, params=params, token=live, account=account)
            response = await handler(ctx)
            # The follow endpoint also reports the follows budget (override_rate_limit_headers
            # in Mastodon): whichever budget has fewer requests remaining is shown.
            if ctx.follow_headers is not None and int(
                ctx.follow_headers["X-RateLimit-Remaining"]
            ) <= int(headers["X-RateLimit-Remaining"]):
                headers = ctx.follow_headers
            return self._finish(response, headers)

        return endpoint

    def _authorize(
        self,
        raw: str | None,
        token: Token | None,
        live: Token | None,
        account: Account | None,
        auth: str,
        scopes: tuple[str, ...],
        user: bool,
        strict_read: bool,
    ) -> Response | None:
        if auth == "none":
            return None
        if token is not None and token.revoked_at is not None:
            return self._unauthorized(E_TOKEN_REVOKED)
        if auth == "required" and live is None:
            return self._unauthorized(E_TOKEN_INVALID)
        if live is None:
            return None
        if scopes and not has_any_scope(live.scopes, scopes):
            return error(403, E_OUT_OF_SCOPE)
        if strict_read and self.settings.granular_scopes_unsupported and "read" not in live.scopes:
            return error(403, "out_of_scope_for_token", error_description=E_OUT_OF_SCOPE)
        if user and account is None:
            return error(422, E_NEEDS_USER)
        return None

    def _unauthorized(self, message: str) -> Response:
        response = error(401, message)
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="Doorkeeper", error="invalid_token", error_description="{message}"'
        )
        return response

    def _finish(self, response: Response, headers: Mapping[str, str]) -> Response:
        if not self.settings.no_rate_limit_headers:
            for key, value in headers.items():
                response.headers[key] = value
        response.headers["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate"
        return response

    @staticmethod
    def _bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip() or None
        return request.query_params.get("access_token") or None

    @staticmethod
    def _client_ip(request: Request) -> str:
        host = request.client.host if request.client else "unknown"
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded and host in {"127.0.0.1", "::1"}:
            return forwarded.split(",")[0].strip()
        return host

    # -- JSON views ------------------------------------------------------------------------
    def account_json(self, account: Account, *, source: bool = False) -> dict[str, Any]:
        st = self.store
        day = math.floor(account.created_at / 86_400) * 86_400
        media = f"https://{self.domain}/avatars/original/missing.png"
        data: dict[str, Any] = {
            "id": account.id,
            "username": account.username,
            "acct": account.acct(),
            "display_name": account.display_name,
            "locked": account.locked,
            "bot": account.bot,
            "discoverable": True,
            "indexable": False,
            "group": False,
            "created_at": iso(day, 3),
            "note": f"<p>{html.escape(account.note)}</p>" if account.note else "",
            "url": account.url,
            "uri": account.uri,
            "avatar": media,
            "avatar_static": media,
            "header": f"https://{self.domain}/headers/original/missing.png",
            "header_static": f"https://{self.domain}/headers/original/missing.png",
            "followers_count": st.followers_count(account),
            "following_count": st.following_count(account),
            "statuses_count": 0,
            "last_status_at": None,
            "hide_collections": False,
            "noindex": False,
            "emojis": [],
            "roles": [],
            "fields": [],
        }
        if source:
            requests = sum(
                1
                for f in st.follows.values()
                if f.target_id == account.id and f.state == "requested"
            )
            data["source"] = {
                "privacy": "public",
                "sensitive": False,
                "language": None,
                "note": account.note,
                "fields": [],
                "follow_requests_count": requests,
            }
            data["role"] = {
                "id": "-99",
                "name": "",
                "permissions": "0",
                "color": "",
                "highlighted": False,
            }
        return data

    def relationship(self, me: Account, other: Account) -> dict[str, Any]:
        out = self.store.follow_between(me.id, other.id)
        back = self.store.follow_between(other.id, me.id)
        following = out is not None and out.state == "accepted"
        return {
            "id": other.id,
            "following": following,
            "showing_reblogs": following,
            "notifying": False,
            "languages": None,
            "followed_by": back is not None and back.state == "accepted",
            "blocking": False,
            "blocked_by": False,
            "muting": False,
            "muting_notifications": False,
            "requested": out is not None and out.state == "requested",
            "requested_by": back is not None and back.state == "requested",
            "domain_blocking": False,
            "endorsed": False,
            "note": "",
        }

    def app_json(self, app: App, *, secret: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": app.id,
            "name": app.name,
            "website": app.website,
            "scopes": app.scopes,
            "redirect_uri": "\n".join(app.redirect_uris),
            "redirect_uris": app.redirect_uris,
            "vapid_key": VAPID_KEY,
        }
        if secret:
            data["client_id"] = app.client_id
            data["client_secret"] = app.client_secret
            data["client_secret_expires_at"] = 0
        return data

    # -- OAuth ---------------------------------------------------------------------------
    async def h_create_app(self, ctx: Ctx) -> Response:
        name = str(ctx.params.get("client_name") or "").strip()
        raw_uris = ctx.params.get("redirect_uris") or ctx.params.get("redirect_uris[]")
        if isinstance(raw_uris, list):
            uris = [str(u).strip() for u in raw_uris if str(u).strip()]
        else:
            uris = str(raw_uris or "").split()
        scopes = parse_scopes(ctx.params.get("scopes")) or list(DEFAULT_SCOPES)
        if not name:
            return error(422, "Validation failed: Application name can't be blank")
        if not uris:
            return error(422, "Validation failed: Redirect URI can't be blank")
        for uri in uris:
            parts = urlsplit(uri)
            if uri != OOB and not (
                parts.scheme and (parts.netloc or parts.scheme not in {"http", "https"})
            ):
                return error(422, "Validation failed: Redirect URI must be an absolute URI.")
            if parts.fragment:
                return error(422, "Validation failed: Redirect URI cannot contain a fragment.")
        unknown = [s for s in scopes if s not in VALID_SCOPES]
        if unknown:
            return error(422, "Validation failed: Scopes must be a subset of the configured scopes")
        website = ctx.params.get("website") or None
        app = self.store.create_app(name, uris, scopes, website)
        self.store.bump("apps_registered")
        return JSONResponse(self.app_json(app, secret=True))

    async def h_verify_app(self, ctx: Ctx) -> Response:
        assert ctx.token is not None
        app = self.store.apps[ctx.token.client_id]
        return JSONResponse(self.app_json(app, secret=False))

    def _session_user(self, request: Request, params: Mapping[str, Any]) -> Account | None:
        username = params.get("login_as") or request.cookies.get(SESSION_COOKIE)
        return self.store.local_by_username(str(username)) if username else None

    async def oauth_authorize(self, request: Request) -> Response:
        params = await read_params(request)
        deny = request.method == "DELETE" or str(params.get("_method", "")).lower() == "delete"
        app = self.store.apps.get(str(params.get("client_id", "")))
        if app is None:
            return page(
                "Error",
                "<h1>invalid_client</h1><p>" + html.escape(E_INVALID_CLIENT) + "</p>",
                status=401,
            )
        redirect_uri = str(params.get("redirect_uri") or "")
        if not redirect_uri and len(app.redirect_uris) == 1:
            redirect_uri = app.redirect_uris[0]
        if redirect_uri not in app.redirect_uris:
            return page(
                "Error",
                "<h1>invalid_redirect_uri</h1><p>The requested redirect uri is malformed or "
                "doesn't match client redirect URI.</p>",
                status=400,
            )
        state = params.get("state")

        def back(extra: dict[str, str]) -> Response:
            if state is not None:
                extra["state"] = str(state)
            if redirect_uri == OOB:
                return page("Error", f"<h1>{html.escape(extra.get('error', ''))}</h1>", status=400)
            return RedirectResponse(with_query(redirect_uri, extra), status_code=302)

        if params.get("response_type") != "code":
            return back(
                {
                    "error": "unsupported_response_type",
                    "error_description": "The authorization server does not support this "
                    "response type.",
                }
            )
        scopes = parse_scopes(params.get("scope")) or list(DEFAULT_SCOPES)
        if any(s not in VALID_SCOPES or s not in app.scopes for s in scopes):
            return back({"error": "invalid_scope", "error_description": E_INVALID_SCOPE})
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or ("S256" if challenge else None)
        if challenge and method != "S256":
            return back(
                {
                    "error": "invalid_request",
                    "error_description": "Code challenge method must be S256.",
                }
            )
        account = self._session_user(request, params)
        if account is None:
            response = RedirectResponse("/auth/sign_in", status_code=302)
            response.set_cookie(NEXT_COOKIE, str(request.url), httponly=True)
            return response
        if request.method == "GET":
            return self._authorize_page(app, account, params, redirect_uri, scopes)
        if deny:
            self.store.bump("oauth_denied")
            return back({"error": "access_denied", "error_description": E_ACCESS_DENIED})
        grant = self.store.create_grant(app, account, redirect_uri, scopes, challenge)
        self.store.bump("oauth_authorized")
        if redirect_uri == OOB:
            return RedirectResponse(
                "/oauth/authorize/native?" + urlencode({"code": grant.code}), status_code=302
            )
        return back({"code": grant.code})

    def _authorize_page(
        self,
        app: App,
        account: Account,
        params: Mapping[str, Any],
        redirect_uri: str,
        scopes: list[str],
    ) -> Response:
        fields_ = {
            "client_id": app.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": " ".join(scopes),
        }
        for key in ("state", "code_challenge", "code_challenge_method", "login_as"):
            if params.get(key) is not None:
                fields_[key] = str(params[key])
        hidden = "".join(
            f"<input type='hidden' name='{html.escape(k)}' value='{html.escape(v)}'>"
            for k, v in fields_.items()
        )
        scope_list = "".join(f"<li>{html.escape(s)}</li>" for s in scopes)
        body = (
            f"<h1>Authorization required</h1>"
            f"<p><strong>{html.escape(app.name)}</strong> would like permission to access your "
            f"account <strong>@{html.escape(account.username)}@{html.escape(self.domain)}"
            f"</strong>.</p><ul class='scopes'>{scope_list}</ul>"
            f"<form id='approve' method='post' action='/oauth/authorize'>{hidden}"
            "<button type='submit' name='button' value='approve'>Authorize</button></form>"
            f"<form id='deny' method='post' action='/oauth/authorize'>{hidden}"
            "<input type='hidden' name='_method' value='delete'>"
            "<button type='submit' name='button' value='deny'>Deny</button></form>"
        )
        return page("Authorization required", body)

    async def oauth_native(self, request: Request) -> Response:
        code = html.escape(request.query_params.get("code", ""))
        return page("Authorization code", f"<p>Copy this code:</p><input id='code' value='{code}'>")

    def _client_from(self, request: Request, params: Mapping[str, Any]) -> App | None:
        client_id = str(params.get("client_id") or "")
        secret = str(params.get("client_secret") or "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("basic "):
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        app = self.store.apps.get(client_id)
        if app is None or not secret or secret != app.client_secret:
            return None
        return app

    async def oauth_token(self, request: Request) -> Response:
        params = await read_params(request)
        st = self.store
        grant_type = params.get("grant_type")
        app = self._client_from(request, params)
        if grant_type not in {"authorization_code", "client_credentials"}:
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported by the "
                    "authorization server.",
                },
                status_code=400,
            )
        if app is None:
            st.bump("oauth_invalid_client")
            return JSONResponse(
                {"error": "invalid_client", "error_description": E_INVALID_CLIENT}, status_code=401
            )
        if grant_type == "client_credentials":
            scopes = parse_scopes(params.get("scope")) or list(DEFAULT_SCOPES)
            if any(s not in app.scopes for s in scopes):
                return JSONResponse(
                    {"error": "invalid_scope", "error_description": E_INVALID_SCOPE},
                    status_code=400,
                )
            token = st.create_token(app, None, scopes)
            return self._token_response(token)
        grant = st.grants.get(str(params.get("code") or ""))
        invalid = JSONResponse(
            {"error": "invalid_grant", "error_description": E_INVALID_GRANT}, status_code=400
        )
        if (
            grant is None
            or grant.used
            or grant.client_id != app.client_id
            or grant.expires_at < self.clock.now()
            or str(params.get("redirect_uri") or grant.redirect_uri) != grant.redirect_uri
        ):
            st.bump("oauth_invalid_grant")
            return invalid
        if grant.code_challenge is not None:
            verifier = str(params.get("code_verifier") or "")
            digest = hashlib.sha256(verifier.encode()).digest()
            expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if expected != grant.code_challenge:
                st.bump("oauth_invalid_grant")
                return invalid
        grant.used = True
        account = st.accounts.get(grant.account_id)
        token = st.create_token(app, account, grant.scopes)
        st.bump("tokens_issued")
        return self._token_response(token)

    @staticmethod
    def _token_response(token: Token) -> Response:
        return JSONResponse(
            {
                "access_token": token.token,
                "token_type": "Bearer",
                "scope": " ".join(token.scopes),
                "created_at": int(token.created_at),
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def oauth_revoke(self, request: Request) -> Response:
        params = await read_params(request)
        app = self._client_from(request, params)
        unauthorized = JSONResponse(
            {
                "error": "unauthorized_client",
                "error_description": "You are not authorized to revoke this token",
            },
            status_code=403,
        )
        if app is None:
            return unauthorized
        token = self.store.tokens.get(str(params.get("token") or ""))
        if token is not None:
            if token.client_id != app.client_id:
                return unauthorized
            self.store.revoke_token(token)
            self.store.bump("tokens_revoked")
        return JSONResponse({})

    async def oauth_metadata(self, request: Request) -> Response:
        if self.settings.no_oauth_metadata or self.settings.software != "mastodon":
            return page("The page you were looking for doesn't exist", "<h1>404</h1>", status=404)
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "issuer": f"{base}/",
                "service_documentation": "https://docs.joinmastodon.org/",
                "authorization_endpoint": f"{base}/oauth/authorize",
                "token_endpoint": f"{base}/oauth/token",
                "revocation_endpoint": f"{base}/oauth/revoke",
                "app_registration_endpoint": f"{base}/api/v1/apps",
                "scopes_supported": sorted(VALID_SCOPES),
                "response_types_supported": ["code"],
                "response_modes_supported": ["query", "fragment", "form_post"],
                "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )

    async def sign_in(self, request: Request) -> Response:
        if request.method == "GET":
            return page(
                "Log in",
                "<h1>Log in</h1><form id='sign_in' method='post' action='/auth/sign_in'>"
                "<input name='username' placeholder='username'>"
                "<input name='password' type='password' placeholder='password'>"
                "<button type='submit'>Log in</button></form>",
            )
        params = await read_params(request)
        name = str(params.get("username") or params.get("user[email]") or "").split("@")[0]
        account = self.store.local_by_username(name)
        if account is None or str(params.get("password") or "") != account.password:
            return page("Log in", "<p class='error'>Invalid username or password.</p>", 401)
        target = request.cookies.get(NEXT_COOKIE) or "/"
        response = RedirectResponse(target, status_code=302)
        response.set_cookie(SESSION_COOKIE, account.username, httponly=True)
        response.delete_cookie(NEXT_COOKIE)
        return response

    # -- API handlers --------------------------------------------------------------------
    async def h_verify_credentials(self, ctx: Ctx) -> Response:
        return JSONResponse(self.account_json(ctx.me, source=True))

    def _instance_common(self) -> dict[str, Any]:
        return {
            "title": self.options.title or f"{self.domain} (passerelle test instance)",
            "version": self.settings.version_string(),
            "description": "A test server speaking the Mastodon API.",
            "languages": ["en"],
            "rules": [],
        }

    async def h_instance_v1(self, ctx: Ctx) -> Response:
        local = sum(1 for a in self.store.accounts.values() if a.local)
        domains = {a.domain for a in self.store.accounts.values() if a.domain}
        return JSONResponse(
            {
                "uri": self.domain,
                **self._instance_common(),
                "short_description": "A test server speaking the Mastodon API.",
                "email": f"admin@{self.domain}",
                "urls": {"streaming_api": f"wss://{self.domain}"},
                "stats": {"user_count": local, "status_count": 0, "domain_count": len(domains)},
                "thumbnail": None,
                "registrations": False,
                "approval_required": False,
                "invites_enabled": False,
                "configuration": {"accounts": {"max_featured_tags": 10}},
                "contact_account": None,
            }
        )

    async def h_instance_v2(self, ctx: Ctx) -> Response:
        if self.settings.software == "pleroma":
            return error(404, "Not found")
        local = sum(1 for a in self.store.accounts.values() if a.local)
        return JSONResponse(
            {
                "domain": self.domain,
                **self._instance_common(),
                "source_url": "https://github.com/mastodon/mastodon",
                "usage": {"users": {"active_month": local}},
                "thumbnail": {"url": f"https://{self.domain}/packs/media/images/preview.png"},
                "configuration": {
                    "urls": {"streaming": f"wss://{self.domain}"},
                    "accounts": {"max_featured_tags": 10, "max_pinned_statuses": 5},
                },
                "registrations": {"enabled": False, "approval_required": False, "message": None},
                "api_versions": {"mastodon": 2},
                "contact": {"email": f"admin@{self.domain}", "account": None},
            }
        )

    async def h_search(self, ctx: Ctx) -> Response:
        q = str(ctx.params.get("q") or "").strip()
        if not q:
            return error(400, "param is missing or the value is empty: q")
        resolve = truthy(ctx.params.get("resolve", False))
        if resolve and ctx.account is None:
            return error(
                401,
                "Search queries that resolve remote resources are not supported without "
                "authentication",
            )
        kind = ctx.params.get("type")
        try:
            limit = min(max(int(ctx.params.get("limit") or 20), 1), 40)
            offset = max(int(ctx.params.get("offset") or 0), 0)
        except ValueError:
            return error(400, "invalid limit or offset")
        accounts: list[Account] = []
        if kind in (None, "", "accounts"):
            accounts = await self.search_accounts(q, resolve=resolve, limit=limit, offset=offset)
        return JSONResponse(
            {"accounts": [self.account_json(a) for a in accounts], "statuses": [], "hashtags": []}
        )

    async def search_accounts(
        self, q: str, *, resolve: bool, limit: int, offset: int
    ) -> list[Account]:
        st = self.store
        if q.startswith(("http://", "https://")):
            known = st.by_uri(q) or next((a for a in st.accounts.values() if a.url == q), None)
            if known is None and resolve:
                known = await self.fetch_actor(q)
            return [known] if known is not None and offset == 0 else []
        term = q.lstrip("@")
        if "@" in term:
            username, domain = term.split("@", 1)
            if domain.lower() == self.domain:
                found = st.local_by_username(username)
                return [found] if found is not None and offset == 0 else []
            found = st.by_acct(term)
            if found is None and resolve:
                found = await self.resolve_remote(username, domain)
            return [found] if found is not None and offset == 0 else []
        lowered = term.lower()
        matches = sorted(
            (
                a
                for a in st.accounts.values()
                if a.username.lower().startswith(lowered)
                or a.display_name.lower().startswith(lowered)
            ),
            key=lambda a: (a.username.lower() != lowered, not a.local, a.acct().lower()),
        )
        return matches[offset : offset + limit]

    def _account_param(self, ctx: Ctx) -> Account | None:
        account = self.store.accounts.get(ctx.request.path_params.get("id", ""))
        return None if account is None or account.suspended else account

    async def h_account(self, ctx: Ctx) -> Response:
        account = self._account_param(ctx)
        if account is None:
            return error(404, E_NOT_FOUND)
        return JSONResponse(self.account_json(account))

    async def h_lookup(self, ctx: Ctx) -> Response:
        acct = str(ctx.params.get("acct") or "")
        account = self.store.by_acct(acct) if acct else None
        if account is None:
            return error(404, E_NOT_FOUND)
        return JSONResponse(self.account_json(account))

    async def h_relationships(self, ctx: Ctx) -> Response:
        query = ctx.request.query_params
        ids = query.getlist("id[]") + query.getlist("id")
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for account_id in ids:
            other = self.store.accounts.get(account_id)
            if other is not None and account_id not in seen:
                seen.add(account_id)
                out.append(self.relationship(ctx.me, other))
        return JSONResponse(out)

    async def h_follow(self, ctx: Ctx) -> Response:
        st = self.store
        me = ctx.me
        target = self._account_param(ctx)
        if target is None or target.id == me.id:
            return error(404, E_NOT_FOUND)
        existing = st.follow_between(me.id, target.id)
        if existing is not None:
            st.bump("follows.duplicate")
            st.record_attempt(me.id, target.id, "duplicate", 200, existing.id)
        else:
            ctx.follow_headers = st.follow_family_headers(me.id)
            if st.cap_reached(me):
                st.bump("follows.refused_cap")
                st.record_attempt(me.id, target.id, "refused_cap", 422)
                cap = ruby_number(st.follow_cap(me))
                return error(422, f"Validation failed: You cannot follow more than {cap} people")
            if not st.follow_family_record(me.id):
                st.bump("follows.refused_rate_limit")
                st.record_attempt(me.id, target.id, "refused_rate_limit", 429)
                return error(429, E_TOO_MANY)
            if self.settings.async_follow:
                follow = st.add_follow(me, target, "pending", "api")
                self.spawn(self._apply_later(follow.id, self.settings.async_follow_delay))
            elif target.locked or not target.local:
                follow = st.add_follow(me, target, "requested", "api")
                if not target.local:
                    self._send_follow(me, target, follow)
            else:
                follow = st.add_follow(me, target, "accepted", "api")
            st.bump("follows.created")
            st.record_attempt(me.id, target.id, "created", 200, follow.id)
        ctx.follow_headers = st.follow_family_headers(me.id)
        rel = self.relationship(me, target)
        if not self.settings.async_follow and not target.locked:
            # Api::V1::AccountsController#follow answers optimistically for unlocked targets.
            rel["following"] = True
            rel["showing_reblogs"] = True
            rel["requested"] = False
        return JSONResponse(rel)

    async def _apply_later(self, follow_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        st = self.store
        follow = st.follows.get(follow_id)
        if follow is None or follow.state != "pending":
            return
        me, target = st.accounts[follow.account_id], st.accounts[follow.target_id]
        if target.local and not target.locked:
            st.accept_follow(follow)
        else:
            follow.state = "requested"
            if not target.local:
                self._send_follow(me, target, follow)

    def _send_follow(self, me: Account, target: Account, follow: Follow) -> None:
        follow.uri = f"https://{self.domain}/{uuid.uuid4()}"
        activity = {
            "@context": AS_CONTEXT,
            "id": follow.uri,
            "type": "Follow",
            "actor": me.uri,
            "object": target.uri,
        }
        if target.inbox:
            self.spawn(self.deliver(target.inbox, activity))

    async def h_unfollow(self, ctx: Ctx) -> Response:
        st = self.store
        target = self._account_param(ctx)
        if target is None:
            return error(404, E_NOT_FOUND)
        follow = st.follow_between(ctx.me.id, target.id)
        if follow is not None:
            st.remove_follow(follow)
            st.bump("unfollows")
            if not target.local and follow.uri and target.inbox:
                undo = {
                    "@context": AS_CONTEXT,
                    "id": f"{ctx.me.uri}#follows/{follow.id}/undo",
                    "type": "Undo",
                    "actor": ctx.me.uri,
                    "object": {
                        "id": follow.uri,
                        "type": "Follow",
                        "actor": ctx.me.uri,
                        "object": target.uri,
                    },
                }
                self.spawn(self.deliver(target.inbox, undo))
        return JSONResponse(self.relationship(ctx.me, target))

    async def h_follow_requests(self, ctx: Ctx) -> Response:
        st = self.store
        requesters = [
            st.accounts[f.account_id]
            for f in sorted(st.follows.values(), key=lambda f: int(f.id), reverse=True)
            if f.target_id == ctx.me.id and f.state == "requested"
        ]
        return JSONResponse([self.account_json(a) for a in requesters[:80]])

    async def h_authorize_request(self, ctx: Ctx) -> Response:
        return self._decide_request(ctx, accept=True)

    async def h_reject_request(self, ctx: Ctx) -> Response:
        return self._decide_request(ctx, accept=False)

    def _decide_request(self, ctx: Ctx, *, accept: bool) -> Response:
        st = self.store
        requester = self._account_param(ctx)
        follow = st.follow_between(requester.id, ctx.me.id) if requester else None
        if requester is None or follow is None or follow.state != "requested":
            return error(404, E_NOT_FOUND)
        if accept:
            st.accept_follow(follow)
        else:
            st.remove_follow(follow)
        if not requester.local and requester.inbox and follow.uri:
            self._answer_follow(ctx.me, requester, follow, accept=accept)
        return JSONResponse(self.relationship(ctx.me, requester))

    async def h_following(self, ctx: Ctx) -> Response:
        return self._follow_list(ctx, outgoing=True)

    async def h_followers(self, ctx: Ctx) -> Response:
        return self._follow_list(ctx, outgoing=False)

    def _follow_list(self, ctx: Ctx, *, outgoing: bool) -> Response:
        st = self.store
        account = self._account_param(ctx)
        if account is None:
            return error(404, E_NOT_FOUND)
        q = ctx.request.query_params
        try:
            limit = min(max(int(q.get("limit") or 40), 1), 80)
            max_id = int(q["max_id"]) if q.get("max_id") else None
            since_id = int(q["since_id"]) if q.get("since_id") else None
            min_id = int(q["min_id"]) if q.get("min_id") else None
        except ValueError:
            return error(400, "invalid pagination parameter")
        rows = sorted(
            (
                f
                for f in st.follows.values()
                if f.state == "accepted"
                and (f.account_id if outgoing else f.target_id) == account.id
            ),
            key=lambda f: int(f.id),
            reverse=True,
        )
        if max_id is not None:
            rows = [f for f in rows if int(f.id) < max_id]
        if since_id is not None:
            rows = [f for f in rows if int(f.id) > since_id]
        if min_id is not None:
            rows = [f for f in rows if int(f.id) > min_id][-limit:]
        else:
            rows = rows[:limit]
        accounts = [st.accounts[f.target_id if outgoing else f.account_id] for f in rows]
        links = []
        base: URL = ctx.request.url
        keep = {"limit": q["limit"]} if q.get("limit") else {}
        if len(rows) == limit:
            url = base.replace(query=urlencode({**keep, "max_id": rows[-1].id}))
            links.append(f'<{url}>; rel="next"')
        if rows:
            url = base.replace(query=urlencode({**keep, "min_id": rows[0].id}))
            links.append(f'<{url}>; rel="prev"')
        headers = {"Link": ", ".join(links)} if links else {}
        return JSONResponse([self.account_json(a) for a in accounts], headers=headers)

    # -- federation: peers, WebFinger, actors, inbox -------------------------------------
    def peer_base(self, domain: str) -> str | None:
        domain = domain.lower()
        if domain == self.domain:
            return self.self_base
        if domain in self.peers:
            return self.peers[domain]
        path = self.options.peers_file
        if path is None:
            return None
        try:
            mtime = path.stat().st_mtime
            if mtime != self._peers_file_cache[0]:
                loaded = json.loads(path.read_text())
                self._peers_file_cache = (
                    mtime,
                    {str(k).lower(): str(v).rstrip("/") for k, v in loaded.items()},
                )
        except (OSError, ValueError):
            return None
        return self._peers_file_cache[1].get(domain)

    def fetchable(self, uri: str) -> str | None:
        """Map ``https://beta.test/users/bob`` to ``http://127.0.0.1:PORT/users/bob``."""
        parts = urlsplit(uri)
        if not parts.hostname:
            return None
        base = self.peer_base(parts.hostname)
        if base is None:
            return None
        return base + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def _get_json(self, url: str, accept: str) -> dict[str, Any] | None:
        assert self.http is not None
        try:
            async with self.http.get(
                url, headers={"Accept": accept}, allow_redirects=False
            ) as response:
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            self.store.bump("federation_errors")
            return None
        if status != 200:
            self.store.bump("federation_errors")
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def resolve_remote(self, username: str, domain: str) -> Account | None:
        base = self.peer_base(domain)
        if base is None:
            self.store.bump("resolve_unknown_domain")
            return None
        jrd = await self._get_json(
            f"{base}/.well-known/webfinger?" + urlencode({"resource": f"acct:{username}@{domain}"}),
            "application/jrd+json",
        )
        if jrd is None:
            return None
        links = jrd.get("links") or []
        href = next(
            (
                link.get("href")
                for link in links
                if isinstance(link, dict)
                and link.get("rel") == "self"
                and ACTIVITY_JSON in str(link.get("type", ""))
            ),
            None,
        )
        if not href:
            return None
        self.store.bump("webfinger_resolved")
        return await self.fetch_actor(str(href))

    async def fetch_actor(self, uri: str) -> Account | None:
        st = self.store
        known = st.by_uri(uri)
        if known is not None and known.local:
            return known
        url = self.fetchable(uri)
        if url is None:
            return None
        actor = await self._get_json(url, ACTIVITY_JSON)
        if actor is None or actor.get("type") not in {
            "Person",
            "Service",
            "Group",
            "Organization",
            "Application",
        }:
            return None
        actor_id = str(actor.get("id") or uri)
        host = urlsplit(actor_id).hostname
        if not host or host == self.domain:
            return st.by_uri(actor_id)
        counts: dict[str, int] = {}
        for key in ("followers", "following"):
            collection = actor.get(key)
            total = None
            if isinstance(collection, str) and (target := self.fetchable(collection)):
                data = await self._get_json(target, ACTIVITY_JSON)
                total = data.get("totalItems") if data else None
            counts[key] = int(total) if isinstance(total, int) else 0
        return st.upsert_remote_account(
            username=str(actor.get("preferredUsername") or ""),
            domain=host,
            uri=actor_id,
            url=str(actor.get("url") or actor_id),
            inbox=str(actor["inbox"]) if actor.get("inbox") else None,
            display_name=str(actor.get("name") or ""),
            note=str(actor.get("summary") or ""),
            locked=bool(actor.get("manuallyApprovesFollowers")),
            bot=actor.get("type") in {"Service", "Application"},
            followers_count=counts["followers"],
            following_count=counts["following"],
        )

    async def deliver(self, inbox: str, activity: dict[str, Any], delay: float = 0.0) -> None:
        """POST an activity to a peer's inbox, retrying a few times like a delivery worker."""
        assert self.http is not None
        if delay:
            await asyncio.sleep(delay)
        for attempt, pause in enumerate((0.0, 0.2, 1.0, 3.0)):
            if pause:
                await asyncio.sleep(pause)
            url = self.fetchable(inbox)
            if url is None:
                break
            try:
                async with self.http.post(
                    url,
                    data=json.dumps(activity),
                    headers={"Content-Type": ACTIVITY_JSON},
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                continue
            if status < 300:
                self.store.bump("deliveries")
                return
            if 400 <= status < 500 and status != 429:
                break
            log.debug("delivery attempt %d to %s failed", attempt, url)
        self.store.bump("deliveries_failed")

    def _answer_follow(
        self, me: Account, requester: Account, follow: Follow, *, accept: bool
    ) -> None:
        kind = "Accept" if accept else "Reject"
        answer = {
            "@context": AS_CONTEXT,
            "id": f"{me.uri}#{kind.lower()}s/follows/{follow.id}",
            "type": kind,
            "actor": me.uri,
            "object": {
                "id": follow.uri,
                "type": "Follow",
                "actor": requester.uri,
                "object": me.uri,
            },
        }
        if requester.inbox:
            self.spawn(self.deliver(requester.inbox, answer, self.settings.federation_delay))

    async def webfinger(self, request: Request) -> Response:
        resource = request.query_params.get("resource", "")
        username: str | None = None
        if resource.startswith("acct:"):
            user, _, domain = resource[5:].lstrip("@").partition("@")
            if domain.lower() == self.domain:
                username = user
        elif resource.startswith("https://"):
            parts = urlsplit(resource)
            if parts.hostname == self.domain:
                username = parts.path.rstrip("/").split("/")[-1].lstrip("@")
        account = self.store.local_by_username(username) if username else None
        if account is None:
            return Response(status_code=404)
        return JSONResponse(
            {
                "subject": f"acct:{account.username}@{self.domain}",
                "aliases": [account.url, account.uri],
                "links": [
                    {
                        "rel": "http://webfinger.net/rel/profile-page",
                        "type": "text/html",
                        "href": account.url,
                    },
                    {"rel": "self", "type": ACTIVITY_JSON, "href": account.uri},
                ],
            },
            media_type="application/jrd+json",
        )

    async def nodeinfo_links(self, request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "links": [
                    {
                        "rel": "http://nodeinfo.diaspora.software/ns/schema/2.0",
                        "href": f"{base}/nodeinfo/2.0",
                    }
                ]
            }
        )

    async def nodeinfo(self, request: Request) -> Response:
        version = self.settings.version_string()
        if self.settings.software == "pleroma":
            version = version.split("Pleroma ")[-1].rstrip(")")
        local = sum(1 for a in self.store.accounts.values() if a.local)
        return JSONResponse(
            {
                "version": "2.0",
                "software": {"name": self.settings.software, "version": version},
                "protocols": ["activitypub"],
                "services": {"outbound": [], "inbound": []},
                "usage": {"users": {"total": local}, "localPosts": 0},
                "openRegistrations": False,
                "metadata": {},
            }
        )

    def _actor_json(self, account: Account) -> dict[str, Any]:
        return {
            "@context": [AS_CONTEXT, "https://w3id.org/security/v1"],
            "id": account.uri,
            "type": "Service" if account.bot else "Person",
            "preferredUsername": account.username,
            "name": account.display_name,
            "summary": account.note,
            "url": account.url,
            "inbox": f"{account.uri}/inbox",
            "outbox": f"{account.uri}/outbox",
            "followers": f"{account.uri}/followers",
            "following": f"{account.uri}/following",
            "endpoints": {"sharedInbox": f"https://{self.domain}/inbox"},
            "manuallyApprovesFollowers": account.locked,
            "discoverable": True,
            "published": iso(math.floor(account.created_at / 86_400) * 86_400, 0),
        }

    async def actor(self, request: Request) -> Response:
        account = self.store.local_by_username(request.path_params["username"])
        if account is None:
            return Response(status_code=404)
        return JSONResponse(self._actor_json(account), media_type=ACTIVITY_JSON)

    async def profile(self, request: Request) -> Response:
        account = self.store.local_by_username(request.path_params["username"])
        if account is None:
            return page("Not found", "<h1>404</h1>", status=404)
        if "json" in request.headers.get("accept", ""):
            return JSONResponse(self._actor_json(account), media_type=ACTIVITY_JSON)
        return page(
            account.display_name,
            f"<h1>{html.escape(account.display_name)}</h1><p>@{html.escape(account.acct())}"
            f"@{html.escape(self.domain)}</p>",
        )

    async def collection(self, request: Request) -> Response:
        account = self.store.local_by_username(request.path_params["username"])
        if account is None:
            return Response(status_code=404)
        followers = request.url.path.endswith("/followers")
        total = (
            self.store.followers_count(account)
            if followers
            else self.store.following_count(account)
        )
        return JSONResponse(
            {
                "@context": AS_CONTEXT,
                "id": f"{account.uri}/{'followers' if followers else 'following'}",
                "type": "OrderedCollection",
                "totalItems": total,
            },
            media_type=ACTIVITY_JSON,
        )

    async def inbox(self, request: Request) -> Response:
        st = self.store
        try:
            activity = json.loads(await request.body())
        except ValueError:
            return error(400, "invalid JSON")
        if not isinstance(activity, dict):
            return error(400, "invalid activity")
        kind = activity.get("type")
        actor_uri = str(activity.get("actor") or "")
        actor = st.by_uri(actor_uri) or await self.fetch_actor(actor_uri)
        if actor is None or actor.local:
            return error(401, "unknown actor")
        st.bump(f"inbox.{kind}")
        obj = activity.get("object")
        if kind == "Follow":
            target = st.by_uri(str(obj))
            if target is None or not target.local:
                return error(404, E_NOT_FOUND)
            follow = st.follow_between(actor.id, target.id)
            if follow is None:
                state: Literal["accepted", "requested"] = (
                    "requested" if target.locked else "accepted"
                )
                follow = st.add_follow(actor, target, state, "federation", uri=activity.get("id"))
            else:
                follow.uri = str(activity.get("id") or follow.uri)
            if follow.state == "accepted":
                self._answer_follow(target, actor, follow, accept=True)
        elif kind in {"Accept", "Reject"}:
            follow_id = obj.get("id") if isinstance(obj, dict) else obj
            follow = st.follow_by_uri(str(follow_id)) if follow_id else None
            if follow is not None and follow.target_id == actor.id:
                if kind == "Accept":
                    st.accept_follow(follow)
                else:
                    st.remove_follow(follow)
        elif kind == "Undo" and isinstance(obj, dict) and obj.get("type") == "Follow":
            follow = st.follow_by_uri(str(obj.get("id")))
            if follow is None and (target := st.by_uri(str(obj.get("object")))) is not None:
                follow = st.follow_between(actor.id, target.id)
            if follow is not None and follow.account_id == actor.id:
                st.remove_follow(follow)
        return Response(status_code=202)

    # -- test administration -------------------------------------------------------------
    async def t_health(self, request: Request) -> Response:
        return JSONResponse({"ok": True, "domain": self.domain, "url": self.self_base})

    async def t_reset(self, request: Request) -> Response:
        """Forget everything (accounts, apps, tokens, follows, counters, faults, quirks)."""
        for task in list(self._tasks):
            task.cancel()
        self.clock = SimClock(self.options.start_time, self.options.speedup)
        self.settings = Settings(**asdict(self.options.settings))
        self.store = Store(self.domain, self.clock, self.options.limits)
        self.faults = []
        return JSONResponse({"ok": True})

    async def t_accounts(self, request: Request) -> Response:
        st = self.store
        if request.method == "GET":
            accounts = [
                a for a in st.accounts.values() if a.local or "remote" in request.query_params
            ]
            return JSONResponse([self.account_json(a) for a in accounts])
        body = await request.json()
        specs: list[dict[str, Any]]
        if isinstance(body, dict) and "count" in body:
            prefix = str(body.get("prefix") or "user")
            start = int(body.get("start", 1))
            extra = {k: v for k, v in body.items() if k not in {"count", "prefix", "start"}}
            specs = [
                {"username": f"{prefix}{i}", **extra}
                for i in range(start, start + int(body["count"]))
            ]
        elif isinstance(body, dict) and "accounts" in body:
            specs = list(body["accounts"])
        elif isinstance(body, dict):
            specs = [body]
        else:
            return error(400, "expected an object")
        created: list[dict[str, Any]] = []
        for spec in specs:
            try:
                account = st.create_local_account(
                    str(spec["username"]),
                    followers_count=int(spec.get("followers_count", 0)),
                    following_count=int(spec.get("following_count", 0)),
                    display_name=spec.get("display_name"),
                    locked=bool(spec.get("locked", False)),
                    bot=bool(spec.get("bot", False)),
                    password=str(spec.get("password", "password")),
                    note=str(spec.get("note", "")),
                )
            except KeyError as exc:
                return error(409, str(exc.args[0]))
            except ValueError as exc:
                return error(422, str(exc))
            created.append({**self.account_json(account), "password": account.password})
        if isinstance(body, dict) and "count" not in body and "accounts" not in body:
            return JSONResponse(created[0], status_code=201)
        return JSONResponse({"accounts": created}, status_code=201)

    async def t_login(self, request: Request) -> Response:
        params = await read_params(request)
        account = self.store.local_by_username(str(params.get("username") or ""))
        if account is None:
            return error(404, E_NOT_FOUND)
        target = params.get("next")
        response: Response = (
            RedirectResponse(str(target), status_code=302)
            if target
            else JSONResponse({"ok": True, "username": account.username})
        )
        response.set_cookie(SESSION_COOKIE, account.username, httponly=True)
        return response

    async def t_follows(self, request: Request) -> Response:
        st = self.store
        who = request.query_params.get("account")
        account = st.by_acct(who) if who else None
        if who and account is None:
            return error(404, E_NOT_FOUND)

        def mine(account_id: str) -> bool:
            return account is None or account_id == account.id

        follows = sorted(
            (f for f in st.follows.values() if mine(f.account_id)), key=lambda f: int(f.id)
        )
        attempts = [a for a in st.attempts if mine(a.account_id)]
        summary: dict[str, int] = {
            "created": 0,
            "duplicate": 0,
            "refused_rate_limit": 0,
            "refused_cap": 0,
            "refused_request_limit": 0,
        }
        for attempt in attempts:
            summary[attempt.outcome] += 1
        summary["violations"] = (
            summary["refused_rate_limit"]
            + summary["refused_cap"]
            + summary["refused_request_limit"]
        )
        return JSONResponse(
            {
                "follows": [st.follow_view(f) for f in follows],
                "attempts": [st.attempt_view(a) for a in attempts],
                "summary": summary,
            }
        )

    async def t_stats(self, request: Request) -> Response:
        st = self.store
        return JSONResponse(
            {
                "now": iso(self.clock.now()),
                "counters": dict(sorted(st.stats.items())),
                "accounts": len(st.accounts),
                "apps": len(st.apps),
                "tokens": len(st.tokens),
                "follows": len(st.follows),
                "faults_pending": len(self.faults),
            }
        )

    async def t_apps(self, request: Request) -> Response:
        return JSONResponse([self.app_json(a, secret=True) for a in self.store.apps.values()])

    def _token_view(self, token: Token) -> dict[str, Any]:
        return {
            "id": token.id,
            "token": token.token,
            "client_id": token.client_id,
            "account": self.store.acct_of(token.account_id) if token.account_id else None,
            "scopes": token.scopes,
            "created_at": iso(token.created_at),
            "revoked_at": iso(token.revoked_at) if token.revoked_at else None,
        }

    async def t_tokens(self, request: Request) -> Response:
        return JSONResponse([self._token_view(t) for t in self.store.tokens.values()])

    async def t_revoke(self, request: Request) -> Response:
        body = await request.json()
        st = self.store
        targets: list[Token] = []
        if body.get("token"):
            token = st.tokens.get(str(body["token"]))
            targets = [token] if token else []
        elif body.get("username"):
            account = st.local_by_username(str(body["username"]))
            targets = [t for t in st.tokens.values() if account and t.account_id == account.id]
        elif body.get("client_id"):
            targets = [t for t in st.tokens.values() if t.client_id == body["client_id"]]
        for token in targets:
            st.revoke_token(token)
        return JSONResponse({"revoked": len(targets)})

    async def t_faults(self, request: Request) -> Response:
        if request.method == "DELETE":
            cleared = len(self.faults)
            self.faults = []
            return JSONResponse({"cleared": cleared})
        if request.method == "POST":
            body = await request.json()
            items = body.get("rules", [body]) if isinstance(body, dict) else body
            known = {f.name for f in fields(FaultRule)}
            for item in items:
                unknown = set(item) - known
                if unknown:
                    return error(400, f"unknown fault fields: {sorted(unknown)}")
                self.faults.append(FaultRule(**item))
        return JSONResponse({"rules": [asdict(rule) for rule in self.faults]})

    async def t_clock(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            try:
                if "now" in body or "speedup" in body:
                    when = body.get("now")
                    self.clock.set(
                        None
                        if when is None
                        else (float(when) if isinstance(when, int | float) else parse_iso(when)),
                        None if body.get("speedup") is None else float(body["speedup"]),
                    )
                if "advance" in body:
                    self.clock.advance(float(body["advance"]))
            except ValueError as exc:
                return error(400, str(exc))
        now = self.clock.now()
        return JSONResponse({"now": iso(now), "epoch": now, "speedup": self.clock.speedup})

    async def t_config(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            known = {f.name for f in fields(Settings)}
            unknown = set(body) - known
            if unknown:
                return error(400, f"unknown settings: {sorted(unknown)}; known: {sorted(known)}")
            for key, value in body.items():
                setattr(self.settings, key, value)
        return JSONResponse(
            {**asdict(self.settings), "quirks": [q for q in QUIRKS if getattr(self.settings, q)]}
        )

    async def t_peers(self, request: Request) -> Response:
        if request.method == "POST":
            body = await request.json()
            self.peers.update({str(k).lower(): str(v).rstrip("/") for k, v in body.items()})
        return JSONResponse(self.peers)
