"""Start and drive test Mastodon instances from tests (synchronous, httpx-based).

    with MastodonFleet(["alpha.test", "beta.test"]) as fleet:
        alpha, beta = fleet["alpha.test"], fleet["beta.test"]
        alpha.create_account("alice")
        beta.create_account("bob", followers_count=10)
        token = alpha.login("alice")                    # full OAuth code flow over HTTP
        bob = alpha.resolve(token, "bob@beta.test")     # WebFinger across instances
        alpha.api(token).post(f"/api/v1/accounts/{bob['id']}/follow")

Each instance is its own process (``python -m tests.peers.mastodon``) on a free
loopback port; ``fleet.peers_file`` maps every domain to its URL (the same map
the instances use to find each other, and the one the sender needs since
``*.test`` has no DNS).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_REDIRECT_URI = "http://127.0.0.1:8000/oauth/mastodon/callback"
DEFAULT_SCOPES = "read write follow"


class MastodonTestError(RuntimeError):
    """A harness step did not go as a real server would let it."""


@dataclass(frozen=True)
class RegisteredApp:
    client_id: str
    client_secret: str
    redirect_uri: str
    scopes: str
    raw: dict[str, Any]


@dataclass(frozen=True)
class AuthorizeResult:
    """Where the server sent the browser after the user clicked (or an early error)."""

    location: str
    params: dict[str, str]

    @property
    def code(self) -> str | None:
        return self.params.get("code")

    @property
    def state(self) -> str | None:
        return self.params.get("state")

    @property
    def error(self) -> str | None:
        return self.params.get("error")


@dataclass
class _Form:
    id: str | None
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[_Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(_Form(a.get("id"), a.get("action", ""), a.get("method", "get")))
        elif (
            tag in {"input", "button"}
            and self.forms
            and a.get("name")
            and (tag == "button" or a.get("type", "text") != "submit")
        ):
            self.forms[-1].fields[a["name"]] = a.get("value", "")


def pkce_pair() -> tuple[str, str]:
    """A PKCE (verifier, S256 challenge) pair."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class MastodonInstance:
    """One running instance: its URL, admin helpers, and OAuth helpers."""

    def __init__(self, domain: str, data_dir: Path, argv: Sequence[str]) -> None:
        self.domain = domain
        self.data_dir = data_dir
        self.argv = list(argv)
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self._http: httpx.Client | None = None

    # -- process --------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def spawn(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "instance.json").unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.peers.mastodon", *self.argv],
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        info = self.data_dir / "instance.json"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise MastodonTestError(f"{self.domain} exited early:\n{self.log_tail()}")
            if info.exists():
                data = json.loads(info.read_text())
                self.url, self.port = data["url"], int(data["port"])
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/_test/health", timeout=1.0).status_code == 200:
                        self._http = httpx.Client(base_url=self.url, timeout=10.0)
                        return
            time.sleep(0.05)
        raise MastodonTestError(f"{self.domain} not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting; :meth:`stop` waits."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, timeout: float = 5.0) -> None:
        self.terminate()
        proc, self.process = self.process, None
        if proc is None:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    @property
    def http(self) -> httpx.Client:
        """A client on this instance's URL, without credentials."""
        if self._http is None:
            raise MastodonTestError(f"{self.domain} is not running")
        return self._http

    def api(self, token: str | None = None) -> httpx.Client:
        """A new client for the Mastodon API, with ``Authorization: Bearer`` when given a token.

        Close it (or use it as a context manager) when done.
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0)

    def _admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, f"/_test{path}", **kwargs)
        if response.status_code >= 400:
            raise MastodonTestError(
                f"{method} /_test{path}: {response.status_code} {response.text}"
            )
        return response.json()

    # -- admin ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget all accounts, apps, tokens, follows, counters, faults; restore startup config."""
        self._admin("POST", "/reset")

    def create_account(
        self,
        username: str,
        *,
        followers_count: int = 0,
        following_count: int = 0,
        locked: bool = False,
        display_name: str | None = None,
        password: str = "password",
        bot: bool = False,
    ) -> dict[str, Any]:
        """A local account; the counts seed followers/following beyond recorded follows."""
        body: dict[str, Any] = {
            "username": username,
            "followers_count": followers_count,
            "following_count": following_count,
            "locked": locked,
            "password": password,
            "bot": bot,
        }
        if display_name is not None:
            body["display_name"] = display_name
        result: dict[str, Any] = self._admin("POST", "/accounts", json=body)
        return result

    def create_accounts(
        self, count: int, prefix: str = "user", start: int = 1, **extra: Any
    ) -> list[dict[str, Any]]:
        """``count`` accounts named ``{prefix}{start}``…, in one request."""
        body = {"count": count, "prefix": prefix, "start": start, **extra}
        accounts: list[dict[str, Any]] = self._admin("POST", "/accounts", json=body)["accounts"]
        return accounts

    def accounts(self, *, remote: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._admin(
            "GET", "/accounts", params={"remote": "1"} if remote else {}
        )
        return result

    def login_cookie(self, client: httpx.Client, username: str) -> None:
        """Sign ``client`` in as ``username`` (session cookie) for the authorize page."""
        response = client.get(f"{self.url}/_test/login", params={"username": username})
        response.raise_for_status()

    def follows(self, account: str | None = None) -> dict[str, Any]:
        """``{"follows": [...], "attempts": [...], "summary": {...}}`` (optionally for one acct)."""
        result: dict[str, Any] = self._admin(
            "GET", "/follows", params={"account": account} if account else {}
        )
        return result

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._admin("GET", "/stats")
        return result

    def apps(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._admin("GET", "/apps")
        return result

    def tokens(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._admin("GET", "/tokens")
        return result

    def revoke_tokens(
        self, *, token: str | None = None, username: str | None = None, client_id: str | None = None
    ) -> int:
        """Revoke server-side (as if the user removed the app); returns how many."""
        body = {
            k: v
            for k, v in {"token": token, "username": username, "client_id": client_id}.items()
            if v
        }
        return int(self._admin("POST", "/tokens/revoke", json=body)["revoked"])

    def inject_faults(self, *rules: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Queue fault rules, e.g. ``{"status": 503, "count": 2, "path": "/api/v1/accounts/*"}``."""
        result: list[dict[str, Any]] = self._admin(
            "POST", "/faults", json={"rules": [dict(r) for r in rules]}
        )["rules"]
        return result

    def inject_fault(self, **rule: Any) -> list[dict[str, Any]]:
        return self.inject_faults(rule)

    def clear_faults(self) -> None:
        self._admin("DELETE", "/faults")

    def clock(self) -> dict[str, Any]:
        """``{"now": ISO, "epoch": float, "speedup": float}`` in simulated time."""
        result: dict[str, Any] = self._admin("GET", "/clock")
        return result

    def set_clock(self, now: str | float | None = None, speedup: float | None = None) -> None:
        body: dict[str, Any] = {}
        if now is not None:
            body["now"] = now
        if speedup is not None:
            body["speedup"] = speedup
        self._admin("POST", "/clock", json=body)

    def advance_clock(self, seconds: float) -> None:
        self._admin("POST", "/clock", json={"advance": seconds})

    def configure(self, **settings: Any) -> dict[str, Any]:
        """Change quirks/settings at run time, e.g. ``configure(async_follow=True)``."""
        result: dict[str, Any] = self._admin("POST", "/config", json=settings)
        return result

    # -- OAuth ----------------------------------------------------------------------------
    def register_app(
        self,
        client_name: str = "passerelle",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        scopes: str = DEFAULT_SCOPES,
        website: str | None = None,
    ) -> RegisteredApp:
        data = {"client_name": client_name, "redirect_uris": redirect_uri, "scopes": scopes}
        if website:
            data["website"] = website
        response = self.http.post("/api/v1/apps", data=data)
        if response.status_code != 200:
            raise MastodonTestError(f"app registration: {response.status_code} {response.text}")
        raw = response.json()
        return RegisteredApp(raw["client_id"], raw["client_secret"], redirect_uri, scopes, raw)

    def authorize_url(
        self,
        app: RegisteredApp,
        *,
        scopes: str | None = None,
        state: str | None = None,
        redirect_uri: str | None = None,
        **extra: str,
    ) -> str:
        params = {
            "response_type": "code",
            "client_id": app.client_id,
            "redirect_uri": redirect_uri or app.redirect_uri,
            "scope": scopes if scopes is not None else app.scopes,
            **extra,
        }
        if state is not None:
            params["state"] = state
        return f"{self.url}/oauth/authorize?{urlencode(params)}"

    def _local_url(self, url: str) -> str:
        """Point an authorize URL built for ``https://alpha.test`` at this process."""
        parts = urlsplit(url)
        if parts.hostname == self.domain:
            base = urlsplit(self.url)
            return urlunsplit(parts._replace(scheme=base.scheme, netloc=base.netloc))
        return url

    def click_authorize(
        self, authorize_url: str, username: str, *, approve: bool = True
    ) -> AuthorizeResult:
        """Be the user's browser: open the authorize page as ``username``, click a button.

        Returns the redirect the server answers with (``code``/``state`` or ``error``);
        raises :class:`MastodonTestError` when the server shows an error page instead.
        """
        url = self._local_url(authorize_url)
        sep = "&" if urlsplit(url).query else "?"
        with httpx.Client(timeout=10.0, follow_redirects=False) as browser:
            page = browser.get(f"{url}{sep}{urlencode({'login_as': username})}")
            if page.status_code in {301, 302, 303}:
                return self._result(page.headers["location"])
            if page.status_code != 200:
                raise MastodonTestError(f"authorize page: {page.status_code} {page.text}")
            parser = _FormParser()
            parser.feed(page.text)
            wanted = "approve" if approve else "deny"
            form = next((f for f in parser.forms if f.id == wanted), None)
            if form is None:
                raise MastodonTestError(f"no {wanted} form on the authorize page:\n{page.text}")
            answer = browser.post(urljoin(str(page.url), form.action), data=form.fields)
            if answer.status_code not in {301, 302, 303}:
                raise MastodonTestError(f"authorize answer: {answer.status_code} {answer.text}")
            return self._result(answer.headers["location"])

    @staticmethod
    def _result(location: str) -> AuthorizeResult:
        query = parse_qs(urlsplit(location).query)
        return AuthorizeResult(location, {k: v[-1] for k, v in query.items()})

    def exchange_code(
        self,
        app: RegisteredApp,
        code: str,
        *,
        redirect_uri: str | None = None,
        code_verifier: str | None = None,
    ) -> dict[str, Any]:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": app.client_id,
            "client_secret": app.client_secret,
            "redirect_uri": redirect_uri or app.redirect_uri,
        }
        if code_verifier:
            data["code_verifier"] = code_verifier
        response = self.http.post("/oauth/token", data=data)
        if response.status_code != 200:
            raise MastodonTestError(f"token exchange: {response.status_code} {response.text}")
        result: dict[str, Any] = response.json()
        return result

    def login(
        self, username: str, scopes: str = DEFAULT_SCOPES, app: RegisteredApp | None = None
    ) -> str:
        """Full OAuth flow (register app if needed, authorize, exchange): an access token."""
        app = app or self.register_app(scopes=scopes)
        state = secrets.token_urlsafe(8)
        result = self.click_authorize(self.authorize_url(app, scopes=scopes, state=state), username)
        if result.code is None or result.state != state:
            raise MastodonTestError(f"authorize failed: {result.location}")
        return str(self.exchange_code(app, result.code)["access_token"])

    # -- API conveniences -------------------------------------------------------------------
    def resolve(self, token: str, acct: str) -> dict[str, Any] | None:
        """``/api/v2/search?resolve=true`` for one ``user@domain``; the account or None."""
        with self.api(token) as api:
            response = api.get(
                "/api/v2/search", params={"q": acct, "resolve": "true", "type": "accounts"}
            )
        response.raise_for_status()
        accounts = response.json()["accounts"]
        return accounts[0] if accounts else None


class MastodonFleet:
    """N instance processes wired as peers (``alpha.test``, ``beta.test``, …)."""

    def __init__(
        self,
        domains: Sequence[str] = ("alpha.test", "beta.test"),
        *,
        base_dir: Path | None = None,
        speedup: float = 1.0,
        start_time: str | None = None,
        quirks: Mapping[str, Sequence[str]] | None = None,
        extra_args: Mapping[str, Sequence[str]] | None = None,
        log_level: str = "warning",
        startup_timeout: float = 20.0,
    ) -> None:
        """``quirks``/``extra_args`` map a domain to CLI flags, e.g.
        ``quirks={"beta.test": ["async-follow"]}``, ``extra_args={"beta.test": ["--software",
        "pleroma"]}``."""
        if len(set(domains)) != len(domains):
            raise ValueError("domains must be distinct")
        self._own_dir = base_dir is None
        self.base_dir = (
            Path(tempfile.mkdtemp(prefix="mastodon-fleet-")) if base_dir is None else base_dir
        )
        self.peers_file = self.base_dir / "peers.json"
        self.startup_timeout = startup_timeout
        self.instances: dict[str, MastodonInstance] = {}
        for domain in domains:
            argv = [
                "--port",
                "0",
                "--domain",
                domain,
                "--data-dir",
                str(self.base_dir / domain),
                "--peers-file",
                str(self.peers_file),
                "--speedup",
                str(speedup),
                "--log-level",
                log_level,
            ]
            if start_time:
                argv += ["--start-time", start_time]
            for quirk in (quirks or {}).get(domain, ()):
                argv += ["--quirk", quirk]
            argv += list((extra_args or {}).get(domain, ()))
            self.instances[domain] = MastodonInstance(domain, self.base_dir / domain, argv)

    def start(self) -> Self:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for instance in self.instances.values():
                instance.spawn()
            for instance in self.instances.values():
                instance.wait_ready(self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        tmp = self.peers_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.urls, indent=2))
        tmp.replace(self.peers_file)
        return self

    def stop(self) -> None:
        for instance in self.instances.values():
            instance.terminate()
        for instance in self.instances.values():
            instance.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __getitem__(self, domain: str) -> MastodonInstance:
        """``fleet["alpha.test"]`` (or ``fleet["alpha"]``)."""
        if domain in self.instances:
            return self.instances[domain]
        matches = [d for d in self.instances if d.split(".")[0] == domain]
        if len(matches) == 1:
            return self.instances[matches[0]]
        raise KeyError(domain)

    def __iter__(self) -> Iterator[MastodonInstance]:
        return iter(self.instances.values())

    @property
    def domains(self) -> list[str]:
        return list(self.instances)

    @property
    def urls(self) -> dict[str, str]:
        """Domain → ``http://127.0.0.1:port`` (also written to ``peers_file``)."""
        return {d: i.url for d, i in self.instances.items()}

    def reset(self) -> None:
        for instance in self.instances.values():
            instance.reset()
