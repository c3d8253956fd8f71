"""Fixtures of the matching service's tests: a migrated database on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle_matching.store import MatchingStore
from passerelle_platform.db import make_engine, migrate
from services.matching.tests.world import World

MIGRATIONS = Path(__file__).resolve().parents[1] / "src" / "passerelle_matching" / "migrations"


@pytest.fixture
def store_factory(database_url: str) -> Iterator[object]:
    """Build stores on one fresh, migrated database (SQLite and PostgreSQL)."""
    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate(engine, MIGRATIONS, "matching")

    def build(*, trust_archive_claims: bool = False) -> MatchingStore:
        return MatchingStore(engine, trust_archive_claims=trust_archive_claims)

    try:
        yield build
    finally:
        engine.dispose()


@pytest.fixture
def world(store_factory: object) -> World:
    """A small world of people on a strict store (archive claims not trusted)."""
    return World(store_factory(trust_archive_claims=False))  # type: ignore[operator]


@pytest.fixture
def trusting_world(store_factory: object) -> World:
    """The same, with ``trust_archive_claims`` on (a closed community)."""
    return World(store_factory(trust_archive_claims=True))  # type: ignore[operator]
