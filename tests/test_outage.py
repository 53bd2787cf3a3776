"""Which exceptions count as a backing service being out (server.outage.unavailable): those
become a retryable refusal (503, or close 1013); anything else is a bug and stays a 500."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from server.outage import unavailable


def dbapi_error(orig: Exception, **kw: object) -> DBAPIError:
    return DBAPIError("SELECT 1", None, orig, **kw)  # type: ignore[arg-type]


def sqlite_error(tmp_path: Path, sql: str, *, locked: bool) -> OperationalError:
    """A real SQLite error, as SQLAlchemy wraps it; `locked`: another writer holds the file."""
    path = tmp_path / "t.db"
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x int)")
    holder.commit()
    if locked:
        holder.execute("BEGIN EXCLUSIVE")
    try:
        sqlite3.connect(path, timeout=0).execute(sql)
    except sqlite3.OperationalError as error:
        return OperationalError(sql, None, error)
    finally:
        holder.rollback()
    raise AssertionError(f"{sql} did not fail")


def test_sqlite_busy_is_an_outage_and_its_other_operational_errors_are_not(tmp_path: Path):
    assert unavailable(sqlite_error(tmp_path, "INSERT INTO t VALUES (1)", locked=True))
    assert not unavailable(sqlite_error(tmp_path, "SELECT * FROM no_such_table", locked=False))
    assert not unavailable(sqlite_error(tmp_path, "SELEKT 1", locked=False))


@pytest.mark.parametrize("exc", [
    TimeoutError(), ConnectionRefusedError(111, "refused"), ConnectionResetError(),
    OSError(113, "No route to host"), OSError("Multiple exceptions: ..."),
    PoolTimeoutError("QueuePool limit reached"), RedisConnectionError(), RedisTimeoutError(),
    dbapi_error(asyncpg.exceptions.CannotConnectNowError("starting up")),
    dbapi_error(asyncpg.exceptions.TooManyConnectionsError("too many")),
    dbapi_error(Exception("gone"), connection_invalidated=True),
])
def test_outages(exc: BaseException):
    assert unavailable(exc)


@pytest.mark.parametrize("exc", [
    ValueError(), KeyError("x"), FileNotFoundError(2, "missing"), PermissionError(13, "denied"),
    IntegrityError("INSERT", None, Exception("duplicate")),
    dbapi_error(asyncpg.exceptions.DataError("bad data")),
    dbapi_error(asyncpg.exceptions.InterfaceError("another operation is in progress")),
])
def test_bugs_and_refusals_are_not_outages(exc: BaseException):
    assert not unavailable(exc)
