"""Who an identifier is, and where their data lives: handle → DID → DID document → PDS.

- A handle is resolved with ``com.atproto.identity.resolveHandle`` on a configured
  service (an AppView such as ``public.api.bsky.app``, or a local PDS in tests).
- A ``did:plc`` document comes from the configured PLC directory
  (``https://plc.directory`` by default); a ``did:web`` one from
  ``https://<host>/.well-known/did.json``.
- The document's ``#atproto_pds`` service names the PDS, which may be any host, not
  only bsky.social. Only ``https`` endpoints are accepted unless the settings allow
  plain ``http`` (local test servers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from passerelle_bluesky_sender.xrpc import NotSentError, UncertainError, XrpcClient, XrpcError

HANDLE_RE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
DID_RE = re.compile(r"^did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]$")
DID_PLC_RE = re.compile(r"^did:plc:[a-z2-7]{24}$")
DID_WEB_RE = re.compile(r"^did:web:[a-zA-Z0-9.-]+(%3[aA][0-9]+)?$")


def is_did(value: str) -> bool:
    return len(value) <= 2048 and bool(DID_RE.match(value))


def is_followable_did(value: str) -> bool:
    """A DID the sender can follow: ``did:plc`` or ``did:web``, well-formed."""
    return bool(DID_PLC_RE.match(value) or DID_WEB_RE.match(value))


def normalise_identifier(raw: str) -> str:
    """Trim, drop a leading ``@``, lowercase handles (DIDs are case-sensitive)."""
    value = raw.strip().removeprefix("@")
    return value if value.startswith("did:") else value.lower()


class IdentityError(Exception):
    """The identifier could not be resolved; ``code`` is told to the person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Identity:
    did: str
    handle: str | None
    """The first ``at://`` handle of the DID document (unverified)."""
    pds_url: str


class IdentityResolver:
    """Resolve handles and DIDs with configurable directories."""

    def __init__(
        self,
        xrpc: XrpcClient,
        *,
        handle_resolver_url: str,
        plc_url: str,
        allow_http: bool,
    ) -> None:
        self.xrpc = xrpc
        self.handle_resolver_url = handle_resolver_url.rstrip("/")
        self.plc_url = plc_url.rstrip("/")
        self.allow_http = allow_http

    async def resolve(self, identifier: str) -> Identity:
        """The DID and PDS of a handle or DID (raises :class:`IdentityError`)."""
        value = normalise_identifier(identifier)
        if value.startswith("did:"):
            if not is_followable_did(value):
                raise IdentityError("invalid_identifier", "this is not a did:plc or did:web DID")
            did = value
        elif len(value) <= 253 and HANDLE_RE.match(value):
            did = await self.resolve_handle(value)
        else:
            raise IdentityError("invalid_identifier", "this is neither a Bluesky handle nor a DID")
        doc = await self.did_document(did)
        if doc is None:
            raise IdentityError("unknown_handle", "no Bluesky account has this identifier")
        return Identity(did=did, handle=handle_of(doc), pds_url=self.pds_endpoint(doc))

    async def resolve_handle(self, handle: str) -> str:
        try:
            response = await self.xrpc.query(
                self.handle_resolver_url, "com.atproto.identity.resolveHandle", {"handle": handle}
            )
        except XrpcError as error:
            if error.status in (400, 404):
                raise IdentityError(
                    "unknown_handle", "no Bluesky account has this handle"
                ) from None
            raise IdentityError(
                "directory_unreachable", "the handle resolver refused the request; try again"
            ) from None
        except (NotSentError, UncertainError):
            raise IdentityError(
                "directory_unreachable", "the handle resolver cannot be reached; try again"
            ) from None
        did = response.body.get("did")
        if not isinstance(did, str) or not is_followable_did(did):
            raise IdentityError("unknown_handle", "the handle does not resolve to a usable DID")
        return did

    def did_document_url(self, did: str) -> str:
        if did.startswith("did:plc:"):
            return f"{self.plc_url}/{did}"
        host = did.removeprefix("did:web:").replace("%3A", ":").replace("%3a", ":")
        scheme = "http" if self.allow_http and host.split(":")[0] == "localhost" else "https"
        return f"{scheme}://{host}/.well-known/did.json"

    async def did_document(self, did: str) -> dict[str, Any] | None:
        """The DID document, or ``None`` when the directory says it does not exist (404/410)."""
        _, doc = await self.lookup(did)
        return doc

    async def lookup(self, did: str) -> tuple[str, dict[str, Any] | None]:
        """``("ok", doc)``, ``("not_found", None)`` (404) or ``("deleted", None)`` (410)."""
        try:
            status, payload = await self.xrpc.get_json(self.did_document_url(did), what="did_doc")
        except (NotSentError, UncertainError):
            raise IdentityError(
                "directory_unreachable", "the DID directory cannot be reached; try again"
            ) from None
        if status == 404:
            return "not_found", None
        if status == 410:
            return "deleted", None
        if status != 200 or not isinstance(payload, dict) or payload.get("id") != did:
            raise IdentityError("directory_unreachable", "the DID directory gave no usable answer")
        return "ok", payload

    def pds_endpoint(self, doc: dict[str, Any]) -> str:
        for service in doc.get("service") or []:
            if not isinstance(service, dict):
                continue
            if service.get("id") in ("#atproto_pds", f"{doc.get('id')}#atproto_pds") and (
                service.get("type") == "AtprotoPersonalDataServer"
            ):
                endpoint = service.get("serviceEndpoint")
                if isinstance(endpoint, str) and self._acceptable(endpoint):
                    return endpoint.rstrip("/")
        raise IdentityError("no_pds", "the account's DID document names no usable PDS")

    def _acceptable(self, endpoint: str) -> bool:
        parts = urlsplit(endpoint)
        if not parts.hostname or parts.username or parts.password:
            return False
        return parts.scheme == "https" or (parts.scheme == "http" and self.allow_http)


def handle_of(doc: dict[str, Any]) -> str | None:
    for aka in doc.get("alsoKnownAs") or []:
        if isinstance(aka, str) and aka.startswith("at://"):
            return aka.removeprefix("at://")
    return None
