"""Every realistic variant and every hostile archive of the corpus through POST /api/archive.

The same corpus the CLI tests use (``tests/support/archivegen.py``). One nats-server and
one edge serve the whole module (plus one edge per set of limits a hostile case needs);
each good upload comes from its own person, so imports do not interfere.
Also here: the size limit enforced on a chunked upload while it streams, and a request
cancelled while its archive is being parsed leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import text

from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET, ARCHIVES
from passerelle_ingest.errors import ARCHIVE_STATUS
from passerelle_ingest.importer import ArchiveImporter
from services.ingest.tests.conftest import Edge, start_edge, stop_edge
from services.ingest.tests.test_archive_api import (
    SETTING_FOR_LIMIT,
    leftovers,
    object_ids,
    stream_messages,
)
from tests.support.archivegen import (
    ArchiveSpec,
    HostileCase,
    archive_bytes,
    extracted_files,
    hostile_corpus,
    hostile_spec_variants,
)
from tests.support.nats import NatsServer
from tests.support.ports import free_port

pytestmark = pytest.mark.asyncio(loop_scope="module")

VARIANTS = hostile_spec_variants()


def _hostile_names() -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        return [c.name for c in hostile_corpus(d)]


class Edges:
    """The module's edges: one with the default limits, others made on demand."""

    def __init__(self, nats_url: str, root: Path) -> None:
        self.nats_url = nats_url
        self.root = root
        self.started: dict[tuple[tuple[str, Any], ...], Edge] = {}

    async def get(self, **overrides: Any) -> Edge:
        key = tuple(sorted(overrides.items()))
        if key not in self.started:
            root = self.root / f"edge-{len(self.started)}"
            self.started[key] = await start_edge(self.nats_url, root, **overrides)
        return self.started[key]


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats") / "jetstream").start()
    try:
        yield server
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edges(
    module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Edges]:
    made = Edges(module_nats.url, tmp_path_factory.mktemp("edges"))
    yield made
    for edge in made.started.values():
        await stop_edge(edge)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, HostileCase]:
    return {c.name: c for c in hostile_corpus(tmp_path_factory.mktemp("hostile-api"))}


async def stream_last_seq(edge: Edge, stream: str) -> int:
    """The stream's last sequence (0 if it does not exist yet): it moves on any write."""
    js = edge.runtime.broker.connection.jetstream()
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0
    return int(info.state.last_seq)


async def stored_so_far(edge: Edge) -> tuple[int, int]:
    """Writes so far to the edge payloads' Object Store and to the ``archive.imported`` stream."""
    return (
        await stream_last_seq(edge, f"OBJ_{ARCHIVE_EDGES_BUCKET}"),
        await stream_last_seq(edge, ARCHIVES.name),
    )


def import_rows(edge: Edge, person_id: str) -> int:
    with edge.people.engine.connect() as db:
        query = text("SELECT count(*) FROM ingest_archive_import WHERE person_id = :p")
        return int(db.execute(query, {"p": person_id}).scalar_one())


# -- every realistic variant: 202, the right counts, exactly the edges, one event ---------


@pytest.mark.parametrize("upload", ["zip", "files"])
@pytest.mark.parametrize(("name", "spec"), VARIANTS, ids=[n for n, _ in VARIANTS])
async def test_variant_is_imported(edges: Edges, name: str, spec: ArchiveSpec, upload: str) -> None:
    edge = await edges.get()
    person = edge.people.sign_in("bluesky", f"did:plc:{upload}-{name}", f"{name}.test")
    if upload == "zip":
        form: Any = {"archive": ("twitter.zip", archive_bytes(spec), "application/zip")}
    else:
        form = [("files", (n, data, "text/javascript")) for n, data in extracted_files(spec)]
    async with edge.signed_in_client(person.id) as client:
        response = await client.post("/api/archive", files=form)
        assert response.status_code == 202, response.text
        body = response.json()
        following, followers = spec.expected()
        assert body["state"] == "published"
        assert (body["following"], body["followers"]) == (len(following), len(followers))
        status = await client.get(f"/api/archive/{body['import_id']}")
    assert status.json()["following"] == len(following)
    assert status.json()["followers"] == len(followers)

    [event] = [e for e in await stream_messages(edge) if e.person_id == person.id]
    assert event.import_id == body["import_id"]
    assert event.x_account_id == str(spec.account_id)
    assert (event.following_count, event.followers_count) == (len(following), len(followers))
    assert await object_ids(edge, event.following_object) == following
    assert await object_ids(edge, event.followers_object) == followers
    assert leftovers(edge) == []


