"""The edge in-process (real NATS, real SQLite), with a signed-in person."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from passerelle_ingest.app import create_app
from passerelle_ingest.people import People
from passerelle_ingest.sessions import COOKIE, Session, SessionSigner
from passerelle_ingest.settings import Settings
from passerelle_platform.runtime import ServiceRuntime
from tests.support.nats import NatsServer


@dataclass
class Edge:
    """A running edge and a client signed in as one person."""

    runtime: ServiceRuntime
    client: httpx.AsyncClient
    person_id: str
    csrf: str
    settings: Settings
    people: People

    def signed_in_client(self, person_id: str) -> httpx.AsyncClient:
        signer = SessionSigner(self.settings.secret_key, 3600)
        cookie = signer.dumps(Session(person_id))
        return httpx.AsyncClient(
            transport=self.client._transport,  # noqa: SLF001 - same app, another person
            base_url="http://edge",
            cookies={COOKIE: cookie},
            headers={"X-CSRF-Token": signer.csrf_token(Session(person_id))},
        )


EdgeFactory = Callable[..., Any]


async def start_edge(nats_url: str, root: Path, **overrides: Any) -> Edge:
    """Start an edge on ``nats_url`` with its data and uploads under ``root``."""
    settings = Settings(
        env="dev",
        nats_url=nats_url,
        data_dir=root / "data",
        upload_tmp_dir=root / "uploads",
        **overrides,
    )
    app, runtime = create_app(settings)
    await runtime.start()
    for _ in range(200):
        if runtime.health().status == "up":
            break
        await asyncio.sleep(0.05)
    assert runtime.engine is not None
    people = People(runtime.engine)
    person = people.sign_in("bluesky", "did:plc:alice", "alice.test")
    signer = SessionSigner(settings.secret_key, 3600)
    session = Session(person.id)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://edge",
        cookies={COOKIE: signer.dumps(session)},
        headers={"X-CSRF-Token": signer.csrf_token(session)},
    )
    return Edge(runtime, client, person.id, signer.csrf_token(session), settings, people)


async def stop_edge(edge: Edge) -> None:
    await edge.client.aclose()
    await edge.runtime.stop()


@pytest.fixture
async def edge_factory(
    nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Edge] = []

    async def make(**overrides: Any) -> Edge:
        edge = await start_edge(nats_server.url, tmp_path, **overrides)
        started.append(edge)
        return edge

    yield make
    for edge in started:
        await stop_edge(edge)


@pytest.fixture
async def edge(edge_factory: Callable[..., Any]) -> Edge:
    made: Edge = await edge_factory()
    return made
