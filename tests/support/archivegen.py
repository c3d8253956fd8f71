"""Generators of realistic X data archives, and of a hostile corpus, for tests and benches.

Realistic archives follow the layout X produces (``data/account.js``,
``data/follower.js``, ``data/following.js``, split ``-partN`` files, a
``manifest.js``, tweets, media...) with knobs for everything real archives vary
in: top-level folder, BOM, CRLF, twitter.com/x.com links, stored/deflate,
forced ZIP64, data descriptors, duplicate entries, minified JSON, bare-number
ids. Archives are written in a streaming way with a small zip writer of our
own (so ZIP64 and broken headers can be forced), which lets the benchmark build
10 million followers without holding them in memory.

The hostile corpus (:func:`hostile_corpus`) writes one file per way an upload
can be wrong, each with the error code the reader must answer.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

MASK64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------
# ids


def _mix64(value: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers."""
    value &= MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def make_id(index: int, salt: int) -> int:
    """A deterministic, realistic X id: mostly snowflakes (>2**53), some small legacy
    ids, some beyond 2**63 (still valid unsigned 64-bit)."""
    bucket = index % 10
    if bucket == 0:
        return 12 + index  # legacy ids, well below 2**32 for realistic sizes
    mixed = _mix64(index * 0x9E3779B97F4A7C15 + salt)
    if bucket == 1:
        return mixed  # full 64-bit range
    return (1 << 60) | (mixed >> 4)  # snowflake-like, ~1.15e18..2.3e18


# --------------------------------------------------------------------------------------
# a streaming zip writer


@dataclass
class _Entry:
    name: bytes
    offset: int
    method: int
    flags: int
    crc: int = 0
    csize: int = 0
    usize: int = 0
    zip64: bool = False


class ZipWriter:
    """Minimal streaming zip writer (stored/deflate, forced ZIP64, data descriptors).

    Hostile knobs per member: ``flags`` (e.g. 1 = encrypted), ``method_id`` (the
    method written in headers), ``crc_override`` and ``declared_size`` (lies).
    """

    def __init__(self, fh: BinaryIO, *, zip64: bool = False) -> None:
        self.fh = fh
        self.zip64 = zip64
        self.entries: list[_Entry] = []
        self._closed = False

    def member(
        self,
        name: str | bytes,
        *,
        method: str = "deflate",
        level: int = 6,
        data_descriptor: bool = False,
        flags: int = 0,
        method_id: int | None = None,
        crc_override: int | None = None,
        declared_size: int | None = None,
        utf8: bool = True,
    ) -> _MemberWriter:
        raw = name.encode() if isinstance(name, str) else name
        return _MemberWriter(
            self,
            raw,
            method=method,
            level=level,
            data_descriptor=data_descriptor,
            flags=flags | (0x0800 if utf8 else 0) | (0x0008 if data_descriptor else 0),
            method_id=method_id,
            crc_override=crc_override,
            declared_size=declared_size,
        )

    def add(self, name: str | bytes, data: bytes, **options: object) -> None:
        with self.member(name, **options) as out:  # type: ignore[arg-type]
            out.write(data)

    def close(self, *, comment: bytes = b"") -> None:
        if self._closed:
            return
        self._closed = True
        fh = self.fh
        cd_start = fh.tell()
        need64 = self.zip64
        for e in self.entries:
            big = e.zip64 or max(e.csize, e.usize, e.offset) >= 0xFFFFFFFF
            extra = b""
            csize, usize, offset = e.csize, e.usize, e.offset
            if big:
                need64 = True
                extra = struct.pack("<HHQQQ", 1, 24, e.usize, e.csize, e.offset)
                csize = usize = offset = 0xFFFFFFFF
            fh.write(
                struct.pack(
                    "<4sHHHHHHIIIHHHHHII",
                    b"PK\x01\x02",
                    0x031E,
                    45 if big else 20,
                    e.flags,
                    e.method,
                    0x6000,
                    0x5A21,
                    e.crc,
                    csize,
                    usize,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0o100644 << 16,
                    offset,
                )
            )
            fh.write(e.name)
            fh.write(extra)
        cd_end = fh.tell()
        cd_size = cd_end - cd_start
        count = len(self.entries)
        if need64 or count >= 0xFFFF or cd_start >= 0xFFFFFFFF:
            fh.write(
                struct.pack(
                    "<4sQHHIIQQQQ",
                    b"PK\x06\x06",
                    44,
                    45,
                    45,
                    0,
                    0,
                    count,
                    count,
                    cd_size,
                    cd_start,
                )
            )
            fh.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, cd_end, 1))
            fh.write(
                struct.pack(
                    "<4sHHHHIIH",
                    b"PK\x05\x06",
                    0,
                    0,
                    0xFFFF,
                    0xFFFF,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(comment),
                )
            )
        else:
            fh.write(
                struct.pack(
                    "<4sHHHHIIH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_start, len(comment)
                )
            )
        fh.write(comment)


