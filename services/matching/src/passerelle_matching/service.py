"""The matching service's behaviour around its store: messages in, follow requests out.

Handlers call one method here per message or request. Database work runs in a
thread (the store is synchronous); follow requests are published after the
transaction that created them commits, from the outbox (``pending`` rows), so a
crash between the two only delays them: the next delivery of the message, or
the periodic drain, publishes what is left; ``Nats-Msg-Id`` (derived from the follow
ids of a message) makes a second publication of a message a no-op, and the senders'
ledgers keep each follow id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
import time
from collections import Counter as Tally
from collections.abc import Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

from opentelemetry import propagate
from prometheus_client import Counter, Gauge, Histogram

from passerelle_contracts import (
    NETWORKS,
    ArchiveImported,
    BlueskyFollowsRequested,
    ConsentChanged,
    FollowResult,
    FollowsRequested,
    IdentityLinked,
    IdentityUnlinked,
    MastodonFollowsRequested,
    Network,
    UserErased,
)
from passerelle_contracts.rpc import (
    CountReply,
    MatchCount,
    MatchItem,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchState,
    MatchSummaryReply,
    MatchSummaryRequest,
)
from passerelle_contracts.streams import FOLLOW_REQUESTS
from passerelle_matching.edges import EdgeBatch
from passerelle_matching.models import FOLLOWER, FOLLOWING
from passerelle_matching.settings import Settings
from passerelle_matching.store import Archive, FollowToRequest, MatchingStore, Outcome, Scope
from passerelle_platform.runtime import ServiceRuntime
from passerelle_xarchive import iter_payload_arrays

OUTBOX_BATCH = 2000
PUBLISH_ACK_SECONDS = 10.0
DECODE_CHUNK_IDS = 1 << 16


class PayloadMismatchError(Exception):
    """The payloads fetched do not hash to the announced ``payload_sha256``."""


class MatchingMetrics:
    """The service's own metrics (no personal data in labels)."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings) -> None:
        registry = runtime.metrics.registry
        self.events = Counter(
            "passerelle_matching_events_total",
            "Events handled, by kind and whether they changed anything.",
            ["kind", "outcome"],
            registry=registry,
        )
        self.edges = Counter(
            "passerelle_matching_archive_edges_total",
            "Edges loaded from archives.",
            registry=registry,
        )
        self.import_seconds = Histogram(
            "passerelle_matching_archive_import_seconds",
            "Time to fetch, load and match one archive (archives loaded together in one"
            " transaction share their batch's time equally).",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.requests = Counter(
            "passerelle_matching_follow_requests_published_total",
            "Follow requests published (a republication after a crash counts again).",
            ["network"],
            registry=registry,
        )
        self.matches = Gauge(
            "passerelle_matching_matches",
            "People found on a network, per direction (a mutual match counts in both).",
            ["network", "direction"],
            registry=registry,
        )
        self.follow_requests = Gauge(
            "passerelle_matching_follow_requests",
            "Matches per network and state (proposed, selected, requested, followed, ...).",
            ["network", "state"],
            registry=registry,
        )
        trust = Gauge(
            "passerelle_matching_trust_archive_claims",
            "1 when X identities claimed by an archive alone are auto-followed.",
            registry=registry,
        )
        trust.set(1 if settings.trust_archive_claims else 0)


class MatchingService:
    """What the matching process does with each message and request."""

    def __init__(
        self,
        runtime: ServiceRuntime,
        settings: Settings,
        store: MatchingStore | None = None,
    ) -> None:
        if store is None:
            if runtime.engine is None:
                raise ValueError("the matching service needs its database")
            store = MatchingStore(
                runtime.engine, trust_archive_claims=settings.trust_archive_claims
            )
        self.runtime = runtime
        self.settings = settings
        self.store = store
        self.log = runtime.log
        self.metrics = MatchingMetrics(runtime, settings)
        self._drain_lock = asyncio.Lock()
        self._drainer: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._counter: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[int]] = set()
        self._clearing: set[asyncio.Task[None]] = set()
        self._in_flight: set[tuple[int, int, int]] = set()
        self._js: Any = None
        self._js_connection: Any = None
        self._tracer = runtime.tracer_provider.get_tracer("passerelle_matching")

    # --- events ----------------------------------------------------------------------

    async def on_archives(self, events: Sequence[ArchiveImported]) -> list[Outcome | BaseException]:
        """Several ``archive.imported`` (one fetch of the intake) in one transaction.

        Each event's payloads are fetched and checked on their own: an event that
        fails there gets its exception back (its message is redelivered), the
        others go on. The loaded archives are committed together
        (:meth:`MatchingStore.import_archives`), then their follow requests are
        published. If that transaction fails, each archive is tried alone, so one
        bad archive never holds the others back. Raises only if publishing fails
        after the commit (every message of the batch is then redelivered, and
        reloading an import is idempotent).
        """
        started = time.perf_counter()
        results: list[Outcome | BaseException] = [
            Outcome(applied=False, detail="stale") for _ in events
        ]
        with tempfile.TemporaryDirectory(prefix="matching-", dir=self.settings.tmp_dir) as tmp:
            loading: list[tuple[int, Archive, Path, Path]] = []
            for index, event in enumerate(events):
                try:
                    prepared = await self._prepare(event, Path(tmp) / str(index))
                except Exception as error:  # noqa: BLE001 - this event only is redelivered
                    self.log.warning("archive not loaded", error=type(error).__name__)
                    results[index] = error
                    continue
                if prepared is not None:
                    loading.append((index, *prepared))
            loaded = await self._load(loading)
        scope = Scope()
        for index, outcome in loaded.items():
            results[index] = outcome
            if isinstance(outcome, BaseException):
                continue
            scope.owners |= outcome.scope.owners
            scope.targets |= outcome.scope.targets
            if outcome.applied:
                self.metrics.edges.inc(int(outcome.detail.split()[0]))
            self._counted("archive", outcome)
        await self.flush(scope)
        seconds = time.perf_counter() - started
        for _ in loading:
            self.metrics.import_seconds.observe(seconds / len(loading))
        self.log.info(
            "archives loaded",
            archives=len(events),
            applied=sum(1 for r in results if isinstance(r, Outcome) and r.applied),
            seconds=round(seconds, 3),
        )
        return results

    async def _load(
        self, loading: Sequence[tuple[int, Archive, Path, Path]]
    ) -> dict[int, Outcome | BaseException]:
        """Load the prepared archives in one transaction; if it fails, one by one."""
        if not loading:
            return {}
        try:
            outcomes = await asyncio.to_thread(
                self.store.import_archives,
                [(archive, decode_payloads(f, g)) for _, archive, f, g in loading],
            )
            return {index: o for (index, *_), o in zip(loading, outcomes, strict=True)}
        except Exception:
            if len(loading) == 1:
                raise
            self.log.warning("archive batch failed, loading one by one", size=len(loading))
        loaded: dict[int, Outcome | BaseException] = {}
        for index, archive, following, followers in loading:
            try:
                loaded[index] = await asyncio.to_thread(
                    self.store.import_archive, archive, decode_payloads(following, followers)
                )
            except Exception as error:  # noqa: BLE001 - this archive alone is redelivered
                self.log.warning("archive not loaded", error=type(error).__name__)
                loaded[index] = error
        return loaded

    async def _prepare(
        self, event: ArchiveImported, base: Path
    ) -> tuple[Archive, Path, Path] | None:
        """The archive and its two payload files, fetched and checked (``None``: stale)."""
        sent_at = event.sent_at.timestamp()
        current = await asyncio.to_thread(
            self.store.archive_is_current, event.person_id, event.import_id, sent_at
        )
        if not current:
            self._counted("archive", Outcome(applied=False, detail="stale"))
            return None
        archive = Archive(
            person_id=event.person_id,
            region=event.region,
            import_id=event.import_id,
            sent_at=sent_at,
            x_account_id=event.x_account_id,
            x_username=event.x_username,
        )
        following, followers = base.with_suffix(".following"), base.with_suffix(".followers")
        await self._fetch(event, following, followers)
        await asyncio.to_thread(_check_digest, event.payload_sha256, following, followers)
        return archive, following, followers

    async def _fetch(self, event: ArchiveImported, following: Path, followers: Path) -> None:
        """Stream both objects to files (never the whole payload in memory)."""
        object_store = await self.runtime.broker.connection.jetstream().object_store(event.bucket)
        for name, path in (
            (event.following_object, following),
            (event.followers_object, followers),
        ):
            with path.open("wb") as handle:
                await object_store.get(name, writeinto=handle)

    async def on_identity_linked(self, event: IdentityLinked) -> Outcome:
        outcome = await asyncio.to_thread(
            self.store.link_identity,
            event.person_id,
            event.region,
            event.network,
            event.account,
            event.handle,
            event.sent_at.timestamp(),
            pending_limit=OUTBOX_BATCH,
        )
        await self.flush(outcome.scope, outcome)
        return self._counted("identity.linked", outcome)

    async def on_identity_unlinked(self, event: IdentityUnlinked) -> Outcome:
        outcome = await asyncio.to_thread(
            self.store.unlink_identity,
            event.person_id,
            event.network,
            event.account,
            event.sent_at.timestamp(),
        )
        return self._counted("identity.unlinked", outcome)

    async def on_consent(self, event: ConsentChanged) -> Outcome:
        outcome = await asyncio.to_thread(
            lambda: self.store.change_consent(
                event.person_id,
                event.region,
                matching=event.matching,
                auto_follow=event.auto_follow,
                notifications=event.notifications,
                revision=event.revision,
            )
        )
        await self.flush(outcome.scope)
        return self._counted("consent.changed", outcome)

    async def on_result(self, event: FollowResult) -> bool:
        changed = await asyncio.to_thread(
            self.store.record_result,
            event.person_id,
            event.network,
            event.target,
            event.follow_id,
            event.outcome,
            event.reason,
        )
        self.metrics.events.labels("follow.result", "applied" if changed else "ignored").inc()
        return changed

    async def on_erasure(self, event: UserErased) -> Outcome:
        outcome = await asyncio.to_thread(self.store.erase, event.person_id)
        await self.flush(outcome.scope)
        self.log.info("person erased", known=outcome.applied)
        return self._counted("user.erased", outcome)

    def _counted(self, kind: str, outcome: Outcome) -> Outcome:
        label = "applied" if outcome.applied else (outcome.detail or "ignored")
        self.metrics.events.labels(kind, label).inc()
        return outcome

    # --- requests from the edge --------------------------------------------------------

    async def summary(self, request: MatchSummaryRequest) -> MatchSummaryReply:
        rows = await asyncio.to_thread(self.store.summary, request.person_id)
        return MatchSummaryReply(
            region=self.settings.region,
            counts=tuple(
                MatchCount(network=n, direction=d, state=s, count=c) for n, d, s, c in rows
            ),
        )

    async def list_matches(self, request: MatchListRequest) -> MatchListReply:
        total, rows = await asyncio.to_thread(
            lambda: self.store.list_matches(
                request.person_id,
                request.network,
                direction=request.direction,
                states=request.states,
                search=request.search,
                offset=request.offset,
                limit=request.limit,
            )
        )
        items = tuple(
            MatchItem(
                target=r.target,
                handle=r.handle,
                directions=r.directions,
                state=r.state,
                trust=r.trust,
                reason=r.reason,
            )
            for r in rows
        )
        return MatchListReply(region=self.settings.region, total=total, items=items)

    async def select(self, request: MatchSelectRequest) -> CountReply:
        count = await asyncio.to_thread(
            lambda: self.store.select(
                request.person_id,
                request.network,
                selected=request.selected,
                targets=request.targets,
                all_in_direction=request.all_in_direction,
            )
        )
        return CountReply(region=self.settings.region, count=count)

    async def request_follows(self, request: MatchRequestFollows) -> CountReply:
        outcome = await asyncio.to_thread(
            self.store.request_follows, request.person_id, request.network
        )
        count = int(outcome.detail) if outcome.applied else 0
        if count:
            # Answer now; publishing thousands of requests takes longer than a page
            # wants to wait, and the outbox makes it safe to finish in the background.
            self._background(self.flush(outcome.scope))
        return CountReply(region=self.settings.region, count=count)

    # --- the outbox --------------------------------------------------------------------

    async def flush(self, scope: Scope | None, read: Outcome | None = None) -> int:
        """Publish the pending follow requests in ``scope`` (``None``: all of them).

        Flushes may overlap (an event's own, and the periodic drain): a request
        published twice is stored once (same ``Nats-Msg-Id``). Only the drain is
        kept to one at a time; it never holds up an event's flush. ``read``: the
        event's outcome, whose ``ready`` requests were read in its transaction.
        """
        if scope is not None and not scope:
            return 0
        if scope is None:
            async with self._drain_lock:
                await self.cleared()  # what was just published is not read again
                return await self._flush(None)
        return await self._flush(scope, read)

    async def cleared(self) -> None:
        """Wait until the outbox flags of everything published so far are cleared."""
        while self._clearing:
            await asyncio.gather(*self._clearing, return_exceptions=True)

    async def _flush(self, scope: Scope | None, read: Outcome | None = None) -> int:
        published = 0
        # Read in the event's transaction: no need to read again if it held them all.
        # The event's own read may be empty yet incomplete (on PostgreSQL a link returns
        # only what it made due; requests that waited before are read here).
        ready = list(read.ready) if read is not None else None
        complete = read is not None and read.complete
        from_event = read is not None
        while True:
            if ready is None:
                ready = await asyncio.to_thread(self.store.pending_requests, scope, OUTBOX_BATCH)
                complete = len(ready) < OUTBOX_BATCH
            # Rows another flush of this process is publishing, or clearing, are its
            # own: published twice, they would be in two messages (two Nats-Msg-Ids).
            ready = [r for r in ready if r.key not in self._in_flight]
            if ready:
                await self._publish(ready)
                published += len(ready)
            if complete or not (ready or from_event):
                return published
            await self.cleared()  # before reading the outbox again
            ready, from_event = None, False

    async def _publish(self, requests: Sequence[FollowToRequest]) -> None:
        """Publish follow requests several to a message, and clear their outbox flags.

        The requests go out ``follows_per_message`` to a ``follow.requested.<network>``
        message (:class:`FollowsRequested`): a newcomer awaited by thousands would
        otherwise wait for thousands of PubAcks. Every message is sent at once
        (nats-py ``publish_async``, its ``Nats-Msg-Id`` derived from the follow ids it
        carries, so a message published again is stored once; the senders' ledgers
        keep each follow id once whatever message brings it); the W3C trace context
        is in the headers, as FastStream's middleware would put it. When the PubAcks
        are in, the flags of every follow whose message was stored are cleared, in one
        statement; a missing or failed PubAck then raises, and its follows stay in the
        outbox, to be published again later. The flags are cleared in the background
        (:meth:`_clear`): this returns once the requests are stored.
        """
        messages = list(self._messages(requests))
        self._in_flight.update(r.key for r in requests)
        try:
            failures = await self._send([event for _, event in messages])
        except BaseException:
            self._in_flight.difference_update(r.key for r in requests)
            raise
        stored = [
            request
            for (chunk, _), failure in zip(messages, failures, strict=True)
            if failure is None
            for request in chunk
        ]
        self._in_flight.difference_update(
            r.key
            for (chunk, _), failure in zip(messages, failures, strict=True)
            if failure is not None
            for r in chunk
        )
        self._clear([r.key for r in stored])
        for network, count in Tally(r.network for r in stored).items():
            self.metrics.requests.labels(network).inc(count)
        for failure in failures:
            if failure is not None:
                raise failure

    async def _send(self, events: Sequence[FollowsRequested]) -> list[BaseException | None]:
        """Publish every message at once; each one's failure (``None``: stored)."""
        js = self._jetstream()
        with self._tracer.start_as_current_span(
            "publish follow requests",
            attributes={
                "messaging.batch.message_count": len(events),
                "passerelle.follow_requests": sum(len(e.follows) for e in events),
            },
        ):
            futures = []
            for event in events:
                headers = {"Nats-Msg-Id": event.dedupe_id(), "content-type": "application/json"}
                propagate.inject(headers)
                futures.append(
                    await js.publish_async(
                        event.subject,
                        event.model_dump_json().encode(),
                        stream=FOLLOW_REQUESTS.name,
                        headers=headers,
                    )
                )
            # Wait for every PubAck (up to a deadline), not for the first failure: the
            # messages that were stored must be cleared from the outbox even if some
            # other one was not.
            _, late = await asyncio.wait(futures, timeout=PUBLISH_ACK_SECONDS + len(events) / 100)
            for future in late:
                future.cancel()
            return [TimeoutError("no PubAck") if f in late else f.exception() for f in futures]

    def _clear(self, keys: list[tuple[int, int, int]]) -> None:
        """Clear these outbox flags in the background: the requests are in the stream
        already, and whoever waits for them need not wait for the bookkeeping. Until
        it is done, a flush that would read the outbox again waits (:meth:`cleared`);
        if it fails, the rows stay pending and are published again (each follow is
        recorded once by its sender)."""
        if not keys:
            return
        task = asyncio.create_task(asyncio.to_thread(self.store.mark_published, keys))
        self._clearing.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._clearing.discard(finished)
            self._in_flight.difference_update(keys)
            if not finished.cancelled() and finished.exception() is not None:
                self.log.warning(
                    "clearing the outbox failed", error=type(finished.exception()).__name__
                )

        task.add_done_callback(done)

    def _messages(
        self, requests: Sequence[FollowToRequest]
    ) -> Iterator[tuple[Sequence[FollowToRequest], FollowsRequested]]:
        """The messages carrying ``requests``: per network, ``follows_per_message`` each."""
        size = self.settings.follows_per_message
        for network in NETWORKS:
            mine = [r for r in requests if r.network == network]
            for first in range(0, len(mine), size):
                chunk = mine[first : first + size]
                yield chunk, self.follows_requested(network, chunk)

    def _jetstream(self) -> Any:
        """One JetStream context per NATS connection (it owns the PubAck inbox)."""
        connection = self.runtime.broker.connection
        if self._js is None or self._js_connection is not connection:
            self._js, self._js_connection = connection.jetstream(), connection
        return self._js

    def follows_requested(
        self, network: Network, requests: Sequence[FollowToRequest]
    ) -> FollowsRequested:
        """The ``follow.requested.<network>`` message for these outbox rows."""
        cls = BlueskyFollowsRequested if network == "bluesky" else MastodonFollowsRequested
        # Validated as one document (pydantic-core walks the list): half the cost of
        # building each FollowRequest in Python, for thousands of them per newcomer.
        return cls.model_validate(
            {
                "region": self.settings.region,
                "follows": [
                    {
                        "follow_id": r.follow_id,
                        "person_id": r.person_id,
                        "actor": r.actor,
                        "target": r.target,
                        "target_x_id": r.target_x_id,
                        "directions": r.directions,
                    }
                    for r in requests
                ],
            }
        )

    async def start_drainer(self) -> None:
        """Publish leftovers now and every ``outbox_interval_seconds`` (after a crash...);
        and keep the edges' target index up to date (``compact_interval_seconds``)."""
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain_forever(), name="matching-outbox")
        if self._compactor is None:
            self._compactor = asyncio.create_task(
                self._compact_forever(), name="matching-compaction"
            )
        if self._counter is None:
            self._counter = asyncio.create_task(self._count_forever(), name="matching-totals")

    async def stop_drainer(self) -> None:
        for task in (self._drainer, self._compactor, self._counter):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._drainer = self._compactor = self._counter = None

    async def count_totals(self) -> None:
        """Set the match and follow-request gauges from the database (every replica
        reports the same totals: aggregate them with ``max``, not ``sum``)."""
        totals = await asyncio.to_thread(self.store.totals)
        matches: dict[tuple[str, str], int] = {}
        states: dict[tuple[str, str], int] = {}
        for network, directions, state, n in totals:
            for direction in directions:
                matches[network, direction] = matches.get((network, direction), 0) + n
            states[network, state] = states.get((network, state), 0) + n
        for network in NETWORKS:
            for direction in ("following", "follower"):
                self.metrics.matches.labels(network, direction).set(
                    matches.get((network, direction), 0)
                )
            for state in get_args(MatchState):
                self.metrics.follow_requests.labels(network, state).set(
                    states.get((network, state), 0)
                )

    async def _count_forever(self) -> None:
        while True:
            try:
                await self.count_totals()
            except Exception as error:  # noqa: BLE001 - try again at the next tick
                self.log.warning("counting matches failed", error=type(error).__name__)
            await asyncio.sleep(self.settings.totals_interval_seconds)

    async def _compact_forever(self) -> None:
        """Edges loaded since the last tick join the target index (a newcomer's lookup
        scans those that have not: the fewer, the faster)."""
        while True:
            try:
                indexed = await asyncio.to_thread(self.store.compact_edges)
                if indexed:
                    self.log.info("edges indexed", edges=indexed)
            except Exception as error:  # noqa: BLE001 - try again at the next tick
                self.log.warning("edge compaction failed", error=type(error).__name__)
            await asyncio.sleep(self.settings.compact_interval_seconds)

    async def close(self) -> None:
        """Stop the drain and give the database connection back (at shutdown)."""
        await self.stop_drainer()
        await self.cleared()
        await asyncio.to_thread(self.store.close)

    async def _drain_forever(self) -> None:
        while True:
            try:
                published = await self.flush(None)
                if published:
                    self.log.info("outbox drained", published=published)
            except Exception as error:  # noqa: BLE001 - try again at the next tick
                self.log.warning("outbox drain failed", error=type(error).__name__)
            await asyncio.sleep(self.settings.outbox_interval_seconds)

    def _background(self, work: Coroutine[Any, Any, int]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)

        def done(finished: asyncio.Task[int]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                # The outbox keeps the rows; the periodic drain publishes them.
                self.log.warning("flush failed", error=type(finished.exception()).__name__)

        task.add_done_callback(done)


def _check_digest(expected: str, *paths: Path) -> None:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    if digest.hexdigest() != expected:
        raise PayloadMismatchError("archive payloads do not match their sha256")


def decode_payloads(following: Path, followers: Path) -> Iterator[EdgeBatch]:
    """The payloads as batches of ascending ids, one direction after the other."""
    for direction, path in ((FOLLOWING, following), (FOLLOWER, followers)):
        with path.open("rb") as handle:
            for ids in iter_payload_arrays(handle, chunk_ids=DECODE_CHUNK_IDS):
                yield direction, ids
