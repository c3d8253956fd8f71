"""Reading realistic archives: every layout variant, third-party zips, extracted files."""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from passerelle_xarchive import (
    Account,
    ArchiveContents,
    ArchiveLimits,
    classify_member_name,
    read_archive,
    read_extracted_files,
)
from tests.support.archivegen import (
    ArchiveSpec,
    account_js,
    archive_bytes,
    extracted_files,
    follow_file_chunks,
    hostile_spec_variants,
    write_archive,
)

VARIANTS = hostile_spec_variants()


def _check(contents: ArchiveContents, spec: ArchiveSpec) -> None:
    following, followers = spec.expected()
    assert contents.account == Account(spec.account_id, spec.username)
    assert len(contents.following) == len(following)
    assert len(contents.followers) == len(followers)
    assert list(contents.following) == sorted(following)
    assert list(contents.followers) == sorted(followers)


@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
def test_variant_from_stream(name: str, spec: ArchiveSpec, threaded: bool) -> None:
    with read_archive(io.BytesIO(archive_bytes(spec)), threaded=threaded) as contents:
        _check(contents, spec)


@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
def test_variant_from_path(name: str, spec: ArchiveSpec, tmp_path: Path) -> None:
    path = tmp_path / "archive.zip"
    write_archive(path, spec)
    with read_archive(path) as contents:
        _check(contents, spec)
        assert contents.stats.members_read == 1 + spec.follower_parts + spec.following_parts


@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
def test_variant_as_extracted_files(name: str, spec: ArchiveSpec) -> None:
    files = [(f"data/{n}", io.BytesIO(d)) for n, d in extracted_files(spec)]
    files.append(("tweets.js", io.BytesIO(b"not even read")))
    with read_extracted_files(files) as contents:
        _check(contents, spec)


def test_canonical_layout_uses_the_fast_path() -> None:
    spec = ArchiveSpec(followers=20_000, following=3_000)
    with read_archive(io.BytesIO(archive_bytes(spec))) as contents:
        _check(contents, spec)
        # all but the last entry of each file go through the vectorised path
        assert contents.stats.fast_entries >= contents.stats.entries - 2


