"""Matching at scale: load the edges through the archive handler's code, match all, 1,000 newcomers.

Run: ``uv run python -m tests.benchmarks.bench_matching [--edges N]`` (default 23,000,000)

A population shaped like the mission (17,000 registered people among 5,000,000
X accounts for 23 M edges; scaled down with ``--edges``): heavy-tailed
popularity, the registered community over-represented among targets, 60 % on
Bluesky and 40 % on Mastodon, most consenting to matching and more than half to
auto-follow (``trust_archive_claims`` on, as a closed community would, so that
follow requests are emitted). On a PostgreSQL started here, in one run:

1. **directory**: everyone's consents and links, through the store's handlers'
   code (the 1,000 newcomers consent but link later);
2. **load**: every archive's two payloads decoded by ``passerelle_xarchive`` and
   loaded by ``MatchingStore.import_archives``, ``archive_batch`` archives per
   transaction — the code the batched ``archive.imported`` intake runs after
   fetching the objects, with ``match=False`` (the matching is phase 4) — then
   ``MatchingStore.compact_edges`` (what the service's compactor does at its next
   tick: the target index) and ``ANALYZE``; all of it
   counts as the load;
3. **COPY floor**: a plain ``COPY`` of the same edges, one row per edge, into an
   unindexed table, from CSV (as the issue measured) and from binary;
4. **full match**: ``MatchingStore.match_all`` (every match, in one statement);
   then, so that the newcomers meet a server as it runs rather than one that has
   just rebuilt everything, a ``CHECKPOINT`` and the match table's indexes read
   into the buffer cache (:func:`match_phase`, :func:`warm_match_indexes`);
5. **newcomers**: the matching service itself (its runtime, a real nats-server)
   handles each newcomer's ``identity.linked`` one by one: everyone waiting for
   them is matched and the follow requests are published to JetStream; the
   latency of each includes its PubAcks.

The population is generated first in a child process (so that this process's
peak RSS is the service's, not the generator's). Each target is printed as
measured / target (≤ 1 is met), with CPU seconds (this process and every
PostgreSQL process) beside wall seconds, and the load average. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
import sqlalchemy as sa

from passerelle_contracts import IdentityLinked, Network
from passerelle_matching.app import MIGRATIONS, create_service
from passerelle_matching.ids import to_db
from passerelle_matching.service import decode_payloads
from passerelle_matching.settings import Settings
from passerelle_matching.store import Archive, MatchingStore
from passerelle_platform.db import make_engine, migrate
from passerelle_xarchive import EdgeSet
from tests.support.nats import NatsServer
from tests.support.postgres import postgres_server

FULL_EDGES = 23_000_000
FULL_PEOPLE = 17_000
FULL_ACCOUNTS = 5_000_000
NEWCOMERS = 1_000
GENERATOR_VERSION = "v1"
COMMUNITY_SHARE = 0.25
"""Share of edge targets drawn from the registered community (over-represented)."""
RECIPROCITY = 0.3
"""Share of a person's followers who are also people they follow."""
BLUESKY_SHARE = 0.6
MATCHING_CONSENT = 0.9
AUTO_FOLLOW_CONSENT = 0.6
TARGETS = {"load_ratio": 2.0, "match_seconds": 30.0, "newcomer_p99_ms": 50.0, "rss_mb": 1024.0}
POSTGRES_SETTINGS = {
    "maintenance_work_mem": "'512MB'",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
}


# --- the population -------------------------------------------------------------------


def mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, vectorised: a bijection, so distinct inputs stay distinct."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


