"""`SqliteReader`: a live turn's memory lookup on a SQLite database in one hop off the event loop.

Through SQLAlchemy and aiosqlite one query is half a dozen hand-offs between the event loop and a
connection's thread (check-out, execute, fetch, close, rollback on return), each waiting its
turn on a loop that a burst of turns keeps busy: at 50 turns ending together, the student's
memory lookup took 230-550 ms (docs/benchmarks.md, "bursts"). Here the whole query runs in one
of a few threads, each with its own read-only connection to the same file, and the loop is
woken once with the rows. The SQL is `rag.fts.sqlite_memory_sql`'s, the one the database path
runs, so the rows (and the user filter in the SQL) are the same.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import make_url

from .fts import sqlite_memory_sql, terms

MemoryRow = namedtuple("MemoryRow", "id score transcript answer created_at kind")


class SqliteReader:
    def __init__(self, path: str, *, threads: int = 2, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="sqlite-reader")
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_url(cls, url: str, **options: Any) -> "SqliteReader | None":
        """A reader for a SQLite file URL; None for any other database (or an in-memory one)."""
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        return cls(parsed.database, **options)

    async def memory(self, query: str, *, user_id: str, limit: int) -> list[MemoryRow]:
        """As `rag.fts.memory_search(..., with_rows=True)`."""
        if limit <= 0 or not terms(query):
            return []
        sql, params = sqlite_memory_sql(query, user_id=user_id, limit=limit, with_rows=True)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, sql, params)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    def _run(self, sql: str, params: dict[str, object]) -> list[MemoryRow]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return [MemoryRow(*row) for row in conn.execute(sql, params)]
