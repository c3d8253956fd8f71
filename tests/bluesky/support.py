"""Helpers for the bluesky sender's tests: talk to it over NATS like the other services do,
read what it published, look at its ledger, and run it as a real process."""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from pydantic import SecretStr

from passerelle_contracts import (
    BlueskyFollowRequested,
    Event,
    FollowResult,
    IdentityLinked,
    IdentityUnlinked,
    UserErased,
    follow_id,
)
from passerelle_contracts.rpc import BlueskyLinkRequest, LinkReply, UnlinkReply, UnlinkRequest
from passerelle_contracts.streams import stream_for_subject
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

T = TypeVar("T")
REGION = "local"


def sender_env(pds_url: str, plc_url: str, **extra: str) -> dict[str, str]:
    """Environment for a sender pointed at a local PDS (and its PLC directory)."""
    env = {
        "PASSERELLE_BLUESKY_HANDLE_RESOLVER_URL": pds_url,
        "PASSERELLE_BLUESKY_PLC_URL": plc_url,
        "PASSERELLE_BLUESKY_ALLOW_HTTP": "true",
        "PASSERELLE_BLUESKY_BATCH_LINGER_SECONDS": "0.3",
        "PASSERELLE_BLUESKY_HTTP_TIMEOUT_SECONDS": "10",
        "PASSERELLE_BLUESKY_METRICS_INTERVAL_SECONDS": "0.5",
        "PASSERELLE_BLUESKY_RETRY_BASE_SECONDS": "0.5",
        "PASSERELLE_LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


def start_sender(
    nats_server: NatsServer, work_dir: Path, env: dict[str, str], *, ready: bool = True
) -> ServiceProcess:
    process = ServiceProcess("bluesky_sender", nats_server.url, work_dir, env).start()
    if ready:
        process.wait_http("/readyz", timeout=90)
    return process


def ledger_path(work_dir: Path) -> Path:
    return work_dir / "data" / "bluesky_sender.sqlite3"


def query(db: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Read the sender's SQLite database (read-only)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args).fetchall()]


def request_for(person_id: str, actor: str, target: str) -> BlueskyFollowRequested:
    return BlueskyFollowRequested(
        region=REGION,
        follow_id=follow_id(person_id, "bluesky", target),
        person_id=person_id,
        actor=actor,
        target=target,
        target_x_id=str(int.from_bytes(secrets.token_bytes(7), "big")),
        directions=("following",),
    )


B32 = "abcdefghijklmnopqrstuvwxyz234567"


def fake_did() -> str:
    """A well-formed did:plc nobody has (the PDS accepts follows of it)."""
    return "did:plc:" + "".join(secrets.choice(B32) for _ in range(24))


def new_person() -> str:
    return f"person-{secrets.token_hex(6)}"


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels`` (Prometheus text)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        sample, _, label_text = head.partition("{")
        if sample != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


class Bus:
    """A NATS client speaking passerelle's protocol, as the edge and matching would."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def link(
        self, identifier: str, password: str, person_id: str | None, within: float = 60.0
    ) -> LinkReply:
        request = BlueskyLinkRequest(
            region=REGION,
            person_id=person_id,
            identifier=identifier,
            app_password=SecretStr(password),
        )
        msg = await self.nc.request(
            BlueskyLinkRequest.subject, request.model_dump_json().encode(), timeout=within
        )
        return LinkReply.model_validate_json(msg.data)

    async def unlink(self, person_id: str, within: float = 30.0) -> UnlinkReply:
        request = UnlinkRequest(region=REGION, person_id=person_id, network="bluesky")
        msg = await self.nc.request(
            "rpc.bluesky.unlink", request.model_dump_json().encode(), timeout=within
        )
        return UnlinkReply.model_validate_json(msg.data)

    async def publish(self, event: Event) -> None:
        stream = stream_for_subject(event.subject).name
        await self.js.publish(
            event.subject,
            event.model_dump_json().encode(),
            stream=stream,
            headers={"Nats-Msg-Id": event.dedupe_id()},
            timeout=10,
        )

    async def publish_raw(self, subject: str, data: bytes, msg_id: str) -> None:
        await self.js.publish(
            subject, data, stream=stream_for_subject(subject).name, headers={"Nats-Msg-Id": msg_id}
        )

    async def publish_all(self, events: list[Any]) -> None:
        """Publish many events, a few hundred in flight at once."""
        for i in range(0, len(events), 200):
            await asyncio.gather(*(self.publish(e) for e in events[i : i + 200]))

    async def erase(self, person_id: str) -> None:
        await self.publish(UserErased(region=REGION, person_id=person_id))

    async def stored(self, stream: str, subject_filter: str | None = None) -> list[Any]:
        """Every message now in ``stream`` (optionally only one subject), in order."""
        try:
            info = await self.js.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        out: list[Any] = []
        if not info.state.messages:
            return out
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            try:
                msg = await self.js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            if subject_filter is None or msg.subject == subject_filter:
                out.append(msg)
        return out

    async def results(self) -> list[FollowResult]:
        return [
            FollowResult.model_validate_json(m.data)
            for m in await self.stored("FOLLOW_RESULTS", "follow.result")
        ]

    async def linked(self) -> list[IdentityLinked]:
        return [
            IdentityLinked.model_validate_json(m.data)
            for m in await self.stored("ACCOUNTS", "identity.linked")
        ]

    async def unlinked(self) -> list[IdentityUnlinked]:
        return [
            IdentityUnlinked.model_validate_json(m.data)
            for m in await self.stored("ACCOUNTS", "identity.unlinked")
        ]

    async def dead_letters(self) -> list[Any]:
        return await self.stored("DEAD_LETTERS")

    async def pending_requests(self) -> int:
        info = await self.js.stream_info("FOLLOW_REQUESTS")
        return int(info.state.messages)


@asynccontextmanager
async def bus(url: str) -> AsyncIterator[Bus]:
    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=-1)
    try:
        yield Bus(nc)
    finally:
        await nc.close()


async def eventually(
    check: Callable[[], Awaitable[T]], within: float, what: str, interval: float = 0.25
) -> T:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not reached in {within}s (last: {last!r})")


async def results_of(b: Bus, person: str, count: int, within: float = 60) -> list[FollowResult]:
    """Wait for at least ``count`` results for ``person``."""

    async def check() -> list[FollowResult]:
        found = [r for r in await b.results() if r.person_id == person]
        return found if len(found) >= count else []

    return await eventually(check, within, f"{count} results for {person}")


async def metrics_text(process: ServiceProcess) -> str:
    async with httpx.AsyncClient() as client:
        return (await client.get(process.base_url + "/metrics", timeout=10)).text


def log_events(process: ServiceProcess, event: str) -> list[dict[str, Any]]:
    """The sender's JSON log lines whose ``event`` is ``event``."""
    out = []
    for line in process.log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            out.append(record)
    return out