@dataclass(frozen=True)
class Population:
    """Who is registered, how they are linked, and (generated on demand) their edges."""

    edges: int
    seed: int

    @property
    def people(self) -> int:
        return max(50, round(FULL_PEOPLE * self.edges / FULL_EDGES))

    @property
    def accounts(self) -> int:
        return max(self.people * 50, round(FULL_ACCOUNTS * self.edges / FULL_EDGES))

    @property
    def newcomers(self) -> int:
        return min(NEWCOMERS, self.people // 5)

    def x_ids(self, indices: np.ndarray) -> np.ndarray:
        """X ids of accounts (the registered people are accounts 0..people-1)."""
        return mix64(indices.astype(np.uint64) + np.uint64(self.seed * 1_000_003 + 7))

    def person_id(self, i: int) -> str:
        return f"p{i:06d}"

    def attributes(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, 1])
        n = self.people
        return {
            "bluesky": rng.random(n) < BLUESKY_SHARE,
            "matching": rng.random(n) < MATCHING_CONSENT,
            "auto_follow": rng.random(n) < AUTO_FOLLOW_CONSENT,
        }

    def account(self, i: int, network: Network) -> str:
        return f"did:plc:bench{i:08d}" if network == "bluesky" else f"p{i}@m{i % 97}.example"

    def degrees(self) -> tuple[np.ndarray, np.ndarray]:
        """(following, followers) counts per person: heavy-tailed, summing to ~edges."""
        rng = np.random.default_rng([self.seed, 2])
        sigma = 1.1
        raw = rng.lognormal(0.0, sigma, self.people)
        total = raw / raw.sum() * self.edges
        total = np.minimum(np.maximum(total, 2), self.accounts // 3).astype(np.int64)
        share = rng.uniform(0.35, 0.75, self.people)
        following = np.maximum(1, (total * share).astype(np.int64))
        return following, np.maximum(0, total - following)


class Generator:
    """Draws each person's edges (deterministically from the seed and their index)."""

    def __init__(self, population: Population) -> None:
        self.population = population
        p, a = population.people, population.accounts
        rng = np.random.default_rng([population.seed, 3])
        self.account_ids = population.x_ids(np.arange(a))
        self.popular = rng.permutation(a)  # rank -> account
        self.popular_community = rng.permutation(p)
        self.cdf_following = np.cumsum(1.0 / np.arange(1, a + 1) ** 1.0)
        self.cdf_followers = np.cumsum(1.0 / np.arange(1, a + 1) ** 0.6)
        self.cdf_community = np.cumsum(1.0 / np.arange(1, p + 1) ** 0.8)
        self.following, self.followers = population.degrees()

    def _draw(self, rng: np.random.Generator, count: int, cdf: np.ndarray) -> np.ndarray:
        from_community = rng.binomial(count, COMMUNITY_SHARE)
        ranks = np.searchsorted(
            self.cdf_community, rng.random(from_community) * self.cdf_community[-1]
        )
        community = self.popular_community[np.minimum(ranks, self.population.people - 1)]
        ranks = np.searchsorted(cdf, rng.random(count - from_community) * cdf[-1])
        everyone = self.popular[np.minimum(ranks, self.population.accounts - 1)]
        return np.concatenate([community, everyone])

    def _unique(self, rng: np.random.Generator, count: int, cdf: np.ndarray, me: int) -> np.ndarray:
        """``count`` distinct accounts (never ``me``), drawn by popularity."""
        found = np.empty(0, dtype=np.int64)
        for _ in range(8):
            if found.size >= count:
                break
            more = self._draw(rng, int((count - found.size) * 1.2) + 4, cdf)
            found = np.unique(np.concatenate([found, more[more != me]]))
        if found.size > count:
            found = rng.choice(found, size=count, replace=False)
        return found

    def edges_of(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Person ``i``'s (following, followers) X ids: ascending, unique, no self."""
        rng = np.random.default_rng([self.population.seed, 4, i])
        following = self._unique(rng, int(self.following[i]), self.cdf_following, i)
        n_followers = int(self.followers[i])
        mutual = min(following.size, int(n_followers * RECIPROCITY))
        back = rng.choice(following, size=mutual, replace=False) if mutual else following[:0]
        others = self._unique(rng, n_followers - mutual, self.cdf_followers, i)
        followers = np.unique(np.concatenate([back, others]))
        return np.unique(self.account_ids[following]), np.unique(self.account_ids[followers])


_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") * 2
_FLOOR_ROW = np.dtype(
    [
        ("n", ">i2"),
        ("l1", ">i4"),
        ("owner", ">i8"),
        ("l2", ">i4"),
        ("d", ">i2"),
        ("l3", ">i4"),
        ("x", ">i8"),
    ]
)


def generate(population: Population, directory: Path) -> dict[str, Any]:
    """Write every person's two payloads, and the floor's binary COPY file."""
    gen = Generator(population)
    payloads = directory / "payloads"
    payloads.mkdir(parents=True, exist_ok=True)
    total = 0
    with (directory / "floor.bin").open("wb") as floor:
        floor.write(_BINARY_HEADER)
        for i in range(population.people):
            following, followers = gen.edges_of(i)
            for name, ids in (("following", following), ("followers", followers)):
                with EdgeSet.from_ids(ids) as edges, (payloads / f"{i}.{name}").open("wb") as out:
                    edges.write_payload(out)
            owner = to_db(int(gen.account_ids[i]))
            for direction, ids in ((1, following), (2, followers)):
                rows = np.empty(ids.size, dtype=_FLOOR_ROW)
                rows["n"], rows["l1"], rows["owner"] = 3, 8, owner
                rows["l2"], rows["d"], rows["l3"] = 2, direction, 8
                rows["x"] = ids.view(np.int64)
                floor.write(rows.tobytes())
            total += following.size + followers.size
        floor.write((-1).to_bytes(2, "big", signed=True))
    return {"edges": total}


# --- measuring ---------------------------------------------------------------------------


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuMeter:
    """CPU seconds used by this process and by every PostgreSQL process.

    On a shared machine wall time measures the neighbours too; CPU time (client
    and server together, as they work in turn) says what the work itself costs.
    """

    def __init__(self, url: str) -> None:
        with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
            data = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
        self.postmaster = psutil.Process(
            int((Path(data) / "postmaster.pid").read_text().split()[0])
        )

    def seconds(self) -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        total = own.ru_utime + own.ru_stime
        times = self.postmaster.cpu_times()
        total += times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
        return total


def psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def tune(url: str, shared_buffers: str | None) -> str:
    """Settings a production node would have; returns the shared_buffers in effect.

    ``shared_buffers`` needs a restart: the server started by
    ``tests.support.postgres`` is restarted with its own ``pg_ctl`` (same port and
    options, kept in ``postmaster.opts``). If that fails the run goes on with the
    default, and says so.
    """
    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        for name, value in POSTGRES_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = {value}")
        conn.execute("SELECT pg_reload_conf()")
        if shared_buffers:
            conn.execute(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'")
        data = str(conn.execute("SHOW data_directory").fetchone()[0])  # type: ignore[index]
    if shared_buffers:
        pg_ctl = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        owner = Path(data).owner()
        prefix = ["runuser", "-u", owner, "--"] if os.geteuid() == 0 and owner != "root" else []
        log = Path(data).parent / "restart.log"
        command = [str(pg_ctl[-1]) if pg_ctl else "pg_ctl", "-D", data, "-l", str(log)]
        done = subprocess.run(
            [*prefix, *command, "-m", "fast", "-w", "restart"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # the server must not inherit a pipe we wait on
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            print("warning: could not restart PostgreSQL; default shared_buffers", flush=True)
    for _ in range(100):
        try:
            with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
                return str(conn.execute("SHOW shared_buffers").fetchone()[0])  # type: ignore[index]
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise RuntimeError("PostgreSQL did not come back")


def directory_phase(store: MatchingStore, population: Population) -> float:
    attrs = population.attributes()
    first_newcomer = population.people - population.newcomers
    started = time.perf_counter()
    for i in range(population.people):
        pid = population.person_id(i)
        store.change_consent(
            pid,
            "bench",
            matching=bool(attrs["matching"][i]),
            auto_follow=bool(attrs["auto_follow"][i]),
            notifications=False,
            revision=1,
        )
        if i < first_newcomer:
            network: Network = "bluesky" if attrs["bluesky"][i] else "mastodon"
            account = population.account(i, network)
            store.link_identity(pid, "bench", network, account, account, 1.0)
    return time.perf_counter() - started


def load_phase(store: MatchingStore, population: Population, payloads: Path) -> tuple[float, int]:
    x_ids = population.x_ids(np.arange(population.people))
    batch = int(Settings.model_fields["archive_batch"].default)
    started = time.perf_counter()
    for first in range(0, population.people, batch):
        archives = [
            (
                Archive(
                    person_id=population.person_id(i),
                    region="bench",
                    import_id=f"bench-{i}",
                    sent_at=2.0,
                    x_account_id=str(int(x_ids[i])),
                    x_username=population.person_id(i),
                ),
                decode_payloads(payloads / f"{i}.following", payloads / f"{i}.followers"),
            )
            for i in range(first, min(first + batch, population.people))
        ]
        # The batched intake's call: the archives of one fetch, in one transaction.
        store.import_archives(archives, match=False)
        if first // batch % max(1, 2000 // batch) == 0 and first:
            print(f"  loaded {first:,} archives, {time.perf_counter() - started:.1f} s", flush=True)
    loaded = time.perf_counter()
    # What the service's compactor does at its next tick: the edges join the target index.
    indexed = store.compact_edges()
    compacted = time.perf_counter()
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        # What autovacuum would do soon: statistics for the planner.
        for table in (
            "matching_edge_run",
            "matching_edge_block",
            "matching_edge_segment",
            "matching_person",
            "matching_account",
        ):
            c.execute(sa.text(f"ANALYZE {table}"))
    print(
        f"  runs {loaded - started:.1f} s, target index {compacted - loaded:.1f} s,"
        f" statistics {time.perf_counter() - compacted:.1f} s",
        flush=True,
    )
    return time.perf_counter() - started, indexed


def floor_phase(url: str, directory: Path, work: Path, cpu: CpuMeter) -> dict[str, float]:
    """Plain COPY of the same edges into an unindexed table, from CSV and from binary:
    wall and CPU seconds of each."""
    csv_path = work / "floor.csv"
    out: dict[str, float] = {}

    def copy_in(conn: psycopg.Connection[Any], fmt: str, source_path: Path) -> None:
        conn.execute("CREATE TABLE bench_floor (owner bigint, direction smallint, x_id bigint)")
        started, mark = time.perf_counter(), cpu.seconds()
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY bench_floor FROM STDIN (FORMAT {fmt})") as copy,
            source_path.open("rb") as source,
        ):
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        out[fmt.lower()] = time.perf_counter() - started
        out[f"{fmt.lower()}_cpu"] = cpu.seconds() - mark

    with psycopg.connect(psycopg_url(url), autocommit=True) as conn:
        copy_in(conn, "BINARY", directory / "floor.bin")
        with (
            conn.cursor() as cur,
            csv_path.open("wb") as sink,
            cur.copy("COPY bench_floor TO STDOUT (FORMAT CSV)") as copy,
        ):
            for chunk in copy:
                sink.write(chunk)
        conn.execute("DROP TABLE bench_floor")
        copy_in(conn, "CSV", csv_path)
        conn.execute("DROP TABLE bench_floor")
    csv_path.unlink()
    return out


def match_phase(store: MatchingStore) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    matches = store.match_all()
    seconds = time.perf_counter() - started
    with store.engine.connect() as c:
        pending = int(
            c.execute(sa.text("SELECT count(*) FROM matching_match WHERE pending")).scalar_one()
        )
        # The newcomers are measured as on a running server, whose WAL segments are
        # recycled at each checkpoint. This fresh cluster has had none since the load:
        # every 16 MB of WAL a newcomer's commit would create and zero-fill a new
        # segment (~40 ms; 11 times in the newcomer phase, 5 of them among the 16
        # slowest newcomers, when measured).
        c.execute(sa.text("CHECKPOINT"))
        c.commit()
        warmed = warm_match_indexes(c)
    return seconds, matches, pending, warmed


def warm_match_indexes(c: sa.Connection) -> int:
    """Read the match table's indexes into PostgreSQL's buffer cache.

    On a running server the index pages a newcomer writes to are in the buffer
    cache: they are written to all day. Those the full match has just built are
    not: ``CREATE INDEX`` writes its pages around the cache, so each of the first
    newcomers' thousands of inserts would read a leaf page from the OS (2,539 reads
    for 2,523 rows, a third of that newcomer's time, when measured). ``pg_prewarm``
    (a contrib module of PostgreSQL) reads them in; without it the run goes on cold,
    and says so. Returns the pages read in.
    """
    try:
        c.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
        pages = c.execute(
            sa.text(
                "SELECT sum(pg_prewarm(i.indexrelid)) FROM pg_index i"
                " WHERE i.indrelid = 'matching_match'::regclass"
            )
        ).scalar_one()
        c.commit()
    except sa.exc.DBAPIError as error:
        c.rollback()
        print(f"warning: match indexes not warmed ({type(error.orig).__name__})", flush=True)
        return 0
    return int(pages or 0)


async def newcomer_phase(
    url: str, population: Population, work: Path
) -> tuple[list[tuple[float, int, float]], int]:
    """Each newcomer's identity.linked through the service, on a real nats-server:
    (milliseconds, follow requests published, milliseconds of them in the database
    transaction) per newcomer, and the requests published in all."""
    nats = NatsServer(work / "nats").start()
    try:
        settings = Settings(
            env="dev",
            region="bench",
            nats_url=nats.url,
            data_dir=work / "data",
            database_url=url,  # type: ignore[arg-type]
            trust_archive_claims=True,
            log_level="WARNING",
        )
        service = create_service(settings)
        # The full match left its own requests pending: the periodic drain would
        # publish them all during this phase; here each newcomer publishes its own.
        service.runtime.on_connected.remove(service.start_drainer)
        await service.runtime.start()
        while service.runtime.health().status != "up":  # noqa: ASYNC110 - polling a probe
            await asyncio.sleep(0.05)
        attrs = population.attributes()
        published_before = _published(service)
        latencies: list[tuple[float, int, float]] = []
        in_transaction = [0.0]
        link_identity = service.store.link_identity

        def timed_link(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return link_identity(*args, **kwargs)
            finally:
                in_transaction[0] = (time.perf_counter() - started) * 1000

        service.store.link_identity = timed_link  # type: ignore[method-assign]
        for i in range(population.people - population.newcomers, population.people):
            network: Network = "bluesky" if attrs["bluesky"][i] else "mastodon"
            account = population.account(i, network)
            event = IdentityLinked(
                region="bench",
                person_id=population.person_id(i),
                network=network,
                account=account,
                handle=account,
            )
            before = _published(service)
            started = time.perf_counter()
            await service.on_identity_linked(event)
            latencies.append(
                (
                    (time.perf_counter() - started) * 1000,
                    _published(service) - before,
                    in_transaction[0],
                )
            )
        published = _published(service) - published_before
        await service.runtime.stop()
        return latencies, published
    finally:
        nats.stop()


def _published(service: Any) -> int:
    return int(
        sum(
            s.value
            for metric in service.metrics.requests.collect()
            for s in metric.samples
            if s.name.endswith("_total")
        )
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def run(
    population: Population, cache: Path, work: Path, shared_buffers: str | None
) -> dict[str, Any]:
    print(
        f"population: {population.people:,} people among {population.accounts:,} X accounts,"
        f" ~{population.edges:,} edges, {population.newcomers:,} newcomers",
        flush=True,
    )
    started = time.perf_counter()
    data = cache / f"population-{population.edges}-{population.seed}-{GENERATOR_VERSION}"
    if not (data / "manifest.json").exists():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.bench_matching",
                "--edges",
                str(population.edges),
                "--seed",
                str(population.seed),
                "--generate-into",
                str(data),
            ],
            check=True,
        )
        print(f"generated in {time.perf_counter() - started:.1f} s", flush=True)
    manifest = json.loads((data / "manifest.json").read_text())
    print(f"population: {manifest['edges']:,} edges in {data}", flush=True)
    with postgres_server() as url:
        buffers = tune(url, shared_buffers)
        print(f"PostgreSQL shared_buffers: {buffers}", flush=True)
        engine = make_engine(url)
        migrate(engine, MIGRATIONS, "matching")
        store = MatchingStore(engine, trust_archive_claims=True)
        cpu = CpuMeter(url)
        directory = directory_phase(store, population)
        print(f"directory: {directory:.1f} s", flush=True)
        mark = cpu.seconds()
        load, indexed = load_phase(store, population, data / "payloads")
        load_cpu, mark = cpu.seconds() - mark, cpu.seconds()
        print(
            f"load: {load:.1f} s, {load_cpu:.1f} s of CPU ({store.count_edges():,} edges stored)",
            flush=True,
        )
        floor = floor_phase(url, data, work, cpu)
        floor_csv, floor_binary = floor["csv"], floor["binary"]
        print(
            f"COPY floor: {floor_csv:.1f} s ({floor['csv_cpu']:.1f} s of CPU) from CSV,"
            f" {floor_binary:.1f} s ({floor['binary_cpu']:.1f} s of CPU) from binary",
            flush=True,
        )
        mark = cpu.seconds()
        match_seconds, matches, pending, warmed = match_phase(store)
        match_cpu = cpu.seconds() - mark
        print(
            f"full match: {match_seconds:.1f} s, {match_cpu:.1f} s of CPU, {matches:,} matches,"
            f" {pending:,} requested; {warmed:,} pages of its indexes read into the cache",
            flush=True,
        )
        with engine.connect() as c:
            sizes = {
                table: int(
                    c.execute(sa.text(f"SELECT pg_total_relation_size('{table}')")).scalar_one()
                )
                for table in (
                    "matching_edge_run",
                    "matching_edge_block",
                    "matching_match",
                    "matching_person",
                )
            }
            version = str(c.execute(sa.text("SHOW server_version")).scalar_one())
        store.close()
        engine.dispose()
        timed, published = asyncio.run(newcomer_phase(url, population, work))
        latencies = [ms for ms, _, _ in timed]
        p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
        slowest = sorted(timed, reverse=True)[: max(1, len(timed) // 100)]
        print(
            "  the slowest 1 %: "
            + ", ".join(
                f"{ms:.0f} ms ({n:,} requests, {db:.0f} ms in the transaction)"
                for ms, n, db in slowest
            ),
            flush=True,
        )
        print(
            f"newcomers: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms,"
            f" {published:,} follow requests published",
            flush=True,
        )
    return {
        "bench": "matching",
        "edges": manifest["edges"],
        "load_seconds": round(load, 2),
        "copy_floor_seconds": round(floor_csv, 2),
        "match_seconds": round(match_seconds, 2),
        "newcomer_p50_ms": round(percentile(latencies, 0.5), 2),
        "newcomer_p99_ms": round(percentile(latencies, 0.99), 2),
        "peak_rss_mb": round(rss_mb(), 1),
        "matches": matches,
        "people": population.people,
        "accounts": population.accounts,
        "newcomers": population.newcomers,
        "directory_seconds": round(directory, 2),
        "edges_indexed": indexed,
        "copy_floor_binary_seconds": round(floor_binary, 2),
        "requested_by_full_match": pending,
        "match_index_pages_warmed": warmed,
        "newcomer_requests_published": published,
        "newcomer_mean_ms": round(statistics.fmean(latencies), 2),
        "newcomer_max_requests": max(n for _, n, _ in timed),
        "newcomer_transaction_p99_ms": round(percentile([db for _, _, db in timed], 0.99), 2),
        "bytes": sizes,
        "postgres": version,
        "shared_buffers": buffers,
        "cpu_seconds": {
            "load": round(load_cpu, 1),
            "copy_floor_csv": round(floor["csv_cpu"], 1),
            "copy_floor_binary": round(floor["binary_cpu"], 1),
            "match": round(match_cpu, 1),
        },
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=FULL_EDGES)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--cache-dir",
        help="keep the generated population here and reuse it (default: a temp dir, removed)",
    )
    parser.add_argument("--work-dir", help="where temporary files go (default: the system's)")
    parser.add_argument(
        "--shared-buffers",
        default="4GB",
        help="PostgreSQL shared_buffers for the run ('' keeps the server's default)",
    )
    parser.add_argument("--generate-into", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    population = Population(args.edges, args.seed)
    if args.generate_into:
        work = Path(args.generate_into)
        manifest = generate(population, work)
        (work / "manifest.json").write_text(json.dumps(manifest))
        return 0
    os.environ.setdefault("PASSERELLE_ENV", "dev")
    with tempfile.TemporaryDirectory(prefix="bench-matching-", dir=args.work_dir) as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        result = run(population, cache, Path(tmp), args.shared_buffers or None)
    ratio = result["load_seconds"] / result["copy_floor_seconds"]
    cpu = result["cpu_seconds"]
    cpu_ratio = cpu["load"] / max(cpu["copy_floor_csv"], 1e-9)
    # (what, measured, target): each printed with measured / target (≤ 1 is met).
    checks = [
        ("load / COPY floor (wall)", ratio, TARGETS["load_ratio"], "×"),
        ("full match (s)", result["match_seconds"], TARGETS["match_seconds"], "s"),
        ("newcomer p99 (ms)", result["newcomer_p99_ms"], TARGETS["newcomer_p99_ms"], "ms"),
        ("peak RSS (MiB)", result["peak_rss_mb"], TARGETS["rss_mb"], "MiB"),
    ]
    result["target_ratios"] = {name: round(value / target, 2) for name, value, target, _ in checks}
    result["load_ratio"] = round(ratio, 2)
    result["load_ratio_cpu"] = round(cpu_ratio, 2)
    print(f"targets (load average {result['load_average']} on {os.cpu_count()} cores):")
    for label, value, target, unit in checks:
        verdict = "met" if value <= target else "NOT met"
        print(
            f"  {label}: {value:.2f} {unit}, target ≤ {target:g} {unit},"
            f" measured/target {value / target:.2f}: {verdict}"
        )
    print(f"  (load / COPY floor in CPU seconds, client and server: {cpu_ratio:.2f} ×)")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
