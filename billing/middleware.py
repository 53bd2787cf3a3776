"""Request limits for every HTTP route, as a pure ASGI middleware (it never buffers a body).

It resolves the caller once (the routes reuse it through `request.state.auth`), puts the request
in its route group (`billing.tiers.route_group`), and counts it against the caller's tier limit
per minute, or the per-address limit before sign-in. Over the limit: 429 with `Retry-After`.
WebSockets are limited by the voice endpoint itself, which knows more (quota, session count).
"""

from __future__ import annotations

import json

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from accounts.errors import AuthError

from .service import QuotaError
from .tiers import route_group, unlimited


class RequestLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or unlimited(scope["path"]):
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        conn = HTTPConnection(scope)
        try:
            user, error = await state.auth.user_of(conn), None
        except AuthError as exc:
            user, error = None, exc  # the route answers 401; until then, limited by address
        scope.setdefault("state", {})["auth"] = (user, error)
        client = conn.client.host if conn.client else "unknown"
        try:
            await state.billing.check_request(route_group(scope["path"]), user, client)
        except QuotaError as exc:
            await _refuse(send, exc)
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, exc: QuotaError) -> None:
    body = json.dumps({"error": {"code": exc.code, "message": exc.message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.retry_after_s is not None:
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
