"""`tutor users`: people, roles and plans without SQL, through the real command (a subprocess of
`python -m server.cli`) against a real database, SQLite and PostgreSQL (TUTOR_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator

import pytest
from sqlalchemy import select

from store import queries
from store.db import Database, migrate
from store.models import EmailNotification, Invitation, User
from tests.conftest import ROOT
from tests.storage_fixtures import BACKENDS, blank_database


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database with two people who signed in once: Ana (Google) and Ben (Supabase)."""
    async with blank_database(request.param, tmp_path) as url:
        await asyncio.to_thread(migrate, url)
        db = Database(url)
        try:
            async with db.session() as s, s.begin():
                await queries.upsert_user(s, provider="google", subject="g-ana",
                                          email="Ana@School.example", name="Ana")
            async with db.session() as s, s.begin():
                await queries.upsert_user(s, provider="supabase", subject="s-ben",
                                          email="ben@school.example", name="Ben")
        finally:
            await db.close()
        yield url


async def tutor(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TUTOR_")}
    environment.update({"TUTOR_DATABASE_URL": url, **env})
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "server.cli", "users", *args], cwd=ROOT,
        env=environment, capture_output=True, text=True, timeout=60)


async def people(url: str) -> dict[str, User]:
    db = Database(url)
    try:
        async with db.session() as s:
            return {u.name: u for u in (await s.execute(select(User))).scalars()}
    finally:
        await db.close()


async def test_the_first_admin_is_made_without_sql(db_url: str) -> None:
    done = await tutor(db_url, "set", "ana@school.example", "--role", "admin")
    assert done.returncode == 0, done.stderr
    assert "admin" in done.stdout and "Ana@School.example" in done.stdout
    assert (await people(db_url))["Ana"].role == "admin"
    ben = (await people(db_url))["Ben"]
    done = await tutor(db_url, "set", ben.id, "--role", "teacher", "--plan", "school")
    assert done.returncode == 0, done.stderr
    ben = (await people(db_url))["Ben"]
    assert (ben.role, ben.tier) == ("teacher", "school")

    listed = await tutor(db_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["tier"]) for r in rows] == [
        ("Ana", "admin", "free"), ("Ben", "teacher", "school")]
    teachers = await tutor(db_url, "list", "--role", "teacher")
    assert teachers.returncode == 0 and "Ben" in teachers.stdout and "Ana" not in teachers.stdout
    assert "1 users" in teachers.stderr


@pytest.mark.parametrize("args, message", [
    (("set", "ana@school.example", "--role", "boss"), "invalid choice: 'boss'"),
    (("set", "ana@school.example", "--plan", "gold"), "unknown plan 'gold'"),
    (("set", "ana@school.example"), "give --role, --plan or both"),
    (("list", "--role", "owner"), "invalid choice: 'owner'"),
], ids=["role", "plan", "nothing", "list-role"])
async def test_unknown_roles_and_plans_are_refused_with_status_2(db_url: str, args, message
                                                                 ) -> None:
    done = await tutor(db_url, *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert (await people(db_url))["Ana"].role == "student"


async def test_an_unknown_or_ambiguous_user_is_status_1(db_url: str) -> None:
    done = await tutor(db_url, "set", "nobody@school.example", "--role", "teacher")
    assert done.returncode == 1 and "tutor users invite" in done.stderr
    db = Database(db_url)
    try:
        async with db.session() as s, s.begin():  # the same address through another provider
            await queries.upsert_user(s, provider="supabase", subject="s-ana2",
                                      email="ana@school.example", name="Ana again")
    finally:
        await db.close()
    done = await tutor(db_url, "set", "ana@school.example", "--role", "teacher")
    assert done.returncode == 1 and "2 users have the address" in done.stderr
    assert {u.role for u in (await people(db_url)).values()} == {"student"}


async def test_invite_from_the_command_line_queues_one_email_per_address(db_url: str) -> None:
    no_url = await tutor(db_url, "invite", "t@school.example")
    assert no_url.returncode == 2 and "TUTOR_PUBLIC_URL" in no_url.stderr
    bad = await tutor(db_url, "invite", "not-an-address", TUTOR_PUBLIC_URL="https://s.example")
    assert bad.returncode == 2 and "email addresses" in bad.stderr
    for _ in range(2):  # asking again mails nothing new
        done = await tutor(db_url, "invite", "T@school.example", "u@school.example",
                           TUTOR_PUBLIC_URL="https://s.example")
        assert done.returncode == 0, done.stderr
    assert "already invited" in done.stdout and "t@school.example" in done.stdout
    db = Database(db_url)
    try:
        async with db.session() as s:
            invitations = (await s.execute(select(Invitation))).scalars().all()
            mails = (await s.execute(select(EmailNotification).where(
                EmailNotification.template == "role_invitation"))).scalars().all()
    finally:
        await db.close()
    assert sorted((i.email, i.role, i.invited_by) for i in invitations) == [
        ("t@school.example", "teacher", None), ("u@school.example", "teacher", None)]
    assert sorted(m.recipient for m in mails) == ["t@school.example", "u@school.example"]
    assert all(m.payload["accept_url"].startswith(
        "https://s.example/api/invitations/accept?token=") for m in mails)
