"""The scheduler: spend each account's write budget on its backlog, fairly, exactly once.

The ledger is the source of truth: follow requests are acked once recorded, and this
loop works from the database (a restart resumes from it). Per account it keeps, in
memory, the budget log (also in the database), how much work is open and when it is
due, and whether a 429 or a failure made it wait.

Accounts wait in a heap ordered by the time they can next work; an account that has
just had its turn goes behind every account that was already waiting, and at most
``max_concurrent_accounts`` have a call in flight, so one huge backlog cannot starve
the others. One turn of an account, under its lock and its lease (one replica at a
time works on an account):

1. rows left ``in_flight`` (a crash, a timeout, a 5xx) are reconciled with the
   account's follow records read back from its repo: found → done, else pending;
2. the newest follow records are read when the last read is older than
   ``sync_interval`` (a full read the first time), so already-followed targets are
   skipped;
3. up to ``min(200, points available / 3)`` due rows are taken; targets already
   followed are ``already_following``, deleted ones fail once;
4. the rest are marked ``in_flight`` and their points recorded, *then* one
   ``applyWrites`` creates them; the answer settles them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import itertools
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import structlog

from passerelle_bluesky_sender.budget import (
    DAY,
    HOUR,
    SlidingBudget,
    unexplained_spend,
    write_budget,
)
from passerelle_bluesky_sender.clock import Clock
from passerelle_bluesky_sender.metrics import NETWORK, SenderMetrics
from passerelle_bluesky_sender.models import DONE, FAILED, IN_FLIGHT, PENDING
from passerelle_bluesky_sender.sessions import (
    Session,
    SessionBrokenError,
    Sessions,
    SessionUnavailableError,
)
from passerelle_bluesky_sender.settings import Settings
from passerelle_bluesky_sender.store import AccountRow, FollowRow, Outcome, Store
from passerelle_bluesky_sender.targets import TargetChecker, failure_reason
from passerelle_bluesky_sender.xrpc import (
    NotSentError,
    RateLimit,
    UncertainError,
    XrpcClient,
    XrpcError,
)
from passerelle_platform.telemetry import trace_parents

FOLLOW_COLLECTION = "app.bsky.graph.follow"
PAGE = 100
#: Errors of a write or read meaning the person's account itself is unusable.
ACCOUNT_GONE = {
    "AccountTakedown": "account_takendown",
    "AccountDeactivated": "account_deactivated",
    "RepoNotFound": "account_not_found",
    "RepoDeactivated": "account_deactivated",
    "RepoTakendown": "account_takendown",
    "RepoSuspended": "account_suspended",
}
#: 4xx answers to a batch that come from one bad record (found by splitting the batch).
RECORD_ERRORS = {"InvalidRequest", "InvalidRecord", "InvalidSwap", None}

OnBroken = Callable[[AccountRow, str], Awaitable[None]]


class _WaitError(Exception):
    """End this turn; the account may work again at ``until``."""

    def __init__(self, until: float, why: str, *, failure: bool = True) -> None:
        super().__init__(why)
        self.until = until
        self.why = why
        self.failure = failure


@dataclass
class AccountState:
    """What the scheduler keeps in memory about one account with work."""

    did: str
    host: str
    budget: SlidingBudget
    open_rows: int = 0
    next_due: float | None = None
    blocked_until: float = 0.0
    failures: int = 0
    linger_until: float = 0.0
    active: bool = True
    running: bool = False
    heap_key: tuple[float, int] | None = None
    turns: int = 0
    synced_real: float = 0.0
    """``time.monotonic()`` of the last read of the account's follow records."""
    extra: dict[str, Any] = field(default_factory=dict)


