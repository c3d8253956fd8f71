"""Archive imports: parse, keep only edge ids, hand them to matching, once.

The reader (``passerelle_xarchive``) streams the needed members in bounded
memory. The edge payload goes to the NATS Object Store and exactly one
``archive.imported`` is published per import. The same archive again is a
no-op; a newer one is a new import (matching replaces the edges). Temporary
files are removed on every path.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, cast

from faststream.nats import NatsBroker
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from passerelle_contracts import ArchiveImported
from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET
from passerelle_ingest.metrics import IngestMetrics
from passerelle_ingest.models import ArchiveImport, Person
from passerelle_platform.broker import publish_event
from passerelle_xarchive import ArchiveError, ArchiveLimits, read_archive, read_extracted_files

PAYLOAD_TTL_SECONDS = 14 * 24 * 3600


@dataclass(frozen=True)
class ImportOutcome:
    """What happened to an upload."""

    import_id: str
    state: Literal["published", "duplicate"]
    following: int
    followers: int


@dataclass(frozen=True)
class ParsedArchive:
    """A parsed archive waiting in two temporary payload files (one per direction)."""

    x_account_id: str
    x_username: str
    following: int
    followers: int
    following_payload: Path
    followers_payload: Path
    sha256: str

    def remove(self) -> None:
        self.following_payload.unlink(missing_ok=True)
        self.followers_payload.unlink(missing_ok=True)


#: Extracted files a browser may send (anything else is refused, not ignored).
MEMBER_PREFIXES = ("account", "follower", "following", "manifest")


class UploadRejectedError(Exception):
    """The upload is not an archive nor its extracted files (``code`` says which)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ImportUnavailableError(Exception):
    """NATS could not take the payload or the event: nothing was stored, retry later."""


class ImportAbandonedError(Exception):
    """The request went away while its archive was parsed: the parsing thread stops."""


def _stop_if_abandoned(abandoned: threading.Event) -> None:
    if abandoned.is_set():
        raise ImportAbandonedError


class _AbandonableStream:
    """An upload stream that stops the parsing thread once the request has gone.

    The reader reads and seeks in a worker thread that asyncio cannot cancel; each
    read first checks whether anyone still wants the result, so a cancelled upload
    does not keep a thread busy (and the upload's files open) to the end.
    """

    def __init__(self, stream: BinaryIO, abandoned: threading.Event) -> None:
        self._stream = stream
        self._abandoned = abandoned

    def read(self, size: int = -1) -> bytes:
        _stop_if_abandoned(self._abandoned)
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        _stop_if_abandoned(self._abandoned)
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()

    def seekable(self) -> bool:
        return self._stream.seekable()

    def readable(self) -> bool:
        return True

    def as_binary(self) -> BinaryIO:
        # The reader uses only read/seek/tell/seekable of a BinaryIO.
        return cast(BinaryIO, self)


def _remove_parsed(work: asyncio.Future[ParsedArchive]) -> None:
    """Remove the payload files of a parse nobody waits for any more (once it ends)."""
    if not work.cancelled() and work.exception() is None:
        work.result().remove()


