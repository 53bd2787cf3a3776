"""The `/api/invitations` routes (accounts.invitations says who may invite, and how an
invitation is used): invite, list and revoke; accept with a token, or through the emailed link."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from api.errors import ApiError
from api.request import json_body, path_key, text_problem
from api.services import services
from store.models import Invitation, User, now

from .errors import AuthError
from .invitations import (INVITABLE, PENDING_KEY, accept_quietly, addresses, create,
                          invitation_json, redeem)
from .routes import require_user


# -- who may invite ----------------------------------------------------------------------------

async def _inviter(request: Request) -> tuple[User, tuple[str, ...], int | None]:
    """The caller, the roles they may invite to, and their cap (None: no cap). 403 otherwise."""
    user = await require_user(request, ("teacher", "admin"))
    if user.role == "admin":
        return user, INVITABLE, None
    billing = services(request).billing
    own = billing.own_tier(user)
    if own.per_seat and own.name == user.tier and (user.seats or 0) > 0:
        return user, ("teacher",), user.seats
    raise ApiError(403, "forbidden", "inviting needs the role admin, or a school plan "
                   "bought per seat (you are then its seat owner)")


async def _taken_seats(s: AsyncSession, inviter: User, at: datetime) -> int:
    return (await s.execute(select(func.count()).select_from(Invitation).where(
        Invitation.invited_by == inviter.id, Invitation.revoked_at.is_(None),
        or_(Invitation.accepted_at.is_not(None), Invitation.expires_at > at)))).scalar_one()


# -- routes ------------------------------------------------------------------------------------

async def invite(request: Request) -> Response:
    inviter, roles, cap = await _inviter(request)
    body = await json_body(request)
    emails = addresses(body)
    role = body.get("role", "teacher")
    if role not in INVITABLE:
        raise ApiError(400, "invalid_request", f"'role' must be {' or '.join(INVITABLE)}",
                       field="role")
    if role not in roles:
        raise ApiError(403, "forbidden", f"you may invite to the role {' or '.join(roles)}",
                       field="role")
    shared = services(request)
    base = shared.settings.public_url or str(request.base_url)
    try:
        async with shared.db.session() as s, s.begin():
            created, kept = await create(
                s, inviter=inviter, emails=emails, role=role, base_url=base,
                ttl=timedelta(days=shared.settings.invitation_ttl_days))
            if cap is not None and created:
                taken = await _taken_seats(s, inviter, now())
                if taken > cap:
                    raise ApiError(403, "seats_exhausted", f"your plan has {cap} seats and "
                                   f"{taken - len(created)} are taken by your invitations: "
                                   "revoke one, or buy more seats")
    except IntegrityError as exc:  # the same address invited by someone else at that instant
        raise ApiError(409, "conflict", "another invitation to one of these addresses was just "
                       "made; list the invitations and ask again") from exc
    shared.email_worker.wake()
    at = now()
    shown = created + [r for r in kept if inviter.role == "admin" or r.invited_by == inviter.id]
    return JSONResponse({"queued": len(created), "already_invited": len(kept),
                         "items": [invitation_json(r, at) for r in shown]},
                        status_code=202)


async def list_invitations(request: Request) -> Response:
    """The caller's invitations (an admin: everyone's), newest first."""
    inviter, _, _ = await _inviter(request)
    query = select(Invitation).order_by(Invitation.created_at.desc(), Invitation.id)
    if inviter.role != "admin":
        query = query.where(Invitation.invited_by == inviter.id)
    async with services(request).db.session() as s:
        rows = (await s.execute(query)).scalars().all()
    at = now()
    return JSONResponse({"items": [invitation_json(r, at) for r in rows]})


async def revoke(request: Request) -> Response:
    """Withdraw an open invitation: its link stops working (a used one stays used)."""
    inviter, _, _ = await _inviter(request)
    invitation_id = path_key(request, "invitation_id", "invitation")
    async with services(request).db.session() as s, s.begin():
        row = await s.get(Invitation, invitation_id)
        if row is None or (inviter.role != "admin" and row.invited_by != inviter.id):
            raise ApiError(404, "not_found", "no such invitation of yours")
        if row.accepted_at is not None:
            raise ApiError(409, "invitation_used", "this invitation was already used: change the "
                           "user's role instead (PATCH /api/admin/users/{id}, `tutor users set`)")
        row.revoked_at = row.revoked_at or now()
    return Response(status_code=204)


def _token_of(value: Any) -> str:
    if not isinstance(value, str) or not value or text_problem(value, 100):
        raise ApiError(400, "invalid_request", "send the invitation's token: {\"token\": \"…\"}",
                       field="token")
    return value


async def accept(request: Request) -> Response:
    """A signed-in caller uses an invitation's token (clients other than the emailed link)."""
    user = await require_user(request)
    token = _token_of((await json_body(request)).get("token"))
    async with services(request).db.session() as s, s.begin():
        row, account = await redeem(s, token, user)
    return JSONResponse({"role": account.role, "invitation": invitation_json(row, now())})


async def open_link(request: Request) -> Response:
    """The emailed link. Signed in already (the browser's session): accepted at once. Otherwise
    the token waits in the session cookie and the browser goes to Google sign-in, whose callback
    accepts it (`accept_pending`). Back home with `?invitation=accepted` or the refusal's code."""
    token = _token_of(request.query_params.get("token"))
    shared = services(request)
    try:
        user = await shared.auth.user_of(request)
    except AuthError:
        user = None
    if user is not None and user.auth_provider != "guest":
        return RedirectResponse(f"/?invitation={await accept_quietly(request, token, user)}",
                                status_code=303)
    if shared.oauth is None:
        raise ApiError(401, "unauthorized", "sign in, then open this link again (or POST the "
                       "token to /api/invitations/accept)")
    request.session[PENDING_KEY] = token
    return RedirectResponse("/api/auth/google/login", status_code=303)


routes = [
    Route("/api/invitations", invite, methods=["POST"]),
    Route("/api/invitations", list_invitations, methods=["GET"]),
    Route("/api/invitations/accept", open_link, methods=["GET"]),
    Route("/api/invitations/accept", accept, methods=["POST"]),
    Route("/api/invitations/{invitation_id}", revoke, methods=["DELETE"]),
]
