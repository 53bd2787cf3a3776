"""`tutor backup` and `tutor restore` (store/backup.py), on SQLite and on the real PostgreSQL.

The round trip: a database filled through the real code paths (sign-ins, tokens, classes, turns
and usage through the background writers, Stripe events and payments, the email outbox, course
documents with vectors), backed up, then changed (an account deleted with its cascades, rows
edited and added, a stray table from "a later migration"), restored: every row of every table, all
columns, is what it was before, and full-text search still finds the turns. Also: the CLI itself,
once per database; a backup from an older schema migrated to head on restore; the refusals (a
PostgreSQL dump for SQLite and the other way round, a schema newer than the code, a database in
use, a damaged file); and on SQLite, backups taken while the writers are writing are consistent.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.engine import make_url

from billing.stripe import _record_event, _transaction
from store import queries as q
from store.backup import (BackupError, Manifest, _write_archive, backup, head_revision,
                          libpq_url, read_manifest, restore)
from store.db import Database, migrate
from store.models import EmailNotification, Interaction, UsageEntry, User
from store.writer import InteractionWriter
from tests.storage_fixtures import BACKENDS, asyncpg_dsn, blank_database

ROOT = Path(__file__).resolve().parent.parent


class FakeEmbedder:
    model = "fake-embedding-3"

    async def embed(self, texts: list[str]) -> np.ndarray:
        rng = np.random.default_rng(len(texts))
        vectors = rng.standard_normal((len(texts), 8)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated, empty database on each backend (nothing left connected to it)."""
    async with blank_database(request.param, tmp_path) as database_url:
        await asyncio.to_thread(migrate, database_url)
        yield database_url


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


