"""Mastodon sender: does it spend each account's follow budget, and nothing more, on 20 instances?

Run: ``uv run python -m tests.benchmarks.bench_mastodon [--people 1000] [--instances 20]
[--backlog 1000] [--hours 24] [--speedup 216]`` (``just bench mastodon``).

The real sender (its console script, its durable NATS consumer, its SQLite ledger) on a
real ``nats-server``, against ``instances`` Mastodon APIs served by one lean process
(``tests/benchmarks/mastodon_server.py``: one port per instance, no federation) that
enforce Mastodon's limits (400 follows a day per account, 300 calls per 5 minutes per
token, fixed windows aligned to the epoch, rate headers, 429s) on a simulated clock the
sender shares, and record every follow (refusals and duplicates counted).

1. ``people`` accounts, spread over ``instances``, are linked through the sender's
   OAuth flow (``rpc.mastodon.authorize``, the authorize URL it gives, which the lean
   server approves at once, ``rpc.mastodon.link``: the code exchange and
   ``verify_credentials`` are the sender's real calls);
2. the sender stops; each person gets a backlog of ``backlog`` follow requests
   (targets drawn from every instance), published round-robin to NATS;
3. the instances' clocks and the sender's are set to ``lead`` hours before a UTC
   midnight, running ``speedup`` times faster than real time, and the sender starts
   again: it takes in the backlog and follows;
4. from that midnight on, ``hours`` simulated hours are measured: the follows the
   limits allowed (400 per person per day, at most what the person still had to
   follow), the follows the instances recorded, refused calls, duplicates, CPU.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil

from passerelle_contracts import stable_id
from passerelle_contracts.rpc import (
    LinkReply,
    MastodonAuthorizeReply,
    MastodonAuthorizeRequest,
    MastodonLinkRequest,
)
from passerelle_mastodon_sender.clock import FastClock
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

DAY = 86_400
FOLLOWS_PER_DAY = 400
REDIRECT_URI = "http://127.0.0.1:8000/auth/mastodon/callback"
MIDNIGHT = 1_893_542_400  # 2030-01-02T00:00:00Z: the measured window starts here
TARGETS = {"budget_ratio": 0.95, "limit_violations": 0, "duplicates": 0, "allowed_rate": 1000}


def log(message: str) -> None:
    sys.stderr.write(f"[bench_mastodon] {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Person:
    person_id: str
    domain: str
    username: str

    @property
    def acct(self) -> str:
        return f"{self.username}@{self.domain}"


def request_json(person: Person, target: str, n: int) -> tuple[str, bytes]:
    """A ``follow.requested.mastodon`` message, written by hand (a million of them)."""
    fid = stable_id("follow", person.person_id, "mastodon", target)
    body = (
        '{"type":"follow.requested.mastodon","version":1,"region":"local",'
        f'"sent_at":"2030-01-01T00:00:00Z","network":"mastodon","follow_id":"{fid}",'
        f'"person_id":"{person.person_id}","actor":"{person.acct}","target":"{target}",'
        f'"target_x_id":"{1_000_000 + n}","directions":["following"]}}'
    ).encode()
    return fid, body


def processes(marker: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if marker in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def cpu_seconds(marker: str) -> float:
    total = 0.0
    for process in processes(marker):
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


# --- setup -------------------------------------------------------------------------------


class LeanServer:
    """The lean Mastodon server process (``tests.benchmarks.mastodon_server``)."""

    MODULE = "tests.benchmarks.mastodon_server"

    def __init__(self, domains: list[str], work: Path) -> None:
        self.domains = domains
        self.peers_file = work / "peers.json"
        self.log_path = work / "mastodon_server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.urls: dict[str, str] = {}

    def start(self) -> LeanServer:
        self.peers_file.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.MODULE,
                "--domains",
                ",".join(self.domains),
                "--ports-file",
                str(self.peers_file),
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 60
        while not self.peers_file.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bench server did not start: {self.log_path.read_text()}")
            time.sleep(0.05)
        self.urls = json.loads(self.peers_file.read_text())
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    @property
    def control(self) -> str:
        return self.urls[self.domains[0]] + "/_bench"

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return httpx.post(self.control + path, json=body, timeout=60).json()

    def get(self, path: str) -> Any:
        return httpx.get(self.control + path, timeout=600).json()


def populate(server: LeanServer, people: int, extra: int) -> tuple[list[Person], list[str]]:
    """People spread over the instances, plus ``extra`` more accounts on each to follow."""
    domains = server.domains
    per_domain: dict[str, list[str]] = {d: [] for d in domains}
    persons = []
    for i in range(people):
        domain = domains[i % len(domains)]
        username = f"p{len(per_domain[domain]) + 1}"
        per_domain[domain].append(username)
        persons.append(Person(f"bench-{i}", domain, username))
    pool = [p.acct for p in persons]
    for domain in domains:
        extras = [f"t{k}" for k in range(1, extra + 1)]
        server.post("/accounts", {"domain": domain, "usernames": per_domain[domain] + extras})
        pool += [f"{t}@{domain}" for t in extras]
    return persons, pool


async def ask(nc: Any, subject: str, payload: bytes) -> bytes:
    for _attempt in range(40):
        try:
            msg = await nc.request(subject, payload, timeout=30)
            return bytes(msg.data)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            await asyncio.sleep(0.5)
    raise RuntimeError(f"no answer on {subject}")


async def link_people(url: str, persons: list[Person]) -> None:
    """The sender's OAuth flow for every person, a few at a time."""
    nc = await nats.connect(url)
    gate = asyncio.Semaphore(16)
    web = httpx.AsyncClient(timeout=60)

    async def one(person: Person) -> None:
        async with gate:
            state = secrets.token_urlsafe(24)
            request = MastodonAuthorizeRequest(
                region="local", instance=person.domain, redirect_uri=REDIRECT_URI, state=state
            )
            reply = MastodonAuthorizeReply.model_validate_json(
                await ask(nc, request.subject, request.model_dump_json().encode())
            )
            if reply.authorize_url is None:
                raise RuntimeError(f"authorize failed: {reply.error}")
            consent = httpx.URL(reply.authorize_url).copy_add_param("bench_user", person.username)
            answer = await web.get(consent)
            back = httpx.URL(answer.headers.get("location", ""))
            code = back.params.get("code")
            if answer.status_code != 302 or code is None or back.params.get("state") != state:
                raise RuntimeError(f"no code for {person.acct}: {answer.status_code}")
            link = MastodonLinkRequest(
                region="local",
                person_id=person.person_id,
                instance=person.domain,
                code=code,
                redirect_uri=REDIRECT_URI,
            )
            linked = LinkReply.model_validate_json(
                await ask(nc, link.subject, link.model_dump_json().encode())
            )
            if linked.account != person.acct:
                raise RuntimeError(f"link failed for {person.acct}: {linked.error}")

    try:
        # One person per instance first: the OAuth app is registered once per instance.
        firsts = {p.domain: p for p in reversed(persons)}
        await asyncio.gather(*(one(p) for p in firsts.values()))
        rest = [p for p in persons if firsts[p.domain] is not p]
        await asyncio.gather(*(one(p) for p in rest))
    finally:
        await web.aclose()
        await nc.close()


