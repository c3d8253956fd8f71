"""Edge sets (dedup with spilling) and the binary payload format."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle_xarchive import (
    HEADER_SIZE,
    MAGIC,
    EdgeSet,
    EdgeSetBuilder,
    PayloadError,
    iter_payload_arrays,
    iter_payload_ids,
    read_payload_header,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)
EDGE_VALUES = st.sampled_from([0, 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1])
IDS = st.lists(st.one_of(U64, EDGE_VALUES, st.integers(0, 50)), max_size=3000)


def _build(ids: list[int], cap: int, tmp: Path | None = None, batch: int = 777) -> EdgeSet:
    builder = EdgeSetBuilder(cap, tmp)
    for start in range(0, len(ids), batch):
        builder.add(np.array(ids[start : start + batch], dtype=np.uint64))
    return builder.finish()


@settings(max_examples=150, deadline=None)
@given(ids=IDS, cap=st.sampled_from([1024, 1500, 4096, 1 << 20]), batch=st.integers(1, 2000))
def test_builder_equals_sorted_python_set(ids: list[int], cap: int, batch: int) -> None:
    with _build(ids, cap, batch=batch) as edges:
        assert list(edges) == sorted(set(ids))
        assert len(edges) == len(set(ids))
        for chunk in edges.iter_arrays(333):
            assert chunk.dtype == np.uint64
            assert len(chunk) <= 333


def test_spilled_merge_of_many_runs(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 2**64 - 1, size=200_000, dtype=np.uint64, endpoint=True)
    ids = np.concatenate([ids, ids[:50_000], rng.integers(0, 5000, 30_000, dtype=np.uint64)])
    rng.shuffle(ids)
    builder = EdgeSetBuilder(1024, tmp_path)
    for part in np.array_split(ids, 97):
        builder.add(part)
    assert builder.runs > 100
    with builder.finish() as edges:
        assert edges.spilled
        expected = np.unique(ids)
        assert len(edges) == len(expected)
        assert np.array_equal(edges.to_array(), expected)


@pytest.mark.parametrize("cap", [40_000, 1 << 20])
def test_large_chunks_sorted_in_the_background(cap: int, tmp_path: Path) -> None:
    """Chunks big enough to be sorted in helper threads, with buffer growth and spills."""
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 2**64 - 1, size=300_000, dtype=np.uint64, endpoint=True)
    ids = np.concatenate([ids, ids[:60_000]])
    rng.shuffle(ids)
    builder = EdgeSetBuilder(cap, tmp_path)
    for part in np.array_split(ids, 12):  # 30,000 ids each
        builder.add(part)
    with builder.finish() as edges:
        assert edges.spilled == (cap < ids.size)
        assert np.array_equal(edges.to_array(), np.unique(ids))


def test_builder_close_without_finish_releases_the_file(tmp_path: Path) -> None:
    builder = EdgeSetBuilder(1024, tmp_path)
    builder.add(np.arange(10_000, dtype=np.uint64))
    assert builder.runs > 0
    builder.close()
    with pytest.raises(ValueError, match="finished"):
        builder.add(np.arange(3, dtype=np.uint64))


def test_closed_edge_set_refuses_use() -> None:
    edges = EdgeSet.from_ids([3, 1, 2])
    edges.close()
    with pytest.raises(ValueError, match="closed"):
        list(edges)


# -- payload ---------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(ids=IDS, cap=st.sampled_from([1024, 1 << 20]), chunk=st.integers(1, 5000))
def test_payload_round_trip(ids: list[int], cap: int, chunk: int) -> None:
    with _build(ids, cap) as edges:
        out = io.BytesIO()
        written = edges.write_payload(out, chunk_ids=chunk)
        data = out.getvalue()
        assert written == len(data) == edges.payload_size == HEADER_SIZE + 8 * len(set(ids))
        assert b"".join(edges.iter_payload(chunk)) == data
        assert edges.open_payload(chunk).read() == data
        assert list(iter_payload_ids(io.BytesIO(data), chunk_ids=chunk)) == sorted(set(ids))


def test_payload_layout_is_documented_little_endian() -> None:
    with EdgeSet.from_ids([2**64 - 1, 1, 2**53 + 1]) as edges:
        data = b"".join(edges.iter_payload())
    assert data[:7] == MAGIC == b"PXEDGES"
    assert data[7] == 1
    assert struct.unpack_from("<Q", data, 8)[0] == 3
    assert struct.unpack_from("<3Q", data, 16) == (1, 2**53 + 1, 2**64 - 1)
    assert read_payload_header(io.BytesIO(data)) == 3


def test_payload_reader_is_a_stream_for_object_store_put() -> None:
    with EdgeSet.from_ids(list(range(100_000))) as edges:
        stream = edges.open_payload(chunk_ids=4096)
        pieces = []
        while piece := stream.read(128 * 1024):
            pieces.append(piece)
        assert len(b"".join(pieces)) == edges.payload_size


def _payload(ids: list[int], count: int | None = None) -> bytes:
    head = MAGIC + bytes([1]) + struct.pack("<Q", len(ids) if count is None else count)
    return head + struct.pack(f"<{len(ids)}Q", *ids)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than its 16-byte header"),
        (b"PXEDGES\x01\x00", "shorter"),
        (b"NOTEDGE\x01" + bytes(8), "bad magic"),
        (b"PXEDGES\x02" + bytes(8), "version 2"),
        (_payload([1, 2, 3], count=4), "truncated"),
        (_payload([1, 2, 3], count=2), "trailing"),
        (_payload([1, 3, 2]), "ascending"),
        (_payload([1, 1]), "ascending"),
    ],
)
def test_payload_decoder_refuses_bad_data(data: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        list(iter_payload_arrays(io.BytesIO(data)))


def test_payload_decoder_checks_order_across_chunks() -> None:
    data = _payload([1, 2, 5, 4, 9])
    with pytest.raises(PayloadError, match="ascending"):
        list(iter_payload_arrays(io.BytesIO(data), chunk_ids=3))
    assert list(iter_payload_ids(io.BytesIO(_payload([1, 2, 5, 6])), chunk_ids=1)) == [1, 2, 5, 6]