class _MemberWriter:
    def __init__(
        self,
        zw: ZipWriter,
        name: bytes,
        *,
        method: str,
        level: int,
        data_descriptor: bool,
        flags: int,
        method_id: int | None,
        crc_override: int | None,
        declared_size: int | None,
    ) -> None:
        self.zw = zw
        self.fh = zw.fh
        if method not in ("deflate", "stored", "bzip2"):
            raise ValueError(method)
        real_method = {"deflate": 8, "stored": 0, "bzip2": 12}[method]
        self.entry = _Entry(
            name,
            self.fh.tell(),
            real_method if method_id is None else method_id,
            flags,
            zip64=zw.zip64,
        )
        self.kind = method
        self.dd = data_descriptor
        self.crc_override = crc_override
        self.declared_size = declared_size
        self.crc = 0
        self.usize = 0
        self.csize = 0
        self.compressor: zlib._Compress | bz2.BZ2Compressor | None
        if method == "deflate":
            self.compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
        elif method == "bzip2":
            self.compressor = bz2.BZ2Compressor()
        else:
            self.compressor = None
        self._write_local(0, 0, 0)
        self.data_start = self.fh.tell()

    def _write_local(self, crc: int, csize: int, usize: int) -> None:
        e = self.entry
        extra = b""
        if e.zip64:
            extra = struct.pack("<HHQQ", 1, 16, usize, csize)
            csize_f = usize_f = 0xFFFFFFFF
        else:
            csize_f, usize_f = csize, usize
        self.fh.write(
            struct.pack(
                "<4sHHHHHIIIHH",
                b"PK\x03\x04",
                45 if e.zip64 else 20,
                e.flags,
                e.method,
                0x6000,
                0x5A21,
                crc,
                csize_f,
                usize_f,
                len(e.name),
                len(extra),
            )
        )
        self.fh.write(e.name)
        self.fh.write(extra)

    def write(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.usize += len(data)
        out = self.compressor.compress(data) if self.compressor is not None else data
        self.csize += len(out)
        self.fh.write(out)

    def __enter__(self) -> _MemberWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.compressor is not None:
            tail = self.compressor.flush()
            self.csize += len(tail)
            self.fh.write(tail)
        e = self.entry
        e.crc = self.crc if self.crc_override is None else self.crc_override
        e.csize = self.csize
        e.usize = self.usize if self.declared_size is None else self.declared_size
        end = self.fh.tell()
        if self.dd:
            if e.zip64:
                self.fh.write(struct.pack("<4sIQQ", b"PK\x07\x08", e.crc, e.csize, e.usize))
            else:
                self.fh.write(struct.pack("<4sIII", b"PK\x07\x08", e.crc, e.csize, e.usize))
        else:
            self.fh.seek(e.offset)
            self._write_local(e.crc, e.csize, e.usize)
            self.fh.seek(end)
        self.zw.entries.append(e)


# --------------------------------------------------------------------------------------
# realistic archives


@dataclass(frozen=True)
class ArchiveSpec:
    """How to build one archive. Ids come from :func:`make_id` unless given explicitly."""

    followers: int = 50
    following: int = 20
    seed: int = 1
    follower_parts: int = 1
    following_parts: int = 1
    prefix: str = ""  # e.g. "twitter-2024-05-01-0a1b2c/" (unzipped and re-zipped)
    bom: bool = False
    crlf: bool = False
    link_host: str = "twitter.com"  # "twitter.com" | "x.com" | "mixed"
    compression: str = "deflate"  # "deflate" | "stored"
    level: int = 6
    zip64: bool = False
    data_descriptor: bool = False
    duplicates: int = 0  # extra entries repeating earlier ids (within and across parts)
    manifest: bool = True
    extras: bool = True  # tweets.js, likes, DMs, media, the HTML viewer
    minified: bool = False
    bare_number_ids: bool = False
    account_id: int = 1_523_412_345_678_901_234
    username: str = "leaving_x_2024"
    follower_ids_override: tuple[int, ...] | None = field(default=None, repr=False)
    following_ids_override: tuple[int, ...] | None = field(default=None, repr=False)

    def follower_ids(self) -> Iterator[int]:
        """The follower ids in file order, before duplicates are injected."""
        if self.follower_ids_override is not None:
            yield from self.follower_ids_override
            return
        salt = self.seed * 1_000_003
        for i in range(self.followers):
            yield make_id(i, salt)

    def following_ids(self) -> Iterator[int]:
        """The following ids in file order; every third one is also a follower (mutuals)."""
        if self.following_ids_override is not None:
            yield from self.following_ids_override
            return
        fsalt = self.seed * 1_000_003
        salt = fsalt + 77_777
        for j in range(self.following):
            if j % 3 == 0 and j < self.followers:
                yield make_id(j, fsalt)
            else:
                yield make_id(j + 10_000_000_000, salt)

    def expected(self) -> tuple[set[int], set[int]]:
        """(following, followers) as Python sets: what a correct reader returns."""
        return set(self.following_ids()), set(self.follower_ids())


def _entry(kind: str, x_id: int, host: str, minified: bool, bare: bool) -> str:
    value = str(x_id) if bare else f'"{x_id}"'
    link = f"https://{host}/intent/user?user_id={x_id}"
    if minified:
        return f'{{"{kind}":{{"accountId":{value},"userLink":"{link}"}}}}'
    return (
        f'  {{\n    "{kind}" : {{\n      "accountId" : {value},\n'
        f'      "userLink" : "{link}"\n    }}\n  }}'
    )


def follow_file_chunks(
    kind: str,
    part: int,
    ids: Iterable[int],
    spec: ArchiveSpec,
    *,
    batch: int = 20_000,
) -> Iterator[bytes]:
    """The bytes of one follow file (``window.YTD.<kind>.partN = [...]``), in batches."""
    newline = "\r\n" if spec.crlf else "\n"
    sep = "," if spec.minified else ",\n"
    opening = f"window.YTD.{kind}.part{part} = [" + ("" if spec.minified else "\n")
    closing = "]" if spec.minified else "\n]"
    head = (b"\xef\xbb\xbf" if spec.bom else b"") + opening.encode()
    yield head.replace(b"\n", newline.encode())
    hosts = ["twitter.com", "x.com"] if spec.link_host == "mixed" else [spec.link_host]
    buf: list[str] = []
    first = True
    for n, x_id in enumerate(ids):
        buf.append(_entry(kind, x_id, hosts[n % len(hosts)], spec.minified, spec.bare_number_ids))
        if len(buf) >= batch:
            text = ("" if first else sep) + sep.join(buf)
            first = False
            buf.clear()
            yield text.replace("\n", newline).encode()
    if buf:
        text = ("" if first else sep) + sep.join(buf)
        yield text.replace("\n", newline).encode()
    yield closing.replace("\n", newline).encode()


def account_js(spec: ArchiveSpec) -> bytes:
    """account.js with the fields X writes (e-mail etc. must never be kept by readers)."""
    account = {
        "account": {
            "email": "someone@example.org",
            "createdVia": "web",
            "username": spec.username,
            "accountId": str(spec.account_id),
            "createdAt": "2011-03-01T12:34:56.000Z",
            "accountDisplayName": "Someone Leaving",
        }
    }
    body = "window.YTD.account.part0 = " + json.dumps([account], indent=2, separators=(",", " : "))
    data = body.replace("\n", "\r\n" if spec.crlf else "\n").encode()
    return (b"\xef\xbb\xbf" if spec.bom else b"") + data


def _part_name(kind: str, part: int) -> str:
    return f"{kind}.js" if part == 0 else f"{kind}-part{part}.js"


def _parts(spec: ArchiveSpec, kind: str) -> Iterator[tuple[int, Iterator[int]]]:
    """(part number, ids) per file, streaming; duplicates are added to the last part."""
    if kind == "follower":
        total, parts, source = spec.followers, spec.follower_parts, spec.follower_ids
    else:
        total, parts, source = spec.following, spec.following_parts, spec.following_ids
    override = spec.follower_ids_override if kind == "follower" else spec.following_ids_override
    if override is not None:
        total = len(override)
    parts = max(1, min(parts, max(total, 1)))
    base, extra = divmod(total, parts)
    ids = source()
    dup_source = source()
    for part in range(parts):
        count = base + (1 if part < extra else 0)
        chunk = (next(ids) for _ in range(count))
        if part == parts - 1 and spec.duplicates and total:
            chunk = _with_duplicates(chunk, dup_source, spec.duplicates, total)
        yield part, chunk


def _with_duplicates(
    chunk: Iterator[int], all_ids: Iterator[int], duplicates: int, total: int
) -> Iterator[int]:
    yield from chunk
    step = max(1, total // duplicates)
    picked = [x for n, x in enumerate(all_ids) if n % step == 0][:duplicates]
    while len(picked) < duplicates:
        picked.extend(picked[: duplicates - len(picked)])
    yield from picked


def manifest_js(spec: ArchiveSpec) -> bytes:
    def files(kind: str, parts: int) -> list[dict[str, str]]:
        return [
            {"fileName": f"data/{_part_name(kind, p)}", "globalName": f"YTD.{kind}.part{p}"}
            for p in range(max(1, parts))
        ]

    config = {
        "userInfo": {"accountId": str(spec.account_id), "userName": spec.username},
        "archiveInfo": {"sizeBytes": "123456", "generationDate": "2024-05-01T00:00:00.000Z"},
        "dataTypes": {
            "account": {"files": files("account", 1)},
            "follower": {"files": files("follower", spec.follower_parts)},
            "following": {"files": files("following", spec.following_parts)},
            "tweets": {"files": [{"fileName": "data/tweets.js", "globalName": "YTD.tweets.part0"}]},
        },
    }
    return ("window.__THAR_CONFIG = " + json.dumps(config, indent=2)).encode()


def _extras(rng_seed: int) -> list[tuple[str, bytes, str]]:
    """Members real archives carry that readers must skip (name, data, method)."""
    tweets = (
        "window.YTD.tweets.part0 = "
        + json.dumps(
            [
                {
                    "tweet": {
                        "id_str": str(1_700_000_000_000_000_000 + i),
                        "full_text": f'I will move soon, "accountId": "{i}" {{follower}}',
                        "in_reply_to_user_id": str(12345 + i),
                    }
                }
                for i in range(30)
            ],
            indent=2,
        )
    ).encode()
    media = os.urandom(0) + bytes((rng_seed * 31 + i * 7) % 256 for i in range(40_000))
    return [
        ("data/tweets.js", tweets, "deflate"),
        ("data/like.js", b"window.YTD.like.part0 = []", "deflate"),
        ("data/direct-messages.js", b"window.YTD.direct_messages.part0 = [ ]", "deflate"),
        ("data/follower-requests.txt", b"not an archive data file", "deflate"),
        ("data/tweets_media/1700000000000000000-AbCdEf.jpg", media, "stored"),
        ("data/profile_media/1523412345678901234-avatar.jpg", media[:5000], "stored"),
        ("assets/js/main.js", b"console.log('viewer')", "deflate"),
        ("Your archive.html", b"<html><body>Your archive</body></html>", "deflate"),
    ]


def write_archive(target: str | os.PathLike[str] | BinaryIO, spec: ArchiveSpec) -> None:
    """Write a realistic archive for ``spec`` to a path or a seekable binary stream."""
    if isinstance(target, (str, os.PathLike)):
        with Path(target).open("wb") as fh:
            _write(fh, spec)
    else:
        _write(target, spec)


def archive_bytes(spec: ArchiveSpec) -> bytes:
    """The archive as bytes (small specs only)."""
    out = io.BytesIO()
    _write(out, spec)
    return out.getvalue()


def _write(fh: BinaryIO, spec: ArchiveSpec) -> None:
    zw = ZipWriter(fh, zip64=spec.zip64)
    opts: dict[str, object] = {
        "method": spec.compression,
        "level": spec.level,
        "data_descriptor": spec.data_descriptor,
    }
    p = spec.prefix
    if spec.manifest:
        zw.add(p + "data/manifest.js", manifest_js(spec), **opts)
    zw.add(p + "data/account.js", account_js(spec), **opts)
    extras = _extras(spec.seed) if spec.extras else []
    for name, data, method in extras[:2]:
        zw.add(p + name, data, method=method)
    for kind in ("following", "follower"):
        for part, ids in _parts(spec, kind):
            with zw.member(p + "data/" + _part_name(kind, part), **opts) as out:  # type: ignore[arg-type]
                for chunk in follow_file_chunks(kind, part, ids, spec):
                    out.write(chunk)
    for name, data, method in extras[2:]:
        zw.add(p + name, data, method=method)
    zw.close()


def extracted_files(spec: ArchiveSpec) -> list[tuple[str, bytes]]:
    """What the browser uploads: (file name, bytes) of account.js and the follow files."""
    files = [("account.js", account_js(spec))]
    for kind in ("following", "follower"):
        for part, ids in _parts(spec, kind):
            data = b"".join(follow_file_chunks(kind, part, ids, spec))
            files.append((_part_name(kind, part), data))
    return files


# --------------------------------------------------------------------------------------
# the hostile corpus


@dataclass(frozen=True)
class HostileCase:
    """One bad upload: the file, the error code expected, and limits to use (if any)."""

    name: str
    path: Path
    code: str
    limits: dict[str, int | float] = field(default_factory=dict)
    note: str = ""


def _zip_of(members: Sequence[tuple[str | bytes, bytes, dict[str, object]]], **kw: bool) -> bytes:
    out = io.BytesIO()
    zw = ZipWriter(out, **kw)
    for name, data, opts in members:
        zw.add(name, data, **opts)
    zw.close()
    return out.getvalue()


def _follow(kind: str, body: str, *, prefix: bool = True) -> bytes:
    head = f"window.YTD.{kind}.part0 = " if prefix else ""
    return (head + body).encode()


def _valid_members(
    *,
    follower: bytes | None = None,
    following: bytes | None = None,
    account: bytes | None = None,
    spec: ArchiveSpec | None = None,
) -> list[tuple[str | bytes, bytes, dict[str, object]]]:
    spec = spec or ArchiveSpec(followers=30, following=12)
    files = dict(extracted_files(spec))
    return [
        ("data/account.js", account if account is not None else files["account.js"], {}),
        ("data/following.js", following if following is not None else files["following.js"], {}),
        ("data/follower.js", follower if follower is not None else files["follower.js"], {}),
    ]


def _entry_json(kind: str, value: str) -> str:
    return f'[{{"{kind}": {{"accountId": {value}, "userLink": "https://x.com/i"}}}}]'


def hostile_corpus(directory: str | os.PathLike[str]) -> list[HostileCase]:
    """Write every hostile case into ``directory`` and describe them."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    cases: list[HostileCase] = []

    def add(name: str, data: bytes, code: str, note: str = "", **limits: int | float) -> None:
        path = root / name
        path.write_bytes(data)
        cases.append(HostileCase(name, path, code, dict(limits), note))

    good = archive_bytes(ArchiveSpec(followers=400, following=60, extras=False))
    good_stored = archive_bytes(
        ArchiveSpec(followers=400, following=60, extras=False, compression="stored")
    )

    # -- not a zip
    add("empty.zip", b"", "not_a_zip")
    add("text.zip", b"window.YTD.follower.part0 = []\n", "not_a_zip", "a .js file renamed")
    add("png.zip", b"\x89PNG\r\n\x1a\n" + bytes(200), "not_a_zip")
    add("gzip.zip", zlib.compress(good[:1000]), "not_a_zip")
    add("random.zip", bytes((i * 37 + 11) % 256 for i in range(5000)), "not_a_zip")

    # -- truncated and corrupt
    add("truncated-half.zip", good[: len(good) // 2], "truncated")
    add("truncated-no-eocd.zip", good[:-10], "truncated")
    in_followers = good_stored.find(b"window.YTD.follower.part0")
    flip_at = good_stored.find(b'"accountId" : "', in_followers) + 17  # a digit of an id
    flipped = bytearray(good_stored)
    flipped[flip_at] ^= 0x01
    add("crc-flipped-byte.zip", bytes(flipped), "corrupt", "a stored byte changed")
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"crc_override": 0xDEADBEEF})
    add("crc-wrong-header.zip", _zip_of(members), "corrupt")
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"declared_size": 100})
    add("size-lie-small.zip", _zip_of(members), "corrupt", "inflates beyond declared size")
    bad_deflate = bytearray(good)
    at = bad_deflate.find(b"data/follower.js") + 40
    bad_deflate[at : at + 64] = bytes(64)
    add("deflate-garbage.zip", bytes(bad_deflate), "corrupt")

    # -- encryption and methods
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"flags": 0x1})
    add("encrypted-flag.zip", _zip_of(members), "encrypted")
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"method_id": 99})
    add("aes-method.zip", _zip_of(members), "encrypted")
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"method": "bzip2"})
    add("bzip2.zip", _zip_of(members), "unsupported_compression")

    # -- missing files
    add(
        "only-tweets.zip",
        _zip_of([("data/tweets.js", b"window.YTD.tweets.part0 = []", {})]),
        "missing_follow_files",
    )
    add(
        "no-follower.zip",
        _zip_of([m for m in _valid_members() if m[0] != "data/follower.js"]),
        "missing_follow_files",
    )
    add(
        "no-account.zip",
        _zip_of([m for m in _valid_members() if m[0] != "data/account.js"]),
        "missing_account",
    )
    add(
        "files-outside-data.zip",
        _zip_of([(str(n).replace("data/", ""), d, o) for n, d, o in _valid_members()]),
        "missing_follow_files",
        "follower.js at the root is not an archive layout",
    )

    # -- path traversal and absolute names: ignored, never read as data/...
    for label, name in [
        ("traversal", "../../data/follower.js"),
        ("traversal-inner", "data/../data/follower.js"),
        ("absolute", "/data/follower.js"),
        ("drive", "C:/data/follower.js"),
        ("backslash-traversal", "..\\..\\data\\follower.js"),
    ]:
        members = _valid_members()
        members[2] = (name, members[2][1], {})
        add(f"{label}.zip", _zip_of(members), "missing_follow_files", f"only {name!r}")
    add(
        "two-archives.zip",
        _zip_of(
            [("a/" + str(n), d, o) for n, d, o in _valid_members()]
            + [("b/" + str(n), d, o) for n, d, o in _valid_members()]
        ),
        "ambiguous_archive",
    )

    # -- broken JSON
    for label, body in [
        ("no-closing-bracket", '[{"follower": {"accountId": "12"}}'),
        ("missing-comma", '[{"follower": {"accountId": "12"}} {"follower": {"accountId": "13"}}]'),
        ("unbalanced", '[{"follower": {"accountId": "12"}}}]'),
        ("garbage", "[this is not json]"),
        ("trailing-comma", '[{"follower": {"accountId": "12"}},]'),
        ("data-after-end", '[{"follower": {"accountId": "12"}}] extra'),
        ("unterminated-string", '[{"follower": {"accountId": "12}}]'),
        ("empty-file", ""),
    ]:
        data = _follow("follower", body) if body else b""
        code = "unexpected_shape" if not body else "broken_json"
        add(f"json-{label}.zip", _zip_of(_valid_members(follower=data)), code)
    add(
        "json-broken-account.zip",
        _zip_of(_valid_members(account=b'window.YTD.account.part0 = [{"account": ')),
        "broken_json",
    )

    # -- unexpected shape
    for label, data in [
        ("object-not-list", _follow("follower", '{"follower": {"accountId": "12"}}')),
        ("wrong-key", _follow("follower", '[{"followers": {"accountId": "12"}}]')),
        ("no-account-id", _follow("follower", '[{"follower": {"userLink": "https://x.com"}}]')),
        ("wrong-ytd-name", _follow("tweets", '[{"follower": {"accountId": "12"}}]')),
        ("no-prefix-junk", b"var followers = [];"),
        ("extra-outer-key", _follow("follower", '[{"follower": {"accountId": "1"}, "x": 1}]')),
        (
            "duplicate-key",
            _follow("follower", '[{"follower": {"accountId": "1", "accountId": "2"}}]'),
        ),
        ("deep-nesting", _follow("follower", '[{"follower": {"accountId": "1", "a": {"b": {}}}}]')),
    ]:
        add(f"shape-{label}.zip", _zip_of(_valid_members(follower=data)), "unexpected_shape")

    # -- ids
    for label, value in [
        ("float", "1.2345678901234567e18"),
        ("float-exp", "1e5"),
        ("over-u64", '"18446744073709551616"'),
        ("over-u64-number", "18446744073709551616"),
        ("negative", "-5"),
        ("empty-string", '""'),
        ("letters", '"12a4"'),
        ("null", "null"),
        ("true", "true"),
        ("21-digits", '"000000000000000000001"'),
    ]:
        data = _follow("follower", _entry_json("follower", value))
        add(f"id-{label}.zip", _zip_of(_valid_members(follower=data)), "invalid_id")
    # the same in the fast path's layout: a bad id deep inside a large canonical file
    big = ArchiveSpec(followers=30_000, following=5)
    text = b"".join(follow_file_chunks("follower", 0, big.follower_ids(), big))
    at = text.find(b'"accountId" : "', len(text) // 2) + len(b'"accountId" : "')
    end = text.find(b'"', at)
    over = text[:at] + b"18446744073709551616" + text[end:]
    add("id-over-u64-in-big-file.zip", _zip_of(_valid_members(follower=over)), "invalid_id")
    floaty = text[: at - 1] + b"1.5e18" + text[end + 1 :]
    add("id-float-in-big-file.zip", _zip_of(_valid_members(follower=floaty)), "invalid_id")
    # shape and JSON damage deep inside a large canonical file (the vectorised path)
    mid = text.find(b'"follower" : {', len(text) // 2)
    for label, edited, code in [
        ("shape-wrong-key-in-big-file", b'"followers" : {', "unexpected_shape"),
        ("shape-other-key-in-big-file", b'"followed" : {', "unexpected_shape"),
    ]:
        bad = text[:mid] + edited + text[mid + len(b'"follower" : {') :]
        add(f"{label}.zip", _zip_of(_valid_members(follower=bad)), code)
    key = text.find(b'"accountId"', len(text) // 3)
    renamed = text[:key] + b'"accountIdx"' + text[key + len(b'"accountId"') :]
    add(
        "shape-renamed-id-key-in-big-file.zip",
        _zip_of(_valid_members(follower=renamed)),
        "unexpected_shape",
    )
    lowered = text[:key] + b'"accountid"' + text[key + len(b'"accountId"') :]
    add(
        "shape-lowercase-id-key-in-big-file.zip",
        _zip_of(_valid_members(follower=lowered)),
        "unexpected_shape",
    )
    sep = text.find(b"},\n", len(text) // 2)
    for label, edited in [
        ("missing-comma", text[: sep + 1] + text[sep + 2 :]),
        ("extra-brace", text[: sep + 1] + b"}" + text[sep + 1 :]),
        ("extra-bracket", text[: sep + 2] + b"[" + text[sep + 2 :]),
        ("doubled-comma", text[: sep + 2] + b"," + text[sep + 2 :]),
    ]:
        add(
            f"json-{label}-in-big-file.zip", _zip_of(_valid_members(follower=edited)), "broken_json"
        )
    # same punctuation count, different order: only the exact skeleton catches these
    link = text.find(b'"userLink" : "', len(text) // 2)
    swapped = text[:link] + b'"userLink" , "' + text[link + len(b'"userLink" : "') :]
    add(
        "json-comma-for-colon-in-big-file.zip",
        _zip_of(_valid_members(follower=swapped)),
        "broken_json",
    )
    entry = text.rfind(b"  {", 0, mid)
    bracket = text[:entry] + b"  [" + text[entry + 3 :]
    add(
        "json-bracket-for-brace-in-big-file.zip",
        _zip_of(_valid_members(follower=bracket)),
        "broken_json",
    )
    # malformed ids where the layout is otherwise canonical
    for label, value in [("letters", b"12a4"), ("empty", b""), ("21-digits", b"1" * 21)]:
        bad = text[:at] + value + text[end:]
        add(f"id-{label}-in-big-file.zip", _zip_of(_valid_members(follower=bad)), "invalid_id")

    # -- decompression bombs and limits
    spaces = b"window.YTD.follower.part0 = [" + b" " * (40 * 1024 * 1024) + b"]"
    add("bomb-ratio.zip", _zip_of(_valid_members(follower=spaces)), "compression_ratio_too_high")
    members = _valid_members()
    members[2] = ("data/follower.js", members[2][1], {"declared_size": 9 * 1024**3})
    add(
        "bomb-declared-size.zip",
        _zip_of(members, zip64=True),
        "inflated_too_large",
        "header announces 9 GiB",
    )
    add(
        "bomb-size-small-limit.zip",
        good,
        "inflated_too_large",
        "a genuine archive over a tiny inflated-size limit",
        max_inflated_bytes=20_000,
    )
    add("too-large.zip", good, "archive_too_large", max_archive_bytes=len(good) - 1)
    many = [(f"data/tweets_media/{i}.jpg", b"x", {"method": "stored"}) for i in range(300)]
    add(
        "too-many-members.zip",
        _zip_of([*_valid_members(), *many]),
        "too_many_members",
        max_members=100,
    )
    add("too-many-edges.zip", good, "too_many_edges", max_edges=100)
    return cases


def hostile_spec_variants() -> list[tuple[str, ArchiveSpec]]:
    """Named realistic variants (the acceptance corpus), all of which must be read."""
    base = ArchiveSpec(followers=2_500, following=700)
    return [
        ("plain", base),
        ("split-parts", replace(base, follower_parts=4, following_parts=2)),
        ("top-folder", replace(base, prefix="twitter-2024-05-01-0a1b2c3d/")),
        ("deep-folder", replace(base, prefix="Downloads/twitter-2024-05-01/")),
        ("bom", replace(base, bom=True)),
        ("crlf", replace(base, crlf=True)),
        ("bom-crlf", replace(base, bom=True, crlf=True)),
        ("x-com", replace(base, link_host="x.com")),
        ("mixed-hosts", replace(base, link_host="mixed")),
        ("stored", replace(base, compression="stored")),
        ("zip64", replace(base, zip64=True)),
        ("zip64-stored", replace(base, zip64=True, compression="stored")),
        ("data-descriptor", replace(base, data_descriptor=True)),
        ("zip64-descriptor", replace(base, zip64=True, data_descriptor=True)),
        ("duplicates", replace(base, duplicates=900, follower_parts=3)),
        ("no-manifest", replace(base, manifest=False)),
        ("no-extras", replace(base, extras=False)),
        ("minified", replace(base, minified=True)),
        ("bare-number-ids", replace(base, bare_number_ids=True)),
        ("empty-lists", replace(base, followers=0, following=0)),
        ("level-1", replace(base, level=1)),
        ("level-9", replace(base, level=9)),
    ]
