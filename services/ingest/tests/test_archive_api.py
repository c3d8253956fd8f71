"""POST /api/archive on a real nats-server: one event per import, edges in the Object Store,
bad uploads refused with a clear error and nothing stored (every variant and every hostile
archive of the corpus: test_archive_api_corpus.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from sqlalchemy import text

from passerelle_contracts import ArchiveImported
from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET, ARCHIVES
from passerelle_xarchive import iter_payload_ids
from services.ingest.tests.conftest import Edge
from tests.support.archivegen import ArchiveSpec, archive_bytes, extracted_files

#: The reader's limits, as the edge's settings name them (every hostile case's limit).
SETTING_FOR_LIMIT = {
    "max_archive_bytes": "max_upload_bytes",
    "max_members": "archive_max_members",
    "max_inflated_bytes": "archive_max_inflated_bytes",
    "max_compression_ratio": "archive_max_compression_ratio",
    "max_edges": "archive_max_edges",
}


async def stream_messages(edge: Edge) -> list[ArchiveImported]:
    js = edge.runtime.broker.connection.jetstream()
    info = await js.stream_info(ARCHIVES.name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(ARCHIVES.name, seq)
        found.append(ArchiveImported.model_validate_json(msg.data))
    return found


async def object_ids(edge: Edge, name: str) -> set[int]:
    store = await edge.runtime.broker.object_storage(ARCHIVE_EDGES_BUCKET)
    result = await store.get(name)
    assert result.data is not None
    return set(iter_payload_ids(io.BytesIO(result.data)))


def leftovers(edge: Edge) -> list[Path]:
    tmp = edge.settings.upload_tmp_dir
    assert tmp is not None
    return list(tmp.glob("*")) if tmp.exists() else []


async def upload_zip(edge: Edge, data: bytes, **kwargs: Any) -> Any:
    return await edge.client.post(
        "/api/archive", files={"archive": ("twitter.zip", data, "application/zip")}, **kwargs
    )


async def test_zip_upload_publishes_once_with_exactly_the_edges(edge: Edge) -> None:
    spec = ArchiveSpec(followers=300, following=120, duplicates=25, follower_parts=2)
    response = await upload_zip(edge, archive_bytes(spec))
    assert response.status_code == 202, response.text
    body = response.json()
    following, followers = spec.expected()
    assert body["state"] == "published"
    assert (body["following"], body["followers"]) == (len(following), len(followers))

    [event] = await stream_messages(edge)
    assert event.person_id == edge.person_id
    assert event.import_id == body["import_id"]
    assert event.x_account_id == str(spec.account_id)
    assert event.x_username == spec.username
    assert await object_ids(edge, event.following_object) == following
    assert await object_ids(edge, event.followers_object) == followers

    status = await edge.client.get(f"/api/archive/{body['import_id']}")
    assert status.json()["state"] == "published"
    assert status.json()["followers"] == len(followers)
    assert leftovers(edge) == []


async def test_same_archive_again_is_a_no_op_and_a_newer_one_replaces(edge: Edge) -> None:
    first = await upload_zip(edge, archive_bytes(ArchiveSpec(followers=50, following=10)))
    again = await upload_zip(
        edge, archive_bytes(ArchiveSpec(followers=50, following=10, prefix="unzipped/"))
    )
    assert again.status_code == 202
    assert again.json()["state"] == "duplicate"
    assert again.json()["import_id"] == first.json()["import_id"]
    assert len(await stream_messages(edge)) == 1

    newer = await upload_zip(edge, archive_bytes(ArchiveSpec(followers=60, following=10)))
    assert newer.json()["state"] == "published"
    assert newer.json()["import_id"] != first.json()["import_id"]
    events = await stream_messages(edge)
    assert [e.import_id for e in events] == [first.json()["import_id"], newer.json()["import_id"]]


async def test_extracted_files_upload_matches_the_zip(edge: Edge) -> None:
    spec = ArchiveSpec(followers=80, following=30, follower_parts=3, bom=True, crlf=True)
    files = [("files", (name, data, "text/javascript")) for name, data in extracted_files(spec)]
    response = await edge.client.post("/api/archive", files=files)
    assert response.status_code == 202, response.text
    [event] = await stream_messages(edge)
    following, followers = spec.expected()
    assert await object_ids(edge, event.followers_object) == followers
    assert await object_ids(edge, event.following_object) == following


async def test_unexpected_extracted_file_is_refused(edge: Edge) -> None:
    response = await edge.client.post(
        "/api/archive",
        files=[("files", ("tweets.js", b"window.YTD.tweets.part0 = []", "text/plain"))],
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unexpected_file"
    assert await stream_messages(edge) == []


async def test_an_upload_over_the_size_limit_is_refused_before_reading(edge_factory: Any) -> None:
    edge = await edge_factory(max_upload_bytes=10_000)
    response = await upload_zip(edge, b"x" * 20_000)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "archive_too_large"


async def test_sign_in_and_csrf_are_required(edge: Edge) -> None:
    data = archive_bytes(ArchiveSpec(followers=5, following=5))
    anonymous = await edge.client.post(
        "/api/archive", files={"archive": ("a.zip", data)}, cookies={"passerelle_session": "forged"}
    )
    assert anonymous.status_code == 401
    no_token = await edge.client.post(
        "/api/archive", files={"archive": ("a.zip", data)}, headers={"X-CSRF-Token": "wrong"}
    )
    assert no_token.status_code == 403
    assert await stream_messages(edge) == []


async def test_another_persons_import_reads_as_unknown(edge: Edge) -> None:
    mine = await upload_zip(edge, archive_bytes(ArchiveSpec(followers=5, following=5)))
    other = edge.people.sign_in("mastodon", "bob@beta.test", "bob@beta.test")
    async with edge.signed_in_client(other.id) as bob:
        response = await bob.get(f"/api/archive/{mine.json()['import_id']}")
    assert response.status_code == 404


@pytest.mark.parametrize("field", ["archive", "nothing"])
async def test_missing_archive_field(edge: Edge, field: str) -> None:
    files = {"other": ("a.zip", b"PK")} if field == "nothing" else {}
    response = await edge.client.post("/api/archive", files=files or {"x": ("a", b"")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_archive"


async def test_nats_down_means_503_and_nothing_half_written(edge: Edge, nats_server: Any) -> None:
    nats_server.stop()
    response = await upload_zip(edge, archive_bytes(ArchiveSpec(followers=20, following=5)))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert leftovers(edge) == []
    with edge.people.engine.connect() as db:
        assert db.execute(text("SELECT count(*) FROM ingest_archive_import")).scalar() == 0


async def test_erasure_removes_everything_here_and_tells_everyone(edge: Edge) -> None:
    uploaded = await upload_zip(edge, archive_bytes(ArchiveSpec(followers=20, following=5)))
    [event] = await stream_messages(edge)
    response = await edge.client.delete("/api/me")
    assert response.status_code == 204
    js = edge.runtime.broker.connection.jetstream()
    tombstone = await js.get_last_msg("ERASURES", "user.erased")
    assert edge.person_id.encode() in tombstone.data
    store = await edge.runtime.broker.object_storage(ARCHIVE_EDGES_BUCKET)
    for name in (event.following_object, event.followers_object):
        with pytest.raises(nats.js.errors.ObjectNotFoundError):
            await store.get(name)
    with edge.people.engine.connect() as db:
        for table in ("ingest_person", "ingest_linked_account", "ingest_archive_import"):
            assert db.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    gone = await edge.client.get(f"/api/archive/{uploaded.json()['import_id']}")
    assert gone.status_code == 401


async def test_metrics_count_imports_rejections_and_edges(edge: Edge) -> None:
    registry = edge.runtime.metrics.registry
    await upload_zip(edge, archive_bytes(ArchiveSpec(followers=40, following=7)))
    await upload_zip(edge, b"not a zip at all")
    value = registry.get_sample_value
    assert (
        value("passerelle_archives_imported_total", {"upload": "zip", "outcome": "published"}) == 1
    )
    assert value("passerelle_archives_rejected_total", {"reason": "not_a_zip"}) == 1
    assert value("passerelle_edges_ingested_total", {"direction": "follower"}) == 40
