"""The NATS broker: FastStream + JetStream, wired the same way in every service.

- Streams declared in :mod:`passerelle_contracts.streams` are created or updated
  idempotently when the connection comes up (subscribers never declare them).
- Durable pull consumers with explicit acks come from the contracts too.
- A message that exhausts its deliveries is copied to the dead-letter stream.
- Events are published with their ``Nats-Msg-Id`` so a replay is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsRouter, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js.api import AckPolicy as NatsAckPolicy
from nats.js.api import ConsumerConfig as NatsConsumerConfig
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from passerelle_contracts import Event, Stream
from passerelle_contracts.streams import (
    DELIVERY_ADVISORIES,
    STREAMS,
    Consumer,
    dead_letter_subject,
    max_deliveries_subject,
)
from passerelle_platform.logging import get_logger
from passerelle_platform.metrics import ServiceMetrics

log = get_logger(__name__)

_RETENTION = {
    "limits": RetentionPolicy.LIMITS,
    "workqueue": RetentionPolicy.WORK_QUEUE,
    "interest": RetentionPolicy.INTEREST,
}


def make_broker(
    url: str,
    service: str,
    tracer_provider: TracerProvider,
    metrics: ServiceMetrics,
) -> NatsBroker:
    """A broker that reconnects forever and traces and counts every message."""

    async def on_disconnect() -> None:
        metrics.nats_connected.set(0)
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        metrics.nats_connected.set(1)
        log.info("nats reconnected")

    async def on_error(error: Exception) -> None:
        log.warning("nats error", error=type(error).__name__)

    return NatsBroker(
        url,
        name=f"passerelle-{service}",
        # -1: never give up (a finite count ends in a busy loop, see notes).
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=2,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        error_cb=on_error,
        middlewares=[
            NatsTelemetryMiddleware(tracer_provider=tracer_provider),
            NatsPrometheusMiddleware(registry=metrics.registry, app_name=service),
        ],
        logger=None,
    )


def stream_config(stream: Stream, replicas: int | None = None) -> StreamConfig:
    """The nats-py configuration for a declared stream (``replicas`` overrides its own)."""
    return StreamConfig(
        name=stream.name,
        description=stream.description,
        subjects=list(stream.subjects),
        retention=_RETENTION[stream.retention],
        max_age=float(stream.max_age_seconds),
        max_bytes=stream.max_bytes,
        max_msg_size=stream.max_msg_size,
        storage=StorageType.FILE,
        num_replicas=replicas or stream.replicas,
        duplicate_window=float(stream.duplicate_window_seconds),
    )


async def ensure_streams(
    broker: NatsBroker, streams: tuple[Stream, ...] = STREAMS, *, replicas: int | None = None
) -> None:
    """Create missing streams and bring existing ones to the declared configuration."""
    js = broker.connection.jetstream()
    for stream in streams:
        config = stream_config(stream, replicas)
        try:
            await js.stream_info(stream.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Another service created it between our check and add: update instead.
                await js.update_stream(config)
        else:
            await js.update_stream(config)


HandlerT = TypeVar("HandlerT", bound=Callable[..., Awaitable[Any]])


def jetstream_subscriber(router: NatsRouter, consumer: Consumer) -> Callable[[HandlerT], HandlerT]:
    """The FastStream subscriber decorator for a declared durable pull consumer.

    A handler that raises is nacked and redelivered (``NackMessage(delay=…)`` to
    wait); after ``max_deliver`` deliveries the message goes to the dead letters.
    """
    subscriber = router.subscriber(
        consumer.filter_subject,
        stream=JStream(consumer.stream.name, declare=False),
        durable=consumer.durable,
        pull_sub=PullSub(batch_size=consumer.batch_size, timeout=1.0),
        config=ConsumerConfig(
            ack_wait=consumer.ack_wait_seconds,
            max_deliver=consumer.max_deliver,
            max_ack_pending=consumer.max_ack_pending,
        ),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )

    def register(handler: HandlerT) -> HandlerT:
        subscriber(handler)
        return handler

    return register


BatchHandler = Callable[[list[Any]], Awaitable[None]]
ItemT = TypeVar("ItemT")


def weighed_groups(
    items: Sequence[ItemT], most: int, weight: Callable[[ItemT], int]
) -> list[list[ItemT]]:
    """``items`` in order, cut into groups weighing at most ``most`` each (an item
    heavier than that is a group of its own): e.g. fetched messages of several
    follows each, recorded ``most`` follows per transaction at most."""
    groups: list[list[ItemT]] = []
    current: list[ItemT] = []
    load = 0
    for item in items:
        w = weight(item)
        if current and load + w > most:
            groups.append(current)
            current, load = [], 0
        current.append(item)
        load += w
    if current:
        groups.append(current)
    return groups


class BatchConsumer:
    """A declared durable consumer read in batches by a plain nats-py fetch loop.

    For consumers where per-message handling costs more than the work (follow
    requests by the million): ``handle`` gets the raw messages of one fetch and acks
    or nacks each itself; whatever it leaves unacked is redelivered after
    ``ack_wait``. Not FastStream's ``PullSub(batch=True)``: on a loaded machine it
    was seen to leave fetched messages unhandled until their ack wait ran out.
    """

    def __init__(
        self,
        consumer: Consumer,
        handle: BatchHandler,
        *,
        batch: int,
        fetch_timeout: float = 1.0,
        retry_seconds: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.handle = handle
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.retry_seconds = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self._subscription: Any = None

    async def start(self, broker: NatsBroker) -> None:
        """Bind (or create) the durable consumer and start fetching."""
        c = self.consumer
        subscription = await broker.connection.jetstream().pull_subscribe(
            c.filter_subject,
            durable=c.durable,
            stream=c.stream.name,
            config=NatsConsumerConfig(
                durable_name=c.durable,
                ack_policy=NatsAckPolicy.EXPLICIT,
                ack_wait=c.ack_wait_seconds,
                max_deliver=c.max_deliver,
                max_ack_pending=c.max_ack_pending,
                filter_subject=c.filter_subject,
            ),
        )
        self._subscription = subscription
        self._task = asyncio.create_task(self._run(subscription), name=f"pull-{c.durable}")

    async def stop(self) -> None:
        """Stop fetching; unacked messages go to the next process after ``ack_wait``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._subscription is not None:
            # Left open, the connection's drain at shutdown waits on it forever.
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _run(self, subscription: Any) -> None:
        while True:
            try:
                messages = await subscription.fetch(self.batch, timeout=self.fetch_timeout)
            except TimeoutError:
                continue  # nothing waiting
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - NATS away or restarting: try again
                log.warning(
                    "fetch failed", consumer=self.consumer.durable, error=type(error).__name__
                )
                await asyncio.sleep(self.retry_seconds)
                continue
            try:
                await self.handle(messages)
            except asyncio.CancelledError:
                raise
            except Exception:  # unacked: redelivered after ack_wait
                log.exception("batch not handled", consumer=self.consumer.durable)


