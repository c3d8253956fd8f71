"""Sign-in, linking and unlinking routes (JSON API, plus the Mastodon OAuth redirects)."""

import secrets
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import RedirectResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, Field, SecretStr

from passerelle_contracts.base import Network
from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ApiError
from passerelle_ingest.sessions import COOKIE, Session
from passerelle_ingest.settings import Settings
from passerelle_ingest.signin import Proven, SignIn

OAUTH_COOKIE = "passerelle_oauth"
OAUTH_MAX_AGE_SECONDS = 15 * 60


class BlueskyCredentials(BaseModel):
    """A handle (or DID) and an app password, never the main password."""

    identifier: str = Field(min_length=3, max_length=256)
    app_password: SecretStr


class SignedIn(BaseModel):
    """Who is now signed in, and the CSRF token their changes must carry."""

    person_id: str
    network: Network
    handle: str
    csrf_token: str


def build_signin_api(settings: Settings, sign_in: SignIn, auth: Auth) -> APIRouter:
    """``/api/signin/*``, ``/api/link/*``, ``/api/unlink/*`` and ``/auth/mastodon/*``."""
    router = APIRouter()
    signer = auth.signer
    oauth_state = URLSafeTimedSerializer(settings.secret_key.get_secret_value(), salt="oauth")
    secure = settings.public_url.startswith("https://")
    redirect_uri = settings.public_url.rstrip("/") + "/auth/mastodon/callback"

    def signed_in(proven: Proven, response: Response) -> SignedIn:
        session = Session(person_id=proven.person.id)
        response.set_cookie(
            COOKIE,
            signer.dumps(session),
            max_age=settings.session_max_age_seconds,
            httponly=True,
            samesite="lax",
            secure=secure,
        )
        return SignedIn(
            person_id=proven.person.id,
            network=proven.network,
            handle=proven.handle,
            csrf_token=signer.csrf_token(session),
        )

    def optional_session(request: Request) -> Session | None:
        return signer.loads(request.cookies.get(COOKIE))

    @router.post("/api/signin/bluesky", response_model=SignedIn)
    async def signin_bluesky(body: BlueskyCredentials, response: Response) -> SignedIn:
        """Sign in with a Bluesky account (it becomes your identity here)."""
        proven = await sign_in.bluesky(body.identifier, body.app_password, None)
        return signed_in(proven, response)

    @router.post("/api/link/bluesky", response_model=SignedIn)
    async def link_bluesky(
        body: BlueskyCredentials,
        session: Annotated[Session, Depends(auth.csrf_checked)],
        response: Response,
    ) -> SignedIn:
        """Link a Bluesky account to the signed-in person."""
        proven = await sign_in.bluesky(body.identifier, body.app_password, session.person_id)
        return signed_in(proven, response)

    @router.post("/api/unlink/{network}", status_code=204)
    async def unlink(
        network: Network, session: Annotated[Session, Depends(auth.csrf_checked)]
    ) -> Response:
        await sign_in.unlink(session.person_id, network)
        return Response(status_code=204)

    @router.post("/api/signout", status_code=204)
    async def signout() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(COOKIE)
        return response

    def back_to_page(request: Request, error: ApiError) -> Response:
        """A browser (not an API client) goes back to the page, which explains ``error.code``."""
        if "text/html" not in request.headers.get("accept", ""):
            raise error
        page = "/account" if optional_session(request) else "/signin"
        return RedirectResponse(f"{page}?{urlencode({'error': error.code})}", status_code=303)

    @router.get("/auth/mastodon/start")
    async def mastodon_start(
        request: Request,
        instance: Annotated[str, Query(min_length=3, max_length=253)],
        session: Annotated[Session | None, Depends(optional_session)],
    ) -> Response:
        """Send the browser to the instance to approve passerelle (OAuth)."""
        instance = instance.strip().lower().removeprefix("https://").removeprefix("@")
        instance = instance.rsplit("@", 1)[-1].strip("/")
        state = secrets.token_urlsafe(24)
        try:
            url = await sign_in.mastodon_authorize(instance, redirect_uri, state)
        except ApiError as error:
            return back_to_page(request, error)
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(
            OAUTH_COOKIE,
            oauth_state.dumps(
                {"s": state, "i": instance, "p": session.person_id if session else None}
            ),
            max_age=OAUTH_MAX_AGE_SECONDS,
            httponly=True,
            samesite="lax",
            secure=secure,
        )
        return response

    async def finish_oauth(
        request: Request, state: str | None, code: str | None, error: str | None
    ) -> Proven:
        try:
            saved = oauth_state.loads(
                request.cookies.get(OAUTH_COOKIE) or "", max_age=OAUTH_MAX_AGE_SECONDS
            )
        except BadSignature:
            raise ApiError(
                400, "oauth_state", "This sign-in expired; please start again."
            ) from None
        if not state or not secrets.compare_digest(str(saved.get("s")), state):
            raise ApiError(400, "oauth_state", "This sign-in expired; please start again.")
        if error or not code:
            raise ApiError(
                400, "access_denied", "You did not allow passerelle on your Mastodon instance."
            )
        return await sign_in.mastodon_finish(
            str(saved["i"]), SecretStr(code), redirect_uri, saved.get("p")
        )

    @router.get("/auth/mastodon/callback")
    async def mastodon_callback(
        request: Request,
        state: str | None = None,
        code: str | None = None,
        error: str | None = None,
    ) -> Response:
        """Back from the instance: check ``state``, exchange the code, sign in or link."""
        try:
            proven = await finish_oauth(request, state, code, error)
        except ApiError as failure:
            return back_to_page(request, failure)
        # The web journey's next step (consents, upload or results, as the person stands).
        response = RedirectResponse("/next", status_code=303)
        response.delete_cookie(OAUTH_COOKIE)
        signed_in(proven, response)
        return response

    return router
