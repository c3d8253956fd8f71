"""The whole of passerelle on one machine, with real peers: for the browser journey and
``just demo``.

Real NATS, the four services as subprocesses (their console scripts), a real local
Bluesky PDS (``tests/peers/pds``) and Mastodon-API test servers
(``tests/peers/mastodon``). People already here are seeded the way people arrive:
through the edge's API (sign in with a real app password or a real OAuth approval,
consent, upload an archive).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from passerelle_ingest.sessions import COOKIE
from tests.bluesky.support import sender_env
from tests.peers.mastodon.harness import MastodonFleet
from tests.peers.pds.harness import LocalPds, PdsAccount
from tests.support.archivegen import ArchiveSpec, archive_bytes, extracted_files, make_id
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float, what: str, every: float = 0.3) -> T:
    """Poll ``check`` until it returns something true."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not reached in {timeout}s (last: {last!r})")


def x_id(n: int) -> int:
    """A realistic X id for the n-th person of a scenario (beyond 2**53)."""
    return make_id(n * 10 + 2, 4242)


@dataclass
class Member:
    """Someone already here: their account, their X id, their session on the edge."""

    network: str
    handle: str
    account: str
    x_id: int
    client: httpx.Client = field(repr=False)


@dataclass
class Stack:
    """NATS, the four services, and the peers they talk to."""

    work: Path
    pds: LocalPds
    fleet: MastodonFleet
    ports: dict[str, int] = field(default_factory=dict)
    nats: NatsServer | None = None
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    members: list[Member] = field(default_factory=list)

    @property
    def edge(self) -> ServiceProcess:
        return self.services["ingest"]

    @property
    def base_url(self) -> str:
        return self.edge.base_url

    def start(self, *, extra_env: dict[str, dict[str, str]] | None = None) -> Stack:
        self.work.mkdir(parents=True, exist_ok=True)
        self.nats = NatsServer(self.work / "jetstream").start()
        common = {"PASSERELLE_LOG_LEVEL": "INFO", "PASSERELLE_REQUEST_TIMEOUT_SECONDS": "10"}
        env = {
            "ingest": {**common, "PASSERELLE_OPERATOR_NAME": "passerelle (local demo)"},
            "matching": {**common, "PASSERELLE_OUTBOX_INTERVAL_SECONDS": "0.5"},
            "bluesky_sender": {**common, **sender_env(self.pds.url, self.pds.plc_url)},
            "mastodon_sender": {
                **common,
                "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(self.fleet.peers_file),
                "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
                "PASSERELLE_MASTODON_HTTP_TIMEOUT_SECONDS": "10",
                "PASSERELLE_MASTODON_RETRY_BASE_SECONDS": "0.5",
                "PASSERELLE_MASTODON_RETRY_MAX_SECONDS": "2",
                "PASSERELLE_MASTODON_FLUSH_INTERVAL_SECONDS": "0.05",
            },
        }
        for name, values in (extra_env or {}).items():
            env[name].update(values)
        for name in ("ingest", "matching", "bluesky_sender", "mastodon_sender"):
            process = ServiceProcess(name, self.nats.url, self.work, env[name])
            if name in self.ports:
                process.port = self.ports[name]
                process.env["PASSERELLE_HTTP_PORT"] = str(process.port)
            if name == "ingest":
                process.env["PASSERELLE_PUBLIC_URL"] = process.base_url
            self.services[name] = process.start()
        for process in self.services.values():
            process.wait_http("/readyz", timeout=120)
        return self

    def stop(self) -> None:
        for member in self.members:
            member.client.close()
        for process in self.services.values():
            process.stop()
        if self.nats is not None:
            self.nats.stop()

    # --- people -------------------------------------------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def csrf(self, client: httpx.Client) -> str:
        response = client.get("/api/me")
        response.raise_for_status()
        return response.headers["X-CSRF-Token"]

    def consent(self, client: httpx.Client, **consents: bool) -> None:
        body = {"matching": False, "auto_follow": False, "notifications": False, **consents}
        response = client.put(
            "/api/consents", json=body, headers={"X-CSRF-Token": self.csrf(client)}
        )
        response.raise_for_status()

    def upload(self, client: httpx.Client, spec: ArchiveSpec) -> dict[str, Any]:
        files = [
            ("files", (name.rsplit("/", 1)[-1], data, "text/javascript"))
            for name, data in extracted_files(spec)
        ]
        response = client.post(
            "/api/archive", files=files, headers={"X-CSRF-Token": self.csrf(client)}
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        return body

    def seed_bluesky(self, account: PdsAccount, n: int, *, consent: bool = True) -> Member:
        """Someone who moved to Bluesky, signed in here, consented and gave their archive."""
        client = self.client()
        response = client.post(
            "/api/signin/bluesky",
            json={"identifier": account.handle, "app_password": account.app_password},
        )
        assert response.status_code == 200, response.text
        member = Member("bluesky", account.handle, account.did, x_id(n), client)
        self._settle(member, consent)
        return member

    def seed_mastodon(self, domain: str, username: str, n: int, *, consent: bool = True) -> Member:
        """Someone who moved to Mastodon (``username@domain``), signed in here by OAuth."""
        instance = self.fleet[domain]
        client = self.client()
        start = client.get("/auth/mastodon/start", params={"instance": domain})
        assert start.status_code == 303, start.text
        approval = instance.click_authorize(start.headers["location"], username)
        assert approval.code, approval
        back = client.get(
            "/auth/mastodon/callback", params={"code": approval.code, "state": approval.state}
        )
        assert back.status_code == 303, back.text
        assert client.cookies.get(COOKIE)
        handle = f"{username}@{domain}"
        member = Member("mastodon", handle, handle, x_id(n), client)
        self._settle(member, consent)
        return member

    def _settle(self, member: Member, consent: bool) -> None:
        if consent:
            self.consent(member.client, matching=True)
        self.upload(
            member.client,
            ArchiveSpec(
                followers=3,
                following=3,
                seed=member.x_id % 1000,
                account_id=member.x_id,
                username=re.sub(r"\W", "_", member.handle.split(".")[0].split("@")[0])[:15],
            ),
        )
        self.members.append(member)


def newcomer_archive(
    following: Iterable[Member], followers: Iterable[Member], *, strangers: int = 5
) -> bytes:
    """An X archive for a newcomer who followed ``following`` and was followed by ``followers``
    (plus people who are not here)."""
    outsiders = tuple(make_id(900 + i, 777) for i in range(strangers))
    spec = ArchiveSpec(
        account_id=make_id(5, 31337),
        username="newcomer",
        following_ids_override=(*(m.x_id for m in following), *outsiders),
        follower_ids_override=(*(m.x_id for m in followers), *outsiders[:2]),
        seed=99,
    )
    return archive_bytes(spec)


__all__ = ["Member", "Stack", "newcomer_archive", "wait_for", "x_id"]
