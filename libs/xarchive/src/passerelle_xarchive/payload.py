"""The binary edge payload: how an edge set travels through the NATS Object Store.

Format (version 1), all integers little-endian::

    offset  size     field
    0       7        magic  b"PXEDGES"
    7       1        version, 1
    8       8        count N (uint64)
    16      8 × N    the ids (uint64), strictly ascending

Total size is ``16 + 8 × N`` bytes; nothing may follow the last id. Strictly
ascending order means the set is deduplicated and two payloads can be merged
or joined in one streaming pass. The encoder is ``EdgeSet.iter_payload`` /
``EdgeSet.write_payload`` / ``EdgeSet.open_payload``; the decoders below read it
back in bounded memory and refuse anything that does not follow the format.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, Final

import numpy as np
from numpy.typing import NDArray

MAGIC: Final = b"PXEDGES"
VERSION: Final = 1
HEADER: Final = struct.Struct("<7sBQ")
HEADER_SIZE: Final = HEADER.size
ID_DTYPE: Final = np.dtype("<u8")
DEFAULT_CHUNK_IDS: Final = 1 << 16


class PayloadError(ValueError):
    """The bytes are not a valid edge payload (wrong magic, truncated, unsorted...)."""


def encode_header(count: int) -> bytes:
    """The 16-byte header announcing ``count`` ids."""
    return HEADER.pack(MAGIC, VERSION, count)


def payload_size(count: int) -> int:
    """Size in bytes of a payload holding ``count`` ids."""
    return HEADER_SIZE + 8 * count


def read_payload_header(stream: BinaryIO) -> int:
    """Read and check the header; return the number of ids that follow."""
    raw = _read_exact(stream, HEADER_SIZE)
    if len(raw) != HEADER_SIZE:
        raise PayloadError("payload shorter than its 16-byte header")
    magic, version, count = HEADER.unpack(raw)
    if magic != MAGIC:
        raise PayloadError("not an edge payload (bad magic)")
    if version != VERSION:
        raise PayloadError(f"unsupported edge payload version {version}")
    return int(count)


def iter_payload_arrays(
    stream: BinaryIO, *, chunk_ids: int = DEFAULT_CHUNK_IDS
) -> Iterator[NDArray[np.uint64]]:
    """Decode a payload as ascending uint64 arrays of at most ``chunk_ids`` ids each.

    Memory stays bounded by ``chunk_ids``. Raises :class:`PayloadError` if the
    stream is truncated, has trailing bytes, or ids are not strictly ascending.
    """
    if chunk_ids <= 0:
        raise ValueError("chunk_ids must be positive")
    remaining = read_payload_header(stream)
    previous: int | None = None
    while remaining:
        want = min(remaining, chunk_ids)
        raw = _read_exact(stream, 8 * want)
        if len(raw) != 8 * want:
            raise PayloadError("edge payload is truncated")
        ids = np.frombuffer(raw, dtype=ID_DTYPE).astype(np.uint64, copy=False)
        if ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            raise PayloadError("edge payload ids are not strictly ascending")
        first = int(ids[0])
        if previous is not None and first <= previous:
            raise PayloadError("edge payload ids are not strictly ascending")
        previous = int(ids[-1])
        remaining -= want
        yield ids
    if stream.read(1):
        raise PayloadError("edge payload has trailing bytes")


def iter_payload_ids(stream: BinaryIO, *, chunk_ids: int = DEFAULT_CHUNK_IDS) -> Iterator[int]:
    """Decode a payload as ascending Python ints (see :func:`iter_payload_arrays`)."""
    for ids in iter_payload_arrays(stream, chunk_ids=chunk_ids):
        yield from ids.tolist()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over short reads; fewer only at end of stream."""
    parts: list[bytes] = []
    got = 0
    while got < size:
        part = stream.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)
