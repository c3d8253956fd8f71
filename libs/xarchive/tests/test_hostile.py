"""Bad uploads: every hostile case maps to its named error; caps hold while streaming."""

from __future__ import annotations

import io
import re
import zlib
from pathlib import Path

import pytest

from passerelle_xarchive import (
    ALL_ERRORS,
    MESSAGES,
    ArchiveError,
    ArchiveLimits,
    CompressionRatioError,
    CorruptArchiveError,
    DecompressionBombError,
    InflatedTooLargeError,
    InvalidIdError,
    read_archive,
    read_extracted_files,
)
from passerelle_xarchive._zip import InflateBudget, ZipMember, iter_member_data
from tests.support.archivegen import (
    ArchiveSpec,
    HostileCase,
    ZipWriter,
    account_js,
    archive_bytes,
    extracted_files,
    follow_file_chunks,
    hostile_corpus,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[HostileCase]:
    return hostile_corpus(tmp_path_factory.mktemp("hostile"))


def _case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [c.name for c in hostile_corpus(d)]


CASE_NAMES = _case_names()


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.parametrize("threaded", [True, False], ids=["threaded", "inline"])
def test_hostile_case_is_refused_with_its_code(
    name: str, threaded: bool, corpus: list[HostileCase]
) -> None:
    case = next(c for c in corpus if c.name == name)
    limits = ArchiveLimits(**case.limits)  # type: ignore[arg-type]
    with pytest.raises(ArchiveError) as caught:
        read_archive(case.path, limits=limits, threaded=threaded).close()
    assert caught.value.code == case.code, caught.value.detail
    assert caught.value.message == str(caught.value)
    assert "\n" not in caught.value.message


def test_corpus_covers_every_code(corpus: list[HostileCase]) -> None:
    covered = {c.code for c in corpus}
    assert covered == set(MESSAGES) - {"unreadable"}


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError) as caught:
        read_archive(tmp_path / "nope.zip")
    assert caught.value.code == "unreadable"
    with pytest.raises(ArchiveError) as caught:
        read_archive(tmp_path)  # a directory
    assert caught.value.code == "unreadable"


# -- messages ----------------------------------------------------------------------------


def test_every_code_has_one_class_and_one_message() -> None:
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(codes) == len(set(codes))
    assert set(codes) == set(MESSAGES)
    for code, template in MESSAGES.items():
        assert re.fullmatch(r"[a-z_]+", code)
        assert "\n" not in template
        assert template.endswith("."), code
        # only named gettext-style placeholders
        assert re.sub(r"%\((\w+)\)s", "", template).count("%") == 0, code


def test_missing_follow_files_tells_how_to_request_the_archive() -> None:
    assert (
        "Settings → Your account → Download an archive of your data"
        in MESSAGES["missing_follow_files"]
    )


def test_messages_interpolate_params() -> None:
    err = InvalidIdError("detail for logs", member="data/follower.js")
    assert "data/follower.js" in err.message
    assert "detail for logs" not in err.message
    assert err.template == MESSAGES["invalid_id"]
    assert issubclass(InflatedTooLargeError, DecompressionBombError)
    assert issubclass(CompressionRatioError, DecompressionBombError)


# -- caps enforced while streaming, not from headers ---------------------------------------


def test_inflated_cap_is_enforced_while_streaming_despite_honest_looking_headers() -> None:
    """The shared budget stops inflation at the cap even if headers announced more."""
    data = b"x" * (3 * 1024 * 1024)
    packed = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = packed.compress(data) + packed.flush()
    member = ZipMember(
        name="data/follower.js",
        raw_name=b"data/follower.js",
        flags=0,
        method=8,
        crc=zlib.crc32(data),
        compressed_size=len(raw),
        uncompressed_size=len(data),
        header_offset=0,
    )
    limits = ArchiveLimits(max_inflated_bytes=1024 * 1024, max_compression_ratio=10_000.0)
    produced: list[int] = []

    def drain() -> None:
        pieces = iter_member_data(io.BytesIO(raw), member, 0, InflateBudget(limits))
        produced.extend(len(piece) for piece in pieces)

    with pytest.raises(InflatedTooLargeError):
        drain()
    assert sum(produced) <= 1024 * 1024


def test_ratio_cap_stops_early_without_inflating_the_bomb() -> None:
    spec = ArchiveSpec(followers=10, following=2, extras=False)
    bomb = b"window.YTD.follower.part0 = [" + b" " * (200 * 1024 * 1024) + b"]"
    out = io.BytesIO()
    zw = ZipWriter(out)
    files = dict(extracted_files(spec))
    zw.add("data/account.js", files["account.js"])
    zw.add("data/following.js", files["following.js"])
    zw.add("data/follower.js", bomb, level=9)
    zw.close()
    del bomb
    assert len(out.getvalue()) < 1024 * 1024
    with pytest.raises(CompressionRatioError):
        read_archive(io.BytesIO(out.getvalue()))


def test_total_inflated_cap_on_extracted_files() -> None:
    spec = ArchiveSpec(followers=2_000, following=10)
    files = [(n, io.BytesIO(d)) for n, d in extracted_files(spec)]
    with pytest.raises(InflatedTooLargeError):
        read_extracted_files(files, limits=ArchiveLimits(max_inflated_bytes=100_000))


