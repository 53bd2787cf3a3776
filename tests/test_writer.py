"""The background interaction writer, on SQLite and on PostgreSQL: it never makes the voice loop
wait, writes in batches, survives the database going away and coming back without losing or
duplicating a row, drops only the rows the database refuses for good, and flushes on stop. With
its write-ahead spool (store/spool.py): rows accepted and not yet written survive the process
(replayed at the next start, exactly once, also when they had been written already), and a row
refused for good is kept as a dead letter with its reason while later rows are written."""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Any, AsyncIterator

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.sql import Insert

from store import queries as q
from store.db import Database
from server.cli import dead_letters_command
from store.models import Interaction, UsageEntry, User
from store.spool import Spool, dead_letters
from store.writer import InteractionWriter
from tests.conftest import make_settings
from tests.services import TcpProxy
from tests.storage_fixtures import db  # noqa: F401  (fixture)

FAST = dict(retry_initial_s=0.05, retry_max_s=0.2)


def turn(i: int, user_id: str | None = None, tag: str = "t") -> dict[str, Any]:
    return dict(session_id="sess-1", user_id=user_id, response_id=f"{tag}-{i}",
                transcript=f"question {i}", answer=f"answer {i}", stt_ms=12.5, server_ms=300.0)


async def response_ids(db: Database) -> list[str]:
    async with db.session() as s:
        return list((await s.execute(select(Interaction.response_id))).scalars())


