"""People and roles from the command line (`tutor users`): the queries behind listing users,
setting a role or a plan, and inviting by email, so a school is set up (its first admin too)
without SQL. The same rules as the admin routes: a role is one of `ROLES`, a plan one the
catalog knows (an unknown one would silently be the default plan)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.models import Invitation, User

from .invitations import create


class PersonError(Exception):
    """No such user, or an address several users have: the message says which."""


async def users(s: AsyncSession, role: str | None = None) -> list[User]:
    query = select(User).order_by(User.created_at, User.id)
    return list((await s.execute(query.where(User.role == role) if role else query)).scalars())


async def find(s: AsyncSession, email_or_id: str) -> User:
    """The user with this id, else the one user with this address (in any case)."""
    user = await s.get(User, email_or_id) if len(email_or_id) <= 32 else None
    if user is not None:
        return user
    matches = list((await s.execute(select(User).where(
        func.lower(User.email) == email_or_id.strip().lower()).order_by(User.created_at))).scalars())
    if not matches:
        raise PersonError(f"no user has the id or address {email_or_id!r} (a person appears "
                          "after their first sign-in; to make a teacher or an admin of someone "
                          "who has not signed in yet, invite them: tutor users invite)")
    if len(matches) > 1:
        ids = ", ".join(f"{u.id} ({u.auth_provider})" for u in matches)
        raise PersonError(f"{len(matches)} users have the address {email_or_id!r}: {ids}; "
                          "name one by its id")
    return matches[0]


async def update(s: AsyncSession, email_or_id: str, *, role: str | None,
                 tier: str | None) -> User:
    user = await find(s, email_or_id)
    if role is not None:
        user.role = role
    if tier is not None:
        user.tier = tier
    return user


async def invite(s: AsyncSession, emails: list[str], *, role: str, ttl: timedelta,
                 base_url: str) -> tuple[list[Invitation], list[Invitation]]:
    """Invitations from the command line: from nobody in particular (`invited_by` NULL)."""
    return await create(s, inviter=None, emails=emails, role=role, ttl=ttl, base_url=base_url)
