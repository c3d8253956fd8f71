"""Bluesky sender: does the scheduler spend each account's whole budget, and nothing more, at scale?

Run: ``uv run python -m tests.benchmarks.bench_bluesky [--people 100] [--backlog 12000]
[--hours 24] [--speedup 100]`` (``just bench bluesky``).

The real sender (its console script, its durable NATS consumers, its SQLite ledger) on a
real ``nats-server``, against a fake Bluesky (``tests/bluesky/fake_bluesky.py``: PDS, PLC
directory and handle resolver in one server) that enforces Bluesky's write budgets per
account (5,000 points an hour, 35,000 a day, 3 per create; fixed windows that start with
the first point, refused calls still counted) on a simulated clock that runs ``speedup``
times faster than real time and that the sender shares, and records every write.

1. ``people`` accounts are linked through ``rpc.bluesky.link``;
2. each gets a backlog of ``backlog`` follow requests (more than a day's budget,
   11,666 follows), published round-robin to ``follow.requested.bluesky``;
3. after ``hours`` simulated hours the run stops and counts: the follows the platform
   would have allowed those people in that time (windows opened at the earliest moment),
   the follows done, refused calls (limit violations), duplicates, the sender's CPU.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psutil

from passerelle_bluesky_sender.clock import FastClock
from passerelle_contracts import stable_id
from passerelle_contracts.rpc import BlueskyLinkRequest, LinkReply
from tests.bluesky.fake_bluesky import FakeBluesky
from tests.support.nats import NatsServer
from tests.support.services import ServiceProcess

B32 = "abcdefghijklmnopqrstuvwxyz234567"
PER_HOUR, PER_DAY, COST = 5000, 35000, 3
TARGETS = {"budget_ratio": 0.95, "limit_violations": 0, "duplicates": 0, "allowed_rate": 1000}


def log(message: str) -> None:
    sys.stderr.write(f"[bench_bluesky] {message}\n")
    sys.stderr.flush()


def did_for(seed: str) -> str:
    digest = hashlib.sha256(seed.encode()).digest()
    return "did:plc:" + "".join(B32[b & 31] for b in digest[:24])


def allowed_follows(hours: float, backlog: int) -> int:
    """The most follows Bluesky's limits allow one account in ``hours`` from a start:
    a window opened at the start and again at every reset."""
    total, day_left = 0, PER_DAY
    for k in range(math.ceil(hours)):
        if k % 24 == 0:
            day_left = PER_DAY
        n = min(PER_HOUR, day_left) // COST
        day_left -= n * COST
        total += n
    return min(total, backlog)


def request_json(person: str, actor: str, target: str, n: int) -> bytes:
    fid = stable_id("follow", person, "bluesky", target)
    return (
        '{"type":"follow.requested.bluesky","version":1,"region":"local",'
        f'"sent_at":"2026-11-25T00:00:00Z","network":"bluesky","follow_id":"{fid}",'
        f'"person_id":"{person}","actor":"{actor}","target":"{target}",'
        f'"target_x_id":"{1000000 + n}","directions":["following"]}}'
    ).encode()


def sender_cpu_seconds() -> float:
    for child in psutil.Process().children(recursive=True):
        try:
            if "passerelle-bluesky-sender" in " ".join(child.cmdline()):
                times = child.cpu_times()
                return float(times.user + times.system)
        except psutil.Error:
            continue
    return 0.0


async def link_people(url: str, fake: FakeBluesky, people: int) -> list[tuple[str, str]]:
    nc = await nats.connect(url)
    out = []
    try:
        for i in range(people):
            handle, did = f"bench{i}.test", did_for(f"person-{i}")
            fake.add_account(handle, did, f"pass-{i}")
            person = f"bench-person-{i}"
            request = BlueskyLinkRequest(
                region="local", person_id=person, identifier=handle, app_password=f"pass-{i}"
            )
            for _attempt in range(20):
                try:
                    msg = await nc.request(
                        "rpc.bluesky.link", request.model_dump_json().encode(), timeout=30
                    )
                    break
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    await asyncio.sleep(0.5)
            reply = LinkReply.model_validate_json(msg.data)
            if reply.error is not None:
                raise RuntimeError(f"link failed: {reply.error}")
            out.append((person, did))
    finally:
        await nc.close()
    return out


def publish_in_process(
    url: str, people: list[tuple[str, str]], backlog: int, pool: list[str], seed: int
) -> None:
    """The publisher, in its own process (not competing with the fake server here)."""
    asyncio.run(publish_backlogs(url, people, backlog, pool, seed))


async def publish_backlogs(
    url: str, people: list[tuple[str, str]], backlog: int, pool: list[str], seed: int
) -> int:
    """Every person's backlog, round-robin in slices of 200, pipelined."""
    rng = random.Random(seed)
    plans = [rng.sample(pool, backlog) for _ in people]
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20000)
    sent = 0
    try:
        for start in range(0, backlog, 200):
            for (person, did), targets in zip(people, plans, strict=True):
                for n, target in enumerate(targets[start : start + 200], start=start):
                    payload = request_json(person, did, target, n)
                    fid = stable_id("follow", person, "bluesky", target)
                    await js.publish_async(
                        "follow.requested.bluesky",
                        payload,
                        headers={"Nats-Msg-Id": f"follow:{fid}"},
                    )
                    sent += 1
        await asyncio.wait_for(js.publish_async_completed(), timeout=120)
    finally:
        await nc.close()
    return sent


