"""A small XRPC client (atproto's HTTP API) on aiohttp: typed errors, rate headers, spans.

Only the handful of calls the sender makes. Every call is a span (method and server,
never a token, a DID or a body) and counted in metrics. Errors say what is known
about a write: :class:`NotSentError` means the server never got the request,
:class:`UncertainError` means it may have been applied (a timeout or a dropped connection
after sending, a 5xx), :class:`XrpcError` is the server's definite answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

AUTH_ERRORS = frozenset({"ExpiredToken", "InvalidToken"})


@dataclass(frozen=True)
class RateLimit:
    """What a ``RateLimit-*`` header set says about one limit (the tightest one)."""

    limit: int
    remaining: int
    reset: float
    """Epoch seconds (the server's clock) when the window starts over."""
    window: float | None
    """The window length from ``RateLimit-Policy`` (``5000;w=3600`` → 3600)."""


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimit | None:
    """The rate-limit headers of a response, or ``None`` when absent or malformed."""
    try:
        limit = int(headers["ratelimit-limit"])
        remaining = int(headers["ratelimit-remaining"])
        reset = float(headers["ratelimit-reset"])
    except (KeyError, ValueError):
        return None
    window: float | None = None
    for part in headers.get("ratelimit-policy", "").split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key == "w":
            try:
                window = float(value)
            except ValueError:
                window = None
    return RateLimit(limit, max(0, remaining), reset, window)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds, if given as a number."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class XrpcCallError(Exception):
    """Any failed call."""

    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"{method}: {message}")
        self.method = method


