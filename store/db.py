"""The database handle: an async engine and session factory for a URL, and migrations.

`TUTOR_DATABASE_URL` is any SQLAlchemy async URL (`postgresql+asyncpg://…`, `sqlite+aiosqlite:///…`);
a plain `postgresql://` or `postgres://` URL (as Supabase shows it) is given the asyncpg driver.
"""

from __future__ import annotations

import functools
from functools import partial
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from .files import private_sqlite

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+asyncpg://" + url[len(plain):]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'tutor.db').resolve()}"


class Database:
    """`statement_timeout_s` bounds each statement (and the pool's pre-ping) and
    `connect_timeout_s` each new connection, on PostgreSQL through asyncpg; `pool_timeout_s` the
    wait for a pooled connection. A database that stops answering then raises `TimeoutError`
    instead of holding the caller for good (None: no bound, as for backups, which may run long).
    A hung pooled connection costs up to twice the statement timeout (the statement, then the
    rollback that returns the connection). SQLite is a local file: its bound is the busy timeout."""

    def __init__(self, url: str, *, sqlite_busy_timeout_ms: int = 5000,
                 statement_timeout_s: float | None = None, connect_timeout_s: float | None = None,
                 pool_timeout_s: float | None = None,
                 **engine_options) -> None:  # type: ignore[no-untyped-def]
        self.url = normalise_url(url)
        self.is_sqlite = _make_sqlite_folder(self.url)
        if not self.is_sqlite:
            engine_options.setdefault("pool_pre_ping", True)
        if pool_timeout_s is not None:
            engine_options.setdefault("pool_timeout", pool_timeout_s)
        if make_url(self.url).get_driver_name() == "asyncpg":
            bounds = {"timeout": connect_timeout_s, "command_timeout": statement_timeout_s}
            engine_options["connect_args"] = {
                **{k: v for k, v in bounds.items() if v is not None},
                **engine_options.get("connect_args", {})}
        # Each live turn reads (retrieval, memory) while the writer writes: the default 5 (+10)
        # connections queue under a hundred sessions.
        engine_options.setdefault("pool_size", 10)
        # SQLite: no overflow. Each aiosqlite connection is a thread of its own, and a burst of
        # turns opened 30 more (each with its PRAGMAs), contending for the GIL with the event
        # loop, then closed them: 50 lookups at once took 70-110 ms, 20-35 ms queued on 10
        # connections (docs/benchmarks.md, "bursts"). A query here is ~1 ms; waiting for a
        # connection is cheaper than a new one.
        engine_options.setdefault("max_overflow", 0 if self.is_sqlite else 30)
        self.engine: AsyncEngine = create_async_engine(self.url, **engine_options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect",
                         partial(_sqlite_pragmas, busy_timeout_ms=sqlite_busy_timeout_ms))
        self.session = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record, *, busy_timeout_ms: int) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite; we rely on cascades
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the background writer
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    cursor.close()


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def _make_sqlite_folder(url: str) -> bool:
    """For a SQLite file, create its folder (a fresh checkout has no data dir) and the file,
    both private to this user (store.files); True if SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return False
    if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith(
            "file:"):
        private_sqlite(Path(parsed.database))
    return True


@functools.cache
def revisions() -> tuple[str | None, frozenset[str]]:
    """This code's head migration revision, and every revision it knows (read once)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return scripts.get_current_head(), frozenset(r.revision for r in scripts.walk_revisions())


def migrate(url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`. Blocking (Alembic is sync): call it from a thread."""
    _make_sqlite_folder(normalise_url(url))
    command.upgrade(alembic_config(url), revision)
