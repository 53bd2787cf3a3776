"""`CourseMirror`: the course passages and their full-text index, in memory, so a live turn's
course retrieval makes no database round trip.

The mirror is an in-memory SQLite database holding a copy of the `content` table's searchable
columns (every course) and an FTS5 index built exactly as migration 0002 builds SQLite's
(`heading_path`, `text`; `porter unicode61`), searched with the same SQL as `rag.fts`. On a
SQLite database it therefore finds and ranks exactly what the database would (bm25's statistics
are over every course's chunks in both). On PostgreSQL the live full-text ranking becomes this
bm25 instead of `ts_rank_cd` (same words, stop words and OR semantics; the order of close
matches may differ): see docs/rag.md.

Staying current (the version check): the mirror remembers the content table's version
(row count, highest id, newest `created_at`) it was built from.
- A change made by this process (any ingestion or deletion through `rag.ingest`: the routes,
  the sample course) marks the mirror stale (`content_changed`): the next search rebuilds
  first, so it sees the change; the routes rebuild at once, before they answer.
- A change made elsewhere (`tutor ingest`, another server process) is found by a watcher that
  reads the version every `check_s` seconds, off every turn's path, and rebuilds in the
  background when it moved (and calls `on_change`: the retriever then rereads the course
  vectors on their next use, which before were reread only by the process that made a change).
A search never reads the version itself: while the mirror is current it touches no database.

A query runs on the event loop: a mirror query costs ~0.1 ms at course scale (less than handing
it to a thread); a rebuild (reading every passage, building the index) runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import weakref
from typing import Any, Callable, NamedTuple

from sqlalchemy import text

from store.db import Database

from .fts import sqlite_content_sql, terms

log = logging.getLogger("tutor.rag")


class Passage(NamedTuple):
    """A mirrored row, shaped like the database rows of `rag.fts.fts_search(with_rows=True)`."""

    id: int
    score: float
    course: str
    source: str
    heading_path: str
    text: str


_VERSION_SQL = "SELECT count(*), max(id), max(created_at) FROM content"
_ROWS_SQL = "SELECT id, course, source, heading_path, text FROM content ORDER BY id"


_mirrors: "weakref.WeakSet[CourseMirror]" = weakref.WeakSet()


def content_changed(db: Database) -> None:
    """`rag.ingest` changed the content table of `db` (any ingestion or deletion in this
    process, whoever asked for it): every mirror of it rebuilds before its next search."""
    for mirror in list(_mirrors):
        if mirror.db is db:
            mirror.changed()


class CourseMirror:
    def __init__(self, db: Database, *, check_s: float = 2.0) -> None:
        _mirrors.add(self)
        self.db = db
        self.check_s = check_s
        # called after a rebuild for a change found by the watcher (made by another process)
        self.on_change: Callable[[], None] | None = None
        self._conn: sqlite3.Connection | None = None  # None: not built yet
        self._version: tuple[Any, ...] | None = None  # of the content table it was built from
        self._stale = True
        self._lock = asyncio.Lock()  # one rebuild at a time; concurrent searches share it
        self._watcher: asyncio.Task[None] | None = None
        self.rebuilds = 0  # how many times it was (re)built

    # -- keeping current -----------------------------------------------------------------
    def changed(self) -> None:
        """This process changed the content table: rebuild before the next search."""
        self._stale = True

    async def refresh(self) -> None:
        """Rebuild now (after a change this process made, so no turn waits for it)."""
        self._stale = True
        await self._current()

    def start(self) -> None:
        """Watch the content table for changes made by other processes."""
        if self._watcher is None and self.check_s > 0:
            self._watcher = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                if self._conn is not None and await self._read_version() != self._version:
                    log.info("course content changed elsewhere: reloading the course mirror")
                    await self.refresh()
                    if self.on_change is not None:
                        self.on_change()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the database away for a moment: the mirror stays
                log.warning("course mirror: version check failed: %r", error)

    async def _read_version(self) -> tuple[Any, ...]:
        async with self.db.session() as s:
            row = (await s.execute(text(_VERSION_SQL))).one()
        return tuple(str(v) if v is not None else None for v in row)

    async def _current(self) -> sqlite3.Connection:
        if not self._stale and self._conn is not None:
            return self._conn
        async with self._lock:
            if self._stale or self._conn is None:
                self._stale = False  # a change while reading marks it stale again
                started = time.perf_counter()
                try:
                    # the version first: a change after it makes the watcher rebuild again
                    version = await self._read_version()
                    async with self.db.session() as s:
                        rows = (await s.execute(text(_ROWS_SQL))).all()
                    conn = await asyncio.to_thread(_build, [tuple(r) for r in rows])
                except BaseException:
                    self._stale = True
                    raise
                old, self._conn, self._version = self._conn, conn, version
                self.rebuilds += 1
                if old is not None:
                    old.close()
                log.info("course mirror built: %d passages in %.0f ms", len(rows),
                         (time.perf_counter() - started) * 1000)
            assert self._conn is not None
            return self._conn

    # -- searching -----------------------------------------------------------------------
    async def fts(self, query: str, *, course: str | None, limit: int) -> list[Passage]:
        """As `rag.fts.fts_search(..., with_rows=True)` on SQLite, from the mirror."""
        if limit <= 0 or not terms(query):
            return []
        conn = await self._current()
        sql, params = sqlite_content_sql(query, course=course, limit=limit, with_rows=True)
        return [Passage(*row) for row in conn.execute(sql, params)]

    async def rows(self, ids: list[int], course: str | None) -> dict[int, Passage]:
        """The passages with these ids (of `course`, unless None); score 0."""
        if not ids:
            return {}
        conn = await self._current()
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id, 0.0, course, source, heading_path, text FROM content WHERE id IN ({marks})"
        params: list[Any] = [int(i) for i in ids]
        if course is not None:
            sql += " AND course = ?"
            params.append(course)
        return {row[0]: Passage(*row) for row in conn.execute(sql, params)}


def _build(rows: list[tuple[Any, ...]]) -> sqlite3.Connection:
    """A new in-memory database holding `rows` and their FTS5 index (as migration 0002's)."""
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute("CREATE TABLE content (id INTEGER PRIMARY KEY, course TEXT NOT NULL, "
                 "source TEXT NOT NULL, heading_path TEXT, text TEXT)")
    conn.execute("CREATE INDEX ix_content_course ON content (course)")
    conn.execute("CREATE VIRTUAL TABLE fts_content USING fts5(heading_path, text, "
                 "content='content', content_rowid='id', tokenize='porter unicode61')")
    conn.executemany("INSERT INTO content VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("INSERT INTO fts_content(fts_content) VALUES ('rebuild')")
    conn.commit()
    return conn
