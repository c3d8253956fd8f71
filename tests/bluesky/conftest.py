"""Fixtures for the bluesky sender's tests: a real PDS, a real NATS, the real service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bluesky.support import sender_env, start_sender
from tests.peers.pds.fixtures import pds, pds_factory, pds_rate_limited
from tests.peers.pds.harness import LocalPds
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

__all__ = ["pds", "pds_factory", "pds_rate_limited"]


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server for a whole test module (tests use fresh people and accounts)."""
    server = NatsServer(tmp_path_factory.mktemp("nats") / "jetstream").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def shared_sender(
    pds: LocalPds, module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The sender as a real process, shared by a module's tests, pointed at the local PDS."""
    work = tmp_path_factory.mktemp("sender")
    process = start_sender(module_nats, work, sender_env(pds.url, pds.plc_url))
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    return tmp_path
