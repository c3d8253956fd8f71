"""Reading an X archive: a zip (path or seekable stream) or the already-extracted files.

Only ``account.js``, ``follower*.js`` and ``following*.js`` under a ``data/``
folder are read; every other member (tweets, DMs, media) is skipped unread.
From account.js only the account id and username are kept; from the follow
files only the ids, deduplicated into two :class:`~passerelle_xarchive.edges.EdgeSet`.

Member names are matched as strings and never used as filesystem paths. A name
is considered only if, after turning ``\\`` into ``/``, it is relative and has no
empty, ``.`` or ``..`` component: ``../../data/follower.js``, ``/data/follower.js``
or ``C:/data/follower.js`` are *ignored* (as if absent), never read as
``data/follower.js``. The ``data/`` folder may sit under a top-level folder
(unzipped and re-zipped archives); if several folders hold archive files, the
shallowest wins, and two at the same depth are refused as ambiguous.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Final

from passerelle_xarchive._parse import FollowFileParser, parse_account
from passerelle_xarchive._pipeline import prefetch
from passerelle_xarchive._zip import (
    InflateBudget,
    ZipMember,
    check_readable,
    iter_central_directory,
    iter_member_data,
    member_data_start,
    source_size,
)
from passerelle_xarchive.edges import EdgeSet, EdgeSetBuilder
from passerelle_xarchive.errors import (
    AmbiguousArchiveError,
    ArchiveTooLargeError,
    BrokenJsonError,
    InflatedTooLargeError,
    InvalidIdError,
    MissingAccountError,
    MissingFollowFilesError,
    TooManyEdgesError,
    UnexpectedShapeError,
    UnreadableArchiveError,
)
from passerelle_xarchive.limits import ArchiveLimits
from passerelle_xarchive.messages import human_bytes, human_count

_FILE_RE: Final = re.compile(
    r"(?P<kind>account|follower|following)(?:-part(?P<part>[0-9]{1,6}))?\.js", re.IGNORECASE
)
_DRIVE_RE: Final = re.compile(r"[A-Za-z]:")
_EXTRACTED_READ: Final = 1024 * 1024
_CONTENT_ERRORS: Final = (BrokenJsonError, UnexpectedShapeError, InvalidIdError)
_DRAIN_LIMIT: Final = 64 * 1024 * 1024
KINDS: Final = ("following", "follower")


@dataclass(frozen=True, slots=True)
class Account:
    """Whose archive this is, as claimed by account.js (forgeable: not a proof)."""

    id: int
    username: str


@dataclass(slots=True)
class ReadStats:
    """What reading cost, for logs, metrics and benchmarks."""

    members_read: int = 0
    compressed_bytes: int = 0
    inflated_bytes: int = 0
    entries: int = 0
    fast_entries: int = 0


@dataclass(slots=True)
class ArchiveContents:
    """The minimised result: the account and the two deduplicated edge sets.

    Close it (or use ``with``) to remove the edge sets' temp files.
    """

    account: Account
    following: EdgeSet
    followers: EdgeSet
    stats: ReadStats = field(default_factory=ReadStats)

    def close(self) -> None:
        """Release both edge sets (idempotent)."""
        self.following.close()
        self.followers.close()

    def __enter__(self) -> ArchiveContents:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class _Wanted:
    kind: str  # "account" | "follower" | "following"
    part: int
    display: str  # "data/follower-part1.js": safe ASCII, for messages
    prefix: str


def classify_member_name(name: str) -> _Wanted | None:
    """Which archive file a zip member is, or None if it is not one we read (or unsafe)."""
    path = name.replace("\\", "/")
    if not path or path.startswith("/") or _DRIVE_RE.match(path) or "\x00" in path:
        return None
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or len(parts) < 2:
        return None
    match = _FILE_RE.fullmatch(parts[-1])
    if match is None or parts[-2].lower() != "data":
        return None
    kind = match.group("kind").lower()
    part = int(match.group("part") or 0)
    display = f"data/{parts[-1].lower()}"
    return _Wanted(kind, part, display, "/".join(parts[:-2]))


def _select(members: Iterable[ZipMember]) -> list[tuple[_Wanted, ZipMember]]:
    """Keep the wanted members of the single shallowest archive folder."""
    by_prefix: dict[str, list[tuple[_Wanted, ZipMember]]] = {}
    for member in members:
        if member.name.endswith("/"):
            continue
        wanted = classify_member_name(member.name)
        if wanted is not None:
            by_prefix.setdefault(wanted.prefix, []).append((wanted, member))
    if not by_prefix:
        return []
    depth = min(_depth(p) for p in by_prefix)
    top = [p for p in by_prefix if _depth(p) == depth]
    if len(top) > 1:
        raise AmbiguousArchiveError(f"archive files under several folders: {sorted(top)[:3]!r}")
    return by_prefix[top[0]]


def _depth(prefix: str) -> int:
    return 0 if not prefix else prefix.count("/") + 1


def _require(selected: list[_Wanted]) -> None:
    kinds = {w.kind for w in selected}
    if not kinds & {"follower", "following"}:
        raise MissingFollowFilesError(
            "no follow files", missing="data/follower.js and data/following.js"
        )
    for kind in KINDS:
        if kind not in kinds:
            raise MissingFollowFilesError(f"no {kind} file", missing=f"data/{kind}.js")
    if "account" not in kinds:
        raise MissingAccountError("no account.js")


class _Reading:
    """State shared while reading one archive: limits, budgets, builders, stats."""

    def __init__(self, limits: ArchiveLimits, temp_dir: str | os.PathLike[str] | None) -> None:
        self.limits = limits
        self.temp_dir = temp_dir
        self.stats = ReadStats()
        self.accounts: set[tuple[int, str]] = set()

    def count_edges(self, count: int) -> None:
        self.stats.entries += count
        if self.stats.entries > self.limits.max_edges:
            raise TooManyEdgesError(
                f"over {self.limits.max_edges} entries", limit=human_count(self.limits.max_edges)
            )

    def read_account(self, wanted: _Wanted, pieces: Iterator[bytes]) -> None:
        data = bytearray()
        for piece in pieces:
            data += piece
            if len(data) > self.limits.max_account_bytes:
                raise UnexpectedShapeError(
                    f"account file over {self.limits.max_account_bytes} bytes",
                    member=wanted.display,
                )
        self.accounts.add(parse_account(bytes(data), wanted.display))

    def read_follows(
        self, wanted: _Wanted, pieces: Iterator[bytes], builder: EdgeSetBuilder
    ) -> None:
        parser = FollowFileParser(wanted.kind, wanted.display, builder.add, self.count_edges)
        try:
            for piece in pieces:
                parser.feed(piece)
            parser.close()
        except _CONTENT_ERRORS:
            # Damaged bytes often look like bad JSON: read on (a bounded amount) so a
            # CRC or deflate failure is reported as what it is.
            drained = 0
            for piece in pieces:
                drained += len(piece)
                if drained > _DRAIN_LIMIT:
                    break
            raise
        self.stats.fast_entries += parser.fast_entries

    def account(self) -> Account:
        if len(self.accounts) > 1:
            raise AmbiguousArchiveError("several account files disagree")
        account_id, username = next(iter(self.accounts))
        return Account(account_id, username)

    def read_all(
        self, files: list[tuple[_Wanted, Iterator[bytes]]], stack: ExitStack
    ) -> ArchiveContents:
        """Read account then follow files in order; builders are closed on error."""
        builders = {
            kind: EdgeSetBuilder(self.limits.max_ids_in_memory, self.temp_dir) for kind in KINDS
        }
        for builder in builders.values():
            stack.callback(builder.close)
        for wanted, pieces in files:
            self.stats.members_read += 1
            try:
                if wanted.kind == "account":
                    self.read_account(wanted, pieces)
                else:
                    self.read_follows(wanted, pieces, builders[wanted.kind])
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()  # stops a prefetch thread before the file is closed
        following = builders["following"].finish()
        stack.callback(following.close)
        followers = builders["follower"].finish()
        stack.callback(followers.close)
        return ArchiveContents(self.account(), following, followers, self.stats)


def _order(selected: list[tuple[_Wanted, ZipMember]]) -> list[tuple[_Wanted, ZipMember]]:
    rank = {"account": 0, "following": 1, "follower": 2}
    return sorted(
        selected, key=lambda item: (rank[item[0].kind], item[0].part, item[1].header_offset)
    )


def read_archive(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    limits: ArchiveLimits | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
    threaded: bool = True,
) -> ArchiveContents:
    """Read an X archive zip from a path or a seekable binary stream.

    Only the needed members are inflated, in bounded pieces, never to disk.
    ``threaded`` inflates the next piece in a helper thread while the current
    one is parsed (zlib releases the GIL), which nearly halves wall time on
    two cores. Raises an :class:`~passerelle_xarchive.errors.ArchiveError`
    subclass for anything unacceptable; temp files are removed in every case.
    A stream passed in is not closed.
    """
    limits = limits or ArchiveLimits()
    with ExitStack() as stack:
        if isinstance(source, (str, os.PathLike)):
            try:
                fh: BinaryIO = stack.enter_context(Path(source).open("rb"))
            except OSError as exc:
                raise UnreadableArchiveError(f"cannot open: {exc.strerror}") from exc
        else:
            fh = source
            if not fh.seekable():
                raise ValueError("read_archive needs a seekable stream; see read_extracted_files")
        size = source_size(fh)
        if size > limits.max_archive_bytes:
            raise ArchiveTooLargeError(f"{size} bytes", limit=human_bytes(limits.max_archive_bytes))
        selected = _order(_select(iter_central_directory(fh, size, limits)))
        _require([w for w, _ in selected])
        declared = 0
        for _wanted, member in selected:
            check_readable(member)
            declared += member.uncompressed_size
        if declared > limits.max_inflated_bytes:
            raise InflatedTooLargeError(
                f"{declared} bytes declared", limit=human_bytes(limits.max_inflated_bytes)
            )
        reading = _Reading(limits, temp_dir)
        budget = InflateBudget(limits)

        def pieces(member: ZipMember) -> Iterator[bytes]:
            start = member_data_start(fh, member, size)
            reading.stats.compressed_bytes += member.compressed_size
            return iter_member_data(fh, member, start, budget)

        files: list[tuple[_Wanted, Iterator[bytes]]] = [
            (wanted, _lazy(pieces, member, threaded)) for wanted, member in selected
        ]
        contents = reading.read_all(files, stack)
        reading.stats.inflated_bytes = budget.inflated
        stack.pop_all()
        if isinstance(source, (str, os.PathLike)):
            fh.close()
        return contents
    raise AssertionError("unreachable")  # pragma: no cover


def _lazy(
    make: Callable[[ZipMember], Iterator[bytes]], member: ZipMember, threaded: bool
) -> Iterator[bytes]:
    """Open the member only when its turn comes (keeps one member open at a time)."""
    pieces = make(member)
    if threaded:
        yield from prefetch(pieces)
    else:
        yield from pieces


def read_extracted_files(
    files: Iterable[tuple[str, BinaryIO]],
    *,
    limits: ArchiveLimits | None = None,
    temp_dir: str | os.PathLike[str] | None = None,
) -> ArchiveContents:
    """Read the files a browser extracted from the archive: (name, binary stream) pairs.

    Names are matched on their last path component (``account.js``,
    ``follower.js``, ``follower-part1.js``, ``following.js`` ...); other names
    are ignored. Streams need not be seekable and are not closed. The total
    size counts against ``max_archive_bytes`` and ``max_inflated_bytes``.
    """
    limits = limits or ArchiveLimits()
    named: list[tuple[_Wanted, BinaryIO]] = []
    for name, stream in files:
        base = PurePosixPath(name.replace("\\", "/")).name
        match = _FILE_RE.fullmatch(base)
        if match is None:
            continue
        kind = match.group("kind").lower()
        part = int(match.group("part") or 0)
        named.append((_Wanted(kind, part, base.lower(), ""), stream))
    _require([w for w, _ in named])
    rank = {"account": 0, "following": 1, "follower": 2}
    named.sort(key=lambda item: (rank[item[0].kind], item[0].part))
    reading = _Reading(limits, temp_dir)
    total = [0]

    def pieces(stream: BinaryIO) -> Iterator[bytes]:
        while True:
            try:
                piece = stream.read(_EXTRACTED_READ)
            except OSError as exc:
                raise UnreadableArchiveError(f"upload read failed: {exc}") from exc
            if not piece:
                return
            total[0] += len(piece)
            if total[0] > limits.max_archive_bytes:
                raise ArchiveTooLargeError(
                    f"{total[0]} bytes", limit=human_bytes(limits.max_archive_bytes)
                )
            if total[0] > limits.max_inflated_bytes:
                raise InflatedTooLargeError(
                    f"{total[0]} bytes", limit=human_bytes(limits.max_inflated_bytes)
                )
            yield piece

    with ExitStack() as stack:
        contents = reading.read_all([(w, pieces(s)) for w, s in named], stack)
        reading.stats.inflated_bytes = reading.stats.compressed_bytes = total[0]
        stack.pop_all()
        return contents
    raise AssertionError("unreachable")  # pragma: no cover