def work_dir(path: str | None) -> Path:
    work = Path(path or tempfile.mkdtemp(prefix="bench-bluesky-"))
    work.mkdir(parents=True, exist_ok=True)
    return work


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = work_dir(args.work_dir)
    origin = time.time()
    clock = FastClock(args.speedup, origin)
    fake = FakeBluesky(clock.now).start()
    nats_server = NatsServer(work / "jetstream").start()
    env = {
        "PASSERELLE_BLUESKY_HANDLE_RESOLVER_URL": fake.url,
        "PASSERELLE_BLUESKY_PLC_URL": fake.url,
        "PASSERELLE_BLUESKY_ALLOW_HTTP": "true",
        "PASSERELLE_BLUESKY_CLOCK_SPEEDUP": str(args.speedup),
        "PASSERELLE_BLUESKY_CLOCK_ORIGIN": str(origin),
        "PASSERELLE_LOG_LEVEL": "WARNING",
        "PASSERELLE_BLUESKY_CHECK_TARGETS": "true" if args.check_targets else "false",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    sender = ServiceProcess("bluesky_sender", nats_server.url, work, env).start()
    try:
        sender.wait_http("/readyz", timeout=120)
        pool = [did_for(f"target-{i}") for i in range(args.targets)]
        linked = await link_people(nats_server.url, fake, args.people)
        t0 = clock.now()
        cpu0 = sender_cpu_seconds()
        real0 = time.monotonic()
        end = t0 + args.hours * 3600
        log(
            f"{args.people} people linked; publishing {args.people * args.backlog:,} requests; "
            f"{args.hours} simulated hours at ×{args.speedup:g} = "
            f"{args.hours * 3600 / args.speedup:.0f} s"
        )
        publisher = multiprocessing.get_context("spawn").Process(
            target=publish_in_process,
            args=(nats_server.url, linked, args.backlog, pool, args.seed),
            name="bench-publisher",
        )
        publisher.start()
        per_person = allowed_follows(args.hours, args.backlog)
        while clock.now() < end:
            await asyncio.sleep(min(10.0, max(0.05, (end - clock.now()) / args.speedup)))
            if not publisher.is_alive() and publisher.exitcode not in (0, None):
                raise RuntimeError(f"publishing failed (exit {publisher.exitcode})")
            hours = (clock.now() - t0) / 3600
            done = sum(n for t, _, n in fake.stats.log if t0 <= t <= end)
            publishing = "..." if publisher.is_alive() else "yes"
            log(
                f"sim {hours:5.2f} h  done {done:>9,}  refused {fake.stats.refused}  "
                f"dup {fake.stats.duplicates}  published {publishing}  "
                f"sender cpu {sender_cpu_seconds() - cpu0:6.1f} s"
            )
        real = time.monotonic() - real0
        cpu = sender_cpu_seconds() - cpu0
        publisher.join(60)
        published = args.people * args.backlog if publisher.exitcode == 0 else 0
    finally:
        sender.stop()
        nats_server.stop()
        fake.stop()

    done = sum(n for t, _, n in fake.stats.log if t0 <= t <= end)
    allowed = per_person * args.people
    simulated = args.hours
    return {
        "bench": "bluesky",
        "people": args.people,
        "simulated_hours": simulated,
        "speedup": args.speedup,
        "allowed_follows": allowed,
        "done_follows": done,
        "budget_ratio": round(done / allowed, 4) if allowed else 0.0,
        "limit_violations": fake.stats.refused + fake.stats.oversized,
        "duplicates": fake.stats.duplicates,
        "follows_per_second": round(done / real, 1),
        "cpu_ms_per_follow": round(1000 * cpu / done, 3) if done else None,
        "allowed_follows_per_second": round(allowed / (simulated * 3600 / args.speedup), 1),
        "backlog_per_person": args.backlog,
        "requests_published": published,
        "real_seconds": round(real, 1),
        "sender_cpu_seconds": round(cpu, 1),
        "apply_writes_calls": fake.stats.applies,
        "logins": fake.stats.logins,
        "refreshes": fake.stats.refreshes,
        "record_reads": fake.stats.reads,
        "target_checks": fake.stats.status_checks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=12000, help="follow requests per person")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours")
    parser.add_argument("--speedup", type=float, default=100.0)
    parser.add_argument("--targets", type=int, default=20000, help="distinct target accounts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the sender")
    parser.add_argument(
        "--no-check-targets",
        dest="check_targets",
        action="store_false",
        help="do not look targets up before following (they are all there)",
    )
    parser.add_argument("--work-dir")
    args = parser.parse_args(argv)
    if args.backlog > args.targets:
        parser.error("--backlog cannot exceed --targets")
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
