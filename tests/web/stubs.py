"""Stand-ins for the other services' request/reply answers, for page-level tests only.

The pages are tested here against the real edge (in-process, on a real
``nats-server``); what the matching service and the senders would answer over
request/reply is played by these responders, on the same NATS, with the real
contract models. The full journey (``test_journey.py``) uses the real services.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import nats
from pydantic import BaseModel

from passerelle_contracts.rpc import (
    BlueskyLinkRequest,
    CountReply,
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MatchCount,
    MatchItem,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchSummaryReply,
    MatchSummaryRequest,
    RpcError,
    UnlinkReply,
    UnlinkRequest,
)

GOOD_APP_PASSWORD = "abcd-efgh-ijkl-mnop"


@dataclass
class StubMatch:
    target: str
    handle: str
    directions: tuple[str, ...]
    state: str = "proposed"
    trust: str = "verified"
    reason: str | None = None


@dataclass
class StubWorld:
    """What the stand-in services know: accounts that may sign in, and matches per person."""

    bluesky_accounts: dict[str, str] = field(default_factory=dict)
    """handle → DID of accounts whose app password is :data:`GOOD_APP_PASSWORD`."""
    matches: dict[str, dict[str, list[StubMatch]]] = field(default_factory=dict)
    """person id → network → matches."""
    requests: list[BaseModel] = field(default_factory=list)

    def give_matches(self, person_id: str, network: str, count: int, *, followers: int = 0) -> None:
        """``count`` people the person followed and ``followers`` who followed them."""
        items = []
        for i in range(count + followers):
            directions = ("following",) if i < count else ("follower",)
            if i % 7 == 3 and i < count:
                directions = ("following", "follower")
            handle = f"person{i:03d}.test" if network == "bluesky" else f"person{i:03d}@beta.test"
            target = f"did:plc:stub{i:03d}" if network == "bluesky" else handle
            trust = "claimed" if i % 5 == 1 else "disputed" if i % 11 == 2 else "verified"
            items.append(StubMatch(target, handle, directions, trust=trust))
        self.matches.setdefault(person_id, {})[network] = items


class StubServices:
    """Answers ``rpc.matching.*``, ``rpc.bluesky.*`` and ``rpc.mastodon.authorize``."""

    def __init__(self, nats_url: str, world: StubWorld) -> None:
        self.nats_url = nats_url
        self.world = world
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._nc: Any = None

    def start(self) -> StubServices:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(timeout=15)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._nc.drain(), self._loop).result(timeout=15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _connect(self) -> None:
        self._nc = await nats.connect(self.nats_url)
        handlers: dict[str, tuple[type[BaseModel], Callable[[Any], BaseModel]]] = {
            "rpc.matching.summary": (MatchSummaryRequest, self.summary),
            "rpc.matching.list": (MatchListRequest, self.list),
            "rpc.matching.select": (MatchSelectRequest, self.select),
            "rpc.matching.request_follows": (MatchRequestFollows, self.request_follows),
            "rpc.bluesky.link": (BlueskyLinkRequest, self.bluesky_link),
            "rpc.bluesky.unlink": (UnlinkRequest, self.unlink),
            "rpc.mastodon.unlink": (UnlinkRequest, self.unlink),
            "rpc.mastodon.authorize": (MastodonAuthorizeRequest, self.mastodon_authorize),
        }
        for subject, (model, handler) in handlers.items():

            async def respond(msg: Any, model: Any = model, handler: Any = handler) -> None:
                request = model.model_validate_json(msg.data)
                self.world.requests.append(request)
                reply = handler(request)
                await msg.respond(reply.model_dump_json().encode())

            await self._nc.subscribe(subject, cb=respond)
        await self._nc.flush()

    def _of(self, person_id: str, network: str) -> list[StubMatch]:
        return self.world.matches.get(person_id, {}).get(network, [])

    def summary(self, request: MatchSummaryRequest) -> MatchSummaryReply:
        counts: dict[tuple[str, str, str], int] = {}
        for network, items in self.world.matches.get(request.person_id, {}).items():
            for item in items:
                for direction in item.directions:
                    key = (network, direction, item.state)
                    counts[key] = counts.get(key, 0) + 1
        return MatchSummaryReply(
            region=request.region,
            counts=tuple(
                MatchCount(network=n, direction=d, state=s, count=c)  # type: ignore[arg-type]
                for (n, d, s), c in sorted(counts.items())
            ),
        )

    def list(self, request: MatchListRequest) -> MatchListReply:
        items = [
            m
            for m in self._of(request.person_id, request.network)
            if (request.direction is None or request.direction in m.directions)
            and (not request.states or m.state in request.states)
            and (not request.search or request.search.lower() in m.handle)
        ]
        page = items[request.offset : request.offset + request.limit]
        return MatchListReply(
            region=request.region,
            total=len(items),
            items=tuple(
                MatchItem(
                    target=m.target,
                    handle=m.handle,
                    directions=m.directions,  # type: ignore[arg-type]
                    state=m.state,  # type: ignore[arg-type]
                    trust=m.trust,  # type: ignore[arg-type]
                    reason=m.reason,
                )
                for m in page
            ),
        )

    def select(self, request: MatchSelectRequest) -> CountReply:
        changed = 0
        for m in self._of(request.person_id, request.network):
            chosen = m.target in request.targets or (
                request.all_in_direction in (*m.directions, "both")
            )
            if chosen and m.state in ("proposed", "selected"):
                m.state = "selected" if request.selected else "proposed"
                changed += 1
        return CountReply(region=request.region, count=changed)

    def request_follows(self, request: MatchRequestFollows) -> CountReply:
        changed = 0
        for m in self._of(request.person_id, request.network):
            if m.state == "selected":
                m.state = "requested"
                changed += 1
        return CountReply(region=request.region, count=changed)

    def bluesky_link(self, request: BlueskyLinkRequest) -> LinkReply:
        did = self.world.bluesky_accounts.get(request.identifier)
        if did is None or request.app_password.get_secret_value() != GOOD_APP_PASSWORD:
            return LinkReply(
                region=request.region,
                network="bluesky",
                error=RpcError(code="wrong_password", message="wrong app password"),
            )
        return LinkReply(
            region=request.region, network="bluesky", account=did, handle=request.identifier
        )

    def unlink(self, request: UnlinkRequest) -> UnlinkReply:
        return UnlinkReply(region=request.region, removed=True)

    def mastodon_authorize(self, request: MastodonAuthorizeRequest) -> MastodonAuthorizeReply:
        return MastodonAuthorizeReply(
            region=request.region,
            error=RpcError(code="unknown_instance", message="no server answers there"),
        )
