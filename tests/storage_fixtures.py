"""Storage fixtures: a migrated, empty database per test, on SQLite and on the real PostgreSQL.

Import them into a test module (`from tests.storage_fixtures import db, blank_db_url`); every test
that takes `db` then runs once per backend, with ids `[sqlite]` and `[postgresql]`.

- SQLite: a fresh file under the test's tmp_path.
- PostgreSQL: a fresh database per test (`tutor_test_<hex>`, created through the server named by
  tests.services.postgres_url(), dropped WITH (FORCE) afterwards), so tests are fully isolated and
  parallel runs never meet. Creating + migrating + dropping one costs about 0.1 s.

When PostgreSQL is unreachable the postgresql variants skip with the reason, or fail under CI=true
(tests.services.require_postgres). Migrations are Alembic, which is sync and whose env.py calls
asyncio.run: they always run in a thread (`asyncio.to_thread(migrate, url)`).
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from store.db import Database, migrate
from tests.services import require_postgres

BACKENDS = ("sqlite", "postgresql")


def asyncpg_dsn(url: str) -> str:
    """A SQLAlchemy `postgresql+asyncpg://` URL as a DSN asyncpg accepts."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(asyncpg_dsn(await require_postgres()), timeout=5)
    try:
        for attempt in range(20):
            try:
                await connection.execute(statement)
                return
            except asyncpg.exceptions.ObjectInUseError:  # template1 briefly in use elsewhere
                if attempt == 19:
                    raise
                await asyncio.sleep(0.05)
    finally:
        await connection.close()


@asynccontextmanager
async def blank_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty (unmigrated) database on `backend`; removed afterwards."""
    if backend == "sqlite":
        path = tmp_path / f"tutor-{secrets.token_hex(4)}.db"
        yield f"sqlite+aiosqlite:///{path}"
        return
    base = await require_postgres()  # skips (or fails under CI=true) when unreachable
    name = f"tutor_test_{secrets.token_hex(6)}"
    await _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
async def blank_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of an empty database that has not been migrated, on each backend."""
    async with blank_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated, empty database on each backend; closed (and dropped) after the test."""
    async with blank_database(request.param, tmp_path) as url:
        await asyncio.to_thread(migrate, url)
        database = Database(url)
        try:
            yield database
        finally:
            await database.close()


__all__ = ["BACKENDS", "asyncpg_dsn", "blank_database", "blank_db_url", "db"]
