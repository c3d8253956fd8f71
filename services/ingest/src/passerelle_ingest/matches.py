"""The edge's view of matches: answered by the matching service over request/reply."""

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from passerelle_contracts.base import Network
from passerelle_contracts.events import Direction
from passerelle_contracts.rpc import (
    CountReply,
    MatchListReply,
    MatchListRequest,
    MatchRequestFollows,
    MatchSelectRequest,
    MatchState,
    MatchSummaryReply,
    MatchSummaryRequest,
)
from passerelle_ingest.auth import Auth
from passerelle_ingest.errors import ApiError
from passerelle_ingest.sessions import Session
from passerelle_platform.broker import ServiceUnavailableError, ask
from passerelle_platform.runtime import ServiceRuntime

#: Mastodon's own import format ("Following list" CSV).
MASTODON_CSV_HEADER = ("Account address", "Show boosts", "Notify on new posts", "Languages")
EXPORT_PAGE = 500


class SelectBody(BaseModel):
    """Select or deselect some targets, or everything in a direction."""

    network: Network
    selected: bool = True
    targets: list[str] = Field(default_factory=list, max_length=1000)
    all_in_direction: Direction | Literal["both"] | None = None


class NetworkBody(BaseModel):
    """A network to act on."""

    network: Network


ReplyT = TypeVar("ReplyT", bound=BaseModel)


def build_matches_api(
    runtime: ServiceRuntime, region: str, wait_seconds: float, auth: Auth
) -> APIRouter:
    """``/api/matches…`` and the Mastodon CSV export."""
    router = APIRouter(prefix="/api")
    current, csrf_checked = auth.current, auth.csrf_checked

    async def matching(request: BaseModel, reply_type: type[ReplyT]) -> ReplyT:
        subject: str = type(request).subject  # type: ignore[attr-defined]
        try:
            return await ask(
                runtime.broker, request, subject, reply_type, wait_seconds=wait_seconds
            )
        except ServiceUnavailableError:
            raise ApiError(
                503, "matching_unavailable", "Matches cannot be shown right now; try again soon."
            ) from None

    @router.get("/matches", response_model=MatchSummaryReply)
    async def summary(session: Annotated[Session, Depends(current)]) -> MatchSummaryReply:
        """Counts per network, direction and state."""
        return await matching(
            MatchSummaryRequest(region=region, person_id=session.person_id), MatchSummaryReply
        )

    @router.get("/matches/{network}", response_model=MatchListReply)
    async def list_matches(
        network: Network,
        session: Annotated[Session, Depends(current)],
        direction: Direction | None = None,
        state: Annotated[list[MatchState] | None, Query()] = None,
        search: Annotated[str | None, Query(max_length=100)] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> MatchListReply:
        """One page of matches on a network."""
        return await matching(
            MatchListRequest(
                region=region,
                person_id=session.person_id,
                network=network,
                direction=direction,
                states=tuple(state or ()),
                search=search,
                offset=offset,
                limit=limit,
            ),
            MatchListReply,
        )

    @router.post("/matches/select", response_model=CountReply)
    async def select(
        body: SelectBody, session: Annotated[Session, Depends(csrf_checked)]
    ) -> CountReply:
        return await matching(
            MatchSelectRequest(
                region=region,
                person_id=session.person_id,
                network=body.network,
                selected=body.selected,
                targets=tuple(body.targets),
                all_in_direction=body.all_in_direction,
            ),
            CountReply,
        )

    @router.post("/matches/follow", response_model=CountReply)
    async def follow_selection(
        body: NetworkBody, session: Annotated[Session, Depends(csrf_checked)]
    ) -> CountReply:
        """Turn my selection into follow requests."""
        return await matching(
            MatchRequestFollows(region=region, person_id=session.person_id, network=body.network),
            CountReply,
        )

    @router.get("/export/mastodon.csv")
    async def mastodon_csv(session: Annotated[Session, Depends(current)]) -> StreamingResponse:
        """My Mastodon matches, in the CSV Mastodon's import page accepts (no 400/day limit)."""
        first = await matching(
            MatchListRequest(
                region=region, person_id=session.person_id, network="mastodon", limit=EXPORT_PAGE
            ),
            MatchListReply,
        )

        async def rows() -> AsyncIterator[str]:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(MASTODON_CSV_HEADER)
            page, offset = first, 0
            while True:
                for item in page.items:
                    writer.writerow((item.target, "true", "false", ""))
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                offset += len(page.items)
                if not page.items or offset >= page.total:
                    return
                page = await matching(
                    MatchListRequest(
                        region=region,
                        person_id=session.person_id,
                        network="mastodon",
                        offset=offset,
                        limit=EXPORT_PAGE,
                    ),
                    MatchListReply,
                )

        return StreamingResponse(
            rows(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="passerelle-mastodon.csv"'},
        )

    return router
