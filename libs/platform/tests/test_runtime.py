"""The service runtime on a real nats-server: what "ready" promises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from faststream.nats import NatsRouter

from passerelle_platform.runtime import ServiceRuntime
from passerelle_platform.settings import PlatformSettings
from tests.support.nats import NatsServer


async def test_ready_only_once_every_subscriber_listens(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    settings = PlatformSettings(env="dev", nats_url=nats_server.url, data_dir=tmp_path)
    runtime = ServiceRuntime("runtime-test", "0", settings)
    router = NatsRouter()

    @router.subscriber("rpc.runtime-test.echo")
    async def echo(body: str) -> str:
        return body

    runtime.include(router)
    hook_entered, hook_released = asyncio.Event(), asyncio.Event()

    async def slow_hook() -> None:
        hook_entered.set()
        await hook_released.wait()

    runtime.on_connected.append(slow_hook)
    await runtime.start()
    try:
        await asyncio.wait_for(hook_entered.wait(), timeout=30)
        # Connected, streams made, subscribers started, but a start hook still runs.
        assert runtime.checks()["nats"]
        assert runtime.health().status == "degraded"
        hook_released.set()
        async with asyncio.timeout(30):
            while runtime.health().status != "up":  # noqa: ASYNC110 - polling a probe
                await asyncio.sleep(0.01)
        # "up" means a request finds its responder at once.
        nc = await nats.connect(nats_server.url)
        try:
            reply = await nc.request("rpc.runtime-test.echo", b'"ping"', timeout=5)
        finally:
            await nc.close()
        assert reply.data == b"ping"
    finally:
        hook_released.set()
        await runtime.stop()