def test_the_fast_path_falls_back_mid_file_and_resumes() -> None:
    """A file whose layout changes in the middle (re-indented block, an "I" in a link,
    a bare number) is still read exactly, mostly fast."""
    spec = ArchiveSpec(followers=60_000, following=10)
    text = b"".join(follow_file_chunks("follower", 0, spec.follower_ids(), spec))
    third = text.find(b"  {\n", len(text) // 3)
    odd = (
        b'  {"follower":{"userLink":"https://x.com/I/Am/Here","accountId":"777"}},\n'
        b'  {\n\t"follower" :{ "accountId":18446744073709551615 }},\n'
    )
    # canonical layout, but a capital I in the link (far from the rest, in another
    # region): the "I" count must not match the entry count
    intent = (
        b'  {\n    "follower" : {\n      "accountId" : "888",\n'
        b'      "userLink" : "https://x.com/Intent?user_id=888"\n    }\n  },\n'
    )
    two_thirds = text.find(b"  {\n", 2 * len(text) // 3)
    edited = text[:third] + odd + text[third:two_thirds] + intent + text[two_thirds:]
    files = [
        ("account.js", io.BytesIO(account_js(spec))),
        ("following.js", io.BytesIO(b"window.YTD.following.part0 = [ ]")),
        ("follower.js", io.BytesIO(edited)),
    ]
    with read_extracted_files(files) as contents:
        expected = set(spec.follower_ids()) | {777, 888, 2**64 - 1}
        assert list(contents.followers) == sorted(expected)
        assert len(contents.following) == 0
        assert contents.stats.fast_entries > 59_500  # odd entries cost a small slow region


def test_account_keeps_only_id_and_username() -> None:
    fields = {f.name for f in dataclasses.fields(Account)}
    assert fields == {"id", "username"}
    spec = ArchiveSpec()
    with read_archive(io.BytesIO(archive_bytes(spec))) as contents:
        assert "example.org" not in repr(contents)
        assert "Someone Leaving" not in repr(contents)


def test_ids_beyond_2_53_are_exact_in_strings_and_bare_numbers() -> None:
    tricky = (2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 0, 9_007_199_254_740_993)
    for bare in (False, True):
        spec = ArchiveSpec(
            follower_ids_override=tricky,
            following_ids_override=(2**53 + 3,),
            bare_number_ids=bare,
        )
        with read_archive(io.BytesIO(archive_bytes(spec))) as contents:
            assert list(contents.followers) == sorted(set(tricky))
            assert list(contents.following) == [2**53 + 3]


def test_duplicates_count_once_across_parts_and_files() -> None:
    ids = tuple(range(1000, 1100))
    spec = ArchiveSpec(
        follower_ids_override=ids + ids[:40],
        following_ids_override=ids[:10] * 3,
        follower_parts=3,
        following_parts=2,
    )
    with read_archive(io.BytesIO(archive_bytes(spec))) as contents:
        assert len(contents.followers) == 100
        assert len(contents.following) == 10
        assert contents.stats.entries == 140 + 30


def test_duplicate_member_entries_count_once() -> None:
    """The same member stored twice (a re-zip quirk) does not double anything."""
    spec = ArchiveSpec(followers=300, following=30, extras=False)
    files = dict(extracted_files(spec))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data/account.js", files["account.js"])
        zf.writestr("data/following.js", files["following.js"])
        zf.writestr("data/follower.js", files["follower.js"])
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("data/follower.js", files["follower.js"])
    with read_archive(io.BytesIO(out.getvalue())) as contents:
        _check(contents, spec)


# -- archives written by other tools ----------------------------------------------------


def _write_tree(root: Path, spec: ArchiveSpec) -> None:
    data = root / "data"
    data.mkdir(parents=True)
    for name, content in extracted_files(spec):
        (data / name).write_bytes(content)
    (data / "tweets.js").write_bytes(b"window.YTD.tweets.part0 = []")
    (root / "Your archive.html").write_bytes(b"<html></html>")


@pytest.mark.parametrize(
    ("compression", "force_zip64"),
    [(zipfile.ZIP_DEFLATED, False), (zipfile.ZIP_STORED, False), (zipfile.ZIP_DEFLATED, True)],
    ids=["deflate", "stored", "zip64"],
)
def test_python_zipfile_archives(compression: int, force_zip64: bool, tmp_path: Path) -> None:
    spec = ArchiveSpec(followers=5_000, following=800, follower_parts=2)
    path = tmp_path / "py.zip"
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, content in extracted_files(spec):
            with zf.open(f"twitter-2024/data/{name}", "w", force_zip64=force_zip64) as out:
                out.write(content)
    with read_archive(path) as contents:
        _check(contents, spec)


@pytest.mark.skipif(shutil.which("zip") is None, reason="Info-ZIP `zip` not installed")
@pytest.mark.parametrize("options", [[], ["-0"], ["-fz"]], ids=["deflate", "stored", "zip64"])
def test_info_zip_archives(options: list[str], tmp_path: Path) -> None:
    """An archive unzipped and re-zipped with the `zip` tool (top-level folder kept)."""
    spec = ArchiveSpec(followers=4_000, following=500, following_parts=2, crlf=True)
    _write_tree(tmp_path / "twitter-2024-05-01-abc", spec)
    path = tmp_path / "rezipped.zip"
    subprocess.run(
        ["zip", "-q", "-r", *options, str(path), "twitter-2024-05-01-abc"],
        cwd=tmp_path,
        check=True,
    )
    with read_archive(path) as contents:
        _check(contents, spec)


# -- member names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "prefix"),
    [
        ("data/follower.js", "follower", ""),
        ("data/follower-part12.js", "follower", ""),
        ("data/following.js", "following", ""),
        ("data/account.js", "account", ""),
        ("twitter-2024/data/follower.js", "follower", "twitter-2024"),
        ("Downloads/twitter/data/Follower.JS", "follower", "Downloads/twitter"),
        ("twitter\\data\\following-part1.js", "following", "twitter"),
    ],
)
def test_member_names_that_are_read(name: str, kind: str, prefix: str) -> None:
    wanted = classify_member_name(name)
    assert wanted is not None
    assert (wanted.kind, wanted.prefix) == (kind, prefix)


@pytest.mark.parametrize(
    "name",
    [
        "../../data/follower.js",
        "data/../data/follower.js",
        "./data/follower.js",
        "/data/follower.js",
        "C:/data/follower.js",
        "c:data/follower.js",
        "..\\data\\follower.js",
        "a//data/follower.js",
        "follower.js",
        "data/follower.js/",
        "data/followers.js",
        "data/follower.json",
        "data/tweets.js",
        "data/follower-part.js",
        "__MACOSX/data/._follower.js",
        "data/follower.js\x00.txt",
    ],
)
def test_member_names_that_are_ignored(name: str) -> None:
    assert classify_member_name(name) is None


def test_traversal_members_are_ignored_next_to_a_real_one(tmp_path: Path) -> None:
    """A ``../../data/follower.js`` next to the real file adds nothing and writes nothing."""
    spec = ArchiveSpec(followers=50, following=5, extras=False)
    intruder = b"".join(follow_file_chunks("follower", 0, iter([4242, 4343]), spec))
    path = tmp_path / "a.zip"
    write_archive(path, spec)
    with zipfile.ZipFile(path, "a") as zf:
        for name in (
            "../../data/follower.js",
            "/data/follower.js",
            "data/../data/follower-part9.js",
        ):
            zf.writestr(name, intruder)
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with read_archive(path) as contents:
        _check(contents, spec)
        assert 4242 not in set(contents.followers)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_shallowest_archive_folder_wins(tmp_path: Path) -> None:
    spec = ArchiveSpec(followers=80, following=8, extras=False)
    other = ArchiveSpec(followers=30, following=3, seed=9, extras=False)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in extracted_files(spec):
            zf.writestr(f"twitter/data/{name}", data)
        for name, data in extracted_files(other):
            zf.writestr(f"twitter/old/copy/data/{name}", data)
    with read_archive(io.BytesIO(out.getvalue())) as contents:
        _check(contents, spec)


def test_archive_with_a_prepended_stub_is_read() -> None:
    """Self-extracting style: bytes before the zip shift every offset."""
    spec = ArchiveSpec(followers=200, following=20)
    with read_archive(io.BytesIO(b"#!stub\n" * 100 + archive_bytes(spec))) as contents:
        _check(contents, spec)


def test_stream_position_and_ownership() -> None:
    spec = ArchiveSpec(followers=10, following=2)
    stream = io.BytesIO(archive_bytes(spec))
    read_archive(stream).close()
    assert not stream.closed  # the caller's stream is not closed
    with pytest.raises(ValueError, match="seekable"):
        read_archive(_Unseekable(archive_bytes(spec)))


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(buffer)


def test_extracted_files_read_from_unseekable_streams() -> None:
    spec = ArchiveSpec(followers=3_000, following=100, follower_parts=2)
    files = [(n, _Unseekable(d)) for n, d in extracted_files(spec)]
    with read_extracted_files(files) as contents:  # type: ignore[arg-type]
        _check(contents, spec)


def test_edge_sets_expose_arrays_and_payload() -> None:
    spec = ArchiveSpec(followers=5_000, following=100)
    with read_archive(io.BytesIO(archive_bytes(spec)), limits=ArchiveLimits()) as contents:
        arr = contents.followers.to_array()
        assert arr.dtype == np.uint64
        assert bool(np.all(arr[1:] > arr[:-1]))
        assert contents.followers.payload_size == 16 + 8 * len(arr)
