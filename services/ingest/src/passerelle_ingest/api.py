"""The JSON API under ``/api`` (errors are ``{"error": {"code", "message"}}``)."""

from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from passerelle_contracts import ConsentChanged, UserErased
from passerelle_contracts.streams import ARCHIVE_EDGES_BUCKET
from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ARCHIVE_STATUS, ApiError
from passerelle_ingest.importer import ArchiveImporter, ImportUnavailableError
from passerelle_ingest.metrics import IngestMetrics
from passerelle_ingest.people import Consents, People
from passerelle_ingest.sessions import COOKIE, Session
from passerelle_ingest.settings import Settings
from passerelle_ingest.status import SystemStatus, system_status
from passerelle_platform.broker import publish_event
from passerelle_platform.runtime import ServiceRuntime
from passerelle_xarchive import ArchiveError

MEMBER_PREFIXES = ("account", "follower", "following", "manifest")


class ImportAccepted(BaseModel):
    """The answer to an upload."""

    import_id: str
    state: str
    following: int
    followers: int


class ImportStatus(ImportAccepted):
    """An import as stored."""

    error_code: str | None = None


class ConsentsBody(BaseModel):
    """Consents, one per purpose."""

    matching: bool = False
    auto_follow: bool = False
    notifications: bool = False


class Me(BaseModel):
    """The signed-in person, as they see themselves."""

    person_id: str
    consents: ConsentsBody
    accounts: dict[str, str]
    x_username: str | None = None


def build_api(
    runtime: ServiceRuntime,
    settings: Settings,
    people: People,
    importer: ArchiveImporter,
    auth: Auth,
    metrics: IngestMetrics,
) -> APIRouter:
    """Routes of the JSON API."""
    router = APIRouter(prefix="/api")
    signer = auth.signer
    current, csrf_checked = auth.current, auth.csrf_checked

    @router.get("/health", response_model=SystemStatus, tags=["operations"])
    async def health() -> SystemStatus:
        """Each service's status, asked over NATS right now."""
        return await system_status(
            runtime.broker, settings.region, settings.request_timeout_seconds
        )

    @router.get("/me", response_model=Me)
    async def me(session: Annotated[Session, Depends(current)], response: Response) -> Me:
        person = people.get(session.person_id)
        assert person is not None
        response.headers["X-CSRF-Token"] = signer.csrf_token(session)
        return Me(
            person_id=person.id,
            consents=ConsentsBody(
                matching=person.consent_matching,
                auto_follow=person.consent_auto_follow,
                notifications=person.consent_notifications,
            ),
            accounts={a.network: a.handle for a in people.accounts(person.id)},
            x_username=person.x_username,
        )

    @router.put("/consents", response_model=ConsentsBody)
    async def put_consents(
        body: ConsentsBody, session: Annotated[Session, Depends(csrf_checked)]
    ) -> ConsentsBody:
        """Change consents; matching hears it at once."""
        consents = Consents(body.matching, body.auto_follow, body.notifications)
        revision = people.set_consents(session.person_id, consents)
        await publish_event(
            runtime.broker,
            ConsentChanged(
                region=settings.region,
                person_id=session.person_id,
                matching=body.matching,
                auto_follow=body.auto_follow,
                notifications=body.notifications,
                revision=revision,
            ),
        )
        return body

    @router.post("/archive", status_code=status.HTTP_202_ACCEPTED, response_model=ImportAccepted)
    async def upload_archive(
        request: Request, session: Annotated[Session, Depends(csrf_checked)]
    ) -> ImportAccepted:
        """Upload the whole zip (field ``archive``) or the extracted files (field ``files``)."""
        declared = int(request.headers.get("content-length") or 0)
        if declared > settings.max_upload_bytes:
            metrics.archives_rejected.labels("archive_too_large").inc()
            raise _too_large(settings)
        form = await request.form(max_files=settings.max_upload_files, max_fields=10)
        try:
            uploads = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
            archive = [u for k, u in uploads if k == "archive"]
            files = [u for k, u in uploads if k == "files"]
            if len(archive) == 1 and not files:
                upload_kind = "zip"
                outcome = await importer.import_zip(session.person_id, _stream(archive[0]))
            elif files and not archive:
                members: list[tuple[str, BinaryIO]] = []
                for upload in files:
                    name = (upload.filename or "").rsplit("/", 1)[-1]
                    if not name.startswith(MEMBER_PREFIXES) or not name.endswith(".js"):
                        raise ApiError(
                            400,
                            "unexpected_file",
                            "Only account.js, follower*.js and following*.js are accepted.",
                        )
                    members.append((name, _stream(upload)))
                upload_kind = "files"
                outcome = await importer.import_members(session.person_id, members)
            else:
                raise ApiError(
                    400,
                    "no_archive",
                    "Send your X archive as the field 'archive', or its files as 'files'.",
                )
        except ArchiveError as error:
            metrics.archives_rejected.labels(error.code).inc()
            raise ApiError(ARCHIVE_STATUS.get(error.code, 400), error.code, error.message) from None
        except ImportUnavailableError:
            metrics.archives_rejected.labels("unavailable").inc()
            raise ApiError(
                503, "unavailable", "passerelle cannot take archives right now; try again soon."
            ) from None
        finally:
            await form.close()
        metrics.archives_imported.labels(upload_kind, outcome.state).inc()
        if outcome.state == "published":
            metrics.edges_ingested.labels("following").inc(outcome.following)
            metrics.edges_ingested.labels("follower").inc(outcome.followers)
        return ImportAccepted(
            import_id=outcome.import_id,
            state=outcome.state,
            following=outcome.following,
            followers=outcome.followers,
        )

    @router.get("/archive/{import_id}", response_model=ImportStatus)
    async def get_archive(
        import_id: str, session: Annotated[Session, Depends(current)]
    ) -> ImportStatus:
        row = importer.get(session.person_id, import_id)
        if row is None:
            raise ApiError(404, "unknown_import", "No such import.")
        return ImportStatus(
            import_id=row.id,
            state=row.state,
            following=row.following_count,
            followers=row.followers_count,
            error_code=row.error_code,
        )

    @router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
    async def erase_me(session: Annotated[Session, Depends(csrf_checked)]) -> Response:
        """Delete everything about me, here and in every service."""
        person = people.get(session.person_id)
        event = UserErased(
            region=settings.region,
            person_id=session.person_id,
            x_account_id=person.x_account_id if person else None,
        )
        await publish_event(runtime.broker, event)
        import_ids = people.erase(session.person_id)
        store = await runtime.broker.object_storage(ARCHIVE_EDGES_BUCKET)
        for import_id in import_ids:
            for direction in ("following", "followers"):
                try:
                    await store.delete(f"{import_id}.{direction}")
                except Exception:  # noqa: BLE001 - already expired or removed
                    runtime.log.info("edge payload already gone")
        response = Response(status_code=204)
        response.delete_cookie(COOKIE)
        return response

    return router


def _stream(upload: UploadFile) -> BinaryIO:
    # Starlette spools uploads to a temporary file beyond 1 MB: seekable, not in memory.
    return upload.file


def _too_large(settings: Settings) -> HTTPException:
    mb = settings.max_upload_bytes // (1024 * 1024)
    return ApiError(
        413,
        "archive_too_large",
        f"This upload is larger than {mb} MB. Upload only the follower and following files.",
    )
