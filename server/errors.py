"""`ApiError`: a REST route's refusal, with its HTTP status and a stable `error.code`.

Raised anywhere under a route; the app's handler (`api_error`, registered in `server.app`) turns
it into `{"error": {"code", "message"}}` with that status, as every route answers errors.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": {"code": exc.code, "message": exc.message}},
                        status_code=exc.status)
