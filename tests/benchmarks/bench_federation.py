"""Federation: a person links in region B, and region A's people who followed them get the match.

Run: ``uv run python -m tests.benchmarks.bench_federation [--people N] [--edges E]``
(default: two regions of 10,000 people, 40 edges each, 20 % pointing at the other region)

Three real ``nats-server`` processes configured by ``deploy/nats/`` (a hub and
the regions fr = A and es = B, leaf nodes with their own JetStream domains) and
the real matching service of each region, federated, in this process, each
with its own database (PostgreSQL started here, as in production; ``--database
sqlite`` for the file). In one run:

1. **population**: each region's people consent, upload an archive (edges
   through ``MatchingStore.import_archive``) and link Bluesky, except B's
   newcomers, who have not linked yet; then each region matches its own;
2. **directory**: each region's matching publishes its directory through its
   federation code (``FederatedMatchingService.publish_directory``), and both
   apply the other region's; the bytes the hub's leaf connections carry meanwhile,
   divided by the people published, are the **bytes per person** — as NATS
   counts them (messages, headers included) and as TCP counts them (``ss``:
   everything on the wire, protocol, heartbeats and flow control included, after
   the leaf connection's compression);
3. **propagation**: one by one, each newcomer's ``identity.linked`` is published
   in B (as B's Bluesky sender would) and the clock stops when region A's
   database holds the matches towards them: B's matching, B's directory stream,
   the hub's sourcing, A's mirror, A's matching, end to end.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from faststream.nats import NatsBroker
from sqlalchemy import text

from passerelle_contracts import IdentityLinked, directory_key
from passerelle_matching.app import create_service
from passerelle_matching.federation import FederatedMatchingService, remote_person_id
from passerelle_matching.models import FOLLOWER, FOLLOWING
from passerelle_matching.settings import Settings
from passerelle_matching.store import Archive, MatchingStore
from passerelle_platform.broker import ensure_streams, publish_event
from passerelle_platform.federation import ensure_hub, ensure_stream, regional_stream_config
from tests.federation.support import connect
from tests.federation.topology import Federation
from tests.support.postgres import postgres_server

A, B = "fr", "es"
X_BASE = {A: 1_000_000_000, B: 2_000_000_000}
TARGETS = {"propagation_p99_ms": 2000.0, "bytes_per_person": 1024.0}


@dataclass(frozen=True)
class Person:
    person_id: str
    x_id: int
    following: np.ndarray[Any, np.dtype[np.uint64]]
    followers: np.ndarray[Any, np.dtype[np.uint64]]


def population(people: int, edges: int, cross: float, seed: int) -> dict[str, list[Person]]:
    """``people`` per region, ``edges`` each (half following, half followers)."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[Person]] = {}
    for region, other in ((A, B), (B, A)):
        own_ids = np.arange(people, dtype=np.uint64) + np.uint64(X_BASE[region])
        other_ids = np.arange(people, dtype=np.uint64) + np.uint64(X_BASE[other])
        members = []
        for i in range(people):
            n_cross = int(rng.binomial(edges, cross))
            targets = np.concatenate(
                [
                    rng.choice(own_ids, edges - n_cross, replace=False),
                    rng.choice(other_ids, n_cross, replace=False),
                ]
            )
            targets = targets[targets != own_ids[i]]
            rng.shuffle(targets)
            half = len(targets) // 2
            members.append(
                Person(
                    f"{region}-{i}",
                    int(own_ids[i]),
                    np.unique(targets[:half]),
                    np.unique(targets[half:]),
                )
            )
        out[region] = members
    return out


