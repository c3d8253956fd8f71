"""Each service's own database: a SQLite file by default, Postgres when configured.

Schema changes are Alembic migrations kept in each service's package
(``<package>/migrations``); :func:`migrate` brings a database to ``head``. Every
service keeps its own version table so several can share one Postgres database.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy import Engine, MetaData, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from passerelle_platform.settings import PlatformSettings


def database_url(settings: PlatformSettings, service: str) -> str:
    """``PASSERELLE_DATABASE_URL`` if set, else ``<data_dir>/<service>.sqlite3``."""
    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(settings.data_dir / f'{service}.sqlite3').resolve()}"


def make_engine(url: str) -> Engine:
    """An engine with sensible settings for the backend (WAL + busy timeout for SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, poolclass=NullPool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def migrate(engine: Engine, migrations: Path, service: str) -> None:
    """Upgrade the database to the newest migration in ``migrations``."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["passerelle_service"] = service
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def run_migrations(
    context: EnvironmentContext | ModuleType, target_metadata: MetaData | None
) -> None:
    """The body of every service's ``migrations/env.py`` (online mode only)."""
    config = context.config
    connection = config.attributes["connection"]
    service = config.attributes["passerelle_service"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=f"alembic_version_{service}",
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