def iso_now() -> str:
    """``createdAt`` of a record: the real time (not the scheduler's clock)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rkey_of(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


class Scheduler:
    def __init__(
        self,
        *,
        store: Store,
        xrpc: XrpcClient,
        sessions: Sessions,
        targets: TargetChecker,
        clock: Clock,
        settings: Settings,
        metrics: SenderMetrics,
        log: structlog.stdlib.BoundLogger,
        on_broken: OnBroken,
        on_results: Callable[[], None],
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.xrpc = xrpc
        self.sessions = sessions
        self.targets = targets
        self.clock = clock
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.on_broken = on_broken
        self.on_results = on_results
        self.owner = owner or uuid.uuid4().hex[:16]
        self.states: dict[str, AccountState] = {}
        self.host_blocked: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._dirty: set[str] = set()
        self._new: dict[str, int] = {}
        self._touched: set[str] = set()
        self._refresh_all = True
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.calls = 0

    # --- what others tell the scheduler ---------------------------------------------------

    def notify(self, work: Mapping[str, int]) -> None:
        """New pending rows per account (from the intake): no database read needed."""
        now = self.clock.now()
        linger_until = now + self.settings.bluesky_batch_linger_seconds
        for did, count in work.items():
            state = self.states.get(did)
            if state is None:
                self._new[did] = self._new.get(did, 0) + count
                continue
            if state.open_rows == 0:
                state.linger_until = linger_until
            state.open_rows += count
            state.next_due = now if state.next_due is None else min(state.next_due, now)
            self._touched.add(did)
        self._wake.set()

    def recheck(self, dids: Iterable[str]) -> None:
        """These accounts changed (linked again...): read their backlog from the ledger."""
        self._dirty.update(dids)
        self._wake.set()

    def forget(self, did: str) -> None:
        state = self.states.pop(did, None)
        if state is not None:
            state.active = False
        self.sessions.forget(did)

    @asynccontextmanager
    async def exclusive(self, did: str) -> AsyncIterator[None]:
        """Hold the account: no turn runs for it meanwhile (unlink, erasure, relink)."""
        lock = self._locks.setdefault(did, asyncio.Lock())
        async with lock:
            yield

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bluesky-scheduler")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _run(self) -> None:
        refresh_every = self.settings.bluesky_backlog_refresh_seconds
        next_full = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            try:
                if loop.time() >= next_full:
                    self._refresh_all = True
                    next_full = loop.time() + refresh_every
                await self._refresh()
                self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad moment (e.g. DB busy)
                self.log.exception("scheduler loop error")
                await asyncio.sleep(1.0)
            timeout = 1.0
            now = self.clock.now()
            if self._heap and len(self._running) < self.settings.bluesky_max_concurrent_accounts:
                timeout = min(timeout, self.clock.to_real(self._heap[0][0] - now))
            self._wake.clear()
            if timeout > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=timeout)

    async def _refresh(self) -> None:
        """Bring in-memory states up to date (new work, restarts, other replicas' intake)."""
        now = self.clock.now()
        touched, self._touched = self._touched, set()
        for did in touched:
            state = self.states.get(did)
            if state is not None:
                self._schedule(state)
        if self._new:
            new, self._new = self._new, {}
            await self._load(sorted(new))
            for did, count in new.items():
                state = self.states.get(did)
                if state is not None and not state.running:
                    state.open_rows += count
                    state.next_due = now
                    state.linger_until = now + self.settings.bluesky_batch_linger_seconds
                    self._schedule(state)
        if self._refresh_all:
            self._refresh_all = False
            self._dirty.clear()
            backlogs = await asyncio.to_thread(self.store.backlogs, None)
            known = {b.did for b in backlogs}
            for did, state in self.states.items():
                if did not in known and not state.running:
                    state.open_rows, state.next_due = 0, None
        elif self._dirty:
            dids, self._dirty = sorted(self._dirty), set()
            backlogs = await asyncio.to_thread(self.store.backlogs, dids)
        else:
            return
        missing = [b.did for b in backlogs if b.did not in self.states and b.open_rows]
        if missing:
            await self._load(missing)
        for backlog in backlogs:
            found = self.states.get(backlog.did)
            if found is None or found.running:
                continue
            state = found
            if state.open_rows == 0 and backlog.open_rows and not state.linger_until:
                state.linger_until = now + self.settings.bluesky_batch_linger_seconds
            state.open_rows, state.next_due = backlog.open_rows, backlog.next_due
            self._schedule(state)

    async def _load(self, dids: Sequence[str]) -> None:
        wanted = [d for d in dids if d not in self.states]
        if not wanted:
            return
        accounts = await asyncio.to_thread(self.store.active_accounts, wanted)
        since = self.clock.now() - DAY
        spends = await asyncio.to_thread(self.store.spends, since, wanted)
        for account in accounts:
            if account.did in self.states:
                continue
            budget = self._new_budget()
            budget.load(spends.get(account.did, []))
            self.states[account.did] = AccountState(
                did=account.did, host=urlsplit(account.pds_url).netloc, budget=budget
            )

    def _new_budget(self) -> SlidingBudget:
        return write_budget(
            self.settings.bluesky_points_per_hour, self.settings.bluesky_points_per_day
        )

    # --- choosing who works next ----------------------------------------------------------

    def ready_at(self, state: AccountState, now: float) -> float | None:
        """When the account can next make a useful call (``None``: nothing to do)."""
        if not state.active or state.open_rows <= 0:
            return None
        s = self.settings
        t = max(
            now, state.next_due or now, state.blocked_until, self.host_blocked.get(state.host, 0.0)
        )
        if state.open_rows < s.bluesky_max_writes_per_call:
            t = max(t, state.linger_until)
        cost = s.bluesky_create_cost
        want = min(s.bluesky_max_writes_per_call, state.open_rows) * cost
        available = state.budget.available(t)
        if available >= want:
            return t
        if available < cost:
            return state.budget.when_available(t, cost)
        full_at = state.budget.when_available(t, want)
        # A full batch soon: wait for it; otherwise spend what there is now.
        return full_at if full_at - t <= s.bluesky_batch_linger_seconds else t

    def _schedule(self, state: AccountState) -> None:
        if state.running:
            return
        when = self.ready_at(state, self.clock.now())
        if when is None:
            state.heap_key = None
            return
        if state.heap_key is not None and state.heap_key[0] == when:
            return
        key = (when, next(self._seq))
        state.heap_key = key
        heapq.heappush(self._heap, (key[0], key[1], state.did))

    def _dispatch(self) -> None:
        now = self.clock.now()
        limit = self.settings.bluesky_max_concurrent_accounts
        while self._heap and len(self._running) < limit and self._heap[0][0] <= now:
            when, seq, did = heapq.heappop(self._heap)
            state = self.states.get(did)
            if state is None or state.heap_key != (when, seq) or state.running:
                continue
            state.heap_key = None
            again = self.ready_at(state, now)
            if again is None:
                continue
            if again > now:
                self._schedule(state)
                continue
            state.running = True
            state.turns += 1
            task = asyncio.create_task(self._turn(state), name="bluesky-turn")
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    # --- one turn -------------------------------------------------------------------------

    async def _turn(self, state: AccountState) -> None:
        try:
            async with self.exclusive(state.did):
                if not state.active:
                    return
                try:
                    await self._work(state)
                    state.failures = 0
                except _WaitError as wait:
                    if wait.failure:
                        state.failures += 1
                    state.blocked_until = max(state.blocked_until, wait.until)
                    self.log.info(
                        "account waits",
                        why=wait.why,
                        seconds=round(wait.until - self.clock.now(), 1),
                    )
                except SessionUnavailableError as error:
                    state.failures += 1
                    state.blocked_until = max(state.blocked_until, error.until)
                    self.log.info("no session", why=error.why)
                except SessionBrokenError as error:
                    await self._broken(state, error.reason)
                finally:
                    due = await asyncio.to_thread(self.store.end_turn, state.did, self.owner)
                    state.next_due = due
                    if due is None:
                        state.open_rows = 0
                    else:
                        state.open_rows = max(1, state.open_rows - state.extra.pop("done", 0))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("turn failed")
            state.failures += 1
            state.blocked_until = self.clock.now() + self._backoff(state.failures)
        finally:
            state.running = False
            state.linger_until = 0.0
            if state.active:
                self._schedule(state)
            self._wake.set()

    async def _work(self, state: AccountState) -> None:
        s = self.settings
        now = self.clock.now()
        lease = now + self._lease()
        start = await asyncio.to_thread(
            self.store.begin_turn,
            state.did,
            self.owner,
            now,
            lease,
            now - DAY,
            s.bluesky_max_writes_per_call,
        )
        account = start.account
        if account is None:
            if start.holder is None:  # unlinked, erased or broken meanwhile
                state.active = False
                self.states.pop(state.did, None)
            else:
                raise _WaitError(lease, "held by another replica", failure=False)
            return
        state.budget.load(start.spends)
        state.host = urlsplit(account.pds_url).netloc

        # Reads are cheap but not free: the newest records are read again at most every
        # ``sync_interval`` real seconds, and always before deciding about rows in flight.
        stale = time.monotonic() - state.synced_real >= s.bluesky_sync_interval_seconds
        if start.in_flight or account.synced_at is None or stale or not state.synced_real:
            account = await self._sync(account, state)
        if start.in_flight:
            await self._reconcile(account, start.in_flight)

        now = self.clock.now()
        count = min(
            s.bluesky_max_writes_per_call, state.budget.available(now) // s.bluesky_create_cost
        )
        rows = start.due[: max(0, count)]
        if not rows:
            return
        # The calls for these follows join the trace their requests came in (a person's
        # step), rather than starting traces of their own.
        with trace_parents.resumed(
            (r.follow_id for r in rows),
            "bluesky follows",
            {"messaging.system": "nats", "messaging.batch.message_count": len(rows)},
        ):
            settled, send = await self._screen(account, rows)
            if not send:
                await self._settle(settled)
                state.extra["done"] = state.extra.get("done", 0) + len(settled)
                return
            session = await self.sessions.get(account)
            await self._send(account, state, session, send, settled=settled)

    async def _screen(
        self, account: AccountRow, rows: list[FollowRow]
    ) -> tuple[list[Outcome], list[FollowRow]]:
        """Rows that need no call (already followed, a target that is gone), and the rest."""
        targets = [r.target for r in rows]
        known = await asyncio.to_thread(self.store.known_among, account.did, targets)
        statuses: dict[str, str] = {}
        if self.settings.bluesky_check_targets:
            statuses = await self.targets.statuses([t for t in targets if t not in known])
        settled: list[Outcome] = []
        send: list[FollowRow] = []
        for row in rows:
            if row.target in known:
                settled.append(Outcome(row.id, DONE, PENDING, outcome="already_following"))
                continue
            reason = failure_reason(statuses.get(row.target, "active"))
            if reason is not None:
                settled.append(Outcome(row.id, FAILED, PENDING, outcome="failed", reason=reason))
            else:
                send.append(row)
        return settled, send

    async def _reconcile(self, account: AccountRow, rows: list[FollowRow]) -> None:
        """Rows whose call may have been applied: the repo (just read) says whether it was."""
        known = await asyncio.to_thread(
            self.store.known_among, account.did, [r.target for r in rows]
        )
        now = self.clock.now()
        outcomes = []
        for row in rows:
            if row.target in known:
                outcomes.append(Outcome(row.id, DONE, IN_FLIGHT, outcome="followed"))
            elif row.attempts >= self.settings.bluesky_max_attempts:
                outcomes.append(
                    Outcome(row.id, FAILED, IN_FLIGHT, outcome="failed", reason="remote_error")
                )
            else:
                outcomes.append(Outcome(row.id, PENDING, IN_FLIGHT, next_try_at=now))
        self.log.info("in-flight follows reconciled", rows=len(rows), found=len(known))
        await self._settle(outcomes)

    async def _settle(self, outcomes: Sequence[Outcome]) -> None:
        finished = await asyncio.to_thread(self.store.settle, outcomes, self.clock.now())
        if finished:
            self.on_results()

    # --- reading the account's follow records ---------------------------------------------

    async def _sync(self, account: AccountRow, state: AccountState) -> AccountRow:
        """Read follow records newer than the last read (all of them the first time)."""
        cursor = account.records_cursor
        subjects: list[str] = []
        pages = 0
        while True:
            params: dict[str, Any] = {
                "repo": account.did,
                "collection": FOLLOW_COLLECTION,
                "limit": PAGE,
                "reverse": "true",
            }
            if cursor:
                params["cursor"] = cursor
            try:
                response = await self.xrpc.query(
                    account.pds_url, "com.atproto.repo.listRecords", params
                )
            except XrpcError as error:
                await self._limits(state, error.rate_limit, "read")
                if error.error in ACCOUNT_GONE:
                    raise SessionBrokenError(ACCOUNT_GONE[error.error]) from None
                if error.is_rate_limited:
                    raise _WaitError(self._reset_of(error), "reads rate limited") from None
                raise _WaitError(
                    self._retry_time(state), f"listRecords HTTP {error.status}"
                ) from None
            except (NotSentError, UncertainError) as error:
                raise _WaitError(self._retry_time(state), f"listRecords {error}") from None
            await self._limits(state, response.rate_limit, "read")
            records = response.body.get("records")
            records = records if isinstance(records, list) else []
            for record in records:
                value = record.get("value") if isinstance(record, dict) else None
                uri = record.get("uri") if isinstance(record, dict) else None
                if isinstance(value, dict) and isinstance(value.get("subject"), str):
                    subjects.append(value["subject"])
                if isinstance(uri, str):
                    rkey = rkey_of(uri)
                    if cursor is None or rkey > cursor:
                        cursor = rkey
            pages += 1
            if len(records) < PAGE:
                break
            if pages % 20 == 0:  # keep progress of a long first read
                await asyncio.to_thread(self.store.add_known, account.did, subjects)
                subjects = []
        now = self.clock.now()
        await asyncio.to_thread(self.store.add_known, account.did, subjects)
        await asyncio.to_thread(self.store.set_records_cursor, account.did, cursor, now)
        state.synced_real = time.monotonic()
        return dataclasses.replace(account, records_cursor=cursor, synced_at=now)

    # --- the write ------------------------------------------------------------------------

    async def _send(
        self,
        account: AccountRow,
        state: AccountState,
        session: Session,
        rows: list[FollowRow],
        *,
        settled: Sequence[Outcome] = (),
        retried_auth: bool = False,
    ) -> None:
        s = self.settings
        now = self.clock.now()
        points = s.bluesky_create_cost * len(rows)
        batch_id = uuid.uuid4().hex
        ids = [r.id for r in rows]
        spend_id = await asyncio.to_thread(
            functools.partial(
                self.store.start_batch,
                account.did,
                ids,
                batch_id,
                points,
                now,
                settled,
                lease=(self.owner, now + self._lease()),
            )
        )
        if settled:
            state.extra["done"] = state.extra.get("done", 0) + len(settled)
            self.on_results()
        state.budget.add(now, points)
        self.metrics.points_spent.labels(NETWORK).inc(points)
        created_at = iso_now()
        writes = [
            {
                "$type": "com.atproto.repo.applyWrites#create",
                "collection": FOLLOW_COLLECTION,
                "value": {"$type": FOLLOW_COLLECTION, "subject": r.target, "createdAt": created_at},
            }
            for r in rows
        ]
        self.calls += 1
        try:
            response = await self.xrpc.procedure(
                session.pds_url,
                "com.atproto.repo.applyWrites",
                {"repo": account.did, "writes": writes},
                token=session.access_jwt,
                attributes={"bluesky.writes": len(rows)},
            )
        except XrpcError as error:
            await self._answered(state, spend_id, now, points)
            await self._limits(state, error.rate_limit, "write")
            await self._refused(account, state, session, rows, error, retried_auth=retried_auth)
            return
        except NotSentError as error:
            await self._answered(state, spend_id, now, points)
            until = self._retry_time(state)
            await self._settle([Outcome(r.id, PENDING, IN_FLIGHT, next_try_at=until) for r in rows])
            raise _WaitError(until, f"applyWrites {error}") from None
        except UncertainError as error:
            # It may have been applied (maybe even later): date the points late enough.
            late = self.clock.from_real(s.bluesky_http_timeout_seconds)
            await self._answered(state, spend_id, now, points, late=late)
            # Keep the rows in flight; the next turn reads the repo back first, late
            # enough for a slow server to have finished.
            until = max(
                self._retry_time(state),
                self.clock.now() + self.clock.from_real(2 * s.bluesky_http_timeout_seconds),
            )
            await self._settle(
                [Outcome(r.id, IN_FLIGHT, IN_FLIGHT, next_try_at=until) for r in rows]
            )
            raise _WaitError(until, f"applyWrites {error}") from None
        answered = self.clock.now()
        state.budget.move(now, points, answered)
        results = response.body.get("results")
        uris: list[str | None] = [None] * len(rows)
        if isinstance(results, list) and len(results) == len(rows):
            uris = [r.get("uri") if isinstance(r, dict) else None for r in results]
        outcomes = [
            Outcome(row.id, DONE, IN_FLIGHT, outcome="followed", record_uri=uri)
            for row, uri in zip(rows, uris, strict=True)
        ]
        finished = await asyncio.to_thread(
            functools.partial(
                self.store.finish_batch,
                outcomes,
                answered,
                spend=(spend_id, answered),
                actor=account.did,
                followed=[r.target for r in rows],
            )
        )
        state.extra["done"] = state.extra.get("done", 0) + finished
        if finished:
            self.on_results()
        await self._limits(state, response.rate_limit, "write")

    def _lease(self) -> float:
        """How long a turn may hold an account (renewed before each write)."""
        return self.clock.from_real(3 * self.settings.bluesky_http_timeout_seconds)

    async def _answered(
        self,
        state: AccountState,
        spend_id: int | None,
        sent_at: float,
        points: int,
        *,
        late: float = 0.0,
    ) -> None:
        """Re-date a call's points to when its answer came (see :mod:`.budget`)."""
        answered = self.clock.now() + late
        state.budget.move(sent_at, points, answered)
        if spend_id is not None:
            await asyncio.to_thread(self.store.move_spend, spend_id, answered)

    async def _refused(
        self,
        account: AccountRow,
        state: AccountState,
        session: Session,
        rows: list[FollowRow],
        error: XrpcError,
        *,
        retried_auth: bool,
    ) -> None:
        """The server refused the batch: nothing of it was applied."""
        now = self.clock.now()
        if error.is_rate_limited:
            until = self._reset_of(error)
            scope = self._scope(error.rate_limit, "write")
            self.metrics.rate_limited.labels(NETWORK, scope).inc()
            await self._settle(
                [Outcome(r.id, PENDING, IN_FLIGHT, next_try_at=until, refund=True) for r in rows]
            )
            if scope == "ip":
                self.host_blocked[state.host] = max(self.host_blocked.get(state.host, 0.0), until)
            raise _WaitError(until, f"rate limited ({scope})", failure=False)
        back = [Outcome(r.id, PENDING, IN_FLIGHT, next_try_at=now, refund=True) for r in rows]
        if error.error in ACCOUNT_GONE:
            await self._settle(back)
            raise SessionBrokenError(ACCOUNT_GONE[error.error])
        if error.is_auth_expired and not retried_auth:
            await self._settle(back)
            fresh = await self.sessions.get(account, force_refresh=True)
            await self._send(account, state, fresh, rows, retried_auth=True)
            return
        if error.status == 400 and error.error in RECORD_ERRORS:
            if len(rows) == 1:
                await self._settle(
                    [Outcome(rows[0].id, FAILED, IN_FLIGHT, outcome="failed", reason="rejected")]
                )
                self.log.warning("follow rejected by the pds", error=error.error)
                return
            # One bad record spoils the batch: split it to find the one.
            await self._settle(back)
            half = len(rows) // 2
            for part in (rows[:half], rows[half:]):
                cost = self.settings.bluesky_create_cost * len(part)
                if state.budget.available(self.clock.now()) < cost:
                    return
                await self._send(account, state, session, part, retried_auth=retried_auth)
            return
        # Anything else (403, 413, an unknown 4xx): not applied; retry later, within limits.
        until = self._retry_time(state)
        outcomes = []
        for row in rows:
            if row.attempts + 1 >= self.settings.bluesky_max_attempts:
                outcomes.append(
                    Outcome(row.id, FAILED, IN_FLIGHT, outcome="failed", reason="rejected")
                )
            else:
                outcomes.append(Outcome(row.id, PENDING, IN_FLIGHT, next_try_at=until))
        await self._settle(outcomes)
        raise _WaitError(until, f"applyWrites HTTP {error.status} {error.error}")

    # --- limits and waits -----------------------------------------------------------------

    def _scope(self, limit: RateLimit | None, default: str) -> str:
        s = self.settings
        if limit is None or limit.window is None:
            return default
        if (limit.window, limit.limit) in (
            (HOUR, s.bluesky_points_per_hour),
            (DAY, s.bluesky_points_per_day),
        ):
            return "write"
        return "ip"

    async def _limits(self, state: AccountState, limit: RateLimit | None, call: str) -> None:
        """Fold what the server says about its limits into ours."""
        if limit is None:
            return
        now = self.clock.now()
        margin = self.settings.bluesky_rate_limit_margin_seconds
        scope = self._scope(limit, call)
        if limit.reset <= now:
            return  # the window it speaks of is over
        if scope == "write" and limit.window is not None:
            extra = unexplained_spend(
                state.budget, now, limit=limit.limit, window=limit.window, remaining=limit.remaining
            )
            if extra > 0:
                # Spent elsewhere (the person's own app); it frees when the server's window
                # resets, so log it as if spent one window before the reset.
                at = min(now, limit.reset - limit.window)
                state.budget.add(at, extra)
                await asyncio.to_thread(self.store.add_spend, state.did, at, extra, "external")
                self.log.info("budget used elsewhere", points=extra, window=limit.window)
            if limit.remaining == 0:
                state.blocked_until = max(state.blocked_until, limit.reset + margin)
        elif limit.remaining == 0 and scope == "ip":
            self.host_blocked[state.host] = max(
                self.host_blocked.get(state.host, 0.0), limit.reset + margin
            )

    def _reset_of(self, error: XrpcError) -> float:
        now = self.clock.now()
        margin = self.settings.bluesky_rate_limit_margin_seconds
        if error.rate_limit is not None and error.rate_limit.reset > now:
            return error.rate_limit.reset + margin
        if error.retry_after is not None:
            return now + error.retry_after + margin
        return now + self.settings.bluesky_retry_base_seconds

    def _backoff(self, failures: int) -> float:
        s = self.settings
        delay = min(
            s.bluesky_retry_max_seconds, s.bluesky_retry_base_seconds * 2.0 ** max(0, failures)
        )
        return float(delay * random.uniform(0.8, 1.2))

    def _retry_time(self, state: AccountState) -> float:
        return self.clock.now() + self._backoff(state.failures)

    async def _broken(self, state: AccountState, reason: str) -> None:
        now = self.clock.now()
        account = await asyncio.to_thread(self.store.mark_broken, state.did, reason, now)
        state.active = False
        self.states.pop(state.did, None)
        self.sessions.forget(state.did)
        if account is not None:
            self.metrics.sessions.labels("broken").inc()
            self.log.warning("link broken: the person's work stops", reason=reason)
            await self.on_broken(account, reason)
