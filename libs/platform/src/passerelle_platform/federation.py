"""Federation on NATS itself: a region's end of the shared directory, and the hub's.

Each region runs its own NATS with its own JetStream domain (the region tag) and
joins the hub (domain ``hub``) as a leaf node, through its FEDERATION account
only (``deploy/nats/``). Three streams carry the directory
(:mod:`passerelle_contracts.directory`):

- ``DIRECTORY_<REGION>`` (region): what :meth:`FederationLink.publish` writes;
- ``DIRECTORY`` (hub): *sources* every member's ``DIRECTORY_<REGION>`` across
  domains (``external.api = $JS.<region>.API``); :func:`ensure_hub` keeps its
  source list equal to the member list;
- ``DIRECTORY_GLOBAL`` (region): a *mirror* of the hub's ``DIRECTORY``
  (``external.api = $JS.hub.API``), read by :class:`FederationLink`'s durable
  consumer, so a region cut from the hub keeps what it knows and catches up
  when the link returns (JetStream resumes sourcing and mirroring by sequence).

Erasure reaches the disk: a newer message on a person's subject (their
tombstone, or a newer entry) makes every holder *securely erase* the older ones
(``STREAM.MSG.DELETE`` overwrites the bytes): the region in its own stream when
it publishes, each region in its mirror as it consumes, the hub in ``DIRECTORY``
(:func:`run_hub`). A per-subject limit would drop them from the index only.

Every message read from the mirror is checked before it is handed on: its
subject, its payload and the ``Nats-Stream-Source`` header that the *hub* sets
when sourcing (naming the regional stream it came from) must agree, so a
region's server cannot pass off entries or tombstones as another region's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ExternalStream,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamSource,
)

from passerelle_contracts.directory import (
    DIRECTORY_MIRROR,
    GLOBAL_DIRECTORY,
    HUB_DOMAIN,
    DirectoryDecodeError,
    DirectoryEntry,
    DirectoryMessage,
    DirectoryTombstone,
    decode_directory_message,
    directory_subject,
    encode_directory_message,
    region_directory_subjects,
    regional_directory_stream,
)
from passerelle_contracts.streams import Stream
from passerelle_platform.logging import get_logger

log = get_logger(__name__)

#: The header the hub sets on every sourced message: "<source stream>:<hash> <seq> ...".
SOURCE_HEADER = "Nats-Stream-Source"


def source_deliver_prefix(region: str) -> str:
    """Where the region's server delivers its stream to the hub's source (hub permissions)."""
    return f"federation.in.{region}"


def mirror_deliver_prefix(region: str) -> str:
    """Where the hub delivers ``DIRECTORY`` to the region's mirror (hub permissions)."""
    return f"federation.out.{region}"


# --- stream configurations ---------------------------------------------------------------


def _config(stream: Stream, **extra: Any) -> StreamConfig:
    return StreamConfig(
        name=stream.name,
        description=stream.description,
        subjects=list(stream.subjects) or None,
        retention=RetentionPolicy.LIMITS,
        max_age=float(stream.max_age_seconds),
        max_msg_size=stream.max_msg_size,
        storage=StorageType.FILE,
        num_replicas=stream.replicas,
        duplicate_window=float(stream.duplicate_window_seconds),
        **extra,
    )


def regional_stream_config(region: str) -> StreamConfig:
    """``DIRECTORY_<REGION>`` in the region's domain."""
    return _config(regional_directory_stream(region))


def hub_stream_config(regions: Iterable[str]) -> StreamConfig:
    """``DIRECTORY`` in the hub's domain, sourcing each member region's stream."""
    sources = [
        StreamSource(
            name=regional_directory_stream(region).name,
            filter_subject=region_directory_subjects(region),
            external=ExternalStream(api=f"$JS.{region}.API", deliver=source_deliver_prefix(region)),
        )
        for region in sorted(set(regions))
    ]
    return _config(GLOBAL_DIRECTORY, sources=sources)


def mirror_stream_config(region: str, hub_domain: str = HUB_DOMAIN) -> StreamConfig:
    """``DIRECTORY_GLOBAL`` in the region's domain, mirroring the hub's ``DIRECTORY``."""
    return _config(
        DIRECTORY_MIRROR,
        mirror=StreamSource(
            name=GLOBAL_DIRECTORY.name,
            external=ExternalStream(
                api=f"$JS.{hub_domain}.API", deliver=mirror_deliver_prefix(region)
            ),
        ),
    )


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or bring an existing one to ``config``."""
    assert config.name is not None
    try:
        await js.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await js.update_stream(config)
    else:
        await js.update_stream(config)


# --- reading the directory ---------------------------------------------------------------


class ForgedMessageError(ValueError):
    """A directory message whose subject, payload and provenance disagree."""


class ConcurrentPublishError(RuntimeError):
    """Someone else published on the person's subject since it was read."""


