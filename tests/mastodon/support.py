"""The edge's side of the sender, for tests: requests, follow requests, published events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from passerelle_contracts import (
    FollowResult,
    IdentityLinked,
    IdentityUnlinked,
    MastodonFollowRequested,
    follow_id,
)
from passerelle_contracts.rpc import (
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MastodonLinkRequest,
    UnlinkReply,
    UnlinkRequest,
)
from passerelle_mastodon_sender.app import create_sender
from passerelle_mastodon_sender.clock import Clock
from passerelle_mastodon_sender.service import MastodonSender
from passerelle_mastodon_sender.settings import Settings
from passerelle_platform.broker import make_broker, publish_event
from passerelle_platform.metrics import ServiceMetrics
from tests.peers.mastodon.harness import AuthorizeResult, MastodonFleet

REDIRECT_URI = "http://127.0.0.1:8000/auth/mastodon/callback"
REGION = "test"


def sender_settings(
    nats_url: str, tmp_path: Path, fleet: MastodonFleet, **overrides: Any
) -> Settings:
    """Settings for a sender talking to ``fleet`` (plain http on loopback)."""
    values: dict[str, Any] = {
        "env": "dev",
        "region": REGION,
        "nats_url": nats_url,
        "data_dir": tmp_path / "sender",
        "nats_connect_retry_seconds": 0.2,
        "log_level": "WARNING",
        "mastodon_instance_urls_file": fleet.peers_file,
        "mastodon_allow_http": True,
        "mastodon_http_timeout_seconds": 5.0,
        "mastodon_retry_base_seconds": 0.5,
        "mastodon_retry_max_seconds": 2.0,
        "mastodon_metrics_interval_seconds": 0.5,
        **overrides,
    }
    return Settings(**values)


def x_id(target: str) -> str:
    """A stable fake X id for a target (tests only need it well-formed)."""
    return str(int.from_bytes(target.encode()[:7].ljust(7, b"\0"), "big"))


def follow_request(
    person_id: str, target: str, *, actor: str | None = None
) -> MastodonFollowRequested:
    """What matching emits for ``person_id`` to follow ``target`` (the actor defaults to an
    account of theirs on ``a.test``)."""
    return MastodonFollowRequested(
        region=REGION,
        follow_id=follow_id(person_id, "mastodon", target),
        person_id=person_id,
        actor=actor or f"{person_id}@a.test",
        target=target,
        target_x_id=x_id(target),
        directions=("following",),
    )


@dataclass
class Harness:
    """The edge's view: a NATS client watching the sender's events (and the sender itself
    when it runs in this process)."""

    sender: MastodonSender | None
    edge: NatsBroker
    fleet: MastodonFleet
    results: list[FollowResult] = field(default_factory=list)
    linked: list[IdentityLinked] = field(default_factory=list)
    unlinked: list[IdentityUnlinked] = field(default_factory=list)

    @property
    def local(self) -> MastodonSender:
        """The sender running in this process."""
        if self.sender is None:
            raise AssertionError("the sender runs in another process")
        return self.sender

    async def on_event(self, msg: Any) -> None:
        data = json.loads(msg.data)
        if msg.subject == "follow.result":
            self.results.append(FollowResult.model_validate(data))
        elif msg.subject == "identity.linked" and data.get("network") == "mastodon":
            self.linked.append(IdentityLinked.model_validate(data))
        elif msg.subject == "identity.unlinked" and data.get("network") == "mastodon":
            self.unlinked.append(IdentityUnlinked.model_validate(data))

    # --- request/reply ----------------------------------------------------------------------

    async def authorize(
        self, instance: str, *, state: str | None = None, redirect_uri: str = REDIRECT_URI
    ) -> MastodonAuthorizeReply:
        request = MastodonAuthorizeRequest(
            region=REGION,
            instance=instance,
            redirect_uri=redirect_uri,
            state=state or secrets.token_urlsafe(24),
        )
        response = await self.edge.request(request, request.subject, timeout=20)
        return MastodonAuthorizeReply.model_validate_json(response.body)

    async def link(
        self,
        instance: str,
        code: str,
        *,
        person_id: str | None,
        redirect_uri: str = REDIRECT_URI,
    ) -> LinkReply:
        request = MastodonLinkRequest(
            region=REGION,
            person_id=person_id,
            instance=instance,
            code=SecretStr(code),
            redirect_uri=redirect_uri,
        )
        response = await self.edge.request(request, request.subject, timeout=20)
        return LinkReply.model_validate_json(response.body)

    async def unlink(self, person_id: str) -> UnlinkReply:
        request = UnlinkRequest(region=REGION, person_id=person_id, network="mastodon")
        response = await self.edge.request(request, "rpc.mastodon.unlink", timeout=20)
        return UnlinkReply.model_validate_json(response.body)

    async def click(
        self, authorize_url: str, domain: str, username: str, *, approve: bool = True
    ) -> AuthorizeResult:
        """Be the browser: open the page as ``username``, press a button, read the redirect."""
        instance = self.fleet[domain]
        return await asyncio.to_thread(
            instance.click_authorize, authorize_url, username, approve=approve
        )

    async def sign_in(self, domain: str, username: str, person_id: str) -> str:
        """The whole redirect flow; returns the linked acct."""
        state = secrets.token_urlsafe(24)
        reply = await self.authorize(domain, state=state)
        if reply.error is not None or reply.authorize_url is None:
            raise AssertionError(f"authorize failed: {reply}")
        result = await self.click(reply.authorize_url, domain, username)
        if result.state != state or result.code is None:
            raise AssertionError(f"no code: {result}")
        linked = await self.link(domain, result.code, person_id=person_id)
        if linked.error is not None or linked.account is None:
            raise AssertionError(f"link failed: {linked}")
        return linked.account

    # --- follow requests -----------------------------------------------------------------------

    def follow_request(self, person_id: str, actor: str, target: str) -> MastodonFollowRequested:
        return follow_request(person_id, target, actor=actor)

    async def request_follows(
        self, person_id: str, actor: str, targets: Iterable[str]
    ) -> list[MastodonFollowRequested]:
        requests = [self.follow_request(person_id, actor, t) for t in targets]
        await asyncio.gather(*(publish_event(self.edge, r) for r in requests))
        return requests

    async def wait_for(
        self, check: Callable[[], bool], within: float = 20.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} not reached in {within}s")

    def results_for(self, person_id: str) -> dict[str, FollowResult]:
        """The latest result per target."""
        return {r.target: r for r in self.results if r.person_id == person_id}

    async def wait_results(
        self, person_id: str, count: int, within: float = 30.0
    ) -> dict[str, FollowResult]:
        await self.wait_for(
            lambda: len(self.results_for(person_id)) >= count,
            within,
            f"{count} results for {person_id} (have {len(self.results_for(person_id))})",
        )
        return self.results_for(person_id)


async def wait_started(sender: MastodonSender, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if sender.follower.running and sender.runtime.health().status == "up":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sender did not start")


@contextlib.asynccontextmanager
async def start_harness(
    settings: Settings, fleet: MastodonFleet, clock: Clock | None = None
) -> AsyncIterator[Harness]:
    sender = create_sender(settings, clock)
    await sender.runtime.start()
    edge = make_broker(
        settings.nats_url, "edge", TracerProvider(), ServiceMetrics("edge", "0", REGION)
    )
    try:
        await wait_started(sender)
        await edge.connect()
        harness = Harness(sender, edge, fleet)
        for subject in ("follow.result", "identity.*"):
            await edge.connection.subscribe(subject, cb=harness.on_event)
        yield harness
    finally:
        await edge.stop()
        await sender.runtime.stop()
