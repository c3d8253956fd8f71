"""The broker on a real nats-server: streams, dedupe, redelivery, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from faststream.exceptions import NackMessage
from faststream.nats import NatsBroker, NatsRouter
from opentelemetry.sdk.trace import TracerProvider

from passerelle_contracts import FollowResult, UserErased, follow_id
from passerelle_contracts.streams import (
    DEAD_LETTERS,
    DELIVERY_ADVISORIES,
    ERASURES,
    FOLLOW_RESULTS,
    STREAMS,
    Consumer,
)
from passerelle_platform.broker import (
    PagePublisher,
    ensure_streams,
    jetstream_subscriber,
    make_broker,
    publish_event,
    watch_dead_letters,
    weighed_groups,
)
from passerelle_platform.metrics import ServiceMetrics
from tests.support.nats import NatsServer


@pytest.fixture
async def broker(nats_server: NatsServer) -> AsyncIterator[NatsBroker]:
    b = make_broker(nats_server.url, "test", TracerProvider(), ServiceMetrics("test", "0", "fr"))
    await b.connect()
    await ensure_streams(b)
    yield b
    await b.stop()


async def test_streams_are_created_and_updated_idempotently(broker: NatsBroker) -> None:
    js = broker.connection.jetstream()
    await ensure_streams(broker)
    for stream in STREAMS:
        info = await js.stream_info(stream.name)
        assert info.config.subjects == list(stream.subjects)
        assert info.config.duplicate_window == stream.duplicate_window_seconds
    # Someone changed a stream by hand: the declared configuration wins again.
    info = await js.stream_info(ERASURES.name)
    info.config.max_age = 2 * 24 * 3600.0
    await js.update_stream(info.config)
    await ensure_streams(broker)
    assert (await js.stream_info(ERASURES.name)).config.max_age == ERASURES.max_age_seconds


async def test_a_replayed_event_is_stored_once(broker: NatsBroker) -> None:
    event = UserErased(region="fr", person_id="p1")
    assert await publish_event(broker, event) is True
    assert await publish_event(broker, event) is False
    info = await broker.connection.jetstream().stream_info(ERASURES.name)
    assert info.state.messages == 1


async def test_a_page_is_published_once_each_with_its_trace(broker: NatsBroker) -> None:
    results = [
        FollowResult(
            region="fr",
            follow_id=follow_id("p1", "bluesky", f"did:plc:t{i}"),
            person_id="p1",
            network="bluesky",
            target=f"did:plc:t{i}",
            outcome="followed",
        )
        for i in range(3)
    ]
    publish_page = PagePublisher(broker, TracerProvider().get_tracer("test"), concurrency=2)
    assert await publish_page(results) == [True, True, True]
    # Published again (a page whose acks were lost): acked, stored once.
    assert await publish_page([results[0], *results]) == [True] * 4
    assert await publish_page([]) == []
    js = broker.connection.jetstream()
    assert (await js.stream_info(FOLLOW_RESULTS.name)).state.messages == 3
    stored = await js.get_last_msg(FOLLOW_RESULTS.name, FollowResult.subject)
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == results[2].dedupe_id()
    assert stored.headers["traceparent"].startswith("00-")
    assert FollowResult.model_validate_json(stored.data) == results[2]


async def test_nack_redelivers_then_poison_goes_to_dead_letters(nats_server: NatsServer) -> None:
    consumer = Consumer("test-erasures", ERASURES, "user.erased", "test", max_deliver=3)
    metrics = ServiceMetrics("test", "0", "fr")
    broker = make_broker(nats_server.url, "test", TracerProvider(), metrics)
    router = NatsRouter()
    deliveries: list[str] = []
    handled = asyncio.Event()

    @jetstream_subscriber(router, consumer)
    async def handler(event: UserErased) -> None:
        deliveries.append(event.person_id)
        if event.person_id == "poison":
            raise RuntimeError("cannot handle this one")
        if deliveries.count(event.person_id) < 2:
            raise NackMessage(delay=0.2)  # transient: try again shortly
        handled.set()

    broker.include_router(router)
    await broker.connect()
    await ensure_streams(broker)
    await broker.start()
    stop = await watch_dead_letters(broker, (consumer,), metrics)
    try:
        await publish_event(broker, UserErased(region="fr", person_id="transient"))
        await publish_event(broker, UserErased(region="fr", person_id="poison"))
        await asyncio.wait_for(handled.wait(), 10)
        js = broker.connection.jetstream()
        for _ in range(100):
            if (await js.stream_info(DEAD_LETTERS.name)).state.messages:
                break
            await asyncio.sleep(0.1)
        assert deliveries.count("transient") == 2
        assert deliveries.count("poison") == 3
        parked = await js.get_last_msg(DEAD_LETTERS.name, "deadletter.ERASURES.test-erasures")
        assert UserErased.model_validate_json(parked.data).person_id == "poison"
        assert parked.headers is not None
        assert parked.headers["Passerelle-Original-Subject"] == "user.erased"
        assert parked.headers["Passerelle-Deliveries"] == "3"
        sample = metrics.registry.get_sample_value(
            "passerelle_dead_letters_total", {"stream": "ERASURES", "consumer": "test-erasures"}
        )
        assert sample == 1
    finally:
        await stop()
        await broker.stop()


async def test_a_message_exhausted_while_no_watcher_runs_is_parked_later(
    nats_server: NatsServer,
) -> None:
    """The service was away when JetStream gave up: the stored advisory still parks it."""
    consumer = Consumer(
        "test-away",
        ERASURES,
        "user.erased",
        "test",
        ack_wait_seconds=0.5,
        max_deliver=2,
        backoff_seconds=(),
    )
    metrics = ServiceMetrics("test", "0", "fr")
    broker = make_broker(nats_server.url, "test", TracerProvider(), metrics)
    router = NatsRouter()
    deliveries: list[str] = []

    @jetstream_subscriber(router, consumer)
    async def handler(event: UserErased) -> None:
        deliveries.append(event.person_id)
        raise RuntimeError("cannot handle this one")

    broker.include_router(router)
    await broker.connect()
    await ensure_streams(broker)
    await broker.start()
    js = broker.connection.jetstream()
    stop = None
    try:
        await publish_event(broker, UserErased(region="fr", person_id="poison"))
        # No watcher yet: JetStream's advisory is kept in its stream, nothing is parked.
        for _ in range(200):
            if (await js.stream_info(DELIVERY_ADVISORIES.name)).state.messages:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(DELIVERY_ADVISORIES.name)).state.messages == 1
        assert (await js.stream_info(DEAD_LETTERS.name)).state.messages == 0
        assert deliveries == ["poison", "poison"]

        stop = await watch_dead_letters(broker, (consumer,), metrics, idle_seconds=0.2)
        for _ in range(200):
            if (await js.stream_info(DEAD_LETTERS.name)).state.messages:
                break
            await asyncio.sleep(0.05)
        parked = await js.get_last_msg(DEAD_LETTERS.name, "deadletter.ERASURES.test-away")
        assert UserErased.model_validate_json(parked.data).person_id == "poison"
        # The advisory was consumed (work queue), so a restart does not park it twice.
        for _ in range(100):
            if not (await js.stream_info(DELIVERY_ADVISORIES.name)).state.messages:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(DELIVERY_ADVISORIES.name)).state.messages == 0
        assert (await js.stream_info(DEAD_LETTERS.name)).state.messages == 1
    finally:
        if stop is not None:
            await stop()
        await broker.stop()


def test_weighed_groups_keep_order_and_bound_each_group() -> None:
    sizes = [3, 1, 1, 5, 2, 2, 9, 1]
    groups = weighed_groups(sizes, 4, lambda n: n)
    assert [n for group in groups for n in group] == sizes
    assert groups == [[3, 1], [1], [5], [2, 2], [9], [1]]
    assert weighed_groups([], 4, lambda n: n) == []
