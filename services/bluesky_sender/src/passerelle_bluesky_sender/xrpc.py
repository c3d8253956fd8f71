"""A small XRPC client (atproto's HTTP API) on httpx: typed errors, rate headers, spans.

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

import httpx
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
    """Calls to any atproto server over one shared connection pool."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tracer: Tracer,
        observe: CallObserver | None = None,
    ) -> None:
        self.http = http
        self.tracer = tracer
        self.observe = observe

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
                response = await self.http.get(url)
            except httpx.TimeoutException as error:
                self._observe(what, "timeout", started)
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise UncertainError(what, type(error).__name__) from None
            except httpx.HTTPError as error:
                self._observe(what, "transport_error", started)
                span.set_status(Status(StatusCode.ERROR, "transport error"))
                raise NotSentError(what, type(error).__name__) from None
            span.set_attribute("http.response.status_code", response.status_code)
            self._observe(what, f"{response.status_code // 100}xx", started)
            try:
                payload = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                payload = None
            return response.status_code, payload

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
                    response = await self.http.get(url, params=params, headers=headers)
                else:
                    response = await self.http.post(url, json=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                self._observe(method, "not_sent", started)
                span.set_status(Status(StatusCode.ERROR, "not sent"))
                raise NotSentError(method, type(error).__name__) from None
            except httpx.TimeoutException as error:
                self._observe(method, "timeout", started)
                span.set_status(Status(StatusCode.ERROR, "timeout"))
                raise UncertainError(method, type(error).__name__) from None
            except httpx.HTTPError as error:  # dropped connection, protocol error
                self._observe(method, "dropped", started)
                span.set_status(Status(StatusCode.ERROR, "connection dropped"))
                raise UncertainError(method, type(error).__name__) from None
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            outcome = "429" if status == 429 else f"{status // 100}xx"
            self._observe(method, outcome, started)
            payload: Any
            try:
                payload = response.json() if response.content else {}
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
                    response.headers,
                )
            assert isinstance(payload, dict)
            return XrpcResponse(payload, parse_rate_limit(response.headers))
