"""Refusals, not 500s, when the database or Redis is down or stops answering.

Every wait on them is bounded (`Database`'s statement, connect and pool timeouts; the Redis
clients' socket timeouts: docs/operations.md, "Timeouts"), so an outage surfaces as an exception:
refused, reset, or timed out. `OutageMiddleware`, outermost in the app, turns one that reaches the
top before anything was sent into a retryable refusal: HTTP 503 with the usual JSON error and
`Retry-After`, or, for a WebSocket not yet accepted (the user lookup, ticket, quota and resume
reads before accept), the protocol's `error` event `service_unavailable` and close 1013 (Try
Again Later). `unavailable` says which exceptions mean "a backing service is out".
"""

from __future__ import annotations

import logging
import socket

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from api.errors import ApiError, error_response

from .voice import refuse

log = logging.getLogger("tutor.outage")

CODE = "service_unavailable"
MESSAGE = ("the server's database or cache is not answering; this is temporary, try again in a "
           "few seconds")
RETRY_AFTER_S = 5
CLOSE_TRY_AGAIN_LATER = 1013

_OUTAGES = (TimeoutError, ConnectionError, socket.gaierror, PoolTimeoutError, RedisConnectionError,
            RedisTimeoutError)
# PostgreSQL's classes for "not now": connection exception, insufficient resources (too many
# connections), operator intervention (starting up, shutting down)
_SQLSTATE_CLASSES = ("08", "53", "57")
_SQLITE_BUSY = ("SQLITE_BUSY", "SQLITE_LOCKED")  # past the busy timeout


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` means a backing service is out (so trying again later may work), rather
    than a bug. A plain `OSError` is what asyncio raises for an unreachable host (its subclasses
    are files and permissions: not outages). A database error counts only when it says so: its
    connection was lost, its SQLSTATE class, SQLite's busy codes (SQLite reports a missing table
    or a syntax error as an OperationalError too, and those are bugs)."""
    if isinstance(exc, _OUTAGES) or type(exc) is OSError:
        return True
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        sqlite = getattr(exc.orig, "sqlite_errorname", None) or ""
        return (exc.connection_invalidated or sqlstate[:2] in _SQLSTATE_CLASSES
                or sqlite.startswith(_SQLITE_BUSY))
    return False


class OutageMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        answered = False

        async def watch(message: Message) -> None:
            nonlocal answered
            answered = True  # any message: the response started, or the socket was accepted
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            if answered or not unavailable(exc):
                raise
            log.warning("%s %s refused: a backing service is unavailable (%r)",
                        scope["type"], scope["path"], exc)
            if scope["type"] == "http":
                refusal = ApiError(503, CODE, MESSAGE, headers={"Retry-After": str(RETRY_AFTER_S)})
                await error_response(refusal)(scope, receive, send)
            else:
                await refuse(WebSocket(scope, receive, send), CODE, MESSAGE, "server_error",
                             CLOSE_TRY_AGAIN_LATER)
