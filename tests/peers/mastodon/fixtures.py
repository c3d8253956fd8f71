"""pytest fixtures for the test Mastodon servers.

Import them from a conftest (``from tests.peers.mastodon.fixtures import *`` or
``pytest_plugins = ["tests.peers.mastodon.fixtures"]``):

* ``mastodon_fleet_session`` — one fleet (``alpha.test``, ``beta.test``; real-time
  clock) for the whole session;
* ``mastodon_fleet`` — that fleet, reset to a blank state before each test;
* ``mastodon_fleet_factory`` — ``factory(domains, speedup=..., quirks=...)`` starts a
  dedicated fleet (stopped at the end of the test) for anything the shared one
  cannot do, such as CLI-only options.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from .harness import MastodonFleet

__all__ = ["mastodon_fleet", "mastodon_fleet_factory", "mastodon_fleet_session"]

FleetFactory = Callable[..., MastodonFleet]


@pytest.fixture(scope="session")
def mastodon_fleet_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MastodonFleet]:
    base = tmp_path_factory.mktemp("mastodon-fleet")
    with MastodonFleet(("alpha.test", "beta.test"), base_dir=base) as fleet:
        yield fleet


@pytest.fixture
def mastodon_fleet(mastodon_fleet_session: MastodonFleet) -> MastodonFleet:
    mastodon_fleet_session.reset()
    return mastodon_fleet_session


@pytest.fixture
def mastodon_fleet_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetFactory]:
    started: list[MastodonFleet] = []

    def start(
        domains: Sequence[str] = ("alpha.test", "beta.test"), **options: Any
    ) -> MastodonFleet:
        options.setdefault("base_dir", tmp_path_factory.mktemp("mastodon-fleet"))
        fleet = MastodonFleet(domains, **options).start()
        started.append(fleet)
        return fleet

    yield start
    for fleet in started:
        fleet.stop()
