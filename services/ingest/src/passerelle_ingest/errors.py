"""Expected failures of the edge, mapped in one place to HTTP answers."""

from __future__ import annotations

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.requests import Request

#: Archive error codes (``passerelle_xarchive``) → HTTP status; others are 400.
ARCHIVE_STATUS = {
    "archive_too_large": 413,
    "too_many_members": 413,
    "too_many_edges": 413,
    "inflated_too_large": 413,
    "compression_ratio_too_high": 413,
    "missing_follow_files": 422,
    "missing_account": 422,
    "ambiguous_archive": 422,
    "broken_json": 422,
    "unexpected_shape": 422,
    "invalid_id": 422,
}


#: Upload refusals that are not about the archive's content.
UPLOAD_STATUS = {"archive_too_large": 413, "no_archive": 400, "unexpected_file": 400}


class ApiError(HTTPException):
    """An error told to the person: HTTP status, stable code, human message."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(status_code=status_code, detail=message)
        self.code = code
        self.message = message


async def api_error_handler(_request: Request, error: Exception) -> JSONResponse:
    """``{"error": {"code", "message"}}`` with the error's status."""
    assert isinstance(error, ApiError)
    return JSONResponse(
        {"error": {"code": error.code, "message": error.message}}, status_code=error.status_code
    )
