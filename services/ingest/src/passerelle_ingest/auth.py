"""Who is asking: the signed session cookie, and CSRF checks for changes.

No ``from __future__ import annotations`` here: FastAPI must see the real
annotations of the dependency closures (they refer to local names)."""

from typing import Annotated

from fastapi import Depends, Header, Request

from passerelle_ingest.errors import ApiError
from passerelle_ingest.people import People
from passerelle_ingest.sessions import COOKIE, Session, SessionSigner


class Auth:
    """FastAPI dependencies: ``current`` (signed in) and ``csrf_checked`` (may change things)."""

    def __init__(self, signer: SessionSigner, people: People) -> None:
        self.signer = signer
        self.people = people

        def current(request: Request) -> Session:
            session = signer.loads(request.cookies.get(COOKIE))
            if session is None or people.get(session.person_id) is None:
                raise ApiError(401, "not_signed_in", "Sign in first.")
            return session

        def csrf_checked(
            session: Annotated[Session, Depends(current)],
            token: Annotated[str | None, Header(alias="X-CSRF-Token")] = None,
        ) -> Session:
            if not signer.check_csrf(session, token):
                raise ApiError(403, "csrf", "This form expired; reload the page and try again.")
            return session

        self.current = current
        self.csrf_checked = csrf_checked
