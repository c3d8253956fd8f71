"""A fault-injecting HTTP proxy in front of the local PDS (and its PLC directory).

The sender is pointed at the proxy instead of the PDS: the PLC proxy rewrites the PDS's
URL in DID documents to the PDS proxy's, so every call the sender makes goes through
it. Faults are armed per path:

- ``status``: answer with a status without forwarding (429 bursts, 502, 503...);
- ``status_after``: forward (the PDS applies it), then answer an error instead;
- ``drop_before`` / ``drop_after``: close the connection without an answer, before or
  after forwarding;
- ``hang``: forward after ``seconds`` of silence (longer than the client's timeout);
- ``delay_after``: forward, then wait ``seconds`` before answering (to kill the sender
  while the PDS has applied a batch the sender has not recorded).

With ``limiter``, the proxy enforces Bluesky's write budgets itself on a (fast) clock and
answers like the PDS does (``RateLimit-*`` headers, 429), so resumption after a reset can
be tested in seconds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from tests.bluesky.httpserver import DROP, Drop, HttpServer, Request, Response
from tests.bluesky.ratelimit import CREATE_COST, WriteLimiter

FaultKind = Literal["status", "status_after", "drop_before", "drop_after", "hang", "delay_after"]
HOP = {"host", "connection", "content-length", "transfer-encoding", "accept-encoding"}


@dataclass
class Fault:
    path: str
    kind: FaultKind
    status: int = 500
    body: bytes = b'{"error":"InternalServerError","message":"injected by the test proxy"}'
    headers: dict[str, str] | Callable[[], dict[str, str]] = field(default_factory=dict)
    seconds: float = 0.0
    times: int = 1
    """How many requests it hits; -1: until cleared."""
    fired: int = 0

    def answer_headers(self) -> dict[str, str]:
        return self.headers() if callable(self.headers) else dict(self.headers)


@dataclass
class Seen:
    method: str
    path: str
    status: int | None
    fault: str | None
    at: float = 0.0
    seconds: float = 0.0


class FaultProxy(HttpServer):
    def __init__(
        self,
        upstream: str,
        *,
        rewrite: dict[str, str] | None = None,
        limiter: WriteLimiter | None = None,
    ) -> None:
        super().__init__(self._handle)
        self.upstream = upstream.rstrip("/")
        self.rewrite = rewrite or {}
        self.limiter = limiter
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        #: every applyWrites create forwarded and answered 200: (repo, subject)
        self.applied: list[tuple[str, str]] = []
        #: with a limiter: (its clock's time when it counted the points, when it answered,
        #: creates) of every applyWrites answered 200
        self.applied_at: list[tuple[float, float, int]] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def calls(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if path.startswith(fault.path) and fault.times != 0:
                    fault.fired += 1
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def _forward(self, request: Request) -> Response:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=60.0, trust_env=False)
        headers = {k: v for k, v in request.headers.items() if k not in HOP}
        upstream = await self._client.request(
            request.method, self.upstream + request.target, headers=headers, content=request.body
        )
        body = upstream.content
        for old, new in self.rewrite.items():
            body = body.replace(old.encode(), new.encode())
        return Response(upstream.status_code, body, dict(upstream.headers))

    async def _handle(self, request: Request) -> Response | Drop:
        fault = self._take(request.path)
        started = time.time()
        answer = await self._apply(request, fault)
        status = answer.status if isinstance(answer, Response) else None
        with self._lock:
            self.seen.append(
                Seen(
                    request.method,
                    request.path,
                    status,
                    fault.kind if fault else None,
                    started,
                    time.time() - started,
                )
            )
        return answer

    async def _apply(self, request: Request, fault: Fault | None) -> Response | Drop:
        if fault is not None:
            if fault.kind == "status":
                return Response(fault.status, fault.body, fault.answer_headers())
            if fault.kind == "drop_before":
                return DROP
            if fault.kind == "hang":
                await asyncio.sleep(fault.seconds)
        verdict_headers: dict[str, str] = {}
        consumed_at = self.limiter.clock() if self.limiter is not None else 0.0
        if self.limiter is not None and request.path == "/xrpc/com.atproto.repo.applyWrites":
            payload = json.loads(request.body or b"{}")
            points = CREATE_COST * len(payload.get("writes") or [])
            verdict = self.limiter.consume(str(payload.get("repo")), points)
            if not verdict.allowed:
                return Response(
                    429,
                    b'{"error":"RateLimitExceeded","message":"Rate Limit Exceeded"}',
                    verdict.headers,
                )
            verdict_headers = verdict.headers
        answer = await self._forward(request)
        if verdict_headers:
            kept = {k: v for k, v in answer.headers.items() if not k.startswith("ratelimit")}
            answer.headers = kept | verdict_headers
        if answer.status == 200 and request.path == "/xrpc/com.atproto.repo.applyWrites":
            payload = json.loads(request.body)
            with self._lock:
                self.applied.extend(
                    (payload["repo"], w["value"]["subject"]) for w in payload["writes"]
                )
                if self.limiter is not None:
                    answered_at = self.limiter.clock()
                    self.applied_at.append((consumed_at, answered_at, len(payload["writes"])))
        if fault is not None:
            if fault.kind == "status_after":
                return Response(fault.status, fault.body, fault.answer_headers())
            if fault.kind == "drop_after":
                return DROP
            if fault.kind == "delay_after":
                await asyncio.sleep(fault.seconds)
        return answer


@dataclass
class ProxiedPds:
    """A PDS proxy and a PLC proxy that sends DID documents' PDS URL to the PDS proxy."""

    pds: FaultProxy
    plc: FaultProxy

    @property
    def url(self) -> str:
        return self.pds.url

    @property
    def plc_url(self) -> str:
        return self.plc.url

    def stop(self) -> None:
        self.pds.stop()
        self.plc.stop()


def proxied(pds_url: str, plc_url: str, *, limiter: WriteLimiter | None = None) -> ProxiedPds:
    pds = FaultProxy(pds_url, limiter=limiter).start()
    plc = FaultProxy(plc_url, rewrite={f'"{pds_url}"': f'"{pds.url}"'}).start()
    return ProxiedPds(pds, plc)