async def publish_backlogs(
    url: str, persons: list[Person], pool: list[str], backlog: int, seed: int
) -> int:
    """Every person's backlog, round-robin in slices of 100, pipelined."""
    rng = random.Random(seed)
    plans = []
    for person in persons:
        candidates = rng.sample(pool, backlog + 1)
        plans.append([t for t in candidates if t != person.acct][:backlog])
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    sent = 0
    try:
        for start in range(0, backlog, 100):
            for person, targets in zip(persons, plans, strict=True):
                for n, target in enumerate(targets[start : start + 100], start=start):
                    fid, body = request_json(person, target, n)
                    await js.publish_async(
                        "follow.requested.mastodon", body, headers={"Nats-Msg-Id": f"follow:{fid}"}
                    )
                    sent += 1
        await asyncio.wait_for(js.publish_async_completed(), timeout=300)
    finally:
        await nc.close()
    return sent


# --- measuring -----------------------------------------------------------------------------


def sender_backlog(sender: ServiceProcess) -> int | None:
    try:
        text = httpx.get(sender.base_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith('passerelle_follow_backlog{network="mastodon"}'):
            return int(float(line.split()[-1]))
    return None


def sender_env(server: LeanServer, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "PASSERELLE_REGION": "local",
        "PASSERELLE_LOG_LEVEL": "WARNING",
        "PASSERELLE_MASTODON_INSTANCE_URLS_FILE": str(server.peers_file),
        "PASSERELLE_MASTODON_ALLOW_HTTP": "true",
        "PASSERELLE_MASTODON_HTTP_TIMEOUT_SECONDS": "60",
        "PASSERELLE_MASTODON_INTAKE_BATCH": "2000",
        **(extra or {}),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-mastodon-"))
    work.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before anything runs
    domains = [f"i{k:02d}.test" for k in range(args.instances)]
    nats_server = NatsServer(work / "jetstream").start()
    server = LeanServer(domains, work)
    sender: ServiceProcess | None = None
    try:
        started = time.monotonic()
        server.start()
        persons, pool = populate(server, args.people, args.extra_targets)
        if args.backlog >= len(pool):
            raise SystemExit(f"--backlog must be below the pool of {len(pool)} accounts")
        elapsed = time.monotonic() - started
        log(f"{len(domains)} instances up, {len(pool):,} accounts ({elapsed:.0f} s)")

        sender = ServiceProcess("mastodon_sender", nats_server.url, work, sender_env(server))
        sender.start()
        sender.wait_http("/readyz", timeout=120)
        await link_people(nats_server.url, persons)
        sender.stop()
        log(f"{len(persons):,} people linked ({time.monotonic() - started:.0f} s)")

        published = await publish_backlogs(nats_server.url, persons, pool, args.backlog, args.seed)
        log(f"{published:,} follow requests published ({time.monotonic() - started:.0f} s)")

        t_window = MIDNIGHT
        t_end = t_window + args.hours * 3600
        # The clock reads ``lead`` hours before midnight a little after the sender
        # starts (it takes seconds to start); both sides follow the same line.
        clock = FastClock(
            args.speedup,
            origin=time.time() + args.startup_seconds,
            start=t_window - args.lead_hours * 3600,
        )
        guard = 2.0
        margin = min(args.speedup * 0.5, 0.45 * 300 - guard)
        sender = ServiceProcess(
            "mastodon_sender",
            nats_server.url,
            work,
            sender_env(
                server,
                {
                    "PASSERELLE_MASTODON_CLOCK_SPEEDUP": str(args.speedup),
                    "PASSERELLE_MASTODON_CLOCK_ORIGIN": repr(clock.origin),
                    "PASSERELLE_MASTODON_CLOCK_START": repr(clock.start),
                    "PASSERELLE_MASTODON_WINDOW_GUARD_SECONDS": str(guard),
                    "PASSERELLE_MASTODON_LATENCY_MARGIN_SECONDS": str(margin),
                    "PASSERELLE_MASTODON_PROFILE_REFRESH_SECONDS": str(DAY),
                },
            ),
        )
        server.post(
            "/clock", {"origin": clock.origin, "start": clock.start, "speedup": args.speedup}
        )
        sender.start()
        sender.wait_http("/readyz", timeout=120)
        if clock.now() >= t_window:
            raise SystemExit("the sender started after the window opened: raise --lead-hours")
        log(
            f"clocks at {args.lead_hours} h before midnight, ×{args.speedup:g}; measuring "
            f"{args.hours} simulated hours = {args.hours * 3600 / args.speedup:.0f} s from midnight"
        )
        cpu0 = cpu0_real = None
        servers0 = nats0 = 0.0
        while clock.now() < t_end:
            mark = t_window if cpu0 is None else t_end
            await asyncio.sleep(min(5.0, max(0.01, (mark - clock.now()) / args.speedup)))
            if cpu0 is None and clock.now() >= t_window:
                cpu0, cpu0_real = cpu_seconds("passerelle-mastodon-sender"), time.monotonic()
                servers0 = cpu_seconds(LeanServer.MODULE)
                nats0 = cpu_seconds("nats-server")
                continue
            stats = server.get("/stats")["counters"]
            log(
                f"sim {(clock.now() - t_window) / 3600:+6.2f} h  "
                f"follows {stats.get('follows.created', 0):>9,}  "
                f"refused {stats.get('throttled', 0) + stats.get('follows.refused_rate_limit', 0)}"
                f"  dup {stats.get('follows.duplicate', 0)}  backlog {sender_backlog(sender)}  "
                f"sender cpu {cpu_seconds('passerelle-mastodon-sender'):7.1f} s"
            )
        assert cpu0 is not None
        assert cpu0_real is not None
        real = time.monotonic() - cpu0_real
        cpu = cpu_seconds("passerelle-mastodon-sender") - cpu0
        servers_cpu = cpu_seconds(LeanServer.MODULE) - servers0
        nats_cpu = cpu_seconds("nats-server") - nats0
        sender.stop()
        sender = None
        server.post("/clock", {"speedup": 0})
        stats = server.get("/stats")["counters"]
        times: dict[str, list[float]] = server.get("/follows")
    finally:
        if sender is not None:
            sender.stop()
        server.stop()
        nats_server.stop()

    windows = math.ceil(t_end / DAY) - math.floor(t_window / DAY)
    allowed = done = before = 0
    for person in persons:
        made = times.get(person.acct, [])
        earlier = sum(1 for t in made if t < t_window)
        before += earlier
        allowed += min(FOLLOWS_PER_DAY * windows, args.backlog - earlier)
        done += sum(1 for t in made if t_window <= t < t_end)
    violations = (
        stats.get("throttled", 0)
        + stats.get("follows.refused_rate_limit", 0)
        + stats.get("follows.refused_cap", 0)
    )
    window_seconds = args.hours * 3600 / args.speedup
    return {
        "bench": "mastodon",
        "people": args.people,
        "instances": args.instances,
        "simulated_hours": args.hours,
        "speedup": args.speedup,
        "allowed_follows": allowed,
        "done_follows": done,
        "budget_ratio": round(done / allowed, 4) if allowed else 0.0,
        "limit_violations": violations,
        "duplicates": stats.get("follows.duplicate", 0),
        "follows_per_second": round(done / real, 1),
        "cpu_ms_per_follow": round(1000 * cpu / done, 3) if done else None,
        "allowed_follows_per_second": round(allowed / window_seconds, 1),
        "backlog_per_person": args.backlog,
        "requests_published": published,
        "follows_before_window": before,
        "follows_total": sum(len(v) for v in times.values()),
        "real_seconds": round(real, 1),
        "sender_cpu_seconds": round(cpu, 1),
        "server_cpu_seconds": round(servers_cpu, 1),
        "server_cpu_ms_per_follow": round(1000 * servers_cpu / done, 3) if done else None,
        "nats_cpu_seconds": round(nats_cpu, 1),
        "cpu_cores_used": round((cpu + servers_cpu + nats_cpu) / real, 2),
        "nats_cpu_ms_per_follow": round(1000 * nats_cpu / done, 3) if done else None,
        "throttled_calls": stats.get("throttled", 0),
        "follows_refused": stats.get("follows.refused_rate_limit", 0),
        "api_requests": stats.get("requests", 0),
        "resolves": stats.get("resolves", 0),
        "relationships_calls": stats.get("relationships", 0),
        "load_average_1m": round(psutil.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=1000, help="follow requests per person")
    parser.add_argument("--extra-targets", type=int, default=50, help="more accounts per instance")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours measured")
    parser.add_argument(
        "--lead-hours",
        type=float,
        default=12.0,
        help="simulated hours before the window (the sender takes in the backlog)",
    )
    parser.add_argument(
        "--startup-seconds",
        type=float,
        default=20.0,
        help="real seconds the sender may take to start",
    )
    parser.add_argument("--speedup", type=float, default=216.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    met = (
        result["budget_ratio"] >= TARGETS["budget_ratio"]
        and result["limit_violations"] == 0
        and result["duplicates"] == 0
        and result["allowed_follows_per_second"] >= TARGETS["allowed_rate"]
    )
    print(
        f"targets: budget_ratio >= 0.95, limit_violations = 0, duplicates = 0, allowed rate "
        f">= 1,000 follows/s: {'met' if met else 'NOT met'}",
        flush=True,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
