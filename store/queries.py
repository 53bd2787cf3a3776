"""The queries the routes run, as plain async functions over an `AsyncSession`.

Each function does one thing and leaves committing to the caller (`async with db.session() as s,
s.begin(): ...`), so a route can combine several in one transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import (ROLES, TURN_KINDS, ApiToken, BrowserSession, ClassMember, Classroom,
                     EmailNotification, FlaggedTurn, Interaction, Mastery, QuizAnswer, User,
                     new_id, now)

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
    if row.expires_at is not None and aware(row.expires_at) <= now():
        return None
    return await s.get(User, row.user_id)


async def revoke_api_token(s: AsyncSession, token: str) -> bool:
    result = await s.execute(update(ApiToken).where(ApiToken.token_hash == _hash(token),
                                                    ApiToken.revoked_at.is_(None))
                             .values(revoked_at=now()))
    return bool(result.rowcount)


def aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite drops the zone


async def start_browser_session(s: AsyncSession, user_id: str, *, user_agent: str | None,
                                max_age: timedelta) -> BrowserSession:
    """A new signed-in browser of the user; their ended (revoked or expired) sessions go."""
    await s.execute(delete(BrowserSession).where(
        BrowserSession.user_id == user_id,
        or_(BrowserSession.revoked_at.is_not(None), BrowserSession.created_at <= now() - max_age)))
    row = BrowserSession(id=secrets.token_urlsafe(32), user_id=user_id,
                         user_agent=(user_agent or "")[:300] or None)
    s.add(row)
    return row


def _live_sessions(max_age: timedelta):  # type: ignore[no-untyped-def]
    return (BrowserSession.revoked_at.is_(None), BrowserSession.created_at > now() - max_age)


async def browser_session_user(s: AsyncSession, session_id: str, *, max_age: timedelta
                               ) -> tuple[BrowserSession, User] | None:
    """The live (not revoked, not expired) session `session_id` and its user, in one query."""
    row = (await s.execute(select(BrowserSession, User)
                           .join(User, User.id == BrowserSession.user_id)
                           .where(BrowserSession.id == session_id, *_live_sessions(max_age)))).first()
    return (row[0], row[1]) if row is not None else None


async def touch_browser_session(s: AsyncSession, session_id: str) -> None:
    await s.execute(update(BrowserSession).where(BrowserSession.id == session_id)
                    .values(last_seen_at=now()))


async def browser_sessions(s: AsyncSession, user_id: str, *, max_age: timedelta
                           ) -> list[BrowserSession]:
    """The user's live sessions, most recently used first."""
    query = select(BrowserSession).where(BrowserSession.user_id == user_id,
                                         *_live_sessions(max_age))
    return list((await s.execute(query.order_by(BrowserSession.last_seen_at.desc(),
                                                BrowserSession.id))).scalars())


