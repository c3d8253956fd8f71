"""Every service's database starts and migrates, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter

from passerelle_platform.db import count_database_errors, database_url, make_engine, migrate
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


def test_sqlite_engine_keeps_its_connections_with_pragmas_set(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'kept.sqlite3'}")
    try:
        with engine.connect() as connection:
            first = connection.connection.dbapi_connection
            pragmas = {
                name: connection.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
            }
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        with engine.connect() as connection:
            again = connection.connection.dbapi_connection
        # The same connection comes back: no open, pragmas and checkpoint per use.
        assert again is first
        assert pragmas == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "busy_timeout": 30_000,
            "synchronous": 1,  # NORMAL
        }
    finally:
        engine.dispose()


def test_sqlite_engine_concurrent_writers_wait_for_each_other(tmp_path: Path) -> None:
    """Threads writing through their own pooled connections all succeed (busy timeout)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'writers.sqlite3'}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)")

    def write(n: int) -> None:
        for i in range(50):
            with engine.begin() as connection:
                connection.execute(sa.text("INSERT INTO t (n) VALUES (:n)"), {"n": n * 1000 + i})

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(write, range(8)))
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 400
    finally:
        engine.dispose()


def test_sqlite_foreign_keys_are_enforced(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fk.sqlite3'}")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            connection.exec_driver_sql(
                "CREATE TABLE child (id INTEGER PRIMARY KEY, "
                "parent_id INTEGER NOT NULL REFERENCES parent (id))"
            )
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO child (parent_id) VALUES (42)")
    finally:
        engine.dispose()


def test_in_memory_sqlite_is_one_shared_database() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            connection.exec_driver_sql("INSERT INTO t DEFAULT VALUES")
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
    finally:
        engine.dispose()


def error_counter() -> Counter:
    return Counter("errors_total", "test", ["error"], registry=CollectorRegistry())


def counted(counter: Counter) -> dict[str, float]:
    return {
        s.labels["error"]: s.value
        for metric in counter.collect()
        for s in metric.samples
        if s.name.endswith("_total")
    }


def test_database_errors_are_counted_by_kind(database_url: str) -> None:
    engine = make_engine(database_url)
    counter = error_counter()
    count_database_errors(engine, counter)
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
        connection.execute(sa.text("INSERT INTO t VALUES (1)"))
        connection.commit()
        with pytest.raises(sa.exc.IntegrityError):
            connection.execute(sa.text("INSERT INTO t VALUES (1)"))
        connection.rollback()
        with pytest.raises(sa.exc.DBAPIError):
            connection.execute(sa.text("SELECT * FROM no_such_table"))
        connection.rollback()
        connection.execute(sa.text("SELECT 1"))  # a good statement counts nothing
    engine.dispose()
    # SQLite reports a missing table as an OperationalError, PostgreSQL as a ProgrammingError.
    missing = "operational" if database_url.startswith("sqlite") else "programming"
    assert counted(counter) == {"integrity": 1.0, missing: 1.0}


def test_a_database_that_cannot_be_reached_counts_as_connect(tmp_path: Path) -> None:
    counter = error_counter()
    engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}")
    count_database_errors(engine, counter)
    with pytest.raises(sa.exc.OperationalError), engine.connect():
        pass
    engine.dispose()
    assert counted(counter) == {"connect": 1.0}