async def wait_for(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- making the database unavailable, for real -----------------------------------------------

class Outage:
    """A second handle on the test database for the writer, plus a way to take it away.

    PostgreSQL: the writer connects through a TcpProxy, and the outage is at the network level.
    SQLite: another connection holds `BEGIN EXCLUSIVE` on the file, so writes fail with
    "database is locked" once the busy timeout (lowered to 50 ms here, see below) runs out.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writer_db: Database
        self._proxy: TcpProxy | None = None
        self._lock: sqlite3.Connection | None = None

    async def __aenter__(self) -> "Outage":
        if self.db.is_sqlite:
            # a locked write fails after 50 ms instead of the default 5 s
            self.writer_db = Database(self.db.url, sqlite_busy_timeout_ms=50)
        else:
            url = make_url(self.db.url)
            self._proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
            await self._proxy.start()
            self.writer_db = Database(url.set(host="127.0.0.1", port=self._proxy.port)
                                      .render_as_string(hide_password=False))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.writer_db.close()
        self.release_lock()
        if self._proxy is not None:
            self._proxy.cut()

    def cut(self) -> None:
        if self._proxy is not None:
            self._proxy.cut()
        else:
            self._lock = sqlite3.connect(make_url(self.db.url).database, timeout=5,
                                         isolation_level=None)
            self._lock.execute("BEGIN EXCLUSIVE")

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.execute("COMMIT")
            self._lock.close()
            self._lock = None

    async def restore(self) -> None:
        if self._proxy is not None:
            await self._proxy.restore()
        else:
            self.release_lock()


@pytest.fixture
async def outage(db: Database) -> AsyncIterator[Outage]:
    async with Outage(db) as o:
        yield o


def record_insert_batches(database: Database) -> list[int]:
    """The number of rows in each INSERT INTO interactions the writer sends."""
    sizes: list[int] = []

    @event.listens_for(database.engine.sync_engine, "before_execute")
    def _count(conn, clause, multiparams, params, options):  # type: ignore[no-untyped-def]
        if isinstance(clause, Insert) and clause.table.name == "interactions":
            sizes.append(len(multiparams) if multiparams else 1)

    return sizes


# --- the tests -------------------------------------------------------------------------------

async def test_submit_never_waits_and_rows_appear_after_flush(db: Database) -> None:
    assert not inspect.iscoroutinefunction(InteractionWriter.submit)
    writer = InteractionWriter(db, **FAST)
    assert writer.submit(turn(0)) is None  # accepted before start: written once started
    writer.start()
    for i in range(1, 5):
        writer.submit(turn(i))
    assert writer.pending == 5  # nothing awaited yet, so nothing written yet
    assert await writer.flush(timeout=5)
    assert writer.pending == 0 and writer.written == 5
    assert sorted(await response_ids(db)) == [f"t-{i}" for i in range(5)]
    async with db.session() as s:
        row = (await s.execute(select(Interaction).where(Interaction.response_id == "t-3"))).scalar_one()
    assert (row.session_id, row.transcript, row.answer, row.kind, row.status, row.cancelled) == \
        ("sess-1", "question 3", "answer 3", "voice", "completed", False)
    await writer.stop()


async def test_a_burst_of_1000_is_written_completely_in_batches(db: Database) -> None:
    batches = record_insert_batches(db)
    writer = InteractionWriter(db, batch_size=200, **FAST)
    writer.start()
    for i in range(1000):
        writer.submit(turn(i))
    # submitting is only a queue append: the writer's task has not had a turn yet (no timing
    # assertion, which a loaded machine breaks; bench/spool.py measures the cost)
    assert (writer.written, writer.pending) == (0, 1000)
    assert await writer.flush(timeout=20)
    await writer.stop()

    async with db.session() as s:
        total = (await s.execute(select(func.count()).select_from(Interaction))).scalar_one()
        distinct = (await s.execute(select(func.count(Interaction.response_id.distinct())))).scalar_one()
    assert total == distinct == writer.written == 1000
    assert batches == [200] * 5
    assert (writer.failures, writer.dropped) == (0, 0)


async def test_nothing_is_lost_while_the_database_is_unavailable(db: Database,
                                                                 outage: Outage) -> None:
    writer = InteractionWriter(outage.writer_db, **FAST)
    writer.start()
    for i in range(10):
        writer.submit(turn(i, tag="before"))
    assert await writer.flush(timeout=5)
    assert writer.failures == 0

    outage.cut()
    for i in range(20):
        writer.submit(turn(i, tag="during"))
    assert writer.pending == 20  # queued without awaiting: the voice loop never waits on it
    await wait_for(lambda: writer.failures >= 2)  # tried, failed, backed off, tried again
    assert writer.pending == 20
    assert not await writer.flush(timeout=0.2)
    for i in range(5):
        writer.submit(turn(i, tag="late"))

    await outage.restore()
    assert await writer.flush(timeout=10)
    await writer.stop()

    expected = ([f"before-{i}" for i in range(10)] + [f"during-{i}" for i in range(20)]
                + [f"late-{i}" for i in range(5)])
    assert sorted(await response_ids(db)) == sorted(expected)  # each exactly once
    assert writer.written == 35 and writer.dropped == 0 and writer.pending == 0


async def test_rows_trickling_in_are_gathered_into_one_insert(db: Database) -> None:
    """With `gather_s` (the usage ledger's writer), rows that arrive one by one within the
    window go to the database as one INSERT, and flush still waits for all of them."""
    batches = record_insert_batches(db)
    writer = InteractionWriter(db, gather_s=0.5, **FAST)
    writer.start()
    await asyncio.sleep(0.05)  # the writer waits for rows (gathering follows a quiet spell)
    for i in range(5):
        writer.submit(turn(i))
        await asyncio.sleep(0.01)  # the writer's task runs between them
    assert await writer.flush(timeout=10)
    await writer.stop()
    assert sorted(await response_ids(db)) == [f"t-{i}" for i in range(5)]
    assert batches == [5]


async def test_a_refused_row_is_dropped_and_the_rest_of_its_batch_written(db: Database) -> None:
    async with db.session() as s, s.begin():
        user = await q.upsert_user(s, provider="google", subject="s", email=None, name=None)
    writer = InteractionWriter(db, **FAST)
    writer.start()
    for i in range(10):  # one batch: all submitted before the writer task runs
        writer.submit(turn(i, user.id, "good") if i != 4 else turn(i, "no-such-user", "bad"))
    assert await writer.flush(timeout=5)
    for i in range(10, 13):  # and the writer carries on afterwards
        writer.submit(turn(i, user.id, "good"))
    assert await writer.flush(timeout=5)
    await writer.stop()

    assert sorted(await response_ids(db)) == sorted(f"good-{i}" for i in range(13) if i != 4)
    assert (writer.dropped, writer.written, writer.failures) == (1, 12, 0)


async def test_an_outage_while_isolating_a_refused_row_loses_nothing(db: Database,
                                                                     outage: Outage) -> None:
    async with db.session() as s, s.begin():
        user = await q.upsert_user(s, provider="google", subject="s", email=None, name=None)
    writer = InteractionWriter(outage.writer_db, **FAST)
    writer.start()
    writer.submit(turn(0, user.id, "warmup"))
    assert await writer.flush(timeout=5)

    armed = []
    loop = asyncio.get_running_loop()

    @event.listens_for(outage.writer_db.engine.sync_engine, "handle_error")
    def _refused(context) -> None:  # type: ignore[no-untyped-def]
        if not armed and "foreign" in str(context.original_exception).lower():
            armed.append(True)

    @event.listens_for(outage.writer_db.engine.sync_engine.pool, "checkout")
    def _then_go_away(*_: object) -> None:
        if armed == [True]:  # the first connection taken to write the batch row by row
            armed.append(False)
            outage.cut()
            loop.call_later(0.3, lambda: loop.create_task(outage.restore()))

    for i in range(6):
        writer.submit(turn(i, user.id, "good") if i != 2 else turn(i, "no-such-user", "bad"))
    # Back 0.3 s after the cut, retried every <= 0.2 s; a writer task that dies is the failure.
    flushed = asyncio.ensure_future(writer.flush(timeout=2))
    await asyncio.wait({flushed, writer._task}, return_when=asyncio.FIRST_COMPLETED)  # type: ignore[arg-type]
    assert armed == [True, False]
    task = writer._task
    assert task is not None
    if task.done():  # pytrace=False: a short report, and the task's exception is retrieved
        error = task.exception()
        flushed.cancel()
        pytest.fail(f"the writer task died: {error!r}", pytrace=False)
    assert await flushed
    await writer.stop()
    assert sorted(await response_ids(db)) == sorted(["warmup-0"] + [f"good-{i}" for i in range(6)
                                                                    if i != 2])
    assert writer.dropped == 1


async def test_stop_flushes_what_is_pending(db: Database) -> None:
    writer = InteractionWriter(db, **FAST)
    writer.start()
    for i in range(50):
        writer.submit(turn(i))
    assert writer.pending == 50
    await writer.stop()
    assert writer.pending == 0
    assert sorted(await response_ids(db)) == sorted(f"t-{i}" for i in range(50))


async def test_a_turn_with_a_nul_character_is_stored_and_blocks_nothing(db: Database) -> None:
    """PostgreSQL refuses NUL in text (SQLite stores it): the writer replaces it before the
    database sees it, so the turn is kept and every later turn of every user too."""
    writer = InteractionWriter(db, **FAST)
    writer.start()
    writer.submit(turn(0) | {"transcript": "two\x00plus two", "answer": "four\x00"})
    for i in range(1, 4):
        writer.submit(turn(i))
    assert await writer.flush(timeout=5)
    await writer.stop()
    assert sorted(await response_ids(db)) == [f"t-{i}" for i in range(4)]
    async with db.session() as s:
        row = (await s.execute(select(Interaction).where(Interaction.response_id == "t-0"))
               ).scalar_one()
    assert (row.transcript, row.answer) == ("two\ufffdplus two", "four\ufffd")
    assert (writer.dropped, writer.failures) == (0, 0)


async def test_a_row_refused_for_any_permanent_reason_never_stalls_the_rest(db: Database) -> None:
    """A value the column cannot hold (a course name longer than its 200 characters: PostgreSQL
    refuses it) is dropped and counted; the writer does not retry it forever."""
    writer = InteractionWriter(db, **FAST)
    writer.start()
    writer.submit(turn(0) | {"course": "c" * 300})
    writer.submit(turn(1))
    assert await writer.flush(timeout=5)
    await writer.stop()
    ids = sorted(await response_ids(db))
    assert "t-1" in ids and writer.failures == 0
    assert ids == ["t-0", "t-1"] or writer.dropped == 1  # SQLite does not check lengths


# --- the write-ahead spool ---------------------------------------------------------------------

async def crash(writer: InteractionWriter, spool: Spool) -> None:
    """What SIGKILL leaves: the spool's commits so far, nothing of the writer's memory."""
    await spool.sync()
    assert writer._task is not None
    writer._task.cancel()
    await asyncio.gather(writer._task, return_exceptions=True)
    await spool.close()


@pytest.mark.parametrize("end", ["crash", "stop"])
async def test_rows_accepted_during_an_outage_survive_a_crash_exactly_once(
        db: Database, outage: Outage, tmp_path, end: str) -> None:
    """`crash`: SIGKILL (nothing runs); `stop`: SIGTERM, whose drain ends with the database
    still down (the writer gives up flushing): either way the spool has the rows."""
    spool = await Spool.open(tmp_path / "spool.db")
    writer = InteractionWriter(outage.writer_db, spool=spool, **FAST)
    writer.start()
    for i in range(3):
        writer.submit(turn(i, tag="before"))
    assert await writer.flush(timeout=5)
    outage.cut()
    for i in range(5):
        writer.submit(turn(i, tag="during"))
    await wait_for(lambda: writer.failures >= 1)
    if end == "crash":
        await crash(writer, spool)
    else:
        await writer.stop(timeout=0.1)
        await spool.close()
    await outage.restore()

    spool = await Spool.open(tmp_path / "spool.db")
    assert await spool.counts() == {"pending": 5, "dead_letters": 0}
    writer = InteractionWriter(outage.writer_db, spool=spool, **FAST)
    writer.start()  # the replay goes first
    writer.submit(turn(0, tag="after"))
    assert await writer.flush(timeout=5)
    await writer.stop()
    assert await spool.counts() == {"pending": 0, "dead_letters": 0}
    await spool.close()
    assert sorted(await response_ids(db)) == sorted(
        [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(5)] + ["after-0"])


async def test_a_replay_of_rows_already_written_never_duplicates(db: Database, tmp_path) -> None:
    """The database committed, the process died before the spool heard of it: the replay
    inserts nothing (ON CONFLICT (write_id) DO NOTHING), for turns and for the usage ledger."""
    spool = await Spool.open(tmp_path / "spool.db")
    turns = InteractionWriter(db, spool=spool, **FAST)
    usage = InteractionWriter(db, model=UsageEntry, spool=spool, **FAST)
    for writer in (turns, usage):
        writer.start()
    for i in range(4):
        turns.submit(turn(i))
        usage.submit(dict(user_id=None, session_id="sess-1", kind="voice_ms", amount=1000 + i))
    rows = list(turns._queue) + list(usage._queue)
    assert await turns.flush(5) and await usage.flush(5)
    await spool.sync()
    assert await spool.counts() == {"pending": 0, "dead_letters": 0}
    for row in rows:  # as if the spool had never been told they were written
        spool.put(Interaction.__tablename__ if "transcript" in row else UsageEntry.__tablename__,
                  row["write_id"], row)
    await crash(turns, spool)
    usage._task.cancel()  # type: ignore[union-attr]

    spool = await Spool.open(tmp_path / "spool.db")
    assert await spool.counts() == {"pending": 8, "dead_letters": 0}
    turns = InteractionWriter(db, spool=spool, **FAST)
    usage = InteractionWriter(db, model=UsageEntry, spool=spool, **FAST)
    for writer in (turns, usage):
        writer.start()
        assert writer.pending == 4
        assert await writer.flush(5)
        await writer.stop()
    assert await spool.counts() == {"pending": 0, "dead_letters": 0}
    await spool.close()
    assert sorted(await response_ids(db)) == [f"t-{i}" for i in range(4)]
    async with db.session() as s:
        amounts = (await s.execute(select(UsageEntry.amount).order_by(UsageEntry.amount))).scalars()
        assert list(amounts) == [1000, 1001, 1002, 1003]
        created = (await s.execute(select(Interaction.created_at))).scalars().all()
    assert len(set(created)) == 4  # the time each was accepted, kept through the spool


async def test_a_refused_row_becomes_a_dead_letter_and_later_rows_are_written(
        db: Database, tmp_path) -> None:
    async with db.session() as s, s.begin():
        user = await q.upsert_user(s, provider="google", subject="s", email=None, name=None)
    spool = await Spool.open(tmp_path / "spool.db")
    writer = InteractionWriter(db, spool=spool, **FAST)
    writer.start()
    for i in range(5):  # one batch, the refused row in the middle
        writer.submit(turn(i, user.id, "good") if i != 2 else turn(i, "no-such-user", "bad"))
    assert await writer.flush(timeout=5)
    writer.submit(turn(5, user.id, "good"))
    assert await writer.flush(timeout=5)
    await writer.stop()
    assert await spool.counts() == {"pending": 0, "dead_letters": 1}
    await spool.close()

    assert sorted(await response_ids(db)) == [f"good-{i}" for i in (0, 1, 3, 4, 5)]
    [letter] = dead_letters(tmp_path / "spool.db")
    assert letter["table"] == "interactions" and letter["row"]["response_id"] == "bad-2"
    assert letter["row"]["user_id"] == "no-such-user" and letter["failed_at"] > 0
    assert "foreign key" in letter["reason"].lower()  # the database's own words
    assert writer.dropped == 1


async def test_tutor_dead_letters_lists_them_and_retries_them_once_the_cause_is_fixed(
        db: Database, tmp_path, capsys) -> None:
    settings = make_settings(database_url=db.url, spool_file=tmp_path / "spool.db")
    spool = await Spool.open(settings.spool)
    writer = InteractionWriter(db, spool=spool, **FAST)
    writer.start()
    writer.submit(turn(0, "gone-user", "bad"))
    assert await writer.flush(timeout=5)
    await writer.stop()
    await spool.close()

    assert dead_letters_command(settings, retry=False, write_ids=[]) == 0
    [line] = capsys.readouterr().out.splitlines()
    listed = json.loads(line)
    assert listed["row"]["response_id"] == "bad-0" and listed["failed_at"].startswith("20")
    # still refused: it stays, exit status 1
    assert await asyncio.to_thread(dead_letters_command, settings, True, []) == 1
    assert len(dead_letters(settings.spool)) == 1 and await response_ids(db) == []
    async with db.session() as s, s.begin():  # the cause fixed: the user exists
        s.add(User(id="gone-user", auth_provider="google", auth_subject="gone"))
    assert await asyncio.to_thread(dead_letters_command, settings, True,
                                   [listed["write_id"]]) == 0
    assert dead_letters(settings.spool) == [] and await response_ids(db) == ["bad-0"]


async def test_submit_with_a_spool_never_waits_on_the_disk(db: Database, tmp_path) -> None:
    """The spool's thread is stuck (a disk that does not answer): submitting still returns at
    once, and everything is spooled and written once the disk is back."""
    spool = await Spool.open(tmp_path / "spool.db")
    disk = threading.Event()
    spool._ops.put((lambda c: disk.wait(10), None))
    writer = InteractionWriter(db, spool=spool, **FAST)
    for i in range(1000):
        writer.submit(turn(i))  # would hang here if it waited on the spool
    assert writer.pending == 1000 and spool.commits == 0
    disk.set()
    writer.start()
    assert await writer.flush(timeout=20)
    await writer.stop()
    assert await spool.counts() == {"pending": 0, "dead_letters": 0}
    await spool.close()


async def test_the_spool_file_is_private_and_a_failing_operation_stops_nothing(tmp_path) -> None:
    spool = await Spool.open(tmp_path / "data" / "spool.db")
    assert (tmp_path / "data" / "spool.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(sqlite3.OperationalError):
        await spool.call(lambda c: c.execute("INSERT INTO nowhere VALUES (1)"))
    spool.put("interactions", "k1", {"at": datetime.now(timezone.utc)})
    assert await spool.counts() == {"pending": 1, "dead_letters": 0}
    await spool.close()
    assert spool.errors == 1
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (tmp_path / "data").iterdir())
    spool = await Spool.open(tmp_path / "data" / "spool.db")
    [row] = spool.recovered("interactions")
    assert isinstance(row["at"], datetime) and row["at"].tzinfo is not None
    await spool.close()