async def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, all columns, sorted: SQLite's FTS5 shadow tables included, and
    PostgreSQL's generated `search` columns."""
    if is_sqlite(url):
        def read() -> dict[str, list[tuple[Any, ...]]]:
            conn = sqlite3.connect(make_url(url).database)
            try:
                names = [n for n, sql in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                    "'sqlite_%'") if not sql.upper().startswith("CREATE VIRTUAL")]
                return {n: sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)
                        for n in names}
            finally:
                conn.close()
        return await asyncio.to_thread(read)
    import asyncpg

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        names = [r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema() AND table_type = 'BASE TABLE'")]
        return {n: sorted((tuple(r) for r in await conn.fetch(f'SELECT * FROM "{n}"')), key=repr)
                for n in names}
    finally:
        await conn.close()


async def seed(url: str) -> dict[str, str]:
    """Rows in every table the tutor has, each written by the code that writes it in production."""
    from rag.ingest import ingest
    from rag.worker import Limits, Parser

    db = Database(url)
    try:
        async with db.session() as s, s.begin():
            ada = await q.upsert_user(s, provider="google", subject="g-ada", email="ada@example.com",
                                      name="Ada Lovelace")
            teacher = await q.upsert_user(s, provider="supabase", subject="s-t",
                                          email="teach@example.com", name="Ms. Ünal", role="teacher")
            bob = await q.upsert_user(s, provider="guest", subject="guest", email=None, name=None)
            ids = {"ada": ada.id, "teacher": teacher.id, "bob": bob.id}
        async with db.session() as s, s.begin():
            await q.issue_api_token(s, ids["ada"], name="laptop")
            room = await q.create_class(s, ids["teacher"], "Biology 9b")
            await q.add_student(s, room.id, ids["ada"])
            await q.add_student(s, room.id, ids["bob"])
            await s.execute(update(User).where(User.id == ids["ada"]).values(
                tier="pro", stripe_customer_id="cus_ada", subscription_id="sub_1",
                subscription_status="active", cancel_at_period_end=True, seats=None,
                guardian_email="parent@example.com", weekly_summary=False, language="de"))
            for kind, event_id, obj in (
                    ("invoice.paid", "evt_paid", {"customer": "cus_ada", "amount_paid": 1200,
                                                  "currency": "eur", "id": "in_1"}),
                    ("charge.refunded", "evt_refund", {"customer": "cus_ada", "id": "ch_1",
                                                       "amount_refunded": 400, "currency": "eur"})):
                event = {"id": event_id, "type": kind, "created": 1_790_000_000,
                         "data": {"object": obj}}
                assert await _record_event(s, event)
                user = await s.get(User, ids["ada"])
                s.add(_transaction(event, user, "pro"))
            await q.enqueue_email(s, recipient="ada@example.com", template="payment_receipt",
                                  payload={"amount": 1200, "currency": "eur", "nested": {"a": [1, 2]}},
                                  transactional=True, user_id=ids["ada"], language="de",
                                  key="stripe:evt_paid")
        turns = InteractionWriter(db, batch_size=3)
        usage = InteractionWriter(db, model=UsageEntry)
        turns.start()
        usage.start()
        for i, (who, said, answer) in enumerate([
                ("ada", "What is photosynthesis?", "Plants turn light into sugar…"),
                ("ada", "Und die Mitochondrien?", "Das Kraftwerk der Zelle ⚡"),
                ("bob", "why flip the fraction", "Dividing is multiplying by the reciprocal."),
                ("teacher", "", "")]):
            turns.submit(dict(session_id=f"sess-{i % 2}", user_id=ids[who], course="sample",
                              kind="voice" if i % 2 else "text", response_id=f"resp_{i}",
                              transcript=said, answer=answer, status="completed",
                              audio_seconds=2.5 * i, tokens_in=10 + i, tokens_out=None,
                              stt_ms=120.25, retrieval_ms=None, llm_first_token_ms=300.5,
                              end_of_turn_to_first_delta_ms=640.125, server_ms=3.5))
            usage.submit(dict(user_id=ids[who], session_id=f"sess-{i % 2}", kind="voice_ms",
                              amount=2500 * i, tier="free"))
        await turns.stop()
        await usage.stop()
        assert turns.written == 4 and usage.written == 4
        parser = Parser(Limits(max_bytes=10**6, chunk_chars=200, overlap_chars=20))
        try:
            result = await ingest(db, FakeEmbedder(), parser, course="biology", source="cells.md",
                                  filename="cells.md",
                                  data=("# Cells\n\nThe mitochondrion makes ATP. " * 20
                                        + "\n\n## Plants\n\nChloroplasts do photosynthesis.\n"
                                        ).encode())
        finally:
            parser.close()
        assert result.chunks >= 2
        return ids
    finally:
        await db.close()


async def search_turns(url: str, word: str) -> list[int]:
    db = Database(url)
    try:
        async with db.session() as s:
            if is_sqlite(url):
                query = text("SELECT rowid FROM fts_interactions WHERE fts_interactions MATCH :w")
            else:
                query = text("SELECT id FROM interactions WHERE search @@ "
                             "plainto_tsquery('english', :w)")
            return sorted((await s.execute(query, {"w": word})).scalars())
    finally:
        await db.close()


async def change_everything(url: str, ids: dict[str, str]) -> None:
    db = Database(url)
    try:
        async with db.session() as s, s.begin():
            assert await q.delete_user(s, ids["ada"])  # cascades: turns, tokens, memberships...
            await s.execute(update(EmailNotification).values(status="sent", attempts=1))
            s.add(Interaction(session_id="later", user_id=ids["bob"], transcript="photosynthesis "
                              "again", answer="later answer"))
            await q.enqueue_email(s, recipient="new@example.com", template="welcome",
                                  payload={"name": "New"}, transactional=True)
            await s.execute(text("CREATE TABLE stray_from_a_later_migration (id INTEGER "
                                 "PRIMARY KEY, user_id VARCHAR(32) REFERENCES users(id))"))
    finally:
        await db.close()


async def test_a_round_trip_loses_nothing(url: str, tmp_path: Path):
    ids = await seed(url)
    before = await snapshot(url)
    assert all(before[t] for t in ("users", "api_tokens", "classes", "class_members",
                                   "interactions", "usage_ledger", "payment_transactions",
                                   "stripe_events", "email_notifications", "content",
                                   "alembic_version")), {t: len(r) for t, r in before.items()}
    found = await search_turns(url, "photosynthesis")
    assert len(found) == 1

    archive = tmp_path / "backup.tar"
    manifest = await backup(url, archive)
    assert manifest.backend == ("sqlite" if is_sqlite(url) else "postgresql")
    assert manifest.alembic_revision == head_revision()
    assert manifest.tables == {t: len(rows) for t, rows in before.items()}
    assert read_manifest(archive) == manifest
    with tarfile.open(archive) as tar:
        assert tar.getnames() == ["manifest.json", manifest.payload]
        assert all(m.mode == 0o600 for m in tar.getmembers())
    assert archive.stat().st_mode & 0o077 == 0

    await change_everything(url, ids)
    changed = await snapshot(url)
    assert changed != before and "stray_from_a_later_migration" in changed

    result = await restore(url, archive, safety_dir=tmp_path / "safety")
    after = await snapshot(url)
    # SQLite: the file is replaced whole. PostgreSQL: only the tutor's own tables are replaced
    # (those in the dump, and those of this code's models); any other table is left alone.
    assert ("stray_from_a_later_migration" in after) == (not is_sqlite(url))
    after.pop("stray_from_a_later_migration", None)
    assert after == before, {t: (len(before.get(t, [])), len(after.get(t, [])))
                             for t in set(before) | set(after)
                             if before.get(t) != after.get(t)}
    assert await search_turns(url, "photosynthesis") == found
    assert result.migrated_to is None

    # what the restore replaced is in its safety backup, and restores in turn
    assert result.safety_backup is not None and result.safety_backup.parent == tmp_path / "safety"
    await restore(url, result.safety_backup, safety_dir=None)
    again = await snapshot(url)
    assert again == changed


async def test_the_cli_backs_up_and_restores(url: str, tmp_path: Path):
    await seed(url)
    before = await snapshot(url)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUTOR_DATABASE_URL": url,
           "TUTOR_DATA_DIR": str(tmp_path / "data")}

    def tutor(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=tmp_path, env=env,
                              input=stdin, capture_output=True, text=True, timeout=120)

    made = await asyncio.to_thread(tutor, "backup")
    assert made.returncode == 0, made.stderr
    backups = sorted((tmp_path / "data" / "backups").glob("tutor-*.tar"))
    assert len(backups) == 1 and str(backups[0]) in made.stdout
    assert f"revision {head_revision()}" in made.stdout

    db = Database(url)
    try:
        async with db.session() as s, s.begin():
            await s.execute(text("DELETE FROM usage_ledger"))
            await s.execute(text("DELETE FROM users"))
    finally:
        await db.close()

    unconfirmed = await asyncio.to_thread(tutor, "restore", str(backups[0]))
    assert unconfirmed.returncode == 1 and "--yes" in unconfirmed.stderr
    assert (await snapshot(url))["users"] == []  # nothing done

    restored = await asyncio.to_thread(tutor, "restore", str(backups[0]), "--yes")
    assert restored.returncode == 0, restored.stderr
    assert "before-restore" in restored.stdout
    assert await snapshot(url) == before


