"""The storage layer, as a specification: schema and migrations, users and roles, API tokens,
transcript paging, account deletion, and classes. Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, insert, inspect, select, text, update
from sqlalchemy.exc import IntegrityError

from store import queries as q
from store.db import Database, alembic_config, migrate
from store.models import (ApiToken, Base, described_by_models, ClassMember, Classroom, EmailNotification, Interaction,
                          PaymentTransaction, User)
from tests.storage_fixtures import blank_db_url, db  # noqa: F401  (fixtures)

TABLES = {"users", "api_tokens", "classes", "class_members", "interactions", "content",
          "payment_transactions", "email_notifications"}


def aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)  # SQLite gives back naive UTC


async def make_user(db: Database, subject: str | None = None, role: str = "student") -> User:
    async with db.session() as s, s.begin():
        return await q.upsert_user(s, provider="google", subject=subject or secrets.token_hex(4),
                                   email=None, name=None, role=role)


async def count(db: Database, model, *where) -> int:  # type: ignore[no-untyped-def]
    async with db.session() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one()


# --- schema and migrations -------------------------------------------------------------------

async def test_migrations_create_every_table_and_are_idempotent(blank_db_url: str) -> None:
    database = Database(blank_db_url)
    try:
        async with database.engine.connect() as conn:
            assert not set(await conn.run_sync(lambda c: inspect(c).get_table_names())) & TABLES

        await asyncio.to_thread(migrate, blank_db_url)
        await asyncio.to_thread(migrate, blank_db_url)  # already at head: nothing to do, no error

        head = ScriptDirectory.from_config(alembic_config(blank_db_url)).get_current_head()
        async with database.engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            # The migrations build exactly the schema the models describe.
            diff = await conn.run_sync(lambda c: compare_metadata(
                MigrationContext.configure(c, opts={"include_name": described_by_models}),
                Base.metadata))
        assert TABLES <= tables
        assert set(Base.metadata.tables) <= tables
        assert version == [head]
        assert diff == []
    finally:
        await database.close()


# --- users -----------------------------------------------------------------------------------

async def test_upsert_user_creates_once_and_refreshes_on_next_sign_in(db: Database) -> None:
    async with db.session() as s, s.begin():
        first = await q.upsert_user(s, provider="google", subject="sub-1", email="a@example.com",
                                    name="Ada")
    async with db.session() as s:
        created = await q.get_user(s, first.id)
    assert created is not None
    assert (created.email, created.name, created.role) == ("a@example.com", "Ada", "student")

    await asyncio.sleep(0.01)
    async with db.session() as s, s.begin():
        again = await q.upsert_user(s, provider="google", subject="sub-1", email="ada@example.com",
                                    name="Ada L.")
    assert again.id == first.id
    async with db.session() as s:
        refreshed = await q.get_user(s, first.id)
    assert refreshed is not None
    assert (refreshed.email, refreshed.name) == ("ada@example.com", "Ada L.")
    assert aware(refreshed.last_seen_at) > aware(created.last_seen_at)
    assert aware(refreshed.created_at) == aware(created.created_at)

    # A sign-in that does not share the email or name keeps what is known.
    async with db.session() as s, s.begin():
        await q.upsert_user(s, provider="google", subject="sub-1", email=None, name=None)
    async with db.session() as s:
        kept = await q.get_user(s, first.id)
    assert kept is not None and (kept.email, kept.name) == ("ada@example.com", "Ada L.")

    # The same subject at another provider is another person.
    async with db.session() as s, s.begin():
        other = await q.upsert_user(s, provider="supabase", subject="sub-1", email=None, name=None)
    assert other.id != first.id
    assert await count(db, User) == 2


async def test_upsert_user_leaves_committing_to_the_caller(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as s, s.begin():
            await q.upsert_user(s, provider="google", subject="rolled-back", email=None, name=None)
            raise RuntimeError("the route failed after creating the user")
    if (left := await count(db, User)) != 0:
        pytest.fail(f"{left} user(s) left behind by a rolled-back transaction", pytrace=False)


async def test_concurrent_first_sign_ins_create_one_user(db: Database) -> None:
    async def sign_in(i: int) -> str:
        async with db.session() as s, s.begin():
            user = await q.upsert_user(s, provider="google", subject="same-person",
                                       email=f"p{i}@example.com", name=f"P{i}")
            return user.id

    ids = await asyncio.gather(*(sign_in(i) for i in range(5)))
    assert len(set(ids)) == 1
    assert await count(db, User) == 1


async def test_roles_are_constrained(db: Database) -> None:
    with pytest.raises(IntegrityError):
        async with db.session() as s, s.begin():
            s.add(User(auth_provider="google", auth_subject="w", role="wizard"))
    assert await count(db, User) == 0

    user = await make_user(db)
    async with db.session() as s, s.begin():
        with pytest.raises(ValueError):
            await q.set_role(s, user.id, "wizard")
        assert (await q.set_role(s, user.id, "teacher")) is not None
        assert await q.set_role(s, "no-such-user", "admin") is None
    async with db.session() as s:
        stored = await q.get_user(s, user.id)
    assert stored is not None and stored.role == "teacher"

    # The constraint holds below the ORM too.
    with pytest.raises(IntegrityError):
        async with db.session() as s, s.begin():
            await s.execute(update(User).where(User.id == user.id).values(role="wizard"))


# --- API tokens ------------------------------------------------------------------------------

async def test_api_token_is_stored_only_as_its_hash(db: Database) -> None:
    user = await make_user(db)
    async with db.session() as s, s.begin():
        token, row = await q.issue_api_token(s, user.id, name="laptop")
    assert token.startswith("tt_") and len(token) > 30
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()

    async with db.session() as s:  # the raw token is in no column of any table
        for table in Base.metadata.sorted_tables:
            for record in (await s.execute(select(table))).all():
                assert not any(token in str(value) or token[3:] in str(value) for value in record)

    async with db.session() as s:
        found = await q.user_for_api_token(s, token)
    assert found is not None and found.id == user.id


async def test_expired_and_revoked_tokens_find_nobody(db: Database) -> None:
    user = await make_user(db)
    async with db.session() as s, s.begin():
        fresh, _ = await q.issue_api_token(s, user.id, ttl=timedelta(hours=1))
        stale, stale_row = await q.issue_api_token(s, user.id, ttl=timedelta(hours=1))
        revoked, _ = await q.issue_api_token(s, user.id)
    async with db.session() as s, s.begin():
        await s.execute(update(ApiToken).where(ApiToken.id == stale_row.id)
                        .values(expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))
        assert await q.revoke_api_token(s, revoked) is True
        assert await q.revoke_api_token(s, revoked) is False  # already revoked
        assert await q.revoke_api_token(s, "tt_unknown") is False

    async with db.session() as s:
        assert (await q.user_for_api_token(s, fresh)) is not None
        assert await q.user_for_api_token(s, stale) is None
        assert await q.user_for_api_token(s, revoked) is None


async def test_unknown_and_garbage_tokens_find_nobody(db: Database) -> None:
    user = await make_user(db)
    async with db.session() as s, s.begin():
        token, row = await q.issue_api_token(s, user.id)
    candidates = ["", "tt_", "tt_" + secrets.token_urlsafe(32), "garbage", token[3:], token + "x",
                  token.upper(), row.token_hash, "tt_" + row.token_hash, "' OR 1=1 --", "tt_\x00"]
    async with db.session() as s:
        for candidate in candidates:
            assert await q.user_for_api_token(s, candidate) is None, candidate


# --- transcripts -----------------------------------------------------------------------------

async def test_interactions_page_is_keyset_paged_newest_first_per_user(db: Database) -> None:
    alice, bob = await make_user(db, "alice"), await make_user(db, "bob")
    rows = []
    for i in range(23):  # interleaved, so the other user's rows sit between the pages' rows
        rows.append(dict(session_id="s-a", user_id=alice.id, transcript=f"alice {i}"))
        if i % 3 == 0:
            rows.append(dict(session_id="s-b", user_id=bob.id, transcript=f"bob {i}"))
    async with db.session() as s, s.begin():
        await s.execute(insert(Interaction), rows)

    pages: list[list[Interaction]] = []
    before = None
    while True:
        async with db.session() as s:
            page = await q.interactions_page(s, [alice.id], limit=5, before_id=before)
        if not page:
            break
        pages.append(page)
        before = page[-1].id
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    seen = [row for page in pages for row in page]
    assert {row.user_id for row in seen} == {alice.id}
    assert [row.id for row in seen] == sorted((row.id for row in seen), reverse=True)
    assert [row.transcript for row in seen] == [f"alice {i}" for i in reversed(range(23))]

    async with db.session() as s:
        both = await q.interactions_page(s, [alice.id, bob.id], limit=100)
        none = await q.interactions_page(s, [], limit=100)
        bobs = await q.all_interactions(s, bob.id)
    assert len(both) == 23 + 8 and none == []
    assert [r.transcript for r in bobs] == [f"bob {i}" for i in range(0, 23, 3)]  # oldest first


# --- account deletion ------------------------------------------------------------------------

async def test_delete_user_cascades_but_keeps_bookkeeping(db: Database) -> None:
    gone = await make_user(db, "gone", role="teacher")
    other_teacher = await make_user(db, "other", role="teacher")
    student = await make_user(db, "student")
    async with db.session() as s, s.begin():
        await q.issue_api_token(s, gone.id)
        own_class = await q.create_class(s, gone.id, "Gone's class")
        await q.add_student(s, own_class.id, student.id)
        other_class = await q.create_class(s, other_teacher.id, "Other class")
        await q.add_student(s, other_class.id, gone.id)
        await q.add_student(s, other_class.id, student.id)
        await s.execute(insert(Interaction), [dict(session_id="x", user_id=gone.id),
                                              dict(session_id="x", user_id=gone.id),
                                              dict(session_id="y", user_id=student.id)])
        s.add(PaymentTransaction(user_id=gone.id, stripe_event_id="evt_1", event_type="invoice.paid",
                                 amount=500, currency="eur"))
        s.add(EmailNotification(user_id=gone.id, recipient="gone@example.com", template="welcome"))

    async with db.session() as s, s.begin():
        assert await q.delete_user(s, gone.id) is True
    async with db.session() as s, s.begin():
        assert await q.delete_user(s, gone.id) is False

    assert await count(db, User, User.id == gone.id) == 0
    assert await count(db, Interaction, Interaction.user_id == gone.id) == 0
    assert await count(db, ApiToken, ApiToken.user_id == gone.id) == 0
    assert await count(db, Classroom, Classroom.teacher_id == gone.id) == 0
    assert await count(db, ClassMember, ClassMember.class_id == own_class.id) == 0
    assert await count(db, ClassMember, ClassMember.user_id == gone.id) == 0
    # Everyone else's data is untouched.
    assert await count(db, Interaction, Interaction.user_id == student.id) == 1
    async with db.session() as s:
        assert await q.class_student_ids(s, other_class.id) == [student.id]
        payments = (await s.execute(select(PaymentTransaction))).scalars().all()
        emails = (await s.execute(select(EmailNotification))).scalars().all()
    assert [(p.stripe_event_id, p.user_id) for p in payments] == [("evt_1", None)]
    assert [(e.recipient, e.user_id) for e in emails] == [("gone@example.com", None)]


# --- classes ---------------------------------------------------------------------------------

async def test_classes_belong_to_their_teacher(db: Database) -> None:
    teacher, intruder = await make_user(db, "t", "teacher"), await make_user(db, "i", "teacher")
    s1, s2 = await make_user(db, "s1"), await make_user(db, "s2")
    async with db.session() as s, s.begin():
        room = await q.create_class(s, teacher.id, "French B1")
        assert room.id and room.name == "French B1" and room.teacher_id == teacher.id
        await q.add_student(s, room.id, s1.id)
    async with db.session() as s, s.begin():  # adding again is a no-op, in another transaction
        await q.add_student(s, room.id, s1.id)
        await q.add_student(s, room.id, s2.id)

    async with db.session() as s:
        assert sorted(await q.class_student_ids(s, room.id)) == sorted([s1.id, s2.id])
        mine = await q.class_of_teacher(s, room.id, teacher.id)
        assert mine is not None and mine.id == room.id
        assert await q.class_of_teacher(s, room.id, intruder.id) is None
        assert await q.class_of_teacher(s, "no-such-class", teacher.id) is None
        assert await q.class_student_ids(s, "no-such-class") == []


async def test_add_student_twice_in_one_transaction_is_idempotent(db: Database) -> None:
    teacher, student = await make_user(db, "t", "teacher"), await make_user(db, "s")
    async with db.session() as s, s.begin():
        room = await q.create_class(s, teacher.id, "Maths")
        await q.add_student(s, room.id, student.id)
        await q.add_student(s, room.id, student.id)
    async with db.session() as s:
        assert await q.class_student_ids(s, room.id) == [student.id]


async def test_list_users_pages_in_creation_order(db: Database) -> None:
    made = [await make_user(db, f"u{i}") for i in range(5)]
    async with db.session() as s:
        first = await q.list_users(s, limit=3)
        rest = await q.list_users(s, limit=3, offset=3)
    assert [u.id for u in first + rest] == [u.id for u in made]
