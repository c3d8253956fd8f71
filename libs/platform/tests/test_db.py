"""Every service's database starts and migrates, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from passerelle_platform.db import database_url, make_engine, migrate
from passerelle_platform.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[3]
SERVICES = ["ingest", "matching", "bluesky_sender", "mastodon_sender"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_migrations_apply_twice(database_url: str, service: str) -> None:
    engine = make_engine(database_url)
    migrations = ROOT / "services" / service / "src" / f"passerelle_{service}" / "migrations"
    migrate(engine, migrations, service)
    migrate(engine, migrations, service)  # idempotent: already at head
    with engine.connect() as connection:
        version = connection.execute(
            sa.text(f"SELECT version_num FROM alembic_version_{service}")
        ).scalar_one()
    assert version
    engine.dispose()


def test_default_url_is_one_sqlite_file_per_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "dev")
    monkeypatch.delenv("PASSERELLE_DATABASE_URL", raising=False)
    settings = PlatformSettings(data_dir=tmp_path)
    assert database_url(settings, "matching") == f"sqlite:///{tmp_path / 'matching.sqlite3'}"


def test_postgres_url_is_used_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_ENV", "dev")
    monkeypatch.setenv("PASSERELLE_DATABASE_URL", "postgresql://u:p@db/passerelle")
    settings = PlatformSettings()
    assert database_url(settings, "matching") == "postgresql+psycopg://u:p@db/passerelle"
