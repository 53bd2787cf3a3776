"""`tutor worker`: the email outbox worker in a process of its own, without HTTP, for deployments
whose servers run with TUTOR_EMAIL_WORKER=false (deploy/compose.yaml, docs/deploy.md).

It sends what servers queued (log transport, SQLite), queues the weekly summaries unless told not
to, refuses to start without the secret that signs unsubscribe links, and, as a real process,
stops at once and cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select, text

from server.cli import worker_command
from store import queries
from store.db import Database, migrate, revisions
from store.models import EmailNotification
from tests.conftest import ROOT, make_settings


def settings_for(tmp_path: Path, **overrides):  # type: ignore[no-untyped-def]
    values = dict(database_url=f"sqlite+aiosqlite:///{tmp_path}/tutor.db",
                  session_secret="a-shared-secret", email_poll_s=0.05, auto_migrate=True)
    values.update(overrides)
    return make_settings(**values)


async def queue_welcome(url: str, key: str) -> None:
    db = Database(url)
    try:
        async with db.session() as s, s.begin():
            await queries.enqueue_email(s, recipient="ada@example.com", template="welcome",
                                        payload={"name": "Ada"}, transactional=True, key=key)
    finally:
        await db.close()


async def schema_version(url: str) -> str | None:
    """The database's Alembic revision; None before the first migration has finished."""
    db = Database(url)
    try:
        async with db.session() as s:
            return (await s.execute(text("SELECT version_num FROM alembic_version"))).scalar()
    except Exception:  # no alembic_version table yet
        return None
    finally:
        await db.close()


async def statuses(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        async with db.session() as s:
            rows = (await s.execute(select(EmailNotification))).scalars().all()
            return {r.idempotency_key: r.status for r in rows}
    finally:
        await db.close()


async def test_once_sends_what_is_due_and_exits(tmp_path: Path, capsys) -> None:
    settings = settings_for(tmp_path)
    await asyncio.to_thread(migrate, settings.database_url)
    await queue_welcome(settings.database_url, "w1")
    await queue_welcome(settings.database_url, "w2")
    assert await worker_command(settings, once=True, summaries=False) == 0
    assert await statuses(settings.database_url) == {"w1": "sent", "w2": "sent"}
    assert "2 messages claimed: 2 sent" in capsys.readouterr().out


async def test_runs_until_stopped_sending_as_mail_is_queued(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(worker_command(settings, stop=stop, summaries=False))
    try:
        head = revisions()[0]
        for _ in range(400):  # the worker migrates the fresh database first (auto_migrate)
            await asyncio.sleep(0.05)
            if await schema_version(settings.database_url) == head:  # not just the first table
                break
        await queue_welcome(settings.database_url, "late")
        for _ in range(100):
            if (await statuses(settings.database_url)).get("late") == "sent":
                break
            await asyncio.sleep(0.05)
        assert (await statuses(settings.database_url)) == {"late": "sent"}
        assert not task.done()
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


async def test_refuses_to_start_without_the_link_secret(tmp_path: Path, capsys) -> None:
    settings = settings_for(tmp_path, session_secret=None, email_link_secret=None)
    assert await worker_command(settings, once=True) == 2
    assert "TUTOR_SESSION_SECRET" in capsys.readouterr().out


async def test_without_migrating_when_told_not_to(tmp_path: Path) -> None:
    """TUTOR_AUTO_MIGRATE=false (as in deploy/compose.yaml): the migrate job owns the schema."""
    settings = settings_for(tmp_path, auto_migrate=False)
    # a schema one migration behind (the outbox is there since 0005): left as it is
    await asyncio.to_thread(migrate, settings.database_url, "0005")
    await queue_welcome(settings.database_url, "w")
    assert await worker_command(settings, once=True, summaries=False) == 0
    assert (await statuses(settings.database_url))["w"] == "sent"
    assert await schema_version(settings.database_url) == "0005"


def test_the_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "TUTOR_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/tutor.db",
           "TUTOR_SESSION_SECRET": "a-shared-secret", "TUTOR_EMAIL_POLL_S": "0.1",
           "TUTOR_LOG_FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "worker"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "email outbox worker started" in line:
                break
        assert any("email outbox worker started" in x for x in lines), "".join(lines)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0, "".join(lines) + out
        assert "email outbox worker stopping" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_queues_last_weeks_summaries_unless_told_not_to(tmp_path: Path) -> None:
    from datetime import datetime, timedelta, timezone

    from notify.summary import last_full_week
    from store.models import Interaction

    settings = settings_for(tmp_path)
    await asyncio.to_thread(migrate, settings.database_url)
    start, _ = last_full_week(datetime.now(timezone.utc))
    db = Database(settings.database_url)
    try:
        async with db.session() as s, s.begin():
            ada = await queries.upsert_user(s, provider="supabase", subject="ada",
                                            email="ada@example.com", name="Ada")
            s.add(Interaction(session_id="sess", user_id=ada.id, kind="voice",
                              transcript="What is a fraction?", answer="...",
                              created_at=start + timedelta(days=2)))

        async def summaries() -> int:
            async with db.session() as s:
                return len((await s.execute(select(EmailNotification).where(
                    EmailNotification.template == "weekly_summary"))).scalars().all())

        assert await worker_command(settings, once=True, summaries=False) == 0
        assert await summaries() == 0
        assert await worker_command(settings, once=True, summaries=True) == 0
        assert await summaries() == 1
    finally:
        await db.close()
