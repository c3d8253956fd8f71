"""Signed session cookies and CSRF tokens (itsdangerous, key from settings)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import SecretStr

COOKIE = "passerelle_session"


@dataclass(frozen=True)
class Session:
    """Who is signed in on this browser."""

    person_id: str


class SessionSigner:
    """Turns a :class:`Session` into a signed cookie value and back."""

    def __init__(self, secret: SecretStr, max_age_seconds: int) -> None:
        self._serializer = URLSafeTimedSerializer(secret.get_secret_value(), salt="session")
        self._csrf_key = secret.get_secret_value().encode()
        self.max_age_seconds = max_age_seconds

    def dumps(self, session: Session) -> str:
        return self._serializer.dumps({"p": session.person_id})

    def loads(self, value: str | None) -> Session | None:
        """The session, or ``None`` when missing, tampered with or expired."""
        if not value:
            return None
        try:
            data = self._serializer.loads(value, max_age=self.max_age_seconds)
        except BadSignature:
            return None
        person = data.get("p") if isinstance(data, dict) else None
        return Session(person_id=person) if isinstance(person, str) else None

    def csrf_token(self, session: Session) -> str:
        """A token bound to the session: forms must send it back."""
        return hmac.new(self._csrf_key, session.person_id.encode(), "sha256").hexdigest()

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(session), token)
