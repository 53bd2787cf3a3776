"""The queries the routes run, as plain async functions over an `AsyncSession`.

Each function does one thing and leaves committing to the caller (`async with db.session() as s,
s.begin(): ...`), so a route can combine several in one transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (ROLES, TURN_KINDS, ApiToken, ClassMember, Classroom, EmailNotification,
                     Interaction, User, new_id, now)

API_TOKEN_PREFIX = "tt_"


async def upsert_user(s: AsyncSession, *, provider: str, subject: str, email: str | None,
                      name: str | None, role: str = "student") -> User:
    """The user behind an external identity, created on first sign-in, refreshed after."""
    query = select(User).where(User.auth_provider == provider, User.auth_subject == subject)
    user = (await s.execute(query)).scalar_one_or_none()
    if user is None:
        # INSERT … ON CONFLICT DO NOTHING: two first sign-ins at once end with one row, and no
        # savepoint is needed (SQLite's driver would commit one outside the caller's transaction).
        created = await s.execute(dialect_insert(s)(User).values(
            id=new_id(), auth_provider=provider, auth_subject=subject, email=email, name=name,
            role=role).on_conflict_do_nothing(index_elements=["auth_provider", "auth_subject"]))
        user = (await s.execute(query)).scalar_one()
        if created.rowcount and email:  # the welcome mail commits (or not) with the account
            await enqueue_email(s, recipient=email, template="welcome",
                                payload={"name": name or ""}, transactional=True,
                                user_id=user.id, key=f"welcome:{user.id}")
    else:
        user.email = email or user.email
        user.name = name or user.name
        user.last_seen_at = now()
    return user


def dialect_insert(s: AsyncSession):  # type: ignore[no-untyped-def]
    """The `INSERT` of the session's dialect (PostgreSQL or SQLite), for ON CONFLICT clauses."""
    return pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert


async def enqueue_email(s: AsyncSession, *, recipient: str, template: str,
                        payload: dict[str, Any], transactional: bool, user_id: str | None = None,
                        key: str | None = None, language: str | None = None) -> bool:
    """Put a message in the outbox, in the caller's transaction. `key` makes it once-only (the
    same key again is ignored: a replayed event does not mail twice); False when it was."""
    result = await s.execute(dialect_insert(s)(EmailNotification).values(
        user_id=user_id, recipient=recipient, template=template, payload=payload,
        transactional=transactional, status="pending", attempts=0, next_attempt_at=now(),
        idempotency_key=key or new_id(), language=language, created_at=now(),
    ).on_conflict_do_nothing(index_elements=["idempotency_key"]))
    return bool(result.rowcount)


async def get_user(s: AsyncSession, user_id: str) -> User | None:
    return await s.get(User, user_id)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_api_token(s: AsyncSession, user_id: str, *, name: str | None = None,
                          ttl: timedelta | None = None) -> tuple[str, ApiToken]:
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(user_id=user_id, token_hash=_hash(token), name=name,
                   expires_at=now() + ttl if ttl else None)
    s.add(row)
    return token, row


async def user_for_api_token(s: AsyncSession, token: str) -> User | None:
    if not token.startswith(API_TOKEN_PREFIX):
        return None
    row = (await s.execute(select(ApiToken).where(ApiToken.token_hash == _hash(token)))).scalar_one_or_none()
    if row is None or row.revoked_at is not None:
        return None
    if row.expires_at is not None and _aware(row.expires_at) <= now():
        return None
    return await s.get(User, row.user_id)


async def revoke_api_token(s: AsyncSession, token: str) -> bool:
    result = await s.execute(update(ApiToken).where(ApiToken.token_hash == _hash(token),
                                                    ApiToken.revoked_at.is_(None))
                             .values(revoked_at=now()))
    return bool(result.rowcount)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops the zone


async def interactions_page(s: AsyncSession, user_ids: Sequence[str], *, limit: int = 50,
                            before_id: int | None = None) -> list[Interaction]:
    """Newest first; pass the last row's id as `before_id` for the next page (keyset paging).
    Turns only: the students' notes (kind "note", study.notes) are theirs alone."""
    query = select(Interaction).where(Interaction.user_id.in_(user_ids),
                                      Interaction.kind.in_(TURN_KINDS))
    if before_id is not None:
        query = query.where(Interaction.id < before_id)
    query = query.order_by(Interaction.id.desc()).limit(limit)
    return list((await s.execute(query)).scalars())


async def all_interactions(s: AsyncSession, user_id: str) -> list[Interaction]:
    query = select(Interaction).where(Interaction.user_id == user_id).order_by(Interaction.id)
    return list((await s.execute(query)).scalars())


async def delete_user(s: AsyncSession, user_id: str) -> bool:
    """Delete the account and, by cascade, its interactions, tokens, classes and memberships."""
    result = await s.execute(delete(User).where(User.id == user_id))
    return bool(result.rowcount)


async def create_class(s: AsyncSession, teacher_id: str, name: str) -> Classroom:
    room = Classroom(teacher_id=teacher_id, name=name)
    s.add(room)
    await s.flush()
    return room


async def add_student(s: AsyncSession, class_id: str, user_id: str) -> None:
    if await s.get(ClassMember, (class_id, user_id)) is None:
        s.add(ClassMember(class_id=class_id, user_id=user_id))


async def class_of_teacher(s: AsyncSession, class_id: str, teacher_id: str) -> Classroom | None:
    room = await s.get(Classroom, class_id)
    return room if room is not None and room.teacher_id == teacher_id else None


async def class_student_ids(s: AsyncSession, class_id: str) -> list[str]:
    query = select(ClassMember.user_id).where(ClassMember.class_id == class_id)
    return list((await s.execute(query)).scalars())


async def list_users(s: AsyncSession, *, limit: int = 100, offset: int = 0) -> list[User]:
    query = select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
    return list((await s.execute(query)).scalars())


async def set_role(s: AsyncSession, user_id: str, role: str) -> User | None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    user = await s.get(User, user_id)
    if user is not None:
        user.role = role
    return user
