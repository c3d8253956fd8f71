"""A fake Bluesky for the benchmark: PDS, PLC directory and handle resolver in one server.

It speaks just enough XRPC for the sender (resolveHandle, DID documents, createSession,
refreshSession, deleteSession, getRepoStatus, listRecords, applyWrites), enforces
Bluesky's write budgets per account on a simulated clock (:mod:`.ratelimit`: fixed
windows, refused calls still counted, ``RateLimit-*`` headers, 429), and records every
write: which account followed whom, when (on that clock), duplicates and refusals.
No real PDS absorbs millions of writes in minutes; this one only records.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.bluesky.httpserver import Drop, HttpServer, Request, Response
from tests.bluesky.ratelimit import CREATE_COST, WriteLimiter

FOLLOW = "app.bsky.graph.follow"
TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"


def tid(n: int) -> str:
    """A sortable 13-character record key for the ``n``-th record (base32-sortable)."""
    out = []
    for _ in range(13):
        out.append(TID_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def token(did: str, kind: str, lifetime: int = 7200) -> str:
    now = int(time.time())
    claims = {
        "sub": did,
        "scope": "com.atproto.appPass",
        "typ": kind,
        "iat": now,
        "exp": now + lifetime,
    }
    return f"{_b64({'alg': 'none'})}.{_b64(claims)}.sig"


def claims_of(header: str | None) -> dict[str, object]:
    if not header or not header.startswith("Bearer "):
        return {}
    try:
        payload = header.removeprefix("Bearer ").split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


def ok(body: object, headers: dict[str, str] | None = None) -> Response:
    return Response(200, json.dumps(body).encode(), headers or {})


def error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps({"error": name, "message": message}).encode(), headers or {})


@dataclass
class Repo:
    rkeys: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    followed: set[str] = field(default_factory=set)


@dataclass
class Stats:
    applies: int = 0
    writes: int = 0
    duplicates: int = 0
    refused: int = 0
    oversized: int = 0
    logins: int = 0
    refreshes: int = 0
    reads: int = 0
    status_checks: int = 0
    did_docs: int = 0
    #: (clock time of the call, account, creates) of every applied call
    log: list[tuple[float, str, int]] = field(default_factory=list)


class FakeBluesky(HttpServer):
    def __init__(
        self, clock: Callable[[], float], *, max_writes: int = 200, write_delay: float = 0.0
    ) -> None:
        super().__init__(self._handle)
        self.clock = clock
        self.max_writes = max_writes
        self.write_delay = write_delay
        self.limiter = WriteLimiter(clock)
        self.handles: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.repos: dict[str, Repo] = {}
        self.stats = Stats()
        self._counter = 0
        self._lock = threading.Lock()

    def add_account(self, handle: str, did: str, app_password: str) -> None:
        self.handles[handle] = did
        self.passwords[did] = app_password
        self.repos.setdefault(did, Repo())

    async def _handle(self, request: Request) -> Response | Drop:
        path = request.path
        if path.startswith("/did:"):
            return self._did_doc(path[1:])
        method = path.removeprefix("/xrpc/")
        handler = {
            "com.atproto.repo.applyWrites": self._apply_writes,
            "com.atproto.repo.listRecords": self._list_records,
            "com.atproto.identity.resolveHandle": self._resolve_handle,
            "com.atproto.server.createSession": self._create_session,
            "com.atproto.server.refreshSession": self._refresh_session,
            "com.atproto.server.deleteSession": lambda _r: ok({}),
            "com.atproto.sync.getRepoStatus": self._repo_status,
        }.get(method)
        if handler is None:
            return error(404, "MethodNotImplemented", method)
        if self.write_delay and method == "com.atproto.repo.applyWrites":
            await asyncio.sleep(self.write_delay)
        return handler(request)

    def _did_doc(self, did: str) -> Response:
        self.stats.did_docs += 1
        handle = (
            next((h for h, d in self.handles.items() if d == did), None)
            if did in self.passwords
            else None
        )
        return ok(
            {
                "id": did,
                "alsoKnownAs": [f"at://{handle or did.removeprefix('did:plc:') + '.bench'}"],
                "service": [
                    {
                        "id": "#atproto_pds",
                        "type": "AtprotoPersonalDataServer",
                        "serviceEndpoint": self.url,
                    }
                ],
            }
        )

    def _resolve_handle(self, request: Request) -> Response:
        did = self.handles.get(request.query.get("handle", ""))
        if did is None:
            return error(400, "HandleNotFound", "Unable to resolve handle")
        return ok({"did": did})

    def _session(self, did: str) -> Response:
        handle = next(h for h, d in self.handles.items() if d == did)
        return ok(
            {
                "did": did,
                "handle": handle,
                "accessJwt": token(did, "access"),
                "refreshJwt": token(did, "refresh", 90 * 86400),
                "active": True,
            }
        )

    def _create_session(self, request: Request) -> Response:
        body = json.loads(request.body or b"{}")
        identifier, password = body.get("identifier"), body.get("password")
        did = identifier if identifier in self.passwords else self.handles.get(identifier or "")
        if did is None or self.passwords.get(did) != password:
            return error(401, "AuthenticationRequired", "Invalid identifier or password")
        self.stats.logins += 1
        return self._session(did)

    def _refresh_session(self, request: Request) -> Response:
        claims = claims_of(request.headers.get("authorization"))
        did = claims.get("sub")
        if claims.get("typ") != "refresh" or not isinstance(did, str) or did not in self.passwords:
            return error(400, "InvalidToken", "Token could not be verified")
        self.stats.refreshes += 1
        return self._session(did)

    def _repo_status(self, request: Request) -> Response:
        self.stats.status_checks += 1
        return ok({"did": request.query.get("did"), "active": True})

    def _list_records(self, request: Request) -> Response:
        self.stats.reads += 1
        q = request.query
        repo = self.repos.get(q.get("repo", ""))
        if repo is None:
            return error(400, "RepoNotFound", "Could not find repo")
        limit = min(100, int(q.get("limit", "50")))
        cursor = q.get("cursor")
        if q.get("reverse") == "true":
            start = bisect.bisect_right(repo.rkeys, cursor) if cursor else 0
            picked = list(range(start, min(start + limit, len(repo.rkeys))))
        else:
            end = bisect.bisect_left(repo.rkeys, cursor) if cursor else len(repo.rkeys)
            picked = list(range(end - 1, max(-1, end - 1 - limit), -1))
        did = q["repo"]
        records = [
            {
                "uri": f"at://{did}/{FOLLOW}/{repo.rkeys[i]}",
                "cid": "bafyfake",
                "value": {"$type": FOLLOW, "subject": repo.subjects[i]},
            }
            for i in picked
        ]
        body: dict[str, object] = {"records": records}
        if records:
            body["cursor"] = repo.rkeys[picked[-1]]
        return ok(body)

    def _apply_writes(self, request: Request) -> Response:
        body = json.loads(request.body or b"{}")
        did = body.get("repo")
        claims = claims_of(request.headers.get("authorization"))
        if claims.get("typ") != "access" or claims.get("sub") != did:
            return error(401, "InvalidToken", "Bad token")
        repo = self.repos.get(did)
        if repo is None:
            return error(400, "RepoNotFound", "Could not find repo")
        writes = body.get("writes") or []
        if len(writes) > self.max_writes:
            self.stats.oversized += 1
            return error(400, "InvalidRequest", f"Too many writes. Max: {self.max_writes}")
        now = self.clock()
        verdict = self.limiter.consume(did, CREATE_COST * len(writes))
        if not verdict.allowed:
            self.stats.refused += 1
            return error(429, "RateLimitExceeded", "Rate Limit Exceeded", verdict.headers)
        results = []
        for write in writes:
            subject = write["value"]["subject"]
            self._counter += 1
            rkey = tid(self._counter)
            repo.rkeys.append(rkey)
            repo.subjects.append(subject)
            if subject in repo.followed:
                self.stats.duplicates += 1
            repo.followed.add(subject)
            results.append(
                {
                    "$type": "com.atproto.repo.applyWrites#createResult",
                    "uri": f"at://{did}/{FOLLOW}/{rkey}",
                    "cid": "bafyfake",
                }
            )
        self.stats.applies += 1
        self.stats.writes += len(writes)
        self.stats.log.append((now, did, len(writes)))
        return ok({"results": results}, verdict.headers)