class XrpcError(XrpcCallError):
    """The server answered with an error status (its answer is definite)."""

    def __init__(
        self,
        method: str,
        status: int,
        error: str | None,
        message: str | None,
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(method, f"HTTP {status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.rate_limit = parse_rate_limit(headers)
        self.retry_after = retry_after(headers)

    @property
    def is_rate_limited(self) -> bool:
        return self.status == 429

    @property
    def is_auth_expired(self) -> bool:
        return self.error in AUTH_ERRORS or (self.status == 401 and self.error is None)


class NotSentError(XrpcCallError):
    """The request never reached the server (connection refused, no free connection)."""


class UncertainError(XrpcCallError):
    """The request may have been applied: a timeout, a dropped connection or a 5xx."""

    def __init__(self, method: str, message: str, status: int | None = None) -> None:
        super().__init__(method, message)
        self.status = status


@dataclass(frozen=True)
class XrpcResponse:
    body: dict[str, Any]
    rate_limit: RateLimit | None


CallObserver = Callable[[str, str, float], None]
"""``(method, outcome, seconds)`` after every call (outcome: ``2xx``, ``429``, ``timeout``…)."""


class XrpcClient:
    """Calls to any atproto server over one shared connection pool (aiohttp).

    aiohttp rather than httpx: at the sender's volume (tens of calls a second, most of
    them short), httpx's connection pool cost milliseconds of CPU per call.
    """

    def __init__(
        self,
        tracer: Tracer,
        observe: CallObserver | None = None,
        *,
        timeout: float = 20.0,
        max_connections: int = 16,
        user_agent: str = "passerelle",
    ) -> None:
        self.tracer = tracer
        self.observe = observe
        self.timeout = timeout
        self.max_connections = max_connections
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections * 4,
                    limit_per_host=self.max_connections,
                    ttl_dns_cache=300,
                ),
                headers={"User-Agent": self.user_agent},
                trust_env=True,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def query(
        self,
        base_url: str,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
    ) -> XrpcResponse:
        """A GET (``query``) call."""
        return await self._call("GET", base_url, method, params=params, token=token)

    async def procedure(
        self,
        base_url: str,
        method: str,
        body: Mapping[str, Any] | None = None,
        *,
        token: str | None = None,
        attributes: Mapping[str, int | str] | None = None,
    ) -> XrpcResponse:
        """A POST (``procedure``) call."""
        return await self._call(
            "POST", base_url, method, body=body, token=token, attributes=attributes
        )

    async def get_json(self, url: str, *, what: str) -> tuple[int, Any]:
        """A plain GET returning ``(status, json or None)`` (DID documents)."""
        parts = urlsplit(url)
        with self.tracer.start_as_current_span(
            f"GET {what}",
            kind=SpanKind.CLIENT,
            attributes={"server.address": parts.hostname or "", "http.request.method": "GET"},
        ) as span:
            started = time.perf_counter()
            try:
                async with self._client().get(url) as response:
                    status, content = response.status, await response.read()
            except TRANSPORT_ERRORS as error:
                failure = _failure(what, error)
                self._observe(what, failure.outcome, started)
                span.set_status(Status(StatusCode.ERROR, failure.outcome))
                raise failure.error from None
            span.set_attribute("http.response.status_code", status)
            self._observe(what, f"{status // 100}xx", started)
            try:
                payload = json.loads(content) if content else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = None
            return status, payload

    def _observe(self, method: str, outcome: str, started: float) -> None:
        if self.observe is not None:
            self.observe(method, outcome, time.perf_counter() - started)

    async def _call(
        self,
        verb: str,
        base_url: str,
        method: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        token: str | None = None,
        attributes: Mapping[str, int | str] | None = None,
    ) -> XrpcResponse:
        url = f"{base_url.rstrip('/')}/xrpc/{method}"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        parts = urlsplit(base_url)
        span_attributes: dict[str, int | str] = {
            "rpc.system": "xrpc",
            "rpc.method": method,
            "server.address": parts.hostname or "",
            "http.request.method": verb,
        }
        if parts.port:
            span_attributes["server.port"] = parts.port
        span_attributes.update(attributes or {})
        with self.tracer.start_as_current_span(
            f"xrpc {method}", kind=SpanKind.CLIENT, attributes=span_attributes
        ) as span:
            started = time.perf_counter()
            try:
                if verb == "GET":
                    query = {k: str(v) for k, v in (params or {}).items()}
                    request = self._client().get(url, params=query, headers=headers)
                else:
                    headers["Content-Type"] = "application/json"
                    data = json.dumps(body).encode() if body is not None else b""
                    request = self._client().post(url, data=data, headers=headers)
                async with request as response:
                    status = response.status
                    content = await response.read()
                    response_headers = {k.lower(): v for k, v in response.headers.items()}
            except TRANSPORT_ERRORS as error:
                failure = _failure(method, error)
                self._observe(method, failure.outcome, started)
                span.set_status(Status(StatusCode.ERROR, failure.outcome))
                raise failure.error from None
            span.set_attribute("http.response.status_code", status)
            outcome = "429" if status == 429 else f"{status // 100}xx"
            self._observe(method, outcome, started)
            payload: Any
            try:
                payload = json.loads(content) if content else {}
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = None
            if status >= 500 or (status < 400 and not isinstance(payload, dict)):
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
                raise UncertainError(method, f"HTTP {status}", status)
            if status >= 400:
                error_name = payload.get("error") if isinstance(payload, dict) else None
                message = payload.get("message") if isinstance(payload, dict) else None
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status} {error_name}"))
                raise XrpcError(
                    method,
                    status,
                    error_name if isinstance(error_name, str) else None,
                    message if isinstance(message, str) else None,
                    response_headers,
                )
            return XrpcResponse(payload, parse_rate_limit(response_headers))


@dataclass(frozen=True)
class _Failure:
    outcome: str
    error: XrpcCallError


TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


def _failure(method: str, error: Exception) -> _Failure:
    """What a transport error means for a call: never sent, or maybe applied."""
    name = type(error).__name__
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return _Failure("not_sent", NotSentError(method, name))
    if isinstance(error, aiohttp.InvalidURL | ValueError):
        return _Failure("not_sent", NotSentError(method, name))
    if isinstance(error, TimeoutError):
        return _Failure("timeout", UncertainError(method, name))
    return _Failure("dropped", UncertainError(method, name))
