"""Fixtures for the mastodon sender's tests: real instances, real NATS, the real service.

- ``fleet``: three test instances for the module (``alpha``, ``beta``, ``gamma``);
  ``instances`` is that fleet reset to a blank state, per test;
- ``harness``: the sender in this process (``create_sender``) on a fresh
  ``nats-server`` and database, with an edge-side client, per test;
- ``clock``: the sender's clock (real time unless a test module overrides it);
- ``engine``: the sender's database alone, migrated (SQLite and PostgreSQL), per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

import passerelle_mastodon_sender
from passerelle_mastodon_sender.clock import Clock
from passerelle_platform.db import make_engine, migrate
from tests.mastodon.support import Harness, sender_settings, start_harness
from tests.peers.mastodon.harness import MastodonFleet
from tests.support.nats import NatsServer

DOMAINS = ("alpha.test", "beta.test", "gamma.test")
MIGRATIONS = Path(passerelle_mastodon_sender.__file__).parent / "migrations"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    with MastodonFleet(DOMAINS, base_dir=tmp_path_factory.mktemp("fleet")) as started:
        yield started


@pytest.fixture
def instances(fleet: MastodonFleet) -> MastodonFleet:
    """The module's fleet, blank."""
    fleet.reset()
    return fleet


@pytest.fixture
def clock() -> Clock | None:
    return None


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Extra sender settings for a test module."""
    return {}


@pytest.fixture
async def harness(
    instances: MastodonFleet,
    nats_server: NatsServer,
    tmp_path: Path,
    clock: Clock | None,
    settings_overrides: dict[str, object],
) -> AsyncIterator[Harness]:
    settings = sender_settings(nats_server.url, tmp_path, instances, **settings_overrides)
    async with start_harness(settings, instances, clock) as started:
        yield started


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine, MIGRATIONS, "mastodon_sender")
    yield engine
    engine.dispose()
