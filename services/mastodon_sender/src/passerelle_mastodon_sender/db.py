"""Running the (synchronous) database work off the event loop.

SQLite takes one writer at a time: its work goes through one thread, in order,
instead of threads waiting on its lock. PostgreSQL gets a few threads. Both use
the runtime's engine (for SQLite its pooled connections stay open: a commit costs
well under a millisecond, not the 10-25 ms of a checkpoint when the last
connection to a WAL database closes).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from sqlalchemy import Engine

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """The engine the sender's work uses, and the threads it runs in."""

    def __init__(self, engine: Engine) -> None:
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.engine = engine
        self._pool = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="mastodon-db"
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the work in flight (the engine is the runtime's to dispose)."""
        self._pool.shutdown(wait=True)
