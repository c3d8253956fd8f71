"""Following: one lane per account with work, each within its account's budgets.

A lane takes a batch of due rows from the ledger, resolves each target from the
person's own instance (``/api/v2/search?resolve=true``; ids cached per instance),
asks ``relationships`` once for the batch, and follows those not yet followed or
requested — one call at a time per token, so the server's rate headers always
describe the state we act on. Outcomes are written and published in groups by
one flusher (an outbox: a result is published after its row is committed, and
again after a crash until marked published; ``Nats-Msg-Id`` dedupes).

A follow answered ``following: false, requested: false`` (servers that apply
follows a moment later) counts as made: the call succeeded.

Replicas share the work through account leases (:mod:`passerelle_mastodon_sender.leases`):
a lane runs only for an account whose lease it holds, renews it before its calls, and
gives it back when it has nothing to do soon (or parks it until its budget frees up);
budgets come back from the database when an account changes hands.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from passerelle_contracts import Event, FollowResult, IdentityUnlinked
from passerelle_mastodon_sender.api import MastodonApi, Reply
from passerelle_mastodon_sender.budget import AccountBudget, Window, follow_cap
from passerelle_mastodon_sender.clock import Clock
from passerelle_mastodon_sender.db import Database
from passerelle_mastodon_sender.errors import (
    FollowCapError,
    MastodonError,
    NotFoundError,
    OutOfScopeError,
    RateLimitedError,
    RejectedError,
    TokenRevokedError,
)
from passerelle_mastodon_sender.instances import full_acct, normalize_acct
from passerelle_mastodon_sender.leases import Leases
from passerelle_mastodon_sender.ledger import Claimed, Ledger, Outcome
from passerelle_mastodon_sender.metrics import SenderMetrics
from passerelle_mastodon_sender.models import MastodonLink
from passerelle_mastodon_sender.settings import Settings
from passerelle_mastodon_sender.store import Store
from passerelle_mastodon_sender.vault import Vault, VaultError
from passerelle_platform.telemetry import trace_parents

Publish = Callable[[Event], Awaitable[bool]]
PublishResults = Callable[[Sequence[FollowResult]], Awaitable[list[bool]]]

MAX_REFUSALS = 5
"""429s in a row on one call before its rows are put back for later."""
RESOLVED_CACHE_SIZE = 200_000
STOP_FLUSH_SECONDS = 5.0
RESULTS_PAGE = 2000


class ResultsNotPublishedError(Exception):
    """Some results of a page were not acked by the stream: they go out again."""


@dataclass
class _Account:
    """A lane's working view of a link (the token only ever in memory)."""

    person_id: str
    domain: str
    acct: str
    acct_domain: str
    account_id: str
    token: str
    budget: AccountBudget
    followers: int
    following: int
    profile_at: float
    lease_until: float = 0.0
    """Real epoch seconds: the lease as we last set it (renewed before calls)."""
    made: int = 0
    """Follows made since the counts were read (for the follow cap)."""


@dataclass
class _Lane:
    more: asyncio.Event
    task: asyncio.Task[None] | None = None


class _LeaseLostError(Exception):
    """Another replica has the account now, or its link was replaced or removed."""


class _ParkError(Exception):
    """The account must wait long for its budget: give it up until ``until`` (real)."""

    def __init__(self, until: float) -> None:
        super().__init__(until)
        self.until = until


@dataclass
class _Batch:
    """The rows a lane holds; each leaves ``open`` when it gets an outcome."""

    open: dict[str, Claimed]
    sent: set[str] = field(default_factory=set)
    """Rows whose follow call went out (an interruption may have made the follow)."""


