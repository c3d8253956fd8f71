"""A minimal, defensive zip reader: central directory streaming and member inflation.

Why not :mod:`zipfile`: it builds a ``ZipInfo`` per entry (memory grows with
media-heavy archives), trusts header sizes, and offers no hook to enforce
inflated-size and ratio caps while streaming. Here the central directory is
parsed entry by entry, only wanted members are kept, and each member is inflated
in bounded pieces with CRC, declared-size, total-size and ratio checks applied
as bytes come out. Member names are only compared as strings, never used as paths.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from passerelle_xarchive.errors import (
    CompressionRatioError,
    CorruptArchiveError,
    EncryptedArchiveError,
    InflatedTooLargeError,
    NotAZipError,
    TooManyMembersError,
    TruncatedArchiveError,
    UnreadableArchiveError,
    UnsupportedCompressionError,
)
from passerelle_xarchive.limits import ArchiveLimits
from passerelle_xarchive.messages import human_bytes, human_count

_EOCD_SIG: Final = b"PK\x05\x06"
_EOCD64_LOCATOR_SIG: Final = b"PK\x06\x07"
_EOCD64_SIG: Final = b"PK\x06\x06"
_CENTRAL_SIG: Final = b"PK\x01\x02"
_LOCAL_SIG: Final = b"PK\x03\x04"

_EOCD: Final = struct.Struct("<4sHHHHIIH")
_EOCD64_LOCATOR: Final = struct.Struct("<4sIQI")
_EOCD64: Final = struct.Struct("<4sQHHIIQQQQ")
_CENTRAL: Final = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LOCAL: Final = struct.Struct("<4sHHHHHIIIHH")

_MAX_COMMENT: Final = 0xFFFF
_ZIP64_EXTRA: Final = 0x0001
_FLAG_ENCRYPTED: Final = 0x0001
_FLAG_STRONG_ENCRYPTION: Final = 0x0040
_FLAG_UTF8: Final = 0x0800
_METHOD_STORED: Final = 0
_METHOD_DEFLATE: Final = 8
_METHOD_AES: Final = 99

READ_BLOCK: Final = 512 * 1024
"""Compressed bytes read per I/O call."""
OUT_BLOCK: Final = 4 * 1024 * 1024
"""Most inflated bytes produced per step (bounds memory whatever the ratio)."""
_CD_BLOCK: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ZipMember:
    """One central-directory entry (absolute offsets, ZIP64 values resolved)."""

    name: str
    raw_name: bytes
    flags: int
    method: int
    crc: int
    compressed_size: int
    uncompressed_size: int
    header_offset: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION)) or (
            self.method == _METHOD_AES
        )


def _read_at(fh: BinaryIO, offset: int, size: int) -> bytes:
    """Read ``size`` bytes at ``offset`` (fewer only at end of file)."""
    try:
        fh.seek(offset)
        parts: list[bytes] = []
        got = 0
        while got < size:
            part = fh.read(size - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    except OSError as exc:
        raise UnreadableArchiveError(f"read failed at {offset}: {exc}") from exc


def source_size(fh: BinaryIO) -> int:
    """Size of a seekable binary stream."""
    try:
        return fh.seek(0, 2)
    except OSError as exc:
        raise UnreadableArchiveError(f"cannot seek: {exc}") from exc


def _decode_name(raw: bytes, flags: int) -> str:
    if flags & _FLAG_UTF8:
        return raw.decode("utf-8", errors="replace")
    return raw.decode("cp437")


def iter_central_directory(fh: BinaryIO, size: int, limits: ArchiveLimits) -> Iterator[ZipMember]:
    """Yield every central-directory entry, streaming, after locating the end record.

    Raises ``not_a_zip`` when there is no end record and the file does not start
    like a zip, ``truncated`` when it starts like a zip but its end is missing,
    ``too_many_members`` before reading any entry if the count is over the cap.
    """
    if size < _EOCD.size:
        raise NotAZipError(f"only {size} bytes")
    tail_size = min(size, _EOCD.size + _MAX_COMMENT + _EOCD64_LOCATOR.size)
    tail_start = size - tail_size
    tail = _read_at(fh, tail_start, tail_size)
    at = tail.rfind(_EOCD_SIG)
    while at >= 0 and len(tail) - at < _EOCD.size:
        at = tail.rfind(_EOCD_SIG, 0, at)
    if at < 0:
        head = _read_at(fh, 0, 4)
        if head in (_LOCAL_SIG, b"PK\x07\x08", b"PK00"):
            raise TruncatedArchiveError("zip start found but no end-of-central-directory record")
        raise NotAZipError("no end-of-central-directory record")
    eocd_pos = tail_start + at
    _sig, disk, cd_disk, _n_disk, entries, cd_size, cd_offset, _clen = _EOCD.unpack_from(tail, at)
    zip64 = False
    cd_end = eocd_pos
    loc_pos = eocd_pos - _EOCD64_LOCATOR.size
    if loc_pos >= 0:
        loc = _read_at(fh, loc_pos, _EOCD64_LOCATOR.size)
        if loc.startswith(_EOCD64_LOCATOR_SIG):
            _s, _d, eocd64_offset, _disks = _EOCD64_LOCATOR.unpack(loc)
            record = None
            for candidate in (loc_pos - _EOCD64.size, eocd64_offset):
                if 0 <= candidate <= size - _EOCD64.size:
                    raw = _read_at(fh, candidate, _EOCD64.size)
                    if raw.startswith(_EOCD64_SIG):
                        record = (candidate, raw)
                        break
            if record is None:
                raise CorruptArchiveError("ZIP64 locator without a ZIP64 end record")
            cd_end, raw = record
            (_s, _rs, _vm, _vn, disk, cd_disk, _nd, entries, cd_size, cd_offset) = _EOCD64.unpack(
                raw
            )
            zip64 = True
    if disk != 0 or cd_disk != 0:
        raise CorruptArchiveError("multi-disk (split) zip archives are not supported")
    if entries > limits.max_members:
        raise TooManyMembersError(
            f"{entries} entries declared", limit=human_count(limits.max_members)
        )
    concat = cd_end - cd_size - cd_offset  # bytes prepended before the zip (e.g. a stub)
    if concat < 0:
        if cd_end - cd_size < 0:
            raise TruncatedArchiveError("central directory starts before the file")
        raise CorruptArchiveError("central directory offset beyond its end")
    cd_start = cd_offset + concat
    if entries and cd_size < entries * _CENTRAL.size:
        raise CorruptArchiveError("central directory too small for its entry count")
    yield from _parse_central(fh, cd_start, cd_size, concat, entries, zip64, limits)


def _parse_central(
    fh: BinaryIO,
    start: int,
    size: int,
    concat: int,
    declared: int,
    zip64: bool,
    limits: ArchiveLimits,
) -> Iterator[ZipMember]:
    buf = b""
    pos = 0
    read_at = start
    end = start + size
    seen = 0

    def need(count: int) -> bool:
        nonlocal buf, pos, read_at
        if len(buf) - pos >= count:
            return True
        want = max(_CD_BLOCK, count)
        want = min(want, end - read_at)
        if want <= 0:
            return False
        more = _read_at(fh, read_at, want)
        if len(more) < want:
            raise TruncatedArchiveError("central directory cut short")
        read_at += len(more)
        buf = buf[pos:] + more
        pos = 0
        return len(buf) >= count

    while need(4):
        if buf[pos : pos + 4] != _CENTRAL_SIG:
            raise CorruptArchiveError(f"bad central directory entry #{seen}")
        if not need(_CENTRAL.size):
            raise CorruptArchiveError("central directory entry cut short")
        (
            _sig,
            _made,
            _needed,
            flags,
            method,
            _time,
            _date,
            crc,
            csize,
            usize,
            nlen,
            elen,
            clen,
            disk_start,
            _iattr,
            _eattr,
            offset,
        ) = _CENTRAL.unpack_from(buf, pos)
        total = _CENTRAL.size + nlen + elen + clen
        if not need(total):
            raise CorruptArchiveError("central directory entry cut short")
        name_at = pos + _CENTRAL.size
        raw_name = buf[name_at : name_at + nlen]
        extra = buf[name_at + nlen : name_at + nlen + elen]
        pos += total
        if 0xFFFFFFFF in (usize, csize, offset) or disk_start == 0xFFFF:
            usize, csize, offset = _apply_zip64_extra(extra, usize, csize, offset)
        seen += 1
        if seen > limits.max_members:
            raise TooManyMembersError(
                f"more than {limits.max_members} entries", limit=human_count(limits.max_members)
            )
        yield ZipMember(
            name=_decode_name(raw_name, flags),
            raw_name=raw_name,
            flags=flags,
            method=method,
            crc=crc,
            compressed_size=csize,
            uncompressed_size=usize,
            header_offset=offset + concat,
        )
    if seen != declared and (zip64 or seen % 0x10000 != declared):
        raise CorruptArchiveError(f"{seen} central directory entries, {declared} declared")


def _apply_zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF placeholders with the ZIP64 extra field's 64-bit values."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, at)
        body = extra[at + 4 : at + 4 + length]
        at += 4 + length
        if kind != _ZIP64_EXTRA:
            continue
        values = list(struct.unpack_from(f"<{len(body) // 8}Q", body)) if len(body) >= 8 else []
        wanted = [usize == 0xFFFFFFFF, csize == 0xFFFFFFFF, offset == 0xFFFFFFFF]
        if sum(wanted) > len(values):
            raise CorruptArchiveError("ZIP64 extra field too short")
        if wanted[0]:
            usize = values.pop(0)
        if wanted[1]:
            csize = values.pop(0)
        if wanted[2]:
            offset = values.pop(0)
        return usize, csize, offset
    raise CorruptArchiveError("ZIP64 sizes announced but no ZIP64 extra field")


def check_readable(member: ZipMember) -> None:
    """Refuse encrypted members and compression methods other than stored/deflate."""
    if member.encrypted:
        raise EncryptedArchiveError(f"{member.name!r} is encrypted")
    if member.method not in (_METHOD_STORED, _METHOD_DEFLATE):
        raise UnsupportedCompressionError(f"{member.name!r} uses method {member.method}")


class InflateBudget:
    """Shared caps across all members read from one archive (total inflated size)."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self.limits = limits
        self.inflated = 0

    def add(self, size: int) -> None:
        self.inflated += size
        if self.inflated > self.limits.max_inflated_bytes:
            raise InflatedTooLargeError(
                f"inflated over {self.limits.max_inflated_bytes} bytes",
                limit=human_bytes(self.limits.max_inflated_bytes),
            )


