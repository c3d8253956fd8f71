"""Running the (synchronous) database work off the event loop.

SQLite takes one writer at a time: its work goes through one thread, in order,
instead of threads waiting on its lock. PostgreSQL gets a few threads.
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
    """An engine and the threads its work runs in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._pool = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="mastodon-db"
        )

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
