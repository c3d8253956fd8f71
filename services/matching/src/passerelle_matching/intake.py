"""Taking ``archive.imported`` in batches: one fetch, one transaction, then the acks.

An archive is a few round trips to PostgreSQL and one commit; loaded one per
transaction, a bulk of them (a region restored, a launch day) costs more in
round trips than in edges. The intake fetches up to ``archive_batch`` messages
(the platform's ``BatchConsumer``, as the senders take follow requests), gives
them to :meth:`MatchingService.on_archives` — which loads them in one
transaction and publishes their follow requests — and acks each message whose
archive was loaded, found stale or refused (erased). A message that is not a
valid event, or whose payloads could not be fetched or checked, or whose archive
failed alone, is nacked by itself: redelivered, and dead-lettered after
``max_deliver`` (the runtime watches the advisories). If publishing fails after
the commit, the whole batch is nacked (reloading an import is idempotent, and
the follow requests keep their ``Nats-Msg-Id``).
"""

from __future__ import annotations

from collections.abc import Sequence

from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from opentelemetry import propagate, trace
from pydantic import ValidationError

from passerelle_contracts import ArchiveImported
from passerelle_contracts.streams import MATCHING_ARCHIVES, Consumer
from passerelle_matching.service import MatchingService
from passerelle_platform.broker import BatchConsumer

RETRY_DELAY_SECONDS = 5.0
"""How long a failed batch waits before it is redelivered."""


class ArchiveIntake:
    """The ``matching-archives`` consumer: fetch a batch, load it, ack it."""

    def __init__(
        self,
        service: MatchingService,
        *,
        batch: int,
        consumer: Consumer = MATCHING_ARCHIVES,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.service = service
        self.consumer = consumer
        self._fetcher = BatchConsumer(
            consumer, self.handle, batch=batch, fetch_timeout=fetch_timeout
        )

    async def start(self, broker: NatsBroker) -> None:
        """Bind (or create) the durable consumer and start pulling."""
        await self._fetcher.start(broker)

    async def stop(self) -> None:
        """Stop pulling; unacked messages are redelivered to the next process."""
        await self._fetcher.stop()

    async def handle(self, messages: Sequence[Msg]) -> None:
        """One fetched batch: load the valid archives together, ack or nack each."""
        handled = self.service.runtime.metrics.messages_handled
        durable = self.consumer.durable
        valid: list[tuple[Msg, ArchiveImported]] = []
        tracer = self.service.runtime.tracer_provider.get_tracer("passerelle_matching")
        # Each archive keeps its upload's trace (one step, one trace); the batch's
        # shared work hangs under the archive's span when it is alone (the usual case),
        # else under a batch span linked to every archive's.
        spans: list[trace.Span] = []
        for message in messages:
            try:
                valid.append((message, ArchiveImported.model_validate_json(message.data)))
            except ValidationError:
                self.service.log.warning("invalid archive.imported", subject=message.subject)
                handled.labels(durable, "nack").inc()
                await message.nak()
                continue
            spans.append(
                tracer.start_span(
                    f"{message.subject} process",
                    context=propagate.extract(dict(message.headers or {})),
                    kind=trace.SpanKind.CONSUMER,
                    attributes={"messaging.system": "nats", "messaging.operation": "process"},
                )
            )
        if not valid:
            return
        if len(spans) == 1:
            batch = trace.set_span_in_context(spans[0])
            links: list[trace.Link] = []
        else:
            batch, links = None, [trace.Link(s.get_span_context()) for s in spans]
        try:
            with tracer.start_as_current_span(
                "archive intake",
                context=batch,
                links=links,
                attributes={"messaging.batch.message_count": len(valid)},
            ):
                try:
                    results = await self.service.on_archives([event for _, event in valid])
                except Exception as error:
                    self.service.log.exception("archive batch not handled; it comes back later")
                    for message, _ in valid:
                        await message.nak(delay=RETRY_DELAY_SECONDS)
                    handled.labels(durable, "nack").inc(len(valid))
                    for span in spans:
                        span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
                    return
            for (message, _), result, span in zip(valid, results, spans, strict=True):
                if isinstance(result, BaseException):
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(result).__name__))
                    await message.nak(delay=RETRY_DELAY_SECONDS)
                    handled.labels(durable, "nack").inc()
                else:
                    await message.ack()
                    handled.labels(durable, "ack").inc()
        finally:
            for span in spans:
                span.end()