async def test_a_backup_of_an_older_schema_is_migrated_to_head_on_restore(tmp_path: Path):
    for backend in BACKENDS:
        async with blank_database(backend, tmp_path) as database_url:
            await asyncio.to_thread(migrate, database_url, "0005")
            db = Database(database_url)
            try:
                async with db.session() as s, s.begin():
                    await q.upsert_user(s, provider="google", subject="old", email="o@example.com",
                                        name="Old")
            finally:
                await db.close()
            archive = tmp_path / f"{backend}-0005.tar"
            assert (await backup(database_url, archive)).alembic_revision == "0005"
            result = await restore(database_url, archive, safety_dir=None)
            assert result.migrated_to == head_revision()
            db = Database(database_url)
            try:
                async with db.session() as s:
                    version = (await s.execute(text("SELECT version_num FROM alembic_version"))
                               ).scalar_one()
                    users = (await s.execute(select(func.count()).select_from(User))).scalar_one()
                    outbox = (await s.execute(select(func.count()).select_from(EmailNotification))
                              ).scalar_one()
            finally:
                await db.close()
            assert (version, users, outbox) == (head_revision(), 1, 1)


async def test_restore_refuses_a_database_in_use(url: str, tmp_path: Path):
    await seed(url)
    archive = tmp_path / "b.tar"
    await backup(url, archive)
    server = Database(url)  # as a running server: its pool keeps a connection open
    try:
        async with server.session() as s:
            await s.execute(text("SELECT 1"))
        with pytest.raises(BackupError, match="in use|other connections"):
            await restore(url, archive, safety_dir=tmp_path / "safety")
        async with server.session() as s:  # untouched, and still usable
            assert (await s.execute(select(func.count()).select_from(User))).scalar_one() == 3
    finally:
        await server.close()
    assert not (tmp_path / "safety").exists()
    await restore(url, archive, safety_dir=None)  # once it is stopped


