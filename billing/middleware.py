"""Request limits for every HTTP route, as a pure ASGI middleware (it never buffers a body).

It resolves the caller once (the routes reuse it through `request.state.auth`), puts the request
in its route group (`billing.tiers.route_group`), and counts it against the caller's tier limit
per minute, or the per-address limit before sign-in. Over the limit: 429 with `Retry-After`.
WebSockets are limited by the voice endpoint itself, which knows more (quota, session count).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from accounts.errors import AuthError
from api.errors import error_response
from api.services import services

from .service import QuotaError
from .tiers import route_group, unlimited


class RequestLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or unlimited(scope["path"]):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        state = services(conn)
        try:
            user, error = await state.auth.user_of(conn), None
        except AuthError as exc:
            user, error = None, exc  # the route answers 401; until then, limited by address
        scope.setdefault("state", {})["auth"] = (user, error)
        client = conn.client.host if conn.client else "unknown"
        try:
            await state.billing.check_request(route_group(scope["path"]), user, client)
        except QuotaError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