class Follower:
    """Schedules follows across accounts and records what became of each."""

    def __init__(
        self,
        *,
        settings: Settings,
        clock: Clock,
        db: Database,
        store: Store,
        ledger: Ledger,
        leases: Leases,
        api: MastodonApi,
        vault: Vault,
        metrics: SenderMetrics,
        publish: Publish,
        publish_results: PublishResults,
        region: str,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.db = db
        self.store = store
        self.ledger = ledger
        self.leases = leases
        self.api = api
        self.vault = vault
        self.metrics = metrics
        self.publish = publish
        self.publish_results = publish_results
        self.region = region
        self.log = log
        self._lanes: dict[str, _Lane] = {}
        self._budgets: dict[str, AccountBudget] = {}
        self._reserved: dict[str, tuple[float, int]] = {}
        self._reserving: dict[str, tuple[float, int]] = {}
        self._reserved_saved: asyncio.Future[None] | None = None
        self._reservation_task: asyncio.Task[None] | None = None
        self._resolved: dict[tuple[str, str], str] = {}
        self._searching: dict[tuple[str, str], asyncio.Future[tuple[bool, str | None]]] = {}
        self._buffer: list[Outcome] = []
        self._flush_wanted = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._unpublished = True
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._lease = settings.mastodon_lease
        self._holding: dict[str, float] = {}
        """Leases held by lanes: person → ``lease_until``."""
        self._releases: dict[str, tuple[float, float]] = {}
        """Leases to give back once the outcomes before them are written."""
        self._parked: dict[str, float] = {}
        """Accounts given up until their budget frees up (real epoch seconds)."""
        self._timers: dict[str, asyncio.TimerHandle] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self) -> None:
        """Recover rows this replica left in flight, then work on every account with work
        (those other replicas hold are left to them until their leases lapse)."""
        recovered = await self.db.run(self.leases.recover_own)
        if recovered:
            self.log.warning("follows interrupted by a stop are checked again", count=recovered)
        self._running = True
        self._tasks = [
            asyncio.create_task(self._flusher(), name="mastodon-flusher"),
            asyncio.create_task(self._gauges(), name="mastodon-gauges"),
            asyncio.create_task(self._sweeper(), name="mastodon-leases"),
        ]
        self.wake(await self.db.run(self.ledger.persons_with_work))

    async def stop(self) -> None:
        """Stop every lane (their rows go back to pending), write and publish what is known."""
        self._running = False
        lanes = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in lanes:
            task.cancel()
        await asyncio.gather(*lanes, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        with contextlib.suppress(Exception):
            # Bounded: with NATS gone, what is not published now is published at the next
            # start. Leases are given back after the outcomes are written.
            await asyncio.wait_for(self._flush(), timeout=STOP_FLUSH_SECONDS)

    def wake(self, person_ids: Iterable[str], *, parked: bool = False) -> None:
        """There is (new) work for these persons (``parked``: even if parked here)."""
        if not self._running:
            return
        now = time.time()
        for person_id in person_ids:
            lane = self._lanes.get(person_id)
            if lane is not None:
                lane.more.set()
                continue
            if not parked and self._parked.get(person_id, 0.0) > now:
                continue  # its budget is spent: new rows wait with the others
            self._parked.pop(person_id, None)
            lane = _Lane(asyncio.Event())
            self._lanes[person_id] = lane
            lane.task = asyncio.create_task(
                self._lane(person_id, lane), name=f"mastodon-lane-{person_id}"
            )
        self.metrics.lanes.set(len(self._lanes))

    async def forget(self, person_id: str) -> None:
        """Stop working for a person (unlink, erasure) and drop what is kept in memory."""
        lane = self._lanes.get(person_id)
        if lane is not None and lane.task is not None:
            lane.task.cancel()
            await asyncio.gather(lane.task, return_exceptions=True)
        self._budgets.pop(person_id, None)
        self._reserved.pop(person_id, None)
        self._holding.pop(person_id, None)
        self._parked.pop(person_id, None)
        timer = self._timers.pop(person_id, None)
        if timer is not None:
            timer.cancel()

    def results_pending(self) -> None:
        """Rows were finished outside the lanes (bulk failures, re-requests): publish them."""
        self._unpublished = True
        self._flush_wanted.set()

    async def fail_open(self, person_id: str, reason: str) -> int:
        """Fail every open follow of a person (after what lanes learnt is written)."""
        async with self._write_lock:
            await self._write_outcomes()
            failed = await self.db.run(self.ledger.fail_open, person_id, reason, self.clock.now())
        if failed:
            self.results_pending()
        return failed

    # --- a lane --------------------------------------------------------------------------------

    async def _lane(self, person_id: str, lane: _Lane) -> None:
        account: _Account | None = None
        free_from = 0.0
        try:
            account = await self._open(person_id)
            if account is None:
                return
            while self._running:
                lane.more.clear()
                now = self.clock.now()
                ready = account.budget.follow_ready_at(now)
                if ready > now:
                    await self._pause(account, ready - now)
                    continue
                await self._hold(account)
                # No more rows than follows left in the window: a batch does not wait
                # for the next window with its rows held.
                follows = account.budget.follows
                rows = await self.db.run(
                    self.ledger.claim,
                    person_id,
                    now,
                    min(
                        self.settings.mastodon_relationships_batch,
                        max(1, follows.limit - follows.used_at(now)),
                    ),
                )
                if not rows:
                    due = await self.db.run(self.ledger.next_due, person_id)
                    if due is None:
                        if lane.more.is_set():
                            continue
                        return
                    wait = due - self.clock.now()
                    if self._too_long(wait):
                        # Given back: another replica's intake can start its new rows.
                        self._wake_later(person_id, self.clock.to_real(wait))
                        return
                    await self._pause(account, wait, lane.more)
                    continue
                # The calls for these follows join the trace their requests came in.
                with trace_parents.resumed(
                    (r.follow_id for r in rows),
                    "mastodon follows",
                    {"messaging.system": "nats", "messaging.batch.message_count": len(rows)},
                ):
                    stop = await self._work(account, rows)
                if stop:
                    return
        except _ParkError as park:
            free_from = park.until
        except _LeaseLostError:
            self.log.info("account taken over by another replica", person_id=person_id)
            account = None
            self._budgets.pop(person_id, None)
            self._holding.pop(person_id, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("lane stopped", person_id=person_id)
            await asyncio.sleep(1.0)  # no tight loop if the next lane fails the same way
        finally:
            if self._lanes.get(person_id) is lane:
                del self._lanes[person_id]
            self.metrics.lanes.set(len(self._lanes))
            if account is not None:
                self._give_back(account, free_from)
            if lane.more.is_set() and self._running and not free_from:
                self.wake([person_id])

    # --- leases --------------------------------------------------------------------------------

    def _too_long(self, seconds: float) -> bool:
        """Whether a wait of ``seconds`` (the service's clock) is worth giving the account up."""
        return self.clock.to_real(seconds) > self.settings.mastodon_park_after_seconds

    async def _pause(
        self, account: _Account, seconds: float, event: asyncio.Event | None = None
    ) -> None:
        """Wait ``seconds`` of the service's clock (or for ``event``), keeping the lease;
        a wait too long to hold the account parks it (:class:`_ParkError`)."""
        if self._too_long(seconds):
            raise _ParkError(time.time() + self.clock.to_real(seconds))
        deadline = time.monotonic() + self.clock.to_real(seconds)
        while True:
            await self._hold(account)
            left = deadline - time.monotonic()
            if left <= 0:
                return
            chunk = min(left, self._lease / 4)
            if event is None:
                await asyncio.sleep(chunk)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=chunk)
                return

    async def _hold(self, account: _Account, *, check: bool = False) -> None:
        """Make sure the lease lasts at least half its length more (``check``: and that it
        is still ours); :class:`_LeaseLostError` when it is not ours any more."""
        now = time.time()
        if not check and now < account.lease_until - self._lease / 2:
            return
        until = now + self._lease
        if not await self.db.run(self.leases.renew, account.person_id, account.lease_until, until):
            raise _LeaseLostError(account.person_id)
        account.lease_until = until
        self._holding[account.person_id] = until

    def _give_back(self, account: _Account, free_from: float) -> None:
        """Give the lease back once the account's outcomes are written (the next holder
        counts its follows from the ledger): free now, or parked until ``free_from``."""
        self._holding.pop(account.person_id, None)
        self._releases[account.person_id] = (account.lease_until, free_from)
        self._flush_wanted.set()
        if free_from:
            self._parked[account.person_id] = free_from
            self._wake_later(account.person_id, free_from - time.time())

    def _wake_later(self, person_id: str, seconds: float) -> None:
        """Look at the account again in ``seconds`` (real), if no other replica has by then."""
        timer = self._timers.pop(person_id, None)
        if timer is not None:
            timer.cancel()
        self._timers[person_id] = asyncio.get_running_loop().call_later(
            max(0.0, seconds), self._woken, person_id
        )

    def _woken(self, person_id: str) -> None:
        self._timers.pop(person_id, None)
        self.wake([person_id], parked=True)

    async def _release_leases(self, releases: dict[str, tuple[float, float]]) -> None:
        """Give back leases of lanes that stopped (taken from ``_releases`` before the
        outcomes were written: those of the lanes were written first)."""
        if not releases:
            return
        try:
            await self.db.run(self.leases.release, releases)
        except BaseException:
            self._releases = {**releases, **self._releases}
            raise

    async def _sweeper(self) -> None:
        """Take up free accounts with due work: lapsed leases (a replica died), rows
        another replica took in for an account nobody held, accounts left for lack of room."""
        while self._running:
            await asyncio.sleep(self.settings.mastodon_lease_scan_seconds)
            try:
                room = self.settings.mastodon_max_lanes - len(self._holding)
                if room <= 0:
                    continue
                found = await self.db.run(
                    self.leases.free_with_work, time.time(), self.clock.now(), room
                )
                self.wake((p for p in found if p not in self._lanes), parked=True)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("looking for free accounts failed")

    async def _open(self, person_id: str) -> _Account | None:
        now = time.time()
        claim = await self.db.run(
            self.leases.claim,
            person_id,
            now,
            now + self._lease,
            take=len(self._holding) < self.settings.mastodon_max_lanes,
        )
        link = claim.link
        if link is None or link.status != "active":
            reason = (
                "not_linked"
                if link is None
                else ("token_revoked" if link.status == "revoked" else "reauthorize_required")
            )
            await self.fail_open(person_id, reason)
            return None
        if not claim.taken:
            return None  # another replica has it, or this one has no room
        self._holding[person_id] = claim.until
        if claim.recovered:
            self.log.warning(
                "follows interrupted on another replica are checked again",
                count=claim.recovered,
            )
        try:
            token = self.vault.decrypt(link.token_enc)
        except VaultError:
            self.log.exception("stored token unreadable: check PASSERELLE_ENCRYPTION_KEYS")
            self._holding.pop(person_id, None)
            self._releases[person_id] = (claim.until, 0.0)
            return None
        instance = await self.db.run(self.store.instance, link.domain)
        # What this replica remembers is good only if nobody else had the account since.
        budget = self._budgets.get(person_id) if claim.previous == self.leases.owner else None
        budget = budget or await self._restore_budget(link)
        self._budgets[person_id] = budget
        return _Account(
            person_id=person_id,
            domain=link.domain,
            acct=link.acct,
            acct_domain=instance.acct_domain if instance is not None else link.domain,
            account_id=link.account_id,
            token=token,
            budget=budget,
            followers=link.followers_count,
            following=link.following_count,
            profile_at=link.profile_at,
            lease_until=claim.until,
        )

    async def _restore_budget(self, link: MastodonLink) -> AccountBudget:
        """Budgets after a (re)start or a takeover: calls from the saved reservation (the
        previous holder's, when another replica had the account), follows from the ledger."""
        s = self.settings
        now = self.clock.now()
        requests = Window(
            s.mastodon_requests_per_window,
            s.mastodon_requests_window_seconds,
            s.mastodon_window_guard_seconds,
            s.mastodon_latency_margin_seconds,
        )
        if link.requests_window_end > now:
            requests.restore(link.requests_window_end, link.requests_reserved)
        self._reserved[link.person_id] = (link.requests_window_end, link.requests_reserved)
        follows = Window(
            s.mastodon_follows_per_window,
            s.mastodon_follows_window_seconds,
            s.mastodon_window_guard_seconds,
            s.mastodon_latency_margin_seconds,
        )
        period = s.mastodon_follows_window_seconds
        start = math.floor(now / period) * period
        made = await self.db.run(self.ledger.followed_since, link.person_id, start)
        follows.restore(start + period, made)
        return AccountBudget(requests, follows)

    # --- one batch -----------------------------------------------------------------------------

    async def _work(self, account: _Account, rows: list[Claimed]) -> bool:
        """Bring a batch forward; ``True`` when the lane must stop (link lost, cap reached)."""
        batch = _Batch({r.follow_id: r for r in rows})
        try:
            await self._refresh_profile(account)
            ids = await self._resolve(account, batch)
            if not ids:
                return False
            reply = await self._call(
                account,
                "relationships",
                lambda: self.api.relationships(
                    account.domain, account.token, sorted(set(ids.values()))
                ),
            )
            relations = {str(r.get("id")): r for r in reply.data if isinstance(r, dict)}
            for follow_id, target_id in ids.items():
                await self._follow_one(account, batch, batch.open[follow_id], target_id, relations)
        except TokenRevokedError:
            await self._lost(account, batch, "revoked", "token_revoked")
            return True
        except OutOfScopeError:
            await self.db.run(self.store.refuse_granular, account.domain)
            await self._lost(account, batch, "reauthorize", "reauthorize_required")
            return True
        except FollowCapError:
            batch.open.clear()
            self.log.warning("follow cap reached", person_id=account.person_id)
            await self.fail_open(account.person_id, "follow_cap")
            return True
        except MastodonError as error:
            self._retry_later(batch, error.code)
        except _LeaseLostError:
            batch.open.clear()  # the next holder takes them back (they are still working)
            raise
        finally:
            for row in batch.open.values():
                self._release(row, interrupted=row.follow_id in batch.sent)
            batch.open.clear()
        return False

    async def _refresh_profile(self, account: _Account) -> None:
        """Read the account's counts (for the follow cap) when they are old."""
        now = self.clock.now()
        if now - account.profile_at < self.settings.mastodon_profile_refresh_seconds:
            return
        reply = await self._call(
            account,
            "verify_credentials",
            lambda: self.api.verify_credentials(account.domain, account.token),
        )
        data = reply.data if isinstance(reply.data, dict) else {}
        account.followers = int(data.get("followers_count") or 0)
        account.following = int(data.get("following_count") or 0)
        account.profile_at = now
        account.made = 0
        await self.db.run(
            self.store.save_profile, account.person_id, account.followers, account.following, now
        )

    async def _resolve(self, account: _Account, batch: _Batch) -> dict[str, str]:
        """Target ids on the person's instance, by follow id; unknown targets fail here."""
        ids: dict[str, str] = {}
        unknown: list[Claimed] = []
        for row in list(batch.open.values()):
            known = row.target_account_id or self._resolved.get((account.domain, row.target))
            if known:
                ids[row.follow_id] = known
            else:
                unknown.append(row)
        if unknown:
            stored = await self.db.run(
                self.ledger.resolved, account.domain, [r.target for r in unknown]
            )
            learnt: dict[str, str] = {}
            for row in unknown:
                target_id = stored.get(row.target)
                if target_id is None:
                    target_id = await self._search_once(account, row.target)
                    if target_id is not None:
                        learnt[row.target] = target_id
                if target_id is None:
                    self._finish(batch, row, "failed", "failed", "target_not_found")
                    continue
                ids[row.follow_id] = target_id
                self._cache(account.domain, row.target, target_id)
            await self.db.run(self.ledger.remember, account.domain, learnt, self.clock.now())
        # Keep the batch's order (oldest first).
        return {f: ids[f] for f in batch.open if f in ids}

    async def _search_once(self, account: _Account, target: str) -> str | None:
        """One search per (instance, target) at a time: lanes of the same instance that
        need a target another lane is looking up wait for its answer (the answer is the
        instance's, like the cache); if that search fails, they search themselves."""
        key = (account.domain, target)
        pending = self._searching.get(key)
        if pending is not None:
            ok, found = await asyncio.shield(pending)
            if ok:
                return found
            return await self._search(account, target)
        future: asyncio.Future[tuple[bool, str | None]] = asyncio.get_running_loop().create_future()
        self._searching[key] = future
        try:
            found = await self._search(account, target)
            future.set_result((True, found))
            return found
        finally:
            if not future.done():
                future.set_result((False, None))
            if self._searching.get(key) is future:
                del self._searching[key]

    async def _search(self, account: _Account, target: str) -> str | None:
        reply = await self._call(
            account,
            "search",
            lambda: self.api.search_account(account.domain, account.token, target),
        )
        wanted = target.lower()
        for found in reply.data:
            if not isinstance(found, dict) or "id" not in found:
                continue
            acct = normalize_acct(full_acct(str(found.get("acct", "")), account.acct_domain))
            if acct.lower() == wanted:
                return str(found["id"])
        return None

    def _cache(self, domain: str, acct: str, account_id: str) -> None:
        if len(self._resolved) >= RESOLVED_CACHE_SIZE:
            self._resolved.clear()
        self._resolved[(domain, acct)] = account_id

    async def _follow_one(
        self,
        account: _Account,
        batch: _Batch,
        row: Claimed,
        target_id: str,
        relations: dict[str, dict[str, Any]],
    ) -> None:
        if target_id == account.account_id:
            self._finish(batch, row, "failed", "failed", "self", target_id)
            return
        relation = relations.get(target_id) or {}
        if relation.get("following") or relation.get("requested"):
            # After an interruption the follow we sent is the one we find.
            outcome = "followed" if row.interrupted else "already_following"
            if row.interrupted:
                # Counted, in case the ledger missed it (a replica killed before writing).
                account.budget.follows.spend(self.clock.now())
            self._finish(batch, row, "done", outcome, None, target_id)
            return
        cap = follow_cap(
            account.following,
            account.followers,
            self.settings.mastodon_follow_cap,
            self.settings.mastodon_follow_cap_ratio,
        )
        if account.following + account.made >= cap:
            raise FollowCapError("follow cap reached (counted)")
        batch.sent.add(row.follow_id)
        try:
            await self._call(
                account,
                "follow",
                lambda: self.api.follow(account.domain, account.token, target_id),
                follow=True,
            )
        except NotFoundError:
            # A stale id (the account moved or was deleted): resolve again once.
            self._resolved.pop((account.domain, row.target), None)
            await self.db.run(self.ledger.forget, account.domain, row.target)
            batch.sent.discard(row.follow_id)
            if row.attempts >= 2:
                self._finish(batch, row, "failed", "failed", "target_not_found")
            else:
                del batch.open[row.follow_id]
                self._record(
                    Outcome(row.follow_id, row.person_id, "pending", next_try_at=self.clock.now())
                )
            return
        except RejectedError:
            self._finish(batch, row, "failed", "failed", "rejected", target_id)
            return
        account.made += 1
        self._finish(batch, row, "done", "followed", None, target_id)

    async def _call(
        self,
        account: _Account,
        operation: str,
        call: Callable[[], Awaitable[Reply]],
        *,
        follow: bool = False,
    ) -> Reply:
        """One call within the account's budgets; waits for them, and after a 429."""
        budget = account.budget
        refusals = 0
        while True:
            now = self.clock.now()
            ready = budget.follow_ready_at(now) if follow else budget.request_ready_at(now)
            if ready > now:
                await self._pause(account, ready - now)
                continue
            await self._hold(account)
            budget.requests.spend(now)
            if follow:
                budget.follows.spend(now)
            await self._reserve(account)
            try:
                reply = await call()
            except RateLimitedError as error:
                budget.refused(error.rate, self.clock.now(), follow_call=follow)
                self.metrics.calls.labels(operation, error.code).inc()
                self.metrics.rate_limited.labels(
                    "follows" if follow and budget.follows.blocked_until > now else "requests"
                ).inc()
                refusals += 1
                if refusals >= MAX_REFUSALS:
                    raise
                continue
            except MastodonError as error:
                budget.observe(error.rate, self.clock.now(), follow_call=follow)
                self.metrics.calls.labels(operation, error.code).inc()
                raise
            budget.observe(reply.rate, self.clock.now(), follow_call=follow)
            self.metrics.calls.labels(operation, "ok").inc()
            return reply

    async def _reserve(self, account: _Account) -> None:
        """Save the call count ahead of use, so a restart never undercounts.

        Every lane reserves at each new window: the writes are grouped (one
        transaction for all lanes that asked within a few milliseconds).
        """
        window = account.budget.requests
        end, reserved = self._reserved.get(account.person_id, (0.0, 0))
        if window.end == end and window.used <= reserved:
            return
        ahead = (window.end, window.used + self.settings.mastodon_request_reserve_chunk)
        self._reserved[account.person_id] = ahead
        self._reserving[account.person_id] = ahead
        if self._reserved_saved is None:
            self._reserved_saved = asyncio.get_running_loop().create_future()
            self._reservation_task = asyncio.create_task(self._save_reservations())
        await asyncio.shield(self._reserved_saved)

    async def _save_reservations(self) -> None:
        await asyncio.sleep(0.005)  # let the other lanes that need one join in
        batch, self._reserving = self._reserving, {}
        saved, self._reserved_saved = self._reserved_saved, None
        assert saved is not None
        try:
            await self.db.run(
                self.store.reserve_requests, batch, self.settings.mastodon_requests_window_seconds
            )
        except Exception as error:  # noqa: BLE001 - handed to every lane waiting for it
            for person_id in batch:
                self._reserved.pop(person_id, None)
            saved.set_exception(error)
        else:
            saved.set_result(None)

    # --- outcomes ------------------------------------------------------------------------------

    def _finish(
        self,
        batch: _Batch,
        row: Claimed,
        state: str,
        outcome: str,
        reason: str | None,
        target_account_id: str | None = None,
    ) -> None:
        del batch.open[row.follow_id]
        self._record(
            Outcome(
                row.follow_id,
                row.person_id,
                state,
                outcome=outcome,
                reason=reason,
                target_account_id=target_account_id,
                done_at=self.clock.now(),
            )
        )

    def _release(self, row: Claimed, *, interrupted: bool) -> None:
        """Back to pending, due now (the lane's budget decides when it goes)."""
        self._record(
            Outcome(
                row.follow_id,
                row.person_id,
                "pending",
                reason="interrupted" if interrupted or row.interrupted else None,
                next_try_at=self.clock.now(),
                target_account_id=row.target_account_id,
            )
        )

    def _retry_later(self, batch: _Batch, code: str) -> None:
        """A transient failure: back off (exponentially, with jitter), or give up."""
        s = self.settings
        now = self.clock.now()
        for row in list(batch.open.values()):
            if row.attempts >= s.mastodon_max_attempts:
                self._finish(batch, row, "failed", "failed", code)
                continue
            delay = min(
                s.mastodon_retry_base_seconds * 2 ** (row.attempts - 1),
                s.mastodon_retry_max_seconds,
            )
            delay *= 1 + random.random() / 10
            interrupted = row.interrupted or row.follow_id in batch.sent
            del batch.open[row.follow_id]
            self._record(
                Outcome(
                    row.follow_id,
                    row.person_id,
                    "pending",
                    reason="interrupted" if interrupted else code,
                    next_try_at=now + delay,
                    target_account_id=row.target_account_id,
                )
            )

    def _record(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        if len(self._buffer) >= 500:
            self._flush_wanted.set()

    async def _lost(self, account: _Account, batch: _Batch, status: str, reason: str) -> None:
        """The link stopped working: say so, fail the person's open follows."""
        batch.open.clear()
        # Only the lease holder speaks for the link (it may have been replaced meanwhile).
        await self._hold(account, check=True)
        self.log.warning("link lost", person_id=account.person_id, reason=reason)
        await self.db.run(self.store.set_status, account.person_id, status)
        await self.fail_open(account.person_id, reason)
        self._budgets.pop(account.person_id, None)
        await self.publish(
            IdentityUnlinked(
                region=self.region,
                person_id=account.person_id,
                network="mastodon",
                account=account.acct,
                reason="credential_revoked",
            )
        )

    async def _flusher(self) -> None:
        # Ends with ``_running`` too: Python 3.11's wait_for can swallow a cancellation
        # that comes as the event is set (lanes set it as they stop).
        interval = self.settings.mastodon_flush_interval_seconds
        while self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush_wanted.wait(), timeout=interval)
            self._flush_wanted.clear()
            try:
                await self._flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("writing or publishing follow results failed; retrying")
                self._unpublished = True
                await asyncio.sleep(1.0)

    async def _write_outcomes(self) -> None:
        """Write the buffered outcomes (hold ``_write_lock``)."""
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            await self.db.run(self.ledger.finish, batch)
        except BaseException:
            self._buffer[:0] = batch
            raise
        if any(o.final for o in batch):
            self._unpublished = True
        # Rows put back for later need a lane to pick them up.
        self.wake({o.person_id for o in batch if not o.final})

    async def _flush(self) -> None:
        async with self._write_lock:
            releases, self._releases = self._releases, {}
            try:
                await self._write_outcomes()
            except BaseException:
                self._releases = {**releases, **self._releases}
                raise
            await self._release_leases(releases)
        while self._unpublished:
            self._unpublished = False
            results = await self.db.run(self.ledger.unpublished, RESULTS_PAGE)
            if not results:
                return
            try:
                stored = await self.publish_results(
                    [
                        FollowResult(
                            region=self.region,
                            follow_id=r.follow_id,
                            person_id=r.person_id,
                            network="mastodon",
                            target=r.target,
                            outcome=r.outcome,
                            reason=r.reason,
                        )
                        for r in results
                    ]
                )
            except BaseException:
                self._unpublished = True
                raise
            acked = [r for r, ok in zip(results, stored, strict=True) if ok]
            await self.db.run(self.ledger.mark_published, [r.follow_id for r in acked])
            counts = collections.Counter((r.outcome, r.reason or "") for r in acked)
            for (outcome, reason), n in counts.items():
                self.metrics.follows.labels("mastodon", outcome, reason).inc(n)
            if len(acked) < len(results):
                self._unpublished = True
                raise ResultsNotPublishedError(f"{len(results) - len(acked)} results not acked")
            self._unpublished = len(results) == RESULTS_PAGE

    async def _gauges(self) -> None:
        while self._running:
            try:
                self.metrics.backlog.labels("mastodon").set(await self.db.run(self.ledger.backlog))
                self.metrics.links.set(await self.db.run(self.store.count_links))
                now = self.clock.now()
                used = allowed = 0
                for person_id in list(self._lanes):
                    budget = self._budgets.get(person_id)
                    if budget is None:
                        continue
                    used += budget.follows.used_at(now)
                    allowed += budget.follows.limit
                self.metrics.budget_used.labels("mastodon").set(used)
                self.metrics.budget_allowed.labels("mastodon").set(allowed)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("metrics refresh failed")
            await asyncio.sleep(self.settings.mastodon_metrics_interval_seconds)