def test_edges_cap_counts_duplicates_as_read() -> None:
    spec = ArchiveSpec(follower_ids_override=(5,) * 500, following_ids_override=(6,))
    with pytest.raises(ArchiveError) as caught:
        read_archive(io.BytesIO(archive_bytes(spec)), limits=ArchiveLimits(max_edges=400))
    assert caught.value.code == "too_many_edges"


def test_account_file_size_cap() -> None:
    spec = ArchiveSpec(followers=1, following=1)
    huge_account = account_js(spec)[:-2] + b" " * 2_000_000 + b"]"
    files = [
        ("account.js", io.BytesIO(huge_account)),
        ("follower.js", io.BytesIO(b"window.YTD.follower.part0 = []")),
        ("following.js", io.BytesIO(b"window.YTD.following.part0 = []")),
    ]
    with pytest.raises(ArchiveError) as caught:
        read_extracted_files(files)
    assert caught.value.code == "unexpected_shape"


def test_damaged_member_reports_corruption_not_json() -> None:
    """A flipped byte that breaks the JSON is reported as damage (CRC), not bad JSON."""
    spec = ArchiveSpec(followers=3_000, following=5, compression="stored", extras=False)
    data = bytearray(archive_bytes(spec))
    at = data.find(b'"accountId" : "', data.find(b"window.YTD.follower")) + 1
    data[at] = ord("{")  # breaks the JSON and the CRC
    with pytest.raises(CorruptArchiveError):
        read_archive(io.BytesIO(bytes(data)))


def test_conflicting_accounts_are_ambiguous() -> None:
    spec = ArchiveSpec(followers=5, following=5)
    other = ArchiveSpec(followers=5, following=5, account_id=99, username="someone_else")
    files = [
        ("account.js", io.BytesIO(account_js(spec))),
        ("data/account.js", io.BytesIO(account_js(other))),
        *[(n, io.BytesIO(d)) for n, d in extracted_files(spec) if n != "account.js"],
    ]
    with pytest.raises(ArchiveError) as caught:
        read_extracted_files(files)
    assert caught.value.code == "ambiguous_archive"


@pytest.mark.parametrize(
    ("username", "ok"),
    [("jack", True), ("A_b_9", True), ("", False), ("bad name", False), ("\x1b[31mred", False)],
)
def test_usernames_are_validated(username: str, ok: bool) -> None:
    spec = ArchiveSpec(followers=3, following=3, username=username)
    files = [(n, io.BytesIO(d)) for n, d in extracted_files(spec)]
    if ok:
        with read_extracted_files(files) as contents:
            assert contents.account.username == username
    else:
        with pytest.raises(ArchiveError) as caught:
            read_extracted_files(files)
        assert caught.value.code == "unexpected_shape"


# -- temp files are removed ----------------------------------------------------------------


def _fds_into(directory: Path) -> list[str]:
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = str(fd.readlink())
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def _open_fds() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def test_spill_files_are_removed_on_success(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    spec = ArchiveSpec(followers=30_000, following=9_000)
    limits = ArchiveLimits(max_ids_in_memory=4096)
    contents = read_archive(io.BytesIO(archive_bytes(spec)), limits=limits, temp_dir=spill)
    assert contents.followers.spilled
    assert contents.following.spilled
    assert len(_fds_into(spill)) == 2  # open while the sets are alive...
    assert list(contents.followers) == sorted(spec.expected()[1])
    contents.close()
    assert _fds_into(spill) == []  # ...and gone once closed
    assert list(spill.iterdir()) == []


def test_spill_files_are_removed_on_error(tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    spill.mkdir()
    spec = ArchiveSpec(followers=40_000, following=9_000)
    text = b"".join(follow_file_chunks("follower", 0, spec.follower_ids(), spec))
    at = text.rfind(b'"accountId" : "') + len(b'"accountId" : "')
    bad = text[:at] + b"99999999999999999999" + text[text.find(b'"', at) :]
    files = [
        ("account.js", io.BytesIO(account_js(spec))),
        *[(n, io.BytesIO(d)) for n, d in extracted_files(spec) if n.startswith("following")],
        ("follower.js", io.BytesIO(bad)),
    ]
    before = _open_fds()
    with pytest.raises(InvalidIdError):
        read_extracted_files(files, limits=ArchiveLimits(max_ids_in_memory=4096), temp_dir=spill)
    assert _fds_into(spill) == []
    assert list(spill.iterdir()) == []
    assert _open_fds() == before


def test_no_inflate_thread_outlives_a_failed_read() -> None:
    import threading

    data = archive_bytes(ArchiveSpec(followers=200_000, following=10, compression="stored"))
    damaged = bytearray(data)
    damaged[len(data) // 2 : len(data) // 2 + 20] = b"7" * 20  # digits: only the CRC sees it
    caught: list[ArchiveError] = []  # keep the traceback (and its frames) alive, as callers do
    for archive, limits in (
        (data, ArchiveLimits(max_edges=50_000)),  # raised by the parser (main thread)
        (bytes(damaged), ArchiveLimits()),  # raised by the inflater (helper thread)
    ):
        try:
            read_archive(io.BytesIO(archive), limits=limits, threaded=True)
        except ArchiveError as error:
            caught.append(error)
        alive = [t.name for t in threading.enumerate() if t.name == "xarchive-inflate"]
        assert alive == []
    assert [e.code for e in caught] == ["too_many_edges", "corrupt"]
