"""The Mastodon client API, as this service uses it: aiohttp, typed errors, rate headers.

Why not Mastodon.py: it is synchronous (one thread per call in flight, and this
service has hundreds in flight), it handles rate limits its own way (sleeping or
raising) where we schedule across many accounts, and it refuses plain-http test
servers and non-Mastodon version strings. Ten endpoints over an async client are
simpler. Why aiohttp and not httpx: profiled under load, httpx/httpcore/anyio took
two thirds of the sender's CPU (a pool scan with a ``getpeername`` per connection
on every request, anyio's stream layers); aiohttp does the same call for about a
third of that.

Every call is a span (``mastodon <operation>``) with the instance's domain and the
status — never a token, code, secret or the account looked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from passerelle_mastodon_sender.budget import RateInfo, parse_rate_headers
from passerelle_mastodon_sender.errors import (
    FollowCapError,
    InstanceUnreachableError,
    InvalidCodeError,
    MastodonError,
    NotFoundError,
    NotMastodonError,
    OutOfScopeError,
    RateLimitedError,
    RejectedError,
    TokenRevokedError,
    UnknownInstanceError,
)
from passerelle_mastodon_sender.instances import InstanceDirectory

tracer = trace.get_tracer("passerelle_mastodon_sender.api")

Params = list[tuple[str, str | int | float | bool | None]]


@dataclass(frozen=True)
class Response:
    """An instance's answer, read in full (bodies here are small JSON documents)."""

    status_code: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ``ValueError`` when it is not."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A successful call: the decoded JSON and the rate headers."""

    data: Any
    rate: RateInfo | None


@dataclass(frozen=True)
class InstanceInfo:
    """What an instance says about itself."""

    acct_domain: str
    """The domain in its accounts' addresses (may differ from the web domain)."""
    version: str


@dataclass(frozen=True)
class OAuthEndpoints:
    authorize: str
    token: str
    revoke: str


@dataclass(frozen=True)
class AppCredentials:
    client_id: str
    client_secret: str


@dataclass(frozen=True)
class AccessToken:
    token: str
    scopes: str


class AppRejectedError(InvalidCodeError):
    """401 ``invalid_client`` at the token endpoint: the server forgot our app."""


def _error_text(response: Response) -> str:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            return " ".join(str(body.get(k, "")) for k in ("error", "error_description")).strip()
    return ""


