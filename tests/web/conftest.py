"""The web pages' test fixtures: headless Chromium, and the edge serving its pages.

``web`` runs the real ingest app (in this process, with uvicorn on a free port)
on a real ``nats-server``; request/reply answers of the other services come from
``stubs.py``. Screenshots go to ``test-artifacts/web/``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from passerelle_ingest.app import create_app
from passerelle_ingest.people import People
from passerelle_ingest.sessions import COOKIE, Session, SessionSigner
from passerelle_ingest.settings import Settings
from tests.support.nats import NatsServer
from tests.support.ports import free_port
from tests.web.stubs import StubServices, StubWorld

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
OPERATOR = {
    "operator_name": "Collectif Passerelle Test",
    "operator_contact": "contact@passerelle.example",
    "privacy_policy_url": "https://passerelle.example/privacy",
}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """Debian's Chromium: Playwright downloads no browser (see .ci/install-chromium)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-chromium")
    return {**browser_type_launch_args, "executable_path": CHROMIUM}


@dataclass
class WebEdge:
    """The running edge, and how to act on it from a test."""

    base_url: str
    settings: Settings
    people: People
    world: StubWorld

    def person(self, handle: str = "alice.test", network: str = "bluesky") -> str:
        """A signed-up person (as a sign-in would create); returns their id."""
        account = f"did:plc:{handle.split('.', maxsplit=1)[0]}" if network == "bluesky" else handle
        return self.people.sign_in(network, account, handle).id

    def cookie(self, person_id: str) -> str:
        signer = SessionSigner(self.settings.secret_key, self.settings.session_max_age_seconds)
        return signer.dumps(Session(person_id=person_id))

    def csrf(self, person_id: str) -> str:
        signer = SessionSigner(self.settings.secret_key, self.settings.session_max_age_seconds)
        return signer.csrf_token(Session(person_id=person_id))

    def client(self, person_id: str | None = None, **headers: str) -> httpx.Client:
        cookies = {COOKIE: self.cookie(person_id)} if person_id else {}
        return httpx.Client(base_url=self.base_url, cookies=cookies, headers=headers, timeout=20)

    def browser_cookies(self, person_id: str) -> list[dict[str, Any]]:
        return [{"name": COOKIE, "value": self.cookie(person_id), "url": self.base_url}]


@contextlib.contextmanager
def serve_edge(root: Path, **overrides: Any) -> Iterator[WebEdge]:
    """The real ingest app on a free port, its own nats-server and stubbed peers."""
    nats_server = NatsServer(root / "jetstream").start()
    world = StubWorld()
    stubs = StubServices(nats_server.url, world).start()
    settings = Settings(
        env="dev",
        region="local",
        nats_url=nats_server.url,
        data_dir=root / "data",
        http_port=free_port(),
        log_level="WARNING",
        request_timeout_seconds=1.0,
        nats_connect_retry_seconds=0.3,
        upload_tmp_dir=root / "uploads",
        **{**OPERATOR, **overrides},
    )
    app, runtime = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{settings.http_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base_url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the edge did not become ready")
        time.sleep(0.1)
    assert runtime.engine is not None
    try:
        yield WebEdge(base_url, settings, People(runtime.engine), world)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        stubs.stop()
        nats_server.stop()


@pytest.fixture(scope="session")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebEdge]:
    with serve_edge(tmp_path_factory.mktemp("web")) as edge:
        yield edge


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