def member_data_start(fh: BinaryIO, member: ZipMember, archive_size: int) -> int:
    """Check the local header against the central entry; return where data begins."""
    header = _read_at(fh, member.header_offset, _LOCAL.size)
    if len(header) < _LOCAL.size:
        raise TruncatedArchiveError(f"local header of {member.name!r} cut short")
    sig, _v, lflags, _m, _t, _d, _crc, _cs, _us, nlen, elen = _LOCAL.unpack(header)
    if sig != _LOCAL_SIG:
        raise CorruptArchiveError(f"no local header for {member.name!r}")
    if lflags & (_FLAG_ENCRYPTED | _FLAG_STRONG_ENCRYPTION):
        raise EncryptedArchiveError(f"{member.name!r} is encrypted (local header)")
    local_name = _read_at(fh, member.header_offset + _LOCAL.size, nlen)
    if local_name != member.raw_name:
        raise CorruptArchiveError(f"local and central names differ for {member.name!r}")
    start: int = member.header_offset + _LOCAL.size + nlen + elen
    if start + member.compressed_size > archive_size:
        raise TruncatedArchiveError(f"data of {member.name!r} runs past the end of the file")
    return start


def iter_member_data(
    fh: BinaryIO,
    member: ZipMember,
    start: int,
    budget: InflateBudget,
    on_read: Callable[[int], None] | None = None,
) -> Iterator[bytes]:
    """Yield the member's inflated bytes in pieces of at most :data:`OUT_BLOCK`.

    Enforced as bytes come out (never from headers alone): the shared total
    inflated cap, the per-member compression ratio, the declared size, and at
    the end the CRC-32 and a complete deflate stream.
    """
    limits = budget.limits
    left = member.compressed_size
    produced = 0
    crc = 0
    fed = 0
    try:
        fh.seek(start)
    except OSError as exc:
        raise UnreadableArchiveError(str(exc)) from exc
    inflater = zlib.decompressobj(-15) if member.method == _METHOD_DEFLATE else None
    while left > 0 or inflater is not None:
        if left > 0:
            try:
                block = fh.read(min(left, READ_BLOCK))
            except OSError as exc:
                raise UnreadableArchiveError(str(exc)) from exc
            if not block:
                raise TruncatedArchiveError(f"data of {member.name!r} cut short")
            left -= len(block)
            fed += len(block)
            if on_read is not None:
                on_read(len(block))
        else:
            block = b""
        if inflater is None:
            pieces: Iterator[tuple[bytes, int]] = iter(((block, 0),))
        else:
            pieces = _inflate_pieces(inflater, block)
        for out, unconsumed in pieces:
            if not out:
                continue
            produced += len(out)
            if produced > member.uncompressed_size:
                raise CorruptArchiveError(f"{member.name!r} inflates beyond its declared size")
            budget.add(len(out))
            if produced > limits.ratio_check_after_bytes and produced > (
                limits.max_compression_ratio * max(1, fed - unconsumed)
            ):
                raise CompressionRatioError(
                    f"{member.name!r}: {produced} bytes from {fed - unconsumed}"
                )
            crc = zlib.crc32(out, crc)
            yield out
        if inflater is not None:
            if inflater.eof:
                if left > 0 or inflater.unused_data:
                    raise CorruptArchiveError(f"data after the deflate stream of {member.name!r}")
                break
            if left == 0 and not block:
                raise CorruptArchiveError(f"deflate stream of {member.name!r} is incomplete")
    if produced != member.uncompressed_size:
        raise CorruptArchiveError(
            f"{member.name!r}: {produced} bytes, {member.uncompressed_size} declared"
        )
    if crc != member.crc:
        raise CorruptArchiveError(f"CRC mismatch in {member.name!r}")


def _inflate_pieces(inflater: zlib._Decompress, block: bytes) -> Iterator[tuple[bytes, int]]:
    """Inflate ``block`` in bounded pieces, yielding (output, input still unconsumed)."""
    data = block
    while True:
        try:
            out = inflater.decompress(data, OUT_BLOCK)
        except zlib.error as exc:
            raise CorruptArchiveError(f"invalid deflate data: {exc}") from exc
        data = inflater.unconsumed_tail
        yield out, len(data)
        if inflater.eof or (not data and len(out) < OUT_BLOCK):
            return