class ArchiveImporter:
    """Turns an uploaded archive (a zip or extracted members) into an ``archive.imported``."""

    def __init__(
        self,
        engine: Engine,
        broker: NatsBroker,
        region: str,
        limits: ArchiveLimits,
        tmp_dir: Path,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.engine = engine
        self.broker = broker
        self.region = region
        self.limits = limits
        self.tmp_dir = tmp_dir

    def check_declared_size(self, declared_bytes: int) -> None:
        """Refuse an upload whose announced (or so far received) size is over the limit."""
        if declared_bytes > self.limits.max_archive_bytes:
            self._rejected("archive_too_large")
            raise UploadRejectedError("archive_too_large")

    async def import_upload(
        self,
        person_id: str,
        archives: list[tuple[str, BinaryIO]],
        files: list[tuple[str, BinaryIO]],
    ) -> ImportOutcome:
        """Import what a form sent: one whole zip, or the extracted members (not both).

        Raises :class:`UploadRejectedError` (``no_archive``, ``unexpected_file``),
        an :class:`~passerelle_xarchive.ArchiveError`, or :class:`ImportUnavailableError`;
        every outcome is counted in the metrics.
        """
        try:
            kind, outcome = await self._import_form(person_id, archives, files)
        except (UploadRejectedError, ArchiveError) as error:
            self._rejected(error.code)
            raise
        except ImportUnavailableError:
            self._rejected("unavailable")
            raise
        if self.metrics is not None:
            self.metrics.archives_imported.labels(kind, outcome.state).inc()
            if outcome.state == "published":
                self.metrics.edges_ingested.labels("following").inc(outcome.following)
                self.metrics.edges_ingested.labels("follower").inc(outcome.followers)
        return outcome

    async def _import_form(
        self,
        person_id: str,
        archives: list[tuple[str, BinaryIO]],
        files: list[tuple[str, BinaryIO]],
    ) -> tuple[str, ImportOutcome]:
        if len(archives) == 1 and not files:
            return "zip", await self.import_zip(person_id, archives[0][1])
        if not files or archives:
            raise UploadRejectedError("no_archive")
        members: list[tuple[str, BinaryIO]] = []
        for filename, stream in files:
            name = filename.rsplit("/", 1)[-1]
            if not name.startswith(MEMBER_PREFIXES) or not name.endswith(".js"):
                raise UploadRejectedError("unexpected_file")
            members.append((name, stream))
        return "files", await self.import_members(person_id, members)

    def _rejected(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.archives_rejected.labels(reason).inc()

    async def import_zip(self, person_id: str, archive: BinaryIO) -> ImportOutcome:
        """Import a whole X archive zip (a seekable stream spooled to disk, never in memory)."""
        parsed = await self._parse_in_thread(archive, None)
        return await self._store(person_id, parsed)

    async def import_members(
        self, person_id: str, members: list[tuple[str, BinaryIO]]
    ) -> ImportOutcome:
        """Import the members a browser extracted (``account.js``, ``follower*.js``…)."""
        parsed = await self._parse_in_thread(None, members)
        return await self._store(person_id, parsed)

    async def _parse_in_thread(
        self, archive: BinaryIO | None, members: list[tuple[str, BinaryIO]] | None
    ) -> ParsedArchive:
        """Parse in a worker thread; if the request is cancelled meanwhile, nothing stays.

        A thread cannot be cancelled: ``asyncio.to_thread`` alone would let it run on
        and leave its payload files behind. Here the thread is told to stop, its end is
        awaited (the upload's files must stay open while it reads them), and whatever
        it produced is removed when it ends, even if this wait is cancelled too.
        """
        abandoned = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._parse, archive, members, abandoned))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            abandoned.set()
            work.add_done_callback(_remove_parsed)
            await asyncio.wait([work])
            raise

    def _parse(
        self,
        archive: BinaryIO | None,
        members: list[tuple[str, BinaryIO]] | None,
        abandoned: threading.Event,
    ) -> ParsedArchive:
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if archive is not None:
            source = _AbandonableStream(archive, abandoned).as_binary()
            contents = read_archive(source, limits=self.limits, temp_dir=self.tmp_dir)
        else:
            assert members is not None
            streams = [
                (name, _AbandonableStream(stream, abandoned).as_binary())
                for name, stream in members
            ]
            contents = read_extracted_files(streams, limits=self.limits, temp_dir=self.tmp_dir)
        with contents:
            digest = hashlib.sha256()
            paths: list[Path] = []
            try:
                for edges in (contents.following, contents.followers):
                    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - removed by _store
                        dir=self.tmp_dir, prefix="edges-", suffix=".bin", delete=False
                    )
                    paths.append(Path(handle.name))
                    with handle:
                        for chunk in edges.iter_payload():
                            _stop_if_abandoned(abandoned)
                            digest.update(chunk)
                            handle.write(chunk)
                return ParsedArchive(
                    x_account_id=str(contents.account.id),
                    x_username=contents.account.username,
                    following=len(contents.following),
                    followers=len(contents.followers),
                    following_payload=paths[0],
                    followers_payload=paths[1],
                    sha256=digest.hexdigest(),
                )
            except BaseException:
                for path in paths:
                    path.unlink(missing_ok=True)
                raise

    async def _store(self, person_id: str, parsed: ParsedArchive) -> ImportOutcome:
        try:
            previous = await asyncio.to_thread(self._latest_published, person_id)
            if previous is not None and previous.payload_sha256 == parsed.sha256:
                return ImportOutcome(previous.id, "duplicate", parsed.following, parsed.followers)
            import_id = uuid.uuid4().hex
            event = ArchiveImported(
                region=self.region,
                person_id=person_id,
                import_id=import_id,
                x_account_id=parsed.x_account_id,
                x_username=parsed.x_username,
                following_count=parsed.following,
                followers_count=parsed.followers,
                bucket=ARCHIVE_EDGES_BUCKET,
                following_object=f"{import_id}.following",
                followers_object=f"{import_id}.followers",
                payload_sha256=parsed.sha256,
            )
            try:
                store = await self.broker.object_storage(
                    ARCHIVE_EDGES_BUCKET, ttl=PAYLOAD_TTL_SECONDS
                )
                for name, path in (
                    (event.following_object, parsed.following_payload),
                    (event.followers_object, parsed.followers_payload),
                ):
                    with path.open("rb") as payload:
                        await store.put(name, payload)
                await publish_event(self.broker, event)
            except Exception as error:
                raise ImportUnavailableError(type(error).__name__) from error
            await asyncio.to_thread(self._record, person_id, import_id, parsed)
            return ImportOutcome(import_id, "published", parsed.following, parsed.followers)
        finally:
            parsed.remove()

    def _latest_published(self, person_id: str) -> ArchiveImport | None:
        with Session(self.engine, expire_on_commit=False) as db:
            return db.exec(
                select(ArchiveImport)
                .where(ArchiveImport.person_id == person_id, ArchiveImport.state == "published")
                .order_by(col(ArchiveImport.created_at).desc())
            ).first()

    def _record(self, person_id: str, import_id: str, parsed: ParsedArchive) -> None:
        now = datetime.now(UTC)
        with Session(self.engine, expire_on_commit=False) as db:
            db.add(
                ArchiveImport(
                    id=import_id,
                    person_id=person_id,
                    state="published",
                    x_account_id=parsed.x_account_id,
                    following_count=parsed.following,
                    followers_count=parsed.followers,
                    payload_sha256=parsed.sha256,
                    created_at=now,
                    updated_at=now,
                )
            )
            person = db.get(Person, person_id)
            if person is not None:
                person.x_account_id = parsed.x_account_id
                person.x_username = parsed.x_username
            db.commit()

    def get(self, person_id: str, import_id: str) -> ArchiveImport | None:
        """An import of this person (someone else's id reads as unknown)."""
        with Session(self.engine, expire_on_commit=False) as db:
            row = db.get(ArchiveImport, import_id)
            return row if row is not None and row.person_id == person_id else None
