"""The JSON API under ``/api`` (errors are ``{"error": {"code", "message"}}``)."""

from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, Request, Response, status
from pydantic import BaseModel
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ARCHIVE_STATUS, UPLOAD_STATUS, ApiError
from passerelle_ingest.importer import (
    ArchiveImporter,
    ImportUnavailableError,
    UploadRejectedError,
)
from passerelle_ingest.lifecycle import change_consents, erase_person
from passerelle_ingest.people import Consents, People
from passerelle_ingest.sessions import COOKIE, Session
from passerelle_ingest.settings import Settings
from passerelle_ingest.status import SystemStatus, system_status
from passerelle_platform.runtime import ServiceRuntime
from passerelle_xarchive import ArchiveError

UPLOAD_MESSAGES = {
    "archive_too_large": "This upload is too large. Upload only the follower and following files.",
    "no_archive": "Send your X archive as the field 'archive', or its files as 'files'.",
    "unexpected_file": "Only account.js, follower*.js and following*.js are accepted.",
}


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
        await change_consents(runtime.broker, people, settings.region, session.person_id, consents)
        return body

    @router.post("/archive", status_code=status.HTTP_202_ACCEPTED, response_model=ImportAccepted)
    async def upload_archive(
        request: Request, session: Annotated[Session, Depends(csrf_checked)]
    ) -> ImportAccepted:
        """Upload the whole zip (field ``archive``) or the extracted files (field ``files``)."""
        try:
            form = await read_upload_form(request, importer, settings.max_upload_files)
            try:
                archives, files = form_uploads(form)
                outcome = await importer.import_upload(session.person_id, archives, files)
            finally:
                await form.close()
        except UploadRejectedError as error:
            raise ApiError(
                UPLOAD_STATUS[error.code], error.code, UPLOAD_MESSAGES[error.code]
            ) from None
        except ArchiveError as error:
            raise ApiError(ARCHIVE_STATUS.get(error.code, 400), error.code, error.message) from None
        except ImportUnavailableError:
            raise ApiError(
                503, "unavailable", "passerelle cannot take archives right now; try again soon."
            ) from None
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
        await erase_person(runtime.broker, people, settings.region, session.person_id)
        response = Response(status_code=204)
        response.delete_cookie(COOKIE)
        return response

    return router


async def read_upload_form(request: Request, importer: ArchiveImporter, max_files: int) -> FormData:
    """The upload's form, refused (``archive_too_large``) as soon as it is over the limit.

    The declared ``Content-Length`` is checked first; a chunked upload declares
    none, so the body is also counted while Starlette spools it, and the upload
    is abandoned at the first chunk past the limit: Starlette then closes the
    spooled files (anonymous temporary files, gone once closed).
    """
    importer.check_declared_size(int(request.headers.get("content-length") or 0))
    receive = request.receive
    received = 0

    async def counted_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            importer.check_declared_size(received)
        return message

    counted = Request(request.scope, counted_receive)
    return await counted.form(max_files=max_files, max_fields=10)


def form_uploads(
    form: FormData,
) -> tuple[list[tuple[str, BinaryIO]], list[tuple[str, BinaryIO]]]:
    """The (name, stream) pairs of a form's ``archive`` and ``files`` fields.

    Starlette spools uploads to temporary files beyond 1 MB: seekable, not in memory.
    An empty file input (no file chosen) is not an upload.
    """
    uploads = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    archives = [(u.filename or "", u.file) for k, u in uploads if k == "archive" and u.filename]
    files = [(u.filename or "", u.file) for k, u in uploads if k == "files"]
    return archives, files
