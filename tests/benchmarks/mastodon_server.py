"""A lean Mastodon API for the benchmark: many instances in one process, Mastodon's limits.

Run: ``python -m tests.benchmarks.mastodon_server --domains a.test,b.test --ports-file F``.

The full test instances (``tests.peers.mastodon``) federate: a resolve is four
requests between instances, a follow a Follow and an Accept delivery. At a thousand
follows a second that costs more CPU than the machine has, so the benchmark talks to
this server instead. It answers what the sender calls, over real HTTP/1.1 (one
listening port per instance, keep-alive), and keeps what the benchmark measures:

- Mastodon's limits on the sender's simulated clock (``start + speedup × (t - origin)``):
  300 calls per 5 minutes per token and 400 follows per 24 hours per account, fixed windows
  aligned to the epoch as Rack::Attack and ``RateLimiter`` count them, with
  ``X-RateLimit-Limit/Remaining/Reset`` (ISO 8601) on every authenticated answer,
  the follow family's when it has fewer left, and 429 beyond either limit (a
  refused call still counts in its window);
- every follow: its simulated time, duplicates (a follow of an account already
  followed: 200, as Mastodon answers) and refusals (429s, 422 at the follow cap)
  counted as violations;
- a target must have been resolved on the instance (``/api/v2/search?resolve=true``)
  before it can be followed there, as on a real server (404 otherwise).

What it leaves out: federation (a remote follow is accepted at once), the per-IP
and per-user limits (one token per account, so the per-token limit binds first),
locked accounts, quirks. Linking: apps, ``/oauth/authorize`` (the person's consent
is the ``bench_user`` parameter: it redirects with a code at once), the code
exchange and ``verify_credentials`` are real HTTP calls the sender makes.

Control (any port): ``POST /_bench/accounts`` ``{"domain", "usernames"}``,
``POST /_bench/clock`` ``{"origin", "start", "speedup"}``, ``GET /_bench/stats``,
``GET /_bench/follows`` (simulated times of each account's follows).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tests.peers.mastodon.clock import iso

TOKEN_REQUESTS, TOKEN_PERIOD = 300, 300
FOLLOWS, FOLLOWS_PERIOD = 400, 86_400
FOLLOW_CAP = 7_500
VERSION = "4.3.0 (compatible; passerelle bench)"

REASONS = {
    200: b"OK",
    302: b"Found",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    422: b"Unprocessable Entity",
    429: b"Too Many Requests",
}


class LineClock:
    """``start + (time.time() - origin) × speedup``: the sender's fast clock, given the
    same three numbers, reads the same time without the two processes talking."""

    def __init__(self) -> None:
        self.origin = self.start = time.time()
        self.speedup = 1.0

    def now(self) -> float:
        return self.start + (time.time() - self.origin) * self.speedup

    def set(self, origin: float | None, start: float | None, speedup: float) -> None:
        """Follow the line given, or (no origin) stop or go on from now at ``speedup``."""
        if origin is None or start is None:
            origin, start = time.time(), self.now()
        self.origin, self.start, self.speedup = origin, start, speedup


@dataclass
class Account:
    id: str
    domain: str
    username: str
    following: set[str] = field(default_factory=set)
    follow_times: list[float] = field(default_factory=list)
    follow_window: int = -1
    follow_count: int = 0


@dataclass
class Token:
    account: Account
    scopes: str
    window: int = -1
    count: int = 0


@dataclass
class Instance:
    domain: str
    apps: dict[str, tuple[str, str]] = field(default_factory=dict)
    """client_id → (secret, redirect URI)."""
    codes: dict[str, tuple[Account, str, str]] = field(default_factory=dict)
    """code → (account, client_id, scopes)."""
    known: set[str] = field(default_factory=set)
    """Ids this instance knows: its accounts and those resolved on it."""


class Bench:
    """The state of every instance (one event loop, no locks)."""

    def __init__(self, domains: list[str]) -> None:
        self.clock = LineClock()
        self.instances = {d: Instance(d) for d in domains}
        self.accounts: dict[str, Account] = {}
        self.by_acct: dict[str, Account] = {}
        self.tokens: dict[str, Token] = {}
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "resolves",
                "relationships",
                "follows.created",
                "follows.duplicate",
                "follows.refused_rate_limit",
                "follows.refused_cap",
                "throttled",
            ),
            0,
        )

    def add_accounts(self, domain: str, usernames: list[str]) -> None:
        instance = self.instances[domain]
        for username in usernames:
            account = Account(str(len(self.accounts) + 1), domain, username)
            self.accounts[account.id] = account
            self.by_acct[f"{username}@{domain}".lower()] = account
            instance.known.add(account.id)

    # --- HTTP -----------------------------------------------------------------------------

    def handle(
        self, instance: Instance, method: str, target: str, auth: str | None, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        """One request: (status, JSON body, extra headers)."""
        path, _, query = target.partition("?")
        self.stats["requests"] += 1
        if path.startswith("/_bench/"):
            return self.control(method, path, body)
        if path.startswith(("/api/v1/accounts/", "/api/v2/search")):
            return self.api(instance, method, path, query, auth)
        if path == "/api/v2/instance" or path == "/api/v1/instance":
            key = "domain" if path.startswith("/api/v2") else "uri"
            return 200, dumps({key: instance.domain, "version": VERSION, "title": "bench"}), []
        if path == "/api/v1/apps" and method == "POST":
            form = dict(parse_qsl(body.decode()))
            client_id = secrets.token_urlsafe(16)
            secret = secrets.token_urlsafe(24)
            instance.apps[client_id] = (secret, form.get("redirect_uris", ""))
            app = {"id": client_id, "name": form.get("client_name", ""), "client_id": client_id}
            return 200, dumps({**app, "client_secret": secret, "scopes": form.get("scopes")}), []
        if path == "/oauth/authorize":
            return self.authorize(instance, dict(parse_qsl(query)))
        if path == "/oauth/token" and method == "POST":
            return self.token(instance, dict(parse_qsl(body.decode())))
        return 404, dumps({"error": "Record not found"}), []

    def authorize(
        self, instance: Instance, params: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        app = instance.apps.get(params.get("client_id", ""))
        account = self.by_acct.get(f"{params.get('bench_user', '')}@{instance.domain}")
        redirect = params.get("redirect_uri", "")
        if app is None or account is None or redirect != app[1]:
            return 400, dumps({"error": "invalid_request"}), []
        code = secrets.token_urlsafe(24)
        instance.codes[code] = (account, params["client_id"], params.get("scope", "read"))
        location = redirect + "?" + urlencode({"code": code, "state": params.get("state", "")})
        return 302, b"", [("Location", location)]

    def token(
        self, instance: Instance, form: dict[str, str]
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        app = instance.apps.get(form.get("client_id", ""))
        if app is None or app[0] != form.get("client_secret"):
            return 401, dumps({"error": "invalid_client"}), []
        found = instance.codes.pop(form.get("code", ""), None)
        if found is None or found[1] != form.get("client_id"):
            return 400, dumps({"error": "invalid_grant"}), []
        account, _, scopes = found
        raw = secrets.token_urlsafe(32)
        self.tokens[raw] = Token(account, scopes)
        body = {"access_token": raw, "token_type": "Bearer", "scope": scopes, "created_at": 0}
        return 200, dumps(body), []

    def api(
        self, instance: Instance, method: str, path: str, query: str, auth: str | None
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        token = self.tokens.get(auth[7:]) if auth and auth.startswith("Bearer ") else None
        if token is None or token.account.domain != instance.domain:
            return 401, dumps({"error": "The access token is invalid"}), []
        now = self.clock.now()
        window = math.floor(now) // TOKEN_PERIOD
        if token.window != window:
            token.window, token.count = window, 0
        token.count += 1
        if token.count > TOKEN_REQUESTS:
            self.stats["throttled"] += 1
            return 429, TOO_MANY, rate_headers(TOKEN_REQUESTS, 0, TOKEN_PERIOD, now)
        headers = rate_headers(TOKEN_REQUESTS, TOKEN_REQUESTS - token.count, TOKEN_PERIOD, now)
        me = token.account
        if path == "/api/v2/search":
            return self.search(instance, me, dict(parse_qsl(query)), headers)
        if path == "/api/v1/accounts/relationships":
            self.stats["relationships"] += 1
            ids = [v for k, v in parse_qsl(query) if k in ("id[]", "id")]
            known = instance.known
            out = [relationship(i, i in me.following) for i in dict.fromkeys(ids) if i in known]
            return 200, dumps(out), headers
        if path == "/api/v1/accounts/verify_credentials":
            return 200, dumps(self.account_json(me, me.domain, own=True)), headers
        if method == "POST" and path.endswith("/follow"):
            return self.follow(instance, me, path[17:-7], now, headers)
        return 404, dumps({"error": "Record not found"}), headers

    def search(
        self,
        instance: Instance,
        me: Account,
        params: dict[str, str],
        headers: list[tuple[str, str]],
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        q = params.get("q", "").strip().lstrip("@").lower()
        if "@" not in q:
            q = f"{q}@{instance.domain}"
        found = self.by_acct.get(q)
        accounts = []
        if found is not None and (found.id in instance.known or params.get("resolve") == "true"):
            if found.id not in instance.known:
                self.stats["resolves"] += 1
                instance.known.add(found.id)
            accounts.append(self.account_json(found, instance.domain))
        return 200, dumps({"accounts": accounts, "statuses": [], "hashtags": []}), headers

    def follow(
        self,
        instance: Instance,
        me: Account,
        target_id: str,
        now: float,
        headers: list[tuple[str, str]],
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        if target_id not in instance.known or target_id == me.id:
            return 404, dumps({"error": "Record not found"}), headers
        if target_id in me.following:
            self.stats["follows.duplicate"] += 1
            return 200, dumps(relationship(target_id, following=True)), headers
        if len(me.following) >= FOLLOW_CAP:
            self.stats["follows.refused_cap"] += 1
            text = f"Validation failed: You cannot follow more than {FOLLOW_CAP} people"
            return 422, dumps({"error": text}), headers
        window = math.floor(now) // FOLLOWS_PERIOD
        if me.follow_window != window:
            me.follow_window, me.follow_count = window, 0
        if me.follow_count >= FOLLOWS:
            self.stats["follows.refused_rate_limit"] += 1
            return 429, TOO_MANY, rate_headers(FOLLOWS, 0, FOLLOWS_PERIOD, now)
        me.follow_count += 1
        me.following.add(target_id)
        me.follow_times.append(now)
        self.stats["follows.created"] += 1
        left = FOLLOWS - me.follow_count
        if left <= int(headers[1][1]):
            headers = rate_headers(FOLLOWS, left, FOLLOWS_PERIOD, now)
        return 200, dumps(relationship(target_id, following=True)), headers

    def account_json(self, account: Account, here: str, *, own: bool = False) -> dict[str, Any]:
        acct = account.username
        if account.domain != here:
            acct += "@" + account.domain
        body: dict[str, Any] = {
            "id": account.id,
            "username": account.username,
            "acct": acct,
            "url": f"https://{account.domain}/@{account.username}",
            "locked": False,
            "followers_count": 100,
            "following_count": len(account.following),
        }
        if own:
            body["source"] = {"privacy": "public"}
        return body

    def control(
        self, method: str, path: str, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]]]:
        if path == "/_bench/accounts" and method == "POST":
            data = json.loads(body)
            self.add_accounts(data["domain"], data["usernames"])
            return 200, dumps({"accounts": len(self.accounts)}), []
        if path == "/_bench/clock" and method == "POST":
            data = json.loads(body)
            self.clock.set(data.get("origin"), data.get("start"), float(data["speedup"]))
            return 200, dumps({"now": self.clock.now()}), []
        if path == "/_bench/stats":
            return 200, dumps({"now": self.clock.now(), "counters": self.stats}), []
        if path == "/_bench/follows":
            out = {
                f"{a.username}@{a.domain}": a.follow_times
                for a in self.accounts.values()
                if a.follow_times
            }
            return 200, dumps(out), []
        return 404, dumps({"error": "no such control"}), []


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


TOO_MANY = dumps({"error": "Too many requests"})


def relationship(account_id: str, following: bool) -> dict[str, Any]:
    return {
        "id": account_id,
        "following": following,
        "showing_reblogs": following,
        "notifying": False,
        "followed_by": False,
        "blocking": False,
        "blocked_by": False,
        "muting": False,
        "requested": False,
        "domain_blocking": False,
        "endorsed": False,
        "note": "",
    }


def rate_headers(limit: int, remaining: int, period: int, now: float) -> list[tuple[str, str]]:
    """Mastodon's: the reset is ``now + (period - now.to_i % period)``, ISO 8601."""
    return [
        ("X-RateLimit-Limit", str(limit)),
        ("X-RateLimit-Remaining", str(max(remaining, 0))),
        ("X-RateLimit-Reset", iso(now + (period - math.floor(now) % period))),
    ]


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, enough for aiohttp and httpx clients (no chunked bodies)."""

    def __init__(self, bench: Bench, instance: Instance) -> None:
        self.bench = bench
        self.instance = instance
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            method, target, _version = head[0].split(" ", 2)
            auth = None
            length = 0
            close = False
            for line in head[1:]:
                name, _, value = line.partition(":")
                lowered = name.lower()
                if lowered == "authorization":
                    auth = value.strip()
                elif lowered == "content-length":
                    length = int(value)
                elif lowered == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            try:
                status, payload, headers = self.bench.handle(
                    self.instance, method, target, auth, body
                )
            except Exception as error:  # noqa: BLE001 - a bench server answers 400, not dies
                status, payload, headers = 400, dumps({"error": type(error).__name__}), []
            lines = [
                b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Status")),
                b"Content-Type: application/json; charset=utf-8",
                b"Content-Length: %d" % len(payload),
            ]
            lines += [f"{k}: {v}".encode() for k, v in headers]
            out.append(b"\r\n".join(lines) + b"\r\n\r\n" + payload)
            if close:
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if close:
                self.transport.close()


async def serve(domains: list[str], ports_file: Path) -> None:
    bench = Bench(domains)
    loop = asyncio.get_running_loop()
    servers = []
    urls = {}
    for domain in domains:
        instance = bench.instances[domain]
        server = await loop.create_server(
            functools.partial(HttpProtocol, bench, instance), "127.0.0.1", 0, backlog=1024
        )
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        urls[domain] = f"http://127.0.0.1:{port}"
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(urls))
    tmp.replace(ports_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--domains", required=True, help="comma-separated")
    parser.add_argument("--ports-file", required=True, type=Path)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.domains.split(","), args.ports_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
