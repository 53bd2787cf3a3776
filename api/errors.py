"""`ApiError`, the one way a REST route refuses a request, and the one handler that answers it.

Raised anywhere under a route (a reader of `api.request`, a route, a service such as
`billing.service.Billing`); `error_response` turns it into `{"error": {"code", "message"}}`, plus
`"field"` when one field of the request is to blame, with its status and headers (`Retry-After`
when retrying later helps, `WWW-Authenticate` on 401). Starlette's own `HTTPException` (no route
404, wrong method 405, a missing static file) gets the same shape with a code for its status.
Every code is in docs/errors.md, and tests/test_error_table.py keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

# The codes of Starlette's own refusals, by status (routing and static files raise them).
STARLETTE_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    """A request refused with its HTTP status, a stable `code`, a message for people, and the
    request `field` at fault when there is one."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})


def error_response(exc: ApiError) -> JSONResponse:
    error = {"code": exc.code, "message": exc.message}
    if exc.field is not None:
        error["field"] = exc.field
    headers = dict(exc.headers)
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return JSONResponse({"error": error}, status_code=exc.status, headers=headers or None)


async def refused(request: Request, exc: Exception) -> JSONResponse:
    """The app's handler for `ApiError` and for Starlette's `HTTPException`."""
    if isinstance(exc, HTTPException):
        exc = ApiError(exc.status_code, STARLETTE_CODES.get(exc.status_code, "http_error"),
                       exc.detail, headers=exc.headers)
    assert isinstance(exc, ApiError)
    return error_response(exc)


HANDLERS = {ApiError: refused, HTTPException: refused}