async def test_restore_refuses_the_wrong_kind_of_backup_a_newer_schema_and_damage(tmp_path: Path):
    async with blank_database("sqlite", tmp_path) as sqlite_db:
        await asyncio.to_thread(migrate, sqlite_db)
        archive = tmp_path / "sqlite.tar"
        manifest = await backup(sqlite_db, archive)
        nowhere = "postgresql+asyncpg://tutor:secret@127.0.0.1:9/tutor"  # never reached
        with pytest.raises(BackupError, match="is a SQLite backup.*is PostgreSQL"):
            await restore(nowhere, archive, safety_dir=None)

        payload = tmp_path / "fake.pgdump"
        payload.write_bytes(b"PGDMP not really")
        pg = tmp_path / "pg.tar"
        _write_archive(pg, Manifest(backend="postgresql", alembic_revision=head_revision(),
                                    created_at="2026-01-01T00:00:00Z", database="x", tool="t",
                                    payload="database.pgdump"), payload)
        with pytest.raises(BackupError, match="is a PostgreSQL backup.*is SQLite"):
            await restore(sqlite_db, pg, safety_dir=None)

        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        newer = tmp_path / "newer.tar"
        manifest.alembic_revision = "9999_from_the_future"
        _write_archive(newer, manifest, tmp_path / "x" / "database.sqlite3")
        with pytest.raises(BackupError, match="does not know"):
            await restore(sqlite_db, newer, safety_dir=None)

        damaged = tmp_path / "damaged.tar"
        data = bytearray(archive.read_bytes())
        data[data.rfind(b"SQLite format 3") + 5000] ^= 0xFF  # a byte of the payload
        damaged.write_bytes(bytes(data))
        with pytest.raises(BackupError, match="damaged"):
            await restore(sqlite_db, damaged, safety_dir=None)

        (tmp_path / "not-a-backup.tar").write_bytes(b"hello")
        with pytest.raises(BackupError, match="not a tutor backup"):
            await restore(sqlite_db, tmp_path / "not-a-backup.tar", safety_dir=None)


def test_the_libpq_url_keeps_the_password_off_the_command_line():
    dsn, env = libpq_url("postgresql+asyncpg://tu%40tor:p%40ss%2Fw@db.example:6543/tutor?ssl=require"
                         "&prepared_statement_cache_size=0")
    assert dsn == "postgresql://tu%40tor@db.example:6543/tutor?sslmode=require"
    assert env["PGPASSWORD"] == "p@ss/w"
    dsn, env = libpq_url("postgres://root@127.0.0.1/test")
    assert dsn == "postgresql://root@127.0.0.1/test"


async def test_sqlite_backups_taken_while_the_writers_write_are_consistent(tmp_path: Path):
    """Turns and usage through the background writers, sign-ins (a user and their welcome email
    in one transaction) in a loop, while backups are taken: each backup passes SQLite's checks
    and its FTS index's, holds whole transactions only, and restores."""
    async with blank_database("sqlite", tmp_path) as database_url:
        await asyncio.to_thread(migrate, database_url)
        db = Database(database_url)
        turns = InteractionWriter(db, batch_size=20)
        turns.start()
        stop = asyncio.Event()

        async def write() -> int:
            i = 0
            while not stop.is_set():
                async with db.session() as s, s.begin():
                    await q.upsert_user(s, provider="google", subject=f"u{i}",
                                        email=f"u{i}@example.com", name=f"U{i}")
                for j in range(20):
                    turns.submit(dict(session_id=f"s{i}", user_id=None, response_id=f"r{i}-{j}",
                                      transcript=f"question {i} {j} photosynthesis",
                                      answer="answer " * 40))
                i += 1
                await asyncio.sleep(0)
            return i

        writer = asyncio.create_task(write())
        manifests = []
        try:
            await asyncio.sleep(0.2)
            for n in range(4):
                manifests.append(await backup(database_url, tmp_path / f"online-{n}.tar"))
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            signed_in = await writer
            await turns.stop()
            await db.close()

        counts = [m.tables["interactions"] for m in manifests]
        assert counts == sorted(counts) and counts[0] < counts[-1], counts  # written meanwhile
        assert counts[-1] < turns.written and manifests[-1].tables["users"] < signed_in
        for n, m in enumerate(manifests):
            with tarfile.open(tmp_path / f"online-{n}.tar") as tar:
                tar.extractall(tmp_path / f"online-{n}", filter="data")
            conn = sqlite3.connect(tmp_path / f"online-{n}" / "database.sqlite3")
            try:
                assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
                conn.execute("INSERT INTO fts_interactions(fts_interactions, rank) "
                             "VALUES ('integrity-check', 1)")
                users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
                welcomes = conn.execute("SELECT count(*) FROM email_notifications "
                                        "WHERE template = 'welcome'").fetchone()[0]
                assert users == welcomes == m.tables["users"]  # whole transactions only
                assert conn.execute("SELECT count(*) FROM fts_interactions WHERE fts_interactions "
                                    "MATCH 'photosynthesis'").fetchone()[0] == m.tables["interactions"]
            finally:
                conn.close()
        await restore(database_url, tmp_path / "online-1.tar", safety_dir=None)
        assert len((await snapshot(database_url))["interactions"]) == counts[1]
