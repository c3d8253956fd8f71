"""pytest fixtures for a real local Bluesky PDS.

Use them from a conftest.py or a test module, either way:

    pytest_plugins = ["tests.peers.pds.fixtures"]      # registers them once, globally
    # or
    from tests.peers.pds.fixtures import pds, pds_factory, pds_rate_limited  # noqa: F401

Fixtures:
    pds               session-scoped LocalPds, rate limits OFF. Shared by every test of the
                      session: create fresh accounts per test (``pds.create_account()``).
    pds_rate_limited  function-scoped LocalPds, rate limits ON: a new server (~3-4 s) per test,
                      so every test starts with full budgets.
    pds_factory       function-scoped factory: ``pds_factory(rate_limits=True, **LocalPds kwargs)``
                      starts a server that is stopped at the end of the test.

Even if these functions are imported in several places (so pytest sees several fixture
definitions), the session server is started once per process and stopped after the last user.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import LocalPds

__all__ = ["pds", "pds_factory", "pds_rate_limited"]

_session_lock = threading.Lock()
_session_state: dict[str, Any] = {"pds": None, "users": 0}


def _acquire_session_pds(base: Path) -> LocalPds:
    with _session_lock:
        if _session_state["pds"] is None:
            _session_state["pds"] = LocalPds(rate_limits=False, data_dir=base / "pds").start()
        _session_state["users"] += 1
        return _session_state["pds"]  # type: ignore[no-any-return]


def _release_session_pds() -> None:
    with _session_lock:
        _session_state["users"] -= 1
        if _session_state["users"] <= 0 and _session_state["pds"] is not None:
            _session_state["pds"].stop()
            _session_state["pds"] = None


@pytest.fixture(scope="session")
def pds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPds]:
    """A real PDS (+ in-memory PLC) for the whole session; rate limits off."""
    server = _acquire_session_pds(tmp_path_factory.mktemp("local-pds"))
    try:
        yield server
    finally:
        _release_session_pds()


@pytest.fixture
def pds_factory(tmp_path: Path) -> Iterator[Callable[..., LocalPds]]:
    """Start extra PDS servers for one test: ``pds_factory(rate_limits=True)``."""
    started: list[LocalPds] = []

    def make(**kwargs: Any) -> LocalPds:
        kwargs.setdefault("data_dir", tmp_path / f"pds{len(started)}")
        server = LocalPds(**kwargs)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def pds_rate_limited(pds_factory: Callable[..., LocalPds]) -> LocalPds:
    """A fresh real PDS with Bluesky's rate limits on (full budgets), for one test."""
    return pds_factory(rate_limits=True)