# -- every hostile archive: the right 4xx and code, nothing stored, no temp file -----------


@pytest.mark.parametrize("name", _hostile_names())
async def test_hostile_archive_is_refused_and_nothing_is_stored(
    edges: Edges, corpus: dict[str, HostileCase], name: str
) -> None:
    case = corpus[name]
    edge = await edges.get(**{SETTING_FOR_LIMIT[k]: v for k, v in case.limits.items()})
    person = edge.people.sign_in("bluesky", f"did:plc:hostile-{name}", "hostile.test")
    before = await stored_so_far(edge)
    async with edge.signed_in_client(person.id) as client:
        response = await client.post(
            "/api/archive",
            files={"archive": ("twitter.zip", case.path.read_bytes(), "application/zip")},
        )
    assert response.status_code == ARCHIVE_STATUS.get(case.code, 400), response.text
    assert 400 <= response.status_code < 500
    error = response.json()["error"]
    assert error["code"] == case.code
    assert error["message"]
    assert await stored_so_far(edge) == before
    assert import_rows(edge, person.id) == 0
    assert leftovers(edge) == []


# -- a chunked upload (no Content-Length) over the limit is cut off while it streams -------


async def test_chunked_upload_over_the_limit_is_refused_while_streaming(edges: Edges) -> None:
    limit = 200_000
    edge = await edges.get(max_upload_bytes=limit)
    chunk = b"x" * 16_384
    chunks_sent = 0
    boundary = "passerelle-chunked"

    async def body() -> AsyncIterator[bytes]:
        nonlocal chunks_sent
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=archive; "
            'filename="twitter.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        for _ in range(50 * limit // len(chunk)):  # 50 times the limit, were it all read
            chunks_sent += 1
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    before = await stored_so_far(edge)
    request = edge.client.build_request(
        "POST",
        "/api/archive",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await edge.client.send(request)
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "archive_too_large"
    # refused at the first chunk past the limit, not after reading everything
    assert chunks_sent <= limit // len(chunk) + 2
    assert await stored_so_far(edge) == before
    assert import_rows(edge, edge.person_id) == 0
    assert leftovers(edge) == []
    rejected = edge.runtime.metrics.registry.get_sample_value(
        "passerelle_archives_rejected_total", {"reason": "archive_too_large"}
    )
    assert rejected == 1


async def test_chunked_upload_under_the_limit_is_imported(edges: Edges) -> None:
    spec = ArchiveSpec(followers=40, following=9)
    data = archive_bytes(spec)
    edge = await edges.get(max_upload_bytes=200_000)
    person = edge.people.sign_in("bluesky", "did:plc:chunked-ok", "chunked.test")
    boundary = "passerelle-chunked"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f"--{boundary}\r\nContent-Disposition: form-data; name=archive; "
            'filename="twitter.zip"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]
        yield f"\r\n--{boundary}--\r\n".encode()

    async with edge.signed_in_client(person.id) as client:
        response = await client.post(
            "/api/archive",
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 202, response.text
    assert response.json()["followers"] == len(spec.expected()[1])


# -- a request cancelled while its archive is parsed in a thread leaves nothing -----------


class SlowUpload(io.RawIOBase):
    """An upload whose bytes come in slowly: the first read blocks until released."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)
        self.reading = threading.Event()
        self.release = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.reading.set()
        assert self.release.wait(60), "never released"
        return self.data.readinto(buffer)


async def test_cancelled_while_parsing_leaves_no_temp_file_and_stores_nothing(
    edges: Edges,
) -> None:
    edge = await edges.get()
    person = edge.people.sign_in("bluesky", "did:plc:cancelled", "cancelled.test")
    tmp_dir = edge.settings.upload_tmp_dir
    assert tmp_dir is not None
    assert edge.runtime.engine is not None
    importer = ArchiveImporter(
        edge.runtime.engine,
        edge.runtime.broker,
        edge.settings.region,
        edge.settings.archive_limits(),
        tmp_dir,
    )
    spec = ArchiveSpec(followers=3_000, following=200, follower_parts=2)
    files = dict(extracted_files(spec))
    slow = SlowUpload(files["follower-part1.js"])
    members: list[tuple[str, Any]] = [
        (name, io.BytesIO(data)) for name, data in files.items() if name != "follower-part1.js"
    ]
    members.append(("follower-part1.js", io.BufferedReader(slow)))
    before = await stored_so_far(edge)

    upload = asyncio.create_task(importer.import_members(person.id, members))
    assert await asyncio.to_thread(slow.reading.wait, 60), "the parse never started"
    upload.cancel()
    await asyncio.sleep(0.2)
    assert not upload.done(), "the request must wait for its thread before it ends"
    slow.release.set()  # the parse thread goes on, sees it is abandoned, and stops
    with pytest.raises(asyncio.CancelledError):
        await upload
    assert leftovers(edge) == []
    assert await stored_so_far(edge) == before
    assert import_rows(edge, person.id) == 0


async def test_parse_finishing_after_cancellation_leaves_no_payload_files(edges: Edges) -> None:
    """The thread already wrote its payload files when the request goes: they are removed."""
    edge = await edges.get()
    tmp_dir = edge.settings.upload_tmp_dir
    assert tmp_dir is not None
    assert edge.runtime.engine is not None
    finished = threading.Event()
    proceed = threading.Event()

    class Importer(ArchiveImporter):
        # Holds the finished parse (payload files written) until the request is gone.
        def _parse(self, *args: Any) -> Any:
            parsed = super()._parse(*args)
            finished.set()
            assert proceed.wait(60)
            return parsed

    importer = Importer(
        edge.runtime.engine,
        edge.runtime.broker,
        edge.settings.region,
        edge.settings.archive_limits(),
        tmp_dir,
    )
    data = archive_bytes(ArchiveSpec(followers=500, following=50))
    person = edge.people.sign_in("bluesky", "did:plc:cancelled-late", "late.test")
    upload = asyncio.create_task(importer.import_zip(person.id, io.BytesIO(data)))
    assert await asyncio.to_thread(finished.wait, 60)
    assert len(leftovers(edge)) == 2  # the two payload files, not yet handed over
    upload.cancel()
    await asyncio.sleep(0.1)
    proceed.set()
    with pytest.raises(asyncio.CancelledError):
        await upload
    await asyncio.sleep(0)  # the done-callback runs on the loop right after the thread
    assert leftovers(edge) == []
    assert import_rows(edge, person.id) == 0


async def test_chunked_upload_over_the_limit_over_a_real_socket(edges: Edges) -> None:
    """Through uvicorn on TCP, as in production: the client still gets the 413.

    (uvicorn reads and discards the rest of a body its app no longer wants:
    nothing of it reaches the disk nor stays in memory.)
    """
    edge = await edges.get(max_upload_bytes=200_000)
    app = edge.client._transport.app  # type: ignore[attr-defined]  # noqa: SLF001 - same app
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)

        async def body() -> AsyncIterator[bytes]:
            yield (
                b'--b\r\nContent-Disposition: form-data; name=archive; filename="twitter.zip"'
                b"\r\n\r\n"
            )
            for _ in range(128):  # 2 MiB, ten times the limit
                yield b"x" * 16_384
            yield b"\r\n--b--\r\n"

        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            cookies=edge.client.cookies,
            headers={"X-CSRF-Token": edge.csrf},
            timeout=60,
        ) as client:
            response = await client.post(
                "/api/archive",
                content=body(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "archive_too_large"
        assert leftovers(edge) == []
    finally:
        server.should_exit = True
        await serving