#: JetStream's error code for a failed ``Nats-Expected-Last-Subject-Sequence``.
WRONG_LAST_SEQUENCE = 10071


def parse_directory_message(
    subject: str, data: bytes, headers: dict[str, str] | None, *, via_hub: bool = True
) -> DirectoryMessage:
    """Validate one stored directory message; raise :class:`ForgedMessageError` if it lies.

    ``via_hub``: the message was sourced by the hub, which names the regional
    stream it took it from in ``Nats-Stream-Source``; that stream must be the
    region's own.
    """
    tokens = subject.split(".")
    if len(tokens) != 3 or tokens[0] != "directory":
        raise ForgedMessageError(f"not a directory subject: {subject!r}")
    region, key = tokens[1], tokens[2]
    try:
        message = decode_directory_message(region, key, data)
    except DirectoryDecodeError as error:
        raise ForgedMessageError(f"{subject}: {error}") from error
    if via_hub:
        source = (headers or {}).get(SOURCE_HEADER, "")
        stream = source.split(" ", 1)[0].split(":", 1)[0]
        if stream != regional_directory_stream(region).name:
            raise ForgedMessageError(f"{subject}: sourced from {stream or 'nowhere'}")
    return message


async def erase_superseded(js: JetStreamContext, stream: str, subject: str, newest: int) -> int:
    """Securely erase the messages on ``subject`` stored before sequence ``newest``.

    ``STREAM.MSG.DELETE`` without ``no_erase`` overwrites the message on disk.
    Returns how many were erased.
    """
    erased = 0
    seq = 1
    while seq < newest:
        try:
            found = await js.get_msg(stream, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            break
        if found.seq is None or found.seq >= newest:
            break
        with contextlib.suppress(nats.js.errors.NotFoundError):
            if await js.delete_msg(stream, found.seq):
                erased += 1
        seq = found.seq + 1
    return erased


# --- a region's end -----------------------------------------------------------------------

Handler = Callable[[DirectoryMessage], Awaitable[None]]


@dataclass
class LinkCounters:
    """What a link did, for metrics and tests."""

    published: int = 0
    received: int = 0
    skipped_own: int = 0
    rejected: int = 0
    failed: int = 0
    erased: int = 0
    rejected_reasons: list[str] = field(default_factory=list)


class FederationLink:
    """A region's connection to the federated directory (its FEDERATION account).

    :meth:`publish` writes the region's entries and tombstones; a durable pull
    consumer on the mirror hands every *other* region's verified message to
    ``handler``, in order. A handler that raises is retried (the message and
    those after it are redelivered after ``retry_seconds``): a tombstone is
    never dropped. Forged messages are logged, counted and skipped. Without a
    handler the link only publishes (leaving, tools).
    """

    def __init__(
        self,
        url: str,
        region: str,
        handler: Handler | None,
        *,
        durable: str = "matching-directory",
        name: str = "passerelle-federation",
        batch: int = 128,
        retry_seconds: float = 2.0,
        hub_domain: str = HUB_DOMAIN,
    ) -> None:
        self.region = region
        self.handler = handler
        self.durable = durable
        self.batch = batch
        self.retry_seconds = retry_seconds
        self.counters = LinkCounters()
        self.outbox = regional_directory_stream(region).name
        self.mirror = DIRECTORY_MIRROR.name
        self._url = url
        self._name = name
        self._hub_domain = hub_domain
        self._nc: NatsClient | None = None
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def ready(self) -> bool:
        """Connected, streams in place, consuming."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Wait until the link is connected and its streams exist."""
        await self._ready.wait()

    async def start(self) -> None:
        """Connect (retrying in the background) and start consuming."""
        self._task = asyncio.create_task(self._run(), name=f"federation-{self.region}")

    async def stop(self) -> None:
        """Stop consuming and close the connection."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._nc.close()

    async def publish(
        self,
        message: DirectoryMessage,
        *,
        expected_last_seq: int | None = None,
        attempts: int = 5,
    ) -> bool:
        """Store ``message`` in the region's directory stream; ``False`` if a duplicate.

        ``expected_last_seq``: the stream sequence of the person's last message as
        the caller read it (0: none); if another writer published since, nothing is
        stored and :class:`ConcurrentPublishError` says so (read again, decide again).
        Older messages on the subject are then erased from the stream, so a
        tombstone published while the hub is away means the entry never leaves.
        """
        if message.region != self.region:
            raise ValueError(f"region {self.region} cannot publish for {message.region}")
        await self.wait_ready()
        assert self._nc is not None
        js = self._nc.jetstream()
        subject = message.directory_subject()
        # Every header crosses the hub with each copy: a conditional publication
        # needs no Nats-Msg-Id (a retried one that was stored fails the condition).
        headers = (
            {"Nats-Expected-Last-Subject-Sequence": str(expected_last_seq)}
            if expected_last_seq is not None
            else {"Nats-Msg-Id": message.dedupe_id()}
        )
        payload = encode_directory_message(message)
        delay = 0.25
        for attempt in range(1, attempts + 1):
            try:
                ack = await js.publish(
                    subject, payload, stream=self.outbox, headers=headers, timeout=5.0
                )
            except nats.js.errors.APIError as error:
                if error.err_code == WRONG_LAST_SEQUENCE:
                    raise ConcurrentPublishError(subject) from error
                if attempt == attempts:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as error:
                if attempt == attempts:
                    raise
                log.warning("directory publish retry", error=type(error).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.counters.published += 1
            self.counters.erased += await erase_superseded(js, self.outbox, subject, ack.seq)
            return not ack.duplicate
        return False  # pragma: no cover - the loop returns or raises

    async def last_published(self, region: str, key: str) -> tuple[int, DirectoryMessage] | None:
        """The region's last message for ``key`` and its stream sequence, if any."""
        await self.wait_ready()
        assert self._nc is not None
        try:
            stored = await self._nc.jetstream().get_last_msg(
                self.outbox, directory_subject(region, key)
            )
        except nats.js.errors.NotFoundError:
            return None
        return int(stored.seq or 0), decode_directory_message(region, key, stored.data or b"")

    async def withdraw_all(self) -> int:
        """Leaving: a ``withdrawn`` tombstone for every entry of this region still listed.

        Returns how many were published. Every region then forgets this region's
        people as its consumers read the tombstones.
        """
        await self.wait_ready()
        assert self._nc is not None
        js = self._nc.jetstream()
        info = await js.stream_info(self.outbox, subjects_filter=f"directory.{self.region}.*")
        withdrawn = 0
        for subject in sorted(info.state.subjects or {}):
            stored = await js.get_last_msg(self.outbox, subject)
            key = subject.rsplit(".", 1)[-1]
            message = decode_directory_message(self.region, key, stored.data or b"")
            if isinstance(message, DirectoryEntry):
                tombstone = DirectoryTombstone(region=self.region, key=key, reason="withdrawn")
                try:
                    await self.publish(tombstone, expected_last_seq=int(stored.seq or 0))
                except ConcurrentPublishError:
                    continue  # matching published meanwhile; run leave again once it stopped
                withdrawn += 1
        return withdrawn

    # --- the consumer -------------------------------------------------------------------

    async def _connect(self) -> NatsClient:
        while True:
            try:
                return await nats.connect(
                    self._url,
                    name=self._name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                )
            except Exception as error:  # noqa: BLE001 - keep trying whatever went wrong
                log.warning("waiting for federation nats", error=type(error).__name__)
                await asyncio.sleep(1.0)

    async def _run(self) -> None:
        self._nc = await self._connect()
        js = self._nc.jetstream()
        while True:
            try:
                await ensure_stream(js, regional_stream_config(self.region))
                await ensure_stream(js, mirror_stream_config(self.region, self._hub_domain))
                if self.handler is None:
                    self._ready.set()
                    return
                subscription = await js.pull_subscribe(
                    "directory.>",
                    durable=self.durable,
                    stream=self.mirror,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=60,
                        max_deliver=-1,
                        max_ack_pending=self.batch * 4,
                    ),
                )
                break
            except Exception as error:  # noqa: BLE001 - NATS may still be starting
                log.warning("federation streams not ready", error=type(error).__name__)
                await asyncio.sleep(1.0)
        self._ready.set()
        log.info("federation link ready", region=self.region, consumer=self.durable)
        while not self._stopping:
            try:
                messages = await subscription.fetch(self.batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as error:  # noqa: BLE001 - reconnecting; fetch again
                log.warning("federation fetch failed", error=type(error).__name__)
                await asyncio.sleep(0.5)
                continue
            await self._handle_batch(js, messages)

    async def _handle_batch(self, js: JetStreamContext, messages: list[Msg]) -> None:
        for index, msg in enumerate(messages):
            try:
                message = parse_directory_message(msg.subject, msg.data, msg.headers)
            except ForgedMessageError as error:
                self.counters.rejected += 1
                self.counters.rejected_reasons.append(str(error))
                log.error("forged directory message rejected", reason=str(error))  # noqa: TRY400
                await msg.term()
                continue
            if message.region == self.region or self.handler is None:
                self.counters.skipped_own += 1
            else:
                try:
                    await self.handler(message)
                except Exception:
                    self.counters.failed += 1
                    log.exception("directory message failed; retrying", subject=msg.subject)
                    for later in messages[index:]:
                        await later.nak(delay=self.retry_seconds)
                    return
                self.counters.received += 1
            stored = msg.metadata.sequence.stream
            self.counters.erased += await erase_superseded(js, self.mirror, msg.subject, stored)
            await msg.ack()


# --- the hub ------------------------------------------------------------------------------


async def ensure_hub(nc: NatsClient, regions: Iterable[str]) -> None:
    """Create the hub's ``DIRECTORY`` or set its sources to exactly ``regions``."""
    await ensure_stream(nc.jetstream(), hub_stream_config(regions))


async def run_hub(
    nc: NatsClient,
    regions: Iterable[str],
    *,
    durable: str = "hub-eraser",
    stop: asyncio.Event | None = None,
    until_idle: bool = False,
) -> int:
    """The hub's one process: keep ``DIRECTORY``'s sources, erase superseded messages.

    ``until_idle``: return once every stored message was looked at (a periodic
    job); otherwise run until ``stop``. Returns how many messages were erased.
    """
    await ensure_hub(nc, regions)
    js = nc.jetstream()
    subscription = await js.pull_subscribe(
        "directory.>",
        durable=durable,
        stream=GLOBAL_DIRECTORY.name,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=60, max_deliver=-1),
    )
    stop = stop or asyncio.Event()
    total = 0
    while not stop.is_set():
        try:
            messages = await subscription.fetch(256, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            if until_idle and (await subscription.consumer_info()).num_pending == 0:
                break
            continue
        except Exception as error:  # noqa: BLE001 - reconnecting; fetch again
            log.warning("hub fetch failed", error=type(error).__name__)
            await asyncio.sleep(0.5)
            continue
        for msg in messages:
            stored = msg.metadata.sequence.stream
            erased = await erase_superseded(js, GLOBAL_DIRECTORY.name, msg.subject, stored)
            if erased:
                log.info("superseded directory messages erased", count=erased)
            total += erased
            await msg.ack()
    return total


def main(argv: list[str] | None = None) -> None:
    """Operators' commands (``python -m passerelle_platform.federation …``).

    - ``hub --regions fr,es``: the hub's process (``HUB_NATS_URL``, hub-admin
      credentials): keeps DIRECTORY's sources equal to the members and erases
      superseded messages; ``--ensure-only`` sets the sources and exits (joining);
      ``--until-idle`` exits once it has caught up (the Kubernetes CronJob).
    - ``leave --region fr``: run by a region leaving the federation
      (``PASSERELLE_FEDERATION_NATS_URL``): withdraws every entry it published.
    """
    parser = argparse.ArgumentParser(prog="passerelle_platform.federation")
    commands = parser.add_subparsers(dest="command", required=True)
    hub = commands.add_parser("hub", help="run the hub's process")
    hub.add_argument("--regions", required=True, help="member regions, comma-separated")
    hub.add_argument("--ensure-only", action="store_true")
    hub.add_argument("--until-idle", action="store_true", help="exit once caught up")
    leave = commands.add_parser("leave", help="withdraw this region's directory")
    leave.add_argument("--region", required=True)
    args = parser.parse_args(argv)
    variable = "HUB_NATS_URL" if args.command == "hub" else "PASSERELLE_FEDERATION_NATS_URL"
    url = os.environ.get(variable)
    if not url:
        sys.stderr.write(f"configuration error: {variable} is not set\n")
        raise SystemExit(2)

    async def run_hub_command() -> None:
        regions = [r.strip() for r in args.regions.split(",") if r.strip()]
        nc = await nats.connect(url, max_reconnect_attempts=-1, name="passerelle-hub")
        try:
            if args.ensure_only:
                await ensure_hub(nc, regions)
            else:
                erased = await run_hub(nc, regions, until_idle=args.until_idle)
                if args.until_idle:
                    sys.stdout.write(f"{erased} superseded directory messages erased\n")
        finally:
            await nc.close()

    async def run_leave_command() -> None:
        link = FederationLink(url, args.region, None)
        await link.start()
        try:
            count = await link.withdraw_all()
        finally:
            await link.stop()
        sys.stdout.write(f"{count} entries withdrawn from the federation\n")

    asyncio.run(run_hub_command() if args.command == "hub" else run_leave_command())


__all__ = [
    "SOURCE_HEADER",
    "ConcurrentPublishError",
    "FederationLink",
    "ForgedMessageError",
    "LinkCounters",
    "ensure_hub",
    "ensure_stream",
    "erase_superseded",
    "hub_stream_config",
    "main",
    "mirror_deliver_prefix",
    "mirror_stream_config",
    "parse_directory_message",
    "regional_stream_config",
    "run_hub",
    "source_deliver_prefix",
]

if __name__ == "__main__":
    main()