def _query(params: Params | None) -> list[tuple[str, str]] | None:
    if params is None:
        return None
    out = []
    for key, value in params:
        if value is None:
            continue
        out.append((key, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return out


class MastodonApi:
    """Calls to any instance: one connection pool, a concurrency cap per instance."""

    def __init__(
        self,
        directory: InstanceDirectory,
        *,
        timeout: float = 15.0,
        max_connections: int = 256,
        per_instance: int = 16,
        user_agent: str = "passerelle-mastodon-sender",
    ) -> None:
        self.directory = directory
        self._per_instance = per_instance
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._session: aiohttp.ClientSession | None = None

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _gate(self, domain: str) -> asyncio.Semaphore:
        gate = self._gates.get(domain)
        if gate is None:
            gate = self._gates[domain] = asyncio.Semaphore(self._per_instance)
        return gate

    def _client(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=self._per_instance,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers=self._headers,
                # Cookies are never part of the API; a shared jar would mix instances.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def _send(
        self,
        domain: str,
        operation: str,
        method: str,
        url: str,
        *,
        token: str | None = None,
        params: Params | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Response:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        with tracer.start_as_current_span(
            f"mastodon {operation}",
            kind=trace.SpanKind.CLIENT,
            attributes={"server.address": domain, "http.request.method": method},
        ) as span:
            try:
                async with (
                    self._gate(domain),
                    self._client().request(
                        method,
                        url,
                        params=_query(params),
                        data=data,
                        headers=headers,
                        allow_redirects=False,
                    ) as answer,
                ):
                    response = Response(answer.status, answer.headers, await answer.read())
            except aiohttp.ClientConnectorError as error:
                # DNS failure or connection refused: nothing answers at that address.
                span.set_status(Status(StatusCode.ERROR, "connect"))
                raise UnknownInstanceError(f"{domain}: no server answers") from error
            except (aiohttp.ClientError, TimeoutError) as error:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise InstanceUnreachableError(f"{domain}: {type(error).__name__}") from error
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 400:
                span.set_status(Status(StatusCode.ERROR, str(response.status_code)))
            return response

    async def _api(
        self,
        domain: str,
        operation: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: Params | None = None,
        data: Mapping[str, str] | None = None,
    ) -> Reply:
        """A client API call: 2xx JSON, or the typed error (with the rate headers on it)."""
        url = self.directory.base_url(domain) + path
        response = await self._send(
            domain, operation, method, url, token=token, params=params, data=data
        )
        rate = parse_rate_headers(response.headers)
        status = response.status_code
        if 200 <= status < 300:
            try:
                return Reply(response.json(), rate)
            except ValueError:
                raise _with_rate(
                    InstanceUnreachableError(f"{domain}: {operation} answered no JSON"), rate
                ) from None
        text = _error_text(response)
        error: MastodonError
        if status == 401:
            error = TokenRevokedError(text or "the access token is not accepted")
        elif status == 403 and ("out_of_scope" in text or "authorized scopes" in text):
            error = OutOfScopeError(text)
        elif status == 404:
            error = NotFoundError(text or "not found")
        elif status == 422 and "cannot follow more than" in text:
            error = FollowCapError(text)
        elif status == 429:
            error = RateLimitedError(rate.reset_at if rate else None, text)
        elif status >= 500 or status == 408:
            error = InstanceUnreachableError(f"{domain}: {operation} answered {status}")
        else:
            error = RejectedError(f"{operation} answered {status}: {text}"[:200])
        raise _with_rate(error, rate)

    # --- the instance itself -------------------------------------------------------------------

    async def instance_info(self, domain: str) -> InstanceInfo:
        """``/api/v2/instance`` (or v1): is this a server speaking the Mastodon API?"""
        base = self.directory.base_url(domain)
        for path, key in (("/api/v2/instance", "domain"), ("/api/v1/instance", "uri")):
            response = await self._send(domain, "instance", "GET", base + path)
            if response.status_code >= 500:
                raise InstanceUnreachableError(
                    f"{domain}: instance answered {response.status_code}"
                )
            if response.status_code != 200:
                continue
            try:
                body = response.json()
            except ValueError:
                continue
            if isinstance(body, dict) and isinstance(body.get(key), str) and "version" in body:
                acct_domain = body[key].strip().lower()
                if "://" in acct_domain:
                    acct_domain = urlsplit(acct_domain).hostname or domain
                return InstanceInfo(acct_domain or domain, str(body["version"]))
        raise NotMastodonError(f"{domain} does not answer the Mastodon API")

    async def oauth_endpoints(self, domain: str) -> OAuthEndpoints:
        """From ``/.well-known/oauth-authorization-server``, else Mastodon's fixed paths."""
        base = self.directory.base_url(domain)
        defaults = OAuthEndpoints(
            f"{base}/oauth/authorize", f"{base}/oauth/token", f"{base}/oauth/revoke"
        )
        try:
            response = await self._send(
                domain, "oauth_metadata", "GET", base + "/.well-known/oauth-authorization-server"
            )
        except InstanceUnreachableError:
            return defaults
        if response.status_code != 200:
            return defaults
        try:
            body = response.json()
        except ValueError:
            return defaults
        if not isinstance(body, dict):
            return defaults
        trusted = {domain, urlsplit(base).hostname}

        def pick(key: str, fallback: str) -> str:
            value = body.get(key)
            if isinstance(value, str) and urlsplit(value).hostname in trusted:
                return value
            return fallback

        return OAuthEndpoints(
            pick("authorization_endpoint", defaults.authorize),
            pick("token_endpoint", defaults.token),
            pick("revocation_endpoint", defaults.revoke),
        )

    # --- OAuth -----------------------------------------------------------------------------------

    async def register_app(
        self,
        domain: str,
        *,
        client_name: str,
        redirect_uri: str,
        scopes: str,
        website: str | None = None,
    ) -> AppCredentials:
        """``POST /api/v1/apps``; ``RejectedError`` when the server refuses (e.g. scopes)."""
        data = {"client_name": client_name, "redirect_uris": redirect_uri, "scopes": scopes}
        if website:
            data["website"] = website
        reply = await self._api(domain, "register_app", "POST", "/api/v1/apps", data=data)
        body = reply.data
        if not (isinstance(body, dict) and body.get("client_id") and body.get("client_secret")):
            raise NotMastodonError(f"{domain}: app registration answered no credentials")
        return AppCredentials(str(body["client_id"]), str(body["client_secret"]))

    async def exchange_code(
        self,
        domain: str,
        endpoint: str,
        app: AppCredentials,
        *,
        code: str,
        redirect_uri: str,
        scopes: str,
    ) -> AccessToken:
        """The authorization code for an access token."""
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "redirect_uri": redirect_uri,
            "scope": scopes,
        }
        response = await self._send(domain, "token", "POST", endpoint, data=data)
        if response.status_code == 401:
            raise AppRejectedError("the server does not know this app any more")
        if response.status_code in {400, 403}:
            raise InvalidCodeError(_error_text(response) or "invalid_grant")
        if response.status_code >= 500:
            raise InstanceUnreachableError(f"{domain}: token answered {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise NotMastodonError(f"{domain}: token answered no JSON") from None
        if (
            response.status_code != 200
            or not isinstance(body, dict)
            or not body.get("access_token")
        ):
            raise InvalidCodeError(f"token answered {response.status_code}")
        return AccessToken(str(body["access_token"]), str(body.get("scope") or scopes))

    async def revoke_token(
        self, domain: str, endpoint: str, app: AppCredentials, token: str
    ) -> bool:
        """Best effort: tell the server to forget ``token``. ``False`` if it could not."""
        data = {"token": token, "client_id": app.client_id, "client_secret": app.client_secret}
        try:
            response = await self._send(domain, "revoke", "POST", endpoint, data=data)
        except MastodonError:
            return False
        return response.status_code == 200

    # --- accounts and follows --------------------------------------------------------------------

    async def verify_credentials(self, domain: str, token: str) -> Reply:
        return await self._api(
            domain, "verify_credentials", "GET", "/api/v1/accounts/verify_credentials", token=token
        )

    async def search_account(self, domain: str, token: str, acct: str) -> Reply:
        """``/api/v2/search?resolve=true&type=accounts``: ``data`` is the list of accounts."""
        reply = await self._api(
            domain,
            "search",
            "GET",
            "/api/v2/search",
            token=token,
            params=[("q", acct), ("resolve", "true"), ("type", "accounts"), ("limit", "5")],
        )
        body = reply.data
        accounts = body.get("accounts") if isinstance(body, dict) else None
        return Reply(accounts if isinstance(accounts, list) else [], reply.rate)

    async def relationships(self, domain: str, token: str, ids: Sequence[str]) -> Reply:
        reply = await self._api(
            domain,
            "relationships",
            "GET",
            "/api/v1/accounts/relationships",
            token=token,
            params=[("id[]", i) for i in ids],
        )
        return Reply(reply.data if isinstance(reply.data, list) else [], reply.rate)

    async def follow(self, domain: str, token: str, account_id: str) -> Reply:
        return await self._api(
            domain, "follow", "POST", f"/api/v1/accounts/{account_id}/follow", token=token
        )


def _with_rate(error: MastodonError, rate: RateInfo | None) -> MastodonError:
    error.rate = rate
    return error
