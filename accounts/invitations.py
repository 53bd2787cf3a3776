"""Invitations to a role: how a school gets its teachers without anyone writing SQL.

An admin, or a school's seat owner, invites addresses (`POST /api/invitations`); each gets an
email through the outbox with a link carrying a secret token. Whoever signs in and opens the link
before it expires gets the role, once: the Google sign-in that the link leads to (the token waits
in the signed session cookie through the redirects), or any signed-in caller that posts the token
(a Supabase or API-token client). Holding the link is the proof: it went to that mailbox.

Who may invite:
- an admin: the roles `teacher` and `admin`, any number;
- a **seat owner**: a teacher whose own plan is a per-seat plan (billing: the school plan bought
  with `seats`) with at least one seat and not lapsed. They may invite teachers only, at most
  `seats` of them at a time (open or accepted invitations count; revoked and expired ones do
  not): the school paid for that many seats, and its teachers are a few of them. They see and
  revoke their own invitations; admins see and revoke all.

Per address, one open invitation: inviting it again while one is open mails nothing (and says
so); an expired one is replaced (the old link then says it was revoked). A role is only ever
raised by an invitation (an admin who accepts a teacher's invitation stays admin).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from api.errors import ApiError
from api.request import unstorable
from api.services import services
from store.models import Invitation, User, now
from store.queries import aware, enqueue_email

RANK = {"student": 0, "teacher": 1, "admin": 2}
INVITABLE = ("teacher", "admin")  # the roles an invitation gives (invitations.role's CHECK)
MAX_ADDRESSES = 30  # per request
PENDING_KEY = "invitation"  # the session cookie's key for a link opened before signing in
Status = Literal["open", "accepted", "revoked", "expired"]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def status_of(row: Invitation, at: datetime) -> Status:
    if row.accepted_at is not None:
        return "accepted"
    if row.revoked_at is not None:
        return "revoked"
    return "expired" if aware(row.expires_at) <= at else "open"


def invitation_json(row: Invitation, at: datetime) -> dict[str, Any]:
    return {"id": row.id, "email": row.email, "role": row.role, "status": status_of(row, at),
            "invited_by": row.invited_by, "created_at": aware(row.created_at).isoformat(),
            "expires_at": aware(row.expires_at).isoformat(),
            "accepted_at": aware(row.accepted_at).isoformat() if row.accepted_at else None,
            "accepted_by": row.accepted_by}


def addresses(body: dict[str, Any]) -> list[str]:
    """The body's `emails`, trimmed, lowercased and deduplicated; 400 unless 1 to 30 addresses."""
    emails = body.get("emails")
    if not isinstance(emails, list) or not 0 < len(emails) <= MAX_ADDRESSES or not all(
            isinstance(e, str) and 3 <= len(e.strip()) <= 320 and "@" in e.strip()
            and not unstorable(e)
            and not any(c.isspace() or c in "<>,;" for c in e.strip()) for e in emails):
        raise ApiError(400, "invalid_request",
                       f"'emails' must be a list of 1 to {MAX_ADDRESSES} email addresses",
                       field="emails")
    return sorted({e.strip().lower() for e in emails})


def accept_url(base: str, token: str) -> str:
    return f"{base.rstrip('/')}/api/invitations/accept?token={quote(token)}"


async def create(s: AsyncSession, *, inviter: User | None, emails: list[str], role: str,
                 ttl: timedelta, base_url: str) -> tuple[list[Invitation], list[Invitation]]:
    """Invite each address (in the caller's transaction): (new invitations, open ones left as
    they were). Each new one queues its email, once (keyed by the invitation)."""
    at = now()
    created: list[Invitation] = []
    kept: list[Invitation] = []
    for email in emails:
        current = (await s.execute(select(Invitation).where(
            Invitation.email == email, Invitation.accepted_at.is_(None),
            Invitation.revoked_at.is_(None)))).scalar_one_or_none()
        if current is not None and aware(current.expires_at) > at:
            kept.append(current)
            continue
        if current is not None:  # expired: replaced, so the open-address index has room
            current.revoked_at = at
            await s.flush()
        token = secrets.token_urlsafe(32)
        row = Invitation(email=email, role=role, token_hash=_hash(token),
                         invited_by=inviter.id if inviter else None, created_at=at,
                         expires_at=at + ttl)
        s.add(row)
        await s.flush()
        await enqueue_email(s, recipient=email, template="role_invitation", transactional=True,
                            payload={"inviter_name": (inviter.name or "") if inviter else "",
                                     "role": role, "accept_url": accept_url(base_url, token),
                                     "expires_at": row.expires_at.isoformat()},
                            key=f"invitation:{row.id}")
        created.append(row)
    return created, kept


async def redeem(s: AsyncSession, token: str, user: User) -> tuple[Invitation, User]:
    """Use the invitation the token names for `user` (in the caller's transaction): the role is
    theirs (if higher than what they have), and the invitation is used up. Refusals: 404
    `not_found`, 410 `invitation_expired` or `invitation_revoked`, 409 `invitation_used`, 403 for
    the local guest."""
    if user.auth_provider == "guest":
        raise ApiError(403, "forbidden", "sign in with your own account to accept an invitation")
    at = now()
    digest = _hash(token)
    # one statement decides who uses it: two accepting at once, one wins
    used = await s.execute(update(Invitation).where(
        Invitation.token_hash == digest, Invitation.accepted_at.is_(None),
        Invitation.revoked_at.is_(None), Invitation.expires_at > at,
    ).values(accepted_at=at, accepted_by=user.id))
    row = (await s.execute(select(Invitation).where(Invitation.token_hash == digest)
                           .execution_options(populate_existing=True))).scalar_one_or_none()
    if row is None:
        raise ApiError(404, "not_found", "no such invitation (check the link in the email)")
    if not used.rowcount:
        if row.accepted_at is not None:
            raise ApiError(409, "invitation_used", "this invitation was already used")
        if row.revoked_at is not None:
            raise ApiError(410, "invitation_revoked", "this invitation was withdrawn; ask for "
                           "a new one")
        raise ApiError(410, "invitation_expired", "this invitation has expired; ask for a new one")
    account = await s.get(User, user.id, populate_existing=True)
    if account is None:
        raise ApiError(404, "not_found", "no such user")
    if RANK[row.role] > RANK.get(account.role, 0):
        account.role = row.role
    return row, account


# -- a link opened before signing in ---------------------------------------------------------

def take_pending(request: Request) -> str | None:
    """The token of a link opened before signing in, removed from the session."""
    return request.session.pop(PENDING_KEY, None)


async def accept_quietly(request: Request, token: str, user: User) -> str:
    """`accepted`, or the refusal's code: for redirects, where sign-in goes on either way."""
    try:
        async with services(request).db.session() as s, s.begin():
            await redeem(s, token, user)
    except ApiError as exc:
        return exc.code
    return "accepted"


async def accept_pending(request: Request, token: str | None, user: User) -> str:
    """After a sign-in: the query string for home (`?invitation=…`), empty without a token."""
    return f"?invitation={await accept_quietly(request, token, user)}" if token else ""
