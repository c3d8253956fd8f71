"""Running the (synchronous) database work off the event loop.

SQLite takes one writer at a time: its work goes through one thread, in order,
instead of threads waiting on its lock, and over one kept-open connection. (The
platform's SQLite engine opens a connection per transaction; when the last one
closes SQLite checkpoints its log and syncs the file, about 10-25 ms a commit
here against 0.5 ms on a kept connection.) PostgreSQL gets a few threads and the
platform's pooled engine.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import QueuePool

P = ParamSpec("P")
T = TypeVar("T")


def _sqlite_engine(url: Any) -> Engine:
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=2,
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


class Database:
    """The engine the sender's work uses, and the threads it runs in."""

    def __init__(self, engine: Engine) -> None:
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.engine = _sqlite_engine(engine.url) if self.is_sqlite else engine
        self._pool = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="mastodon-db"
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.is_sqlite:
            self.engine.dispose()
