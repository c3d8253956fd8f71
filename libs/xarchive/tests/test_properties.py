"""Property tests: any generated archive round-trips to the same id sets."""

from __future__ import annotations

import io
import itertools
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle_xarchive import ArchiveLimits, read_archive, read_extracted_files
from passerelle_xarchive._parse import FollowFileParser
from tests.support.archivegen import ArchiveSpec, archive_bytes, extracted_files, follow_file_chunks

U64 = st.one_of(
    st.integers(min_value=0, max_value=2**64 - 1),
    st.sampled_from([0, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1]),
)
ID_TUPLES = st.lists(U64, max_size=400).map(tuple)

SPECS = st.builds(
    ArchiveSpec,
    follower_ids_override=ID_TUPLES,
    following_ids_override=ID_TUPLES,
    follower_parts=st.integers(1, 4),
    following_parts=st.integers(1, 3),
    prefix=st.sampled_from(["", "twitter-2024-05-01-abc/", "Downloads/x archive/"]),
    bom=st.booleans(),
    crlf=st.booleans(),
    link_host=st.sampled_from(["twitter.com", "x.com", "mixed"]),
    compression=st.sampled_from(["deflate", "stored"]),
    zip64=st.booleans(),
    data_descriptor=st.booleans(),
    duplicates=st.integers(0, 50),
    manifest=st.booleans(),
    extras=st.just(value=False),
    minified=st.booleans(),
    bare_number_ids=st.booleans(),
    account_id=st.integers(min_value=0, max_value=2**64 - 1),
)


def _expected(spec: ArchiveSpec) -> tuple[list[int], list[int]]:
    following, followers = spec.expected()
    return sorted(following), sorted(followers)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, cap=st.sampled_from([1024, 1 << 20]), threaded=st.booleans())
def test_zip_round_trip(spec: ArchiveSpec, cap: int, threaded: bool) -> None:
    limits = ArchiveLimits(max_ids_in_memory=cap)
    following, followers = _expected(spec)
    with read_archive(io.BytesIO(archive_bytes(spec)), limits=limits, threaded=threaded) as got:
        assert got.account.id == spec.account_id
        assert list(got.following) == following
        assert list(got.followers) == followers


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=SPECS, read_size=st.integers(1, 5000))
def test_extracted_files_round_trip(spec: ArchiveSpec, read_size: int) -> None:
    following, followers = _expected(spec)

    class Trickle(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return super().read(min(read_size, size if size and size > 0 else read_size))

    files = [(name, Trickle(data)) for name, data in extracted_files(spec)]
    with read_extracted_files(files) as got:
        assert list(got.following) == following
        assert list(got.followers) == followers


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(U64, max_size=3000),
    cuts=st.lists(st.integers(1, 200_000), max_size=12),
    minified=st.booleans(),
    crlf=st.booleans(),
    bom=st.booleans(),
)
def test_parser_is_independent_of_piece_boundaries(
    ids: list[int], cuts: list[int], minified: bool, crlf: bool, bom: bool
) -> None:
    """Feeding a follow file in arbitrary pieces yields exactly json.loads' ids."""
    spec = ArchiveSpec(minified=minified, crlf=crlf, bom=bom)
    text = b"".join(follow_file_chunks("follower", 3, iter(ids), spec))
    body = re.sub(rb"^(\xef\xbb\xbf)?window\.YTD\.follower\.part3 = ", b"", text)
    reference = [int(e["follower"]["accountId"]) for e in json.loads(body)]
    got: list[int] = []
    parser = FollowFileParser(
        "follower", "follower.js", lambda arr: got.extend(arr.tolist()), lambda n: None
    )
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    for start, end in itertools.pairwise(points):
        parser.feed(text[start:end])
    parser.close()
    assert got == reference
