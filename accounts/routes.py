"""HTTP routes of sign-in: Google login/callback (which accepts the invitation whose link
brought the browser there: accounts.invitations), API tokens, logout, the user's browser
sessions (listed, revoked: accounts.sessions), me, voice tickets.

`require_user(request, roles)` is what every protected route calls first: 401 without (valid)
credentials, 403 for the wrong role.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from authlib.integrations.starlette_client import OAuthError
from joserfc.errors import JoseError
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from api.errors import ApiError
from api.request import json_body, path_key, text_field
from api.services import services
from store import queries
from store.models import User

from .errors import AuthError
from .google import sealed_refresh_token
from .identity import user_json
from .invitations import accept_pending, take_pending
from .sessions import session_id, session_json, sign_in, sign_out

log = logging.getLogger("tutor.accounts")


async def require_user(request: Request, roles: tuple[str, ...] = ()) -> User:
    resolved = request.scope.get("state", {}).get("auth")  # by the request-limit middleware
    try:
        if resolved is None:
            user = await services(request).auth.user_of(request)
        elif resolved[1] is not None:
            raise resolved[1]
        else:
            user = resolved[0]
    except AuthError as exc:
        raise ApiError(401, "unauthorized", f"{exc.code}: {exc.message}") from exc
    if user is None:
        raise ApiError(401, "unauthorized", "sign in required")
    if roles and user.role not in roles:
        raise ApiError(403, "forbidden", f"this needs the role {' or '.join(roles)}")
    return user


async def google_login(request: Request) -> Response:
    oauth = services(request).oauth
    if oauth is None:
        raise ApiError(503, "not_configured",
                       "Google sign-in is not configured (TUTOR_GOOGLE_CLIENT_ID)")
    public = services(request).settings.public_url
    redirect_uri = (f"{public.rstrip('/')}/api/auth/google/callback" if public
                    else str(request.url_for("google_callback")))
    return await oauth.google.authorize_redirect(request, redirect_uri)


async def google_callback(request: Request) -> Response:
    oauth = services(request).oauth
    if oauth is None:
        raise ApiError(503, "not_configured", "Google sign-in is not configured")
    try:
        metadata = await oauth.google.load_server_metadata()
        # authlib checks `aud` only when told to (without it, a token for another client whose
        # `azp` names us would pass), so the issuer and audience are spelled out here.
        token = await oauth.google.authorize_access_token(request, claims_options={
            "iss": {"essential": True, "values": [metadata["issuer"]]},
            "aud": {"essential": True, "values": [oauth.google.client_id]},
        })
    except (OAuthError, JoseError, ValueError, KeyError) as exc:  # state, code or ID token
        log.warning("Google sign-in refused: %s", exc)
        raise ApiError(401, "unauthorized", f"Google sign-in failed: {exc}") from exc
    claims = token.get("userinfo") or {}
    if not claims.get("sub"):
        raise ApiError(401, "unauthorized", "Google sign-in failed: no ID token")
    async with services(request).db.session() as s, s.begin():
        user = await queries.upsert_user(s, provider="google", subject=claims["sub"],
                                         email=claims.get("email"), name=claims.get("name"))
        sealed = sealed_refresh_token(token, services(request).secret_box)
        if sealed:
            user.oauth_refresh_token = sealed
    pending = take_pending(request)  # an invitation link opened before signing in
    invitation = await accept_pending(request, pending, user)
    await sign_in(request, user)
    return RedirectResponse("/" + invitation, status_code=303)


async def create_token(request: Request) -> Response:
    user = await require_user(request)
    body = await json_body(request, empty_ok=True)  # e.g. {"name": "my script"}
    name = text_field(body, "name", 100, required=False)  # api_tokens.name is String(100)
    days = services(request).settings.api_token_ttl_days
    async with services(request).db.session() as s, s.begin():
        token, row = await queries.issue_api_token(s, user.id, name=name, ttl=timedelta(days=days))
    return JSONResponse({"token": token, "token_type": "Bearer",
                         "expires_at": row.expires_at.isoformat() if row.expires_at else None},
                        status_code=201)


async def logout(request: Request) -> Response:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer tt_"):  # a program logging out ends its token
        async with services(request).db.session() as s, s.begin():
            await queries.revoke_api_token(s, header.split(" ", 1)[1].strip())
    await sign_out(request)  # the browser session ends on the server, not just in the cookie
    return Response(status_code=204)


def _max_age(request: Request) -> timedelta:
    return timedelta(seconds=services(request).settings.session_max_age_s)


async def list_sessions(request: Request) -> Response:
    """The caller's signed-in browsers; the one making this request is `current`."""
    user = await require_user(request)
    async with services(request).db.session() as s:
        rows = await queries.browser_sessions(s, user.id, max_age=_max_age(request))
    current = session_id(request)
    return JSONResponse({"items": [session_json(r, current) for r in rows]})


async def revoke_session(request: Request) -> Response:
    """Sign one of the caller's browsers out (this one too, if it is named)."""
    user = await require_user(request)
    target = path_key(request, "session_id", "session", max_chars=64)  # browser_sessions.id
    async with services(request).db.session() as s, s.begin():
        revoked = await queries.revoke_browser_sessions(s, user.id, only=target)
    if not revoked:
        raise ApiError(404, "not_found", "no such session of yours")
    if target == session_id(request):
        request.session.clear()
    return Response(status_code=204)


async def revoke_other_sessions(request: Request) -> Response:
    """Sign out every browser of the caller but this one (all of them, with a bearer token)."""
    user = await require_user(request)
    async with services(request).db.session() as s, s.begin():
        revoked = await queries.revoke_browser_sessions(s, user.id, keep=session_id(request))
    return JSONResponse({"revoked": revoked})


async def me(request: Request) -> Response:
    return JSONResponse(user_json(await require_user(request)))


async def voice_ticket(request: Request) -> Response:
    """A single-use ticket for `?ticket=` on the voice socket (browsers cannot set headers)."""
    user = await require_user(request)
    await services(request).billing.check_voice(user)  # 402 when the plan's minutes are spent
    ttl = services(request).settings.ticket_ttl_s
    ticket = await services(request).auth.tickets.issue(user.id, ttl)
    return JSONResponse({"ticket": ticket, "expires_in": ttl,
                         "url": f"/api/voice?ticket={ticket}"}, status_code=201)


routes = [
    Route("/api/auth/google/login", google_login, methods=["GET"]),
    Route("/api/auth/google/callback", google_callback, methods=["GET"], name="google_callback"),
    Route("/api/auth/token", create_token, methods=["POST"]),
    Route("/api/auth/logout", logout, methods=["POST"]),
    Route("/api/auth/me", me, methods=["GET"]),
    Route("/api/auth/sessions", list_sessions, methods=["GET"]),
    Route("/api/auth/sessions", revoke_other_sessions, methods=["DELETE"]),
    Route("/api/auth/sessions/{session_id}", revoke_session, methods=["DELETE"]),
    Route("/api/voice/session", voice_ticket, methods=["POST"]),
]