def load(store: MatchingStore, region: str, people: list[Person], unlinked: set[str]) -> None:
    """Consent, link (except ``unlinked``), archive; then match the region's own at once."""
    for p in people:
        store.change_consent(
            p.person_id, region, matching=True, auto_follow=False, notifications=False, revision=1
        )
        if p.person_id not in unlinked:
            store.link_identity(
                p.person_id, region, "bluesky", did(p.person_id), handle(p.person_id), 1.0
            )
        store.import_archive(
            Archive(p.person_id, region, f"import-{p.person_id}", 2.0, str(p.x_id), p.person_id),
            [(FOLLOWING, p.following), (FOLLOWER, p.followers)],
            match=False,
        )
    store.match_all()


def did(person_id: str) -> str:
    return f"did:plc:{person_id.replace('-', ''):0>24}"


def handle(person_id: str) -> str:
    return f"{person_id}.bsky.social"


def matches_towards(store: MatchingStore, person_id: str) -> int:
    with store.engine.connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT count(*) FROM matching_match m JOIN matching_person t"
                    " ON t.person_key = m.target_key WHERE t.person_id = :p"
                ),
                {"p": person_id},
            ).scalar_one()
        )


class Wire:
    """Bytes on the hub's leaf connections: NATS's counts and the kernel's."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    def messages(self) -> int:
        return sum(i + o for i, o in self.federation.leaf_bytes().values())

    def tcp(self) -> int | None:
        """bytes_sent + bytes_received of the hub's end of every leaf connection (``ss``)."""
        try:
            done = subprocess.run(
                [
                    "ss",
                    "-tinH",
                    "state",
                    "established",
                    f"( sport = :{self.federation.leaf_port} )",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        sent = [int(m) for m in re.findall(r"bytes_sent:(\d+)", done.stdout)]
        received = [int(m) for m in re.findall(r"bytes_received:(\d+)", done.stdout)]
        return sum(sent) + sum(received) if sent else None


@asynccontextmanager
async def matching(
    federation: Federation, region: str, work: Path, database_url: str | None
) -> AsyncIterator[FederatedMatchingService]:
    os.environ["PASSERELLE_FEDERATION_NATS_URL"] = federation.federation_url(region)
    settings = Settings(
        env="dev",
        region=region,
        nats_url=federation.services_url(region),
        data_dir=work / region,
        database_url=database_url,  # type: ignore[arg-type]
        nats_connect_retry_seconds=0.2,
        log_level="WARNING",
    )
    service = create_service(settings)
    assert isinstance(service, FederatedMatchingService)
    await service.runtime.start()
    try:
        while service.runtime.health().status != "up":  # noqa: ASYNC110 - polling
            await asyncio.sleep(0.05)
        await asyncio.wait_for(service.link.wait_ready(), 60)
        yield service
    finally:
        await service.runtime.stop()


async def publish_all(service: FederatedMatchingService, ids: list[str], lanes: int = 16) -> None:
    chunks = [ids[i::lanes] for i in range(lanes)]
    await asyncio.gather(*(service.publish_directory(chunk) for chunk in chunks))


def cpu_seconds(*, children: bool = False) -> float:
    """User + system CPU of this process (and of the servers it started and waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if children:
        waited = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += waited.ru_utime + waited.ru_stime
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@contextmanager
def databases(kind: str) -> Iterator[dict[str, str | None]]:
    """One database per region: SQLite files (``None``), or a PostgreSQL started here."""
    if kind == "sqlite":
        yield {A: None, B: None}
        return
    with postgres_server() as root:
        admin = sa.create_engine(root, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            for region in (A, B):
                connection.execute(text(f'CREATE DATABASE "matching_{region}"'))
        admin.dispose()
        base = sa.engine.make_url(root)
        yield {
            r: base.set(database=f"matching_{r}").render_as_string(hide_password=False)
            for r in (A, B)
        }


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    started = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    people = population(args.people, args.edges, args.cross, args.seed)
    # Newcomers: people of B whom someone in A followed or was followed by.
    pointed_at = {
        int(x)
        for p in people[A]
        for ids in (p.following, p.followers)
        for x in ids
        if int(x) >= X_BASE[B]
    }
    candidates = [p.person_id for p in people[B] if p.x_id in pointed_at]
    newcomers = candidates[: args.newcomers]
    print(f"population: {2 * args.people} people, {time.perf_counter() - started:.1f}s", flush=True)

    (work / "nats").mkdir()
    federation = Federation(work / "nats").start()
    stack = ExitStack()
    urls = stack.enter_context(databases(args.database))
    try:
        for region in (A, B):
            async with connect(federation.federation_url(region)) as nc:
                await ensure_stream(nc.jetstream(), regional_stream_config(region))
        async with connect(federation.hub_admin_url) as hub:
            await ensure_hub(hub, (A, B))
        async with AsyncExitStack() as services_stack:
            services = {
                region: await services_stack.enter_async_context(
                    matching(federation, region, work, urls[region])
                )
                for region in (A, B)
            }
            t = time.perf_counter()
            await asyncio.gather(
                asyncio.to_thread(load, services[A].store, A, people[A], set()),
                asyncio.to_thread(load, services[B].store, B, people[B], set(newcomers)),
            )
            print(f"loaded both regions: {time.perf_counter() - t:.1f}s", flush=True)

            wire = Wire(federation)
            before_messages, before_tcp = wire.messages(), wire.tcp()
            t = time.perf_counter()
            published = {
                A: [p.person_id for p in people[A]],
                B: [p.person_id for p in people[B] if p.person_id not in set(newcomers)],
            }
            await asyncio.gather(*(publish_all(services[r], published[r]) for r in (A, B)))
            expect = {A: len(published[B]), B: len(published[A])}
            while any(  # noqa: ASYNC110 - polling counters
                services[r].link.counters.received < expect[r] for r in (A, B)
            ):
                await asyncio.sleep(0.1)
            directory_seconds = time.perf_counter() - t
            await asyncio.sleep(1.0)  # let flow control and acks settle before counting
            crossed = len(published[A]) + len(published[B])
            message_bytes = (wire.messages() - before_messages) / crossed
            after_tcp = wire.tcp()
            tcp_bytes = (
                (after_tcp - before_tcp) / crossed
                if after_tcp is not None and before_tcp is not None
                else None
            )
            print(
                f"directory: {crossed} entries crossed in {directory_seconds:.1f}s;"
                f" per person {message_bytes:.0f} B (NATS messages),"
                f" {tcp_bytes if tcp_bytes is None else round(tcp_bytes)} B (TCP)",
                flush=True,
            )

            # Where the time goes: when A's link hands each entry to matching.
            handed: dict[str, float] = {}
            handler = services[A].link.handler
            assert handler is not None

            async def timed(message: Any) -> None:
                handed.setdefault(message.key, time.time())
                await handler(message)

            services[A].link.handler = timed
            broker = NatsBroker(federation.services_url(B), logger=None)
            await broker.connect()
            await ensure_streams(broker)
            latencies: list[float] = []
            hops: list[tuple[float, float, float, float]] = []
            # Steady state: one entry at a time, each compressed alone on the leaf links.
            trickle_messages, trickle_tcp = wire.messages(), wire.tcp()
            propagation_cpu = cpu_seconds()
            t_propagation = time.perf_counter()
            try:
                for person_id in newcomers:
                    key = directory_key(B, person_id)
                    remote = remote_person_id(B, key)
                    linked_at = time.time()
                    t = time.perf_counter()
                    await publish_event(
                        broker,
                        IdentityLinked(
                            region=B,
                            person_id=person_id,
                            network="bluesky",
                            account=did(person_id),
                            handle=handle(person_id),
                        ),
                    )
                    while not await asyncio.to_thread(  # noqa: ASYNC110 - polling the database
                        matches_towards, services[A].store, remote
                    ):
                        await asyncio.sleep(0.002)
                    latencies.append((time.perf_counter() - t) * 1000)
                    matched_at = time.time()
                    subject = f"directory.{B}.{key}"
                    async with connect(federation.federation_url(B)) as nc:
                        out = await nc.jetstream().get_last_msg(f"DIRECTORY_{B.upper()}", subject)
                    async with connect(federation.hub_admin_url) as hub:
                        hubbed = await hub.jetstream().get_last_msg("DIRECTORY", subject)
                    assert out.time is not None
                    assert hubbed.time is not None
                    hops.append(
                        (
                            out.time.timestamp() - linked_at,
                            hubbed.time.timestamp() - out.time.timestamp(),
                            handed[key] - hubbed.time.timestamp(),
                            matched_at - handed[key],
                        )
                    )
            finally:
                await broker.stop()
            propagation_seconds = time.perf_counter() - t_propagation
            propagation_cpu = cpu_seconds() - propagation_cpu
            after_tcp = wire.tcp()
            one_by_one = len(latencies) or 1
            trickle_message_bytes = (wire.messages() - trickle_messages) / one_by_one
            trickle_tcp_bytes = (
                (after_tcp - trickle_tcp) / one_by_one
                if after_tcp is not None and trickle_tcp is not None
                else None
            )
    finally:
        federation.stop()
        stack.close()
    print(
        f"one at a time ({len(latencies)} newcomers): per person"
        f" {trickle_message_bytes:.0f} B (NATS messages),"
        f" {trickle_tcp_bytes if trickle_tcp_bytes is None else round(trickle_tcp_bytes)} B (TCP)"
    )
    total_cpu = cpu_seconds(children=True)
    print(
        f"CPU: propagation phase {propagation_cpu:.1f} s of this process (both matching"
        f" services) over {propagation_seconds:.1f} s wall; whole run {total_cpu:.1f} s"
        f" (this process and the servers it started) over {time.perf_counter() - started:.1f} s"
    )
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(f"propagation over {len(latencies)} newcomers: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    for i, hop in enumerate(
        (
            "B's matching: identity.linked -> entry in DIRECTORY_ES",
            "hub: DIRECTORY_ES -> DIRECTORY (sourcing)",
            "A: DIRECTORY -> mirror -> link hands it to matching",
            "A's matching: entry applied, matches visible",
        )
    ):
        times = [h[i] * 1000 for h in hops]
        print(
            f"  {hop}: p50 {statistics.median(times):.0f} ms, p99 {percentile(times, 0.99):.0f} ms"
        )
    bytes_per_person = tcp_bytes if tcp_bytes is not None else message_bytes
    trickle_bytes = trickle_tcp_bytes if trickle_tcp_bytes is not None else trickle_message_bytes
    for name, value, target in (
        ("propagation p99", p99, TARGETS["propagation_p99_ms"]),
        ("bytes per person", bytes_per_person, TARGETS["bytes_per_person"]),
        ("bytes per person, one at a time", trickle_bytes, TARGETS["bytes_per_person"]),
    ):
        print(f"target {name} ≤ {target:g}: {value:.0f} {'met' if value <= target else 'MISSED'}")
    return {
        "bench": "federation",
        "people_per_region": args.people,
        "edges_per_person": args.edges,
        "database": args.database,
        "cross_region_share": args.cross,
        "newcomers": len(latencies),
        "propagation_p50_ms": round(p50, 1),
        "propagation_p99_ms": round(p99, 1),
        "bytes_per_person": round(bytes_per_person, 1),
        "message_bytes_per_person": round(message_bytes, 1),
        "bytes_per_person_one_at_a_time": round(trickle_bytes, 1),
        "directory_seconds": round(directory_seconds, 2),
        "cpu_seconds": round(total_cpu, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average": round(os.getloadavg()[0], 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--people", type=int, default=10_000, help="people per region")
    parser.add_argument("--edges", type=int, default=40, help="edges per person")
    parser.add_argument("--cross", type=float, default=0.2, help="share pointing at the other")
    parser.add_argument("--newcomers", type=int, default=200, help="people of B linking")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument(
        "--database", choices=["postgres", "sqlite"], default="postgres", help="matching's"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-federation-") as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
