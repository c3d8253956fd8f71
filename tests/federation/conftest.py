"""Fixtures of the federation tests: a hub and two regions, and links to them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from passerelle_platform.federation import (
    FederationLink,
    ensure_hub,
    ensure_stream,
    regional_stream_config,
    run_hub,
)
from tests.federation.support import Recorder, connect
from tests.federation.topology import Federation

Links = dict[str, tuple[FederationLink, Recorder]]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    """A hub and the regions fr and es, joined, each with its own domain and store."""
    topology = Federation(tmp_path).start()
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture
async def links(federation: Federation) -> AsyncIterator[Links]:
    """A started :class:`FederationLink` per region, recording what it receives.

    In the order of joining: each region's own stream exists before the hub
    adds it to DIRECTORY's sources (a source that finds no stream backs off for
    up to two minutes), and DIRECTORY exists before the regions mirror it.
    """
    for region in federation.regions:
        async with connect(federation.federation_url(region)) as nc:
            await ensure_stream(nc.jetstream(), regional_stream_config(region))
    async with connect(federation.hub_admin_url) as hub:
        await ensure_hub(hub, federation.regions)
    out: Links = {}
    for region in federation.regions:
        recorder = Recorder()
        link = FederationLink(
            federation.federation_url(region), region, recorder, retry_seconds=0.5
        )
        await link.start()
        out[region] = (link, recorder)
    try:
        for link, _ in out.values():
            await asyncio.wait_for(link.wait_ready(), 20)
        yield out
    finally:
        for link, _ in out.values():
            await link.stop()


@pytest.fixture
async def hub_eraser(federation: Federation) -> AsyncIterator[None]:
    """The hub's process (``python -m passerelle_platform.federation hub``), in a task."""
    nc = await nats.connect(
        federation.hub_admin_url, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_hub(nc, federation.regions, stop=stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await nc.close()
