"""Signing in with the account one is moving to, and linking the other network.

The senders prove the account against the real server (request/reply); the edge
maps the proven account to a person here and keeps the session.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from faststream.nats import NatsBroker
from pydantic import SecretStr

from passerelle_contracts.base import Network
from passerelle_contracts.rpc import (
    BlueskyLinkRequest,
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MastodonLinkRequest,
    UnlinkReply,
    UnlinkRequest,
)
from passerelle_ingest.errors import ApiError
from passerelle_ingest.models import Person
from passerelle_ingest.people import People
from passerelle_platform.broker import ServiceUnavailableError, ask

LINK_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Proven:
    """An account a sender verified, and the person it belongs to here."""

    person: Person
    network: Network
    account: str
    handle: str


class SignIn:
    """Sign-in and linking flows, for the JSON API and the web pages alike."""

    def __init__(self, broker: NatsBroker, people: People, region: str) -> None:
        self.broker = broker
        self.people = people
        self.region = region

    async def _ask_link(self, request: BlueskyLinkRequest | MastodonLinkRequest) -> tuple[str, str]:
        """The proven (account, handle), or an :class:`ApiError` saying why not."""
        try:
            reply = await ask(
                self.broker, request, request.subject, LinkReply, wait_seconds=LINK_WAIT_SECONDS
            )
        except ServiceUnavailableError:
            raise ApiError(
                503,
                "sender_unavailable",
                "This network cannot be reached right now; try again soon.",
            ) from None
        if reply.error is not None:
            status = 503 if reply.error.code.endswith("unreachable") else 400
            raise ApiError(status, reply.error.code, reply.error.message)
        if reply.account is None or reply.handle is None:
            raise ApiError(502, "bad_reply", "The network answered something unexpected.")
        return reply.account, reply.handle

    async def bluesky(
        self, identifier: str, app_password: SecretStr, person_id: str | None
    ) -> Proven:
        """Sign in (``person_id`` None) or link Bluesky to a signed-in person.

        At sign-in the sender first only verifies; once the account maps to a
        person here, a second request stores the credential for that person.
        """
        request = BlueskyLinkRequest(
            region=self.region,
            person_id=person_id,
            identifier=identifier,
            app_password=app_password,
        )
        account, handle = await self._ask_link(request)
        if person_id is None:
            person = await asyncio.to_thread(self.people.sign_in, "bluesky", account, handle)
            stored = request.model_copy(update={"person_id": person.id})
            await self._ask_link(stored)
        else:
            person = await self._attach(person_id, "bluesky", account, handle)
        return Proven(person, "bluesky", account, handle)

    async def mastodon_authorize(self, instance: str, redirect_uri: str, state: str) -> str:
        """Where to send the browser to approve passerelle on ``instance``."""
        request = MastodonAuthorizeRequest(
            region=self.region, instance=instance, redirect_uri=redirect_uri, state=state
        )
        try:
            reply = await ask(
                self.broker,
                request,
                request.subject,
                MastodonAuthorizeReply,
                wait_seconds=LINK_WAIT_SECONDS,
            )
        except ServiceUnavailableError:
            raise ApiError(
                503, "sender_unavailable", "Mastodon cannot be reached right now; try again soon."
            ) from None
        if reply.error is not None:
            raise ApiError(400, reply.error.code, reply.error.message)
        if reply.authorize_url is None:
            raise ApiError(502, "bad_reply", "The network answered something unexpected.")
        return reply.authorize_url

    async def mastodon_finish(
        self, instance: str, code: SecretStr, redirect_uri: str, person_id: str | None
    ) -> Proven:
        """Exchange the code; sign in or link, as for Bluesky."""
        request = MastodonLinkRequest(
            region=self.region,
            person_id=person_id,
            instance=instance,
            code=code,
            redirect_uri=redirect_uri,
        )
        account, handle = await self._ask_link(request)
        if person_id is None:
            person = await asyncio.to_thread(self.people.sign_in, "mastodon", account, handle)
            # As for Bluesky: the sender only verified; now it keeps the token for this person.
            await self._ask_link(request.model_copy(update={"person_id": person.id}))
        else:
            person = await self._attach(person_id, "mastodon", account, handle)
        return Proven(person, "mastodon", account, handle)

    async def _attach(self, person_id: str, network: Network, account: str, handle: str) -> Person:
        attached = await asyncio.to_thread(self.people.link, person_id, network, account, handle)
        if not attached:
            raise ApiError(
                409,
                "account_taken",
                "This account is already linked to another person here. Sign in with it instead.",
            )
        person = await asyncio.to_thread(self.people.get, person_id)
        assert person is not None
        return person

    async def unlink(self, person_id: str, network: Network) -> None:
        """Forget the credential at the sender and the link here."""
        request = UnlinkRequest(region=self.region, person_id=person_id, network=network)
        subject = f"rpc.{network}.unlink"
        try:
            await ask(self.broker, request, subject, UnlinkReply, wait_seconds=LINK_WAIT_SECONDS)
        except ServiceUnavailableError:
            raise ApiError(
                503,
                "sender_unavailable",
                "This network cannot be reached right now; try again soon.",
            ) from None
        await asyncio.to_thread(self.people.unlink, person_id, network)