async def publish_event(
    broker: NatsBroker, event: Event, *, attempts: int = 5, ack_timeout: float = 5.0
) -> bool:
    """Publish ``event`` to its stream, once: returns ``False`` if it was a duplicate.

    A publish during a NATS outage times out; it is retried with the same
    ``Nats-Msg-Id``, so a retry that did reach the server is not stored twice.
    """
    stream = _stream_name(event)
    delay = 0.25
    for attempt in range(1, attempts + 1):
        try:
            ack = await broker.publish(
                event,
                event.subject,
                stream=stream,
                headers={"Nats-Msg-Id": event.dedupe_id()},
                timeout=ack_timeout,
            )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as error:
            if attempt == attempts:
                raise
            log.warning("publish retry", subject=event.subject, error=type(error).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        else:
            return not bool(getattr(ack, "duplicate", False))
    return False  # pragma: no cover - the loop returns or raises


class PagePublisher:
    """Publishes a page of events pipelined: JetStream's asynchronous publish, the PubAcks
    awaited together, under one span whose trace context every message carries.

    For events that go out by the thousand (follow results): ``publish_event`` per
    event, with its own round trip, span and middleware pass, costs more than the work.
    Each event keeps its ``Nats-Msg-Id``, so one published again (after a crash, or a
    PubAck that did not come) is stored once.
    """

    def __init__(
        self,
        broker: NatsBroker,
        tracer: trace.Tracer,
        *,
        concurrency: int,
        ack_timeout: float = 10.0,
    ) -> None:
        self.broker = broker
        self.tracer = tracer
        self.concurrency = concurrency
        self.ack_timeout = ack_timeout
        self._js: Any = None

    async def __call__(self, events: Sequence[Event]) -> list[bool]:
        """Per event, whether its stream acked it (a duplicate counts as acked). What is
        not acked (NATS away, no PubAck within ``ack_timeout``) is to be published again."""
        if not events:
            return []
        if self._js is None:
            self._js = self.broker.connection.jetstream(publish_async_max_pending=self.concurrency)
        futures: list[asyncio.Future[Any]] = []
        subject = events[0].subject
        with self.tracer.start_as_current_span(
            f"{subject} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.batch.message_count": len(events),
            },
        ):
            carrier = {"content-type": "application/json"}  # as FastStream's publish sets it
            propagate.inject(carrier)
            streams: dict[str, str] = {}  # the lookup costs more than the publish
            for event in events:
                stream = streams.get(event.subject) or streams.setdefault(
                    event.subject, _stream_name(event)
                )
                try:
                    future = await self._js.publish_async(
                        event.subject,
                        event.model_dump_json().encode(),
                        stream=stream,
                        headers={**carrier, "Nats-Msg-Id": event.dedupe_id()},
                        wait_stall=self.ack_timeout,
                    )
                except Exception as error:  # noqa: BLE001 - NATS away: the rest go out next time
                    log.warning("events not published yet", error=type(error).__name__)
                    break
                futures.append(future)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*futures, return_exceptions=True), timeout=self.ack_timeout
                )
        acked = [f.done() and not f.cancelled() and f.exception() is None for f in futures]
        return acked + [False] * (len(events) - len(futures))