async def revoke_browser_sessions(s: AsyncSession, user_id: str | None, *,
                                  only: str | None = None, keep: str | None = None) -> int:
    """Revoke live sessions: the user's (`only` that one, or all but `keep`), or with no user,
    the session `only`; how many."""
    if user_id is None and only is None:
        raise ValueError("revoke whose sessions?")
    query = update(BrowserSession).where(BrowserSession.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(BrowserSession.user_id == user_id)
    if only is not None:
        query = query.where(BrowserSession.id == only)
    if keep is not None:
        query = query.where(BrowserSession.id != keep)
    return (await s.execute(query.values(revoked_at=now()))).rowcount or 0


async def interactions_page(s: AsyncSession, user_ids: Sequence[str], *, limit: int = 50,
                            before_id: int | None = None,
                            class_id: str | None = None) -> list[Interaction]:
    """Newest first; pass the last row's id as `before_id` for the next page (keyset paging).
    Turns only: the students' notes (kind "note", study.notes) are theirs alone. With
    `class_id`, only the turns each user made after joining that class (what its teacher sees)."""
    query = select(Interaction).where(Interaction.user_id.in_(user_ids),
                                      Interaction.kind.in_(TURN_KINDS))
    if class_id is not None:
        query = query.join(ClassMember, (ClassMember.user_id == Interaction.user_id)
                           & (ClassMember.class_id == class_id)).where(
            Interaction.created_at >= ClassMember.joined_at)
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


JOIN_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud, typed
JOIN_CODE_LENGTH = 8  # 32**8 = 2**40 codes


def new_join_code() -> str:
    return "".join(secrets.choice(JOIN_CODE_ALPHABET) for _ in range(JOIN_CODE_LENGTH))


def normalise_join_code(code: str) -> str:
    """What a student typed, as stored: upper case, without spaces or dashes."""
    return "".join(c for c in code.upper() if c not in " -\t")


async def class_taught_by(s: AsyncSession, class_id: str, user: User) -> Classroom | None:
    """The class, if `user` teaches it or is an admin (else None: routes answer 404, so a class
    that is not the caller's looks like no class at all)."""
    room = await s.get(Classroom, class_id)
    return room if room is not None and (user.role == "admin" or room.teacher_id == user.id) \
        else None


async def create_class(s: AsyncSession, teacher_id: str, name: str,
                       course: str | None = None) -> Classroom:
    room = Classroom(teacher_id=teacher_id, name=name, join_code=new_join_code(), course=course)
    s.add(room)
    await s.flush()
    return room


async def rotate_join_code(s: AsyncSession, room: Classroom) -> str:
    """A new code for the class: the old one stops working; members stay."""
    room.join_code = new_join_code()
    await s.flush()
    return room.join_code


async def class_by_code(s: AsyncSession, code: str) -> Classroom | None:
    code = normalise_join_code(code)
    if not code:
        return None
    return (await s.execute(select(Classroom).where(Classroom.join_code == code))).scalar_one_or_none()


async def add_student(s: AsyncSession, class_id: str, user_id: str) -> bool:
    """Make the user a member from now on; False if they already were (joined_at unchanged)."""
    if await s.get(ClassMember, (class_id, user_id)) is not None:
        return False
    s.add(ClassMember(class_id=class_id, user_id=user_id, joined_at=now()))
    return True


async def leave_class(s: AsyncSession, class_id: str, user_id: str) -> bool:
    result = await s.execute(delete(ClassMember).where(ClassMember.class_id == class_id,
                                                       ClassMember.user_id == user_id))
    return bool(result.rowcount)


async def classes_of_teacher(s: AsyncSession, teacher_id: str) -> list[Classroom]:
    query = select(Classroom).where(Classroom.teacher_id == teacher_id)
    return list((await s.execute(query.order_by(Classroom.created_at, Classroom.id))).scalars())


async def classes_of_student(s: AsyncSession, user_id: str) -> list[tuple[Classroom, ClassMember]]:
    query = (select(Classroom, ClassMember).join(ClassMember, ClassMember.class_id == Classroom.id)
             .where(ClassMember.user_id == user_id).order_by(ClassMember.joined_at, Classroom.id))
    return [(room, member) for room, member in (await s.execute(query)).all()]


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


async def flagged_turns_page(s: AsyncSession, class_id: str, *, limit: int = 50,
                             before_id: int | None = None) -> list[FlaggedTurn]:
    """The flagged turns of a class's students since each joined it, newest first (keyset
    paging as `interactions_page`)."""
    query = (select(FlaggedTurn)
             .join(ClassMember, (ClassMember.user_id == FlaggedTurn.user_id)
                   & (ClassMember.class_id == class_id))
             .where(FlaggedTurn.created_at >= ClassMember.joined_at))
    if before_id is not None:
        query = query.where(FlaggedTurn.id < before_id)
    query = query.order_by(FlaggedTurn.id.desc()).limit(limit)
    return list((await s.execute(query)).scalars())


async def flagged_counts(s: AsyncSession, user_ids: Sequence[str],
                         since: datetime | None = None) -> dict[str, int]:
    """How many flagged turns each of `user_ids` has (since `since`, if given); a user without
    any is absent (read it with `.get(user_id, 0)`). For the class report."""
    if not user_ids:
        return {}
    query = (select(FlaggedTurn.user_id, func.count())
             .where(FlaggedTurn.user_id.in_(user_ids)).group_by(FlaggedTurn.user_id))
    if since is not None:
        query = query.where(FlaggedTurn.created_at >= since)
    return {user_id: count for user_id, count in (await s.execute(query)).all()}


async def teachers_of_student(s: AsyncSession, user_id: str) -> list[User]:
    """The teachers of every class the student is in (each once)."""
    query = (select(User).join(Classroom, Classroom.teacher_id == User.id)
             .join(ClassMember, ClassMember.class_id == Classroom.id)
             .where(ClassMember.user_id == user_id).distinct().order_by(User.id))
    return list((await s.execute(query)).scalars())


async def progress_of(s: AsyncSession, user_id: str
                      ) -> tuple[list[QuizAnswer], list[Mastery], list[FlaggedTurn]]:
    """Everything kept of a student's progress and safety, oldest first: their quiz answers,
    their mastery per course section and the turns moderation flagged (the export)."""
    answers = (await s.execute(select(QuizAnswer).where(QuizAnswer.user_id == user_id)
                               .order_by(QuizAnswer.created_at, QuizAnswer.id))).scalars().all()
    standing = (await s.execute(select(Mastery).where(Mastery.user_id == user_id)
                                .order_by(Mastery.course, Mastery.section))).scalars().all()
    flags = (await s.execute(select(FlaggedTurn).where(FlaggedTurn.user_id == user_id)
                             .order_by(FlaggedTurn.created_at, FlaggedTurn.id))).scalars().all()
    return list(answers), list(standing), list(flags)
