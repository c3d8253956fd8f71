"""Each service's own database: a SQLite file by default, Postgres when configured.

Schema changes are Alembic migrations kept in each service's package
(``<package>/migrations``); :func:`migrate` brings a database to ``head``. Every
service keeps its own version table so several can share one Postgres database.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from prometheus_client import Counter
from sqlalchemy import Engine, MetaData, create_engine, event, exc, text
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.pool import QueuePool, StaticPool

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


SQLITE_BUSY_TIMEOUT_SECONDS = 30
SQLITE_POOL_SIZE = 5
SQLITE_MAX_OVERFLOW = 10


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Run once per new connection, outside any transaction (pysqlite opens none
    # before the first write), so foreign_keys takes effect.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
    cursor.close()


def _is_memory_database(database: str | None) -> bool:
    return not database or database == ":memory:" or "mode=memory" in database


def make_engine(url: str) -> Engine:
    """An engine with sensible settings for the backend.

    SQLite: WAL, ``synchronous=NORMAL``, foreign keys, a 30 s busy timeout, and
    connections that stay open in a pool. A connection per transaction (what this
    engine did first) costs 10-25 ms a commit: when the last connection to a WAL
    database closes, SQLite checkpoints the log and syncs the file. Kept
    connections commit in well under a millisecond and the WAL is checkpointed as
    it grows (SQLite's own auto-checkpoint). An in-memory database is one shared
    connection (each new connection would be a new, empty database).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS}
        if _is_memory_database(parsed.database):
            engine = create_engine(url, connect_args=connect_args, poolclass=StaticPool)
        else:
            engine = create_engine(
                url,
                connect_args=connect_args,
                poolclass=QueuePool,
                pool_size=SQLITE_POOL_SIZE,
                max_overflow=SQLITE_MAX_OVERFLOW,
                pool_timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
            )
        event.listen(engine, "connect", _set_sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


_ERROR_KINDS: tuple[tuple[type[exc.DBAPIError], str], ...] = (
    (exc.IntegrityError, "integrity"),
    (exc.OperationalError, "operational"),
    (exc.ProgrammingError, "programming"),
    (exc.DataError, "data"),
    (exc.InternalError, "internal"),
    (exc.InterfaceError, "interface"),
)


def database_error_kind(context: ExceptionContext) -> str:
    """A bounded label for a driver error: ``connect`` (no connection could be made),
    ``disconnect`` (the connection was lost), else the DB-API class of the error."""
    if context.connection is None:
        return "connect"
    if context.is_disconnect:
        return "disconnect"
    error = context.sqlalchemy_exception
    for kind, name in _ERROR_KINDS:
        if isinstance(error, kind):
            return name
    return "other"


def count_database_errors(engine: Engine, counter: Counter) -> None:
    """Count every error the engine's driver raises on ``counter`` (label ``error``).

    The services never expect one (unique constraints are met with ``ON CONFLICT``),
    so any is worth an operator's look: the ``PasserelleDatabaseErrors`` alert.
    """

    def count(context: ExceptionContext) -> None:
        counter.labels(database_error_kind(context)).inc()

    event.listen(engine, "handle_error", count)


def migrate(engine: Engine, migrations: Path, service: str) -> None:
    """Upgrade the database to the newest migration in ``migrations``.

    On PostgreSQL one process at a time (a transaction-level advisory lock): replicas
    starting together on one database would otherwise race to create the same tables.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["passerelle_service"] = service
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            digest = hashlib.sha256(f"passerelle migrate {service}".encode()).digest()
            key = int.from_bytes(digest[:8], "big", signed=True)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
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