def _stream_name(event: Event) -> str:
    from passerelle_contracts import stream_for_subject

    return stream_for_subject(event.subject).name


async def watch_dead_letters(
    broker: NatsBroker,
    consumers: tuple[Consumer, ...],
    metrics: ServiceMetrics,
    *,
    idle_seconds: float = 5.0,
) -> Callable[[], Awaitable[None]]:
    """Copy messages that hit ``max_deliver`` on our consumers to the dead-letter stream.

    JetStream announces them with a MAX_DELIVERIES advisory, which the
    ``DELIVERY_ADVISORIES`` stream keeps; a durable consumer per watched consumer
    takes them from there, so an advisory published while this service was down
    or disconnected is handled when it is back (a plain subscription would miss
    it, and the message would stay in its stream forever). The original is
    fetched by sequence and republished with its subject and delivery count in
    headers (its ``Nats-Msg-Id`` makes a repeat a no-op); work-queue originals
    are then deleted so the queue moves on. Returns a function that stops watching.
    """
    js = broker.connection.jetstream()
    by_key = {(c.stream.name, c.durable): c for c in consumers}

    async def park(advisory: dict[str, Any]) -> None:
        consumer = by_key[(advisory["stream"], advisory["consumer"])]
        seq = int(advisory["stream_seq"])
        try:
            original = await js.get_msg(consumer.stream.name, seq)
        except nats.js.errors.NotFoundError:
            return  # already parked and deleted by an earlier attempt
        headers = {
            "Passerelle-Original-Subject": original.subject,
            "Passerelle-Stream-Seq": str(seq),
            "Passerelle-Deliveries": str(advisory["deliveries"]),
            "Nats-Msg-Id": f"dlq:{consumer.durable}:{seq}",
        }
        await js.publish(
            dead_letter_subject(consumer.stream.name, consumer.durable),
            original.data or b"",
            headers=headers,
        )
        if consumer.stream.retention == "workqueue":
            await js.delete_msg(consumer.stream.name, seq)
        metrics.dead_letters.labels(consumer.stream.name, consumer.durable).inc()
        metrics.messages_handled.labels(consumer.durable, "dead_letter").inc()
        log.error(
            "message dead-lettered",
            stream=consumer.stream.name,
            consumer=consumer.durable,
            stream_seq=seq,
            deliveries=advisory["deliveries"],
        )

    def handler(consumer: Consumer) -> BatchHandler:
        async def handle(batch: list[Any]) -> None:
            for msg in batch:
                try:
                    await park(json.loads(msg.data))
                except Exception:  # retried later: the advisory is not acked
                    log.exception("dead-letter forwarding failed", consumer=consumer.durable)
                    await msg.nak(delay=idle_seconds)
                else:
                    await msg.ack()

        return handle

    watchers = [
        BatchConsumer(
            Consumer(
                f"dead-letters-{c.durable}",
                DELIVERY_ADVISORIES,
                max_deliveries_subject(c.stream.name, c.durable),
                c.service,
                max_deliver=-1,  # an advisory is retried until it is parked
            ),
            handler(c),
            batch=16,
            fetch_timeout=idle_seconds,
            retry_seconds=idle_seconds,
        )
        for c in consumers
    ]
    for watcher in watchers:
        await watcher.start(broker)

    async def stop() -> None:
        for watcher in watchers:
            await watcher.stop()

    return stop


ReplyT = TypeVar("ReplyT", bound=BaseModel)


class ServiceUnavailableError(Exception):
    """Nobody answered a request in time (the service is down or overloaded)."""


async def ask(
    broker: NatsBroker,
    request: BaseModel,
    subject: str,
    reply_type: type[ReplyT],
    *,
    wait_seconds: float = 5.0,
) -> ReplyT:
    """Send a request/reply question and parse the answer as ``reply_type``."""
    try:
        response = await broker.request(request, subject, timeout=wait_seconds)
    except (nats.errors.NoRespondersError, TimeoutError, nats.errors.Error) as error:
        raise ServiceUnavailableError(f"{subject}: {type(error).__name__}") from error
    return reply_type.model_validate_json(response.body)
