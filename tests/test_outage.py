"""Which exceptions count as a backing service being out (server.outage.unavailable): those
become a retryable refusal (503, or close 1013); anything else is a bug and stays a 500."""

from __future__ import annotations

import asyncpg
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from server.outage import unavailable


def dbapi_error(orig: Exception, **kw: object) -> DBAPIError:
    return DBAPIError("SELECT 1", None, orig, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("exc", [
    TimeoutError(), ConnectionRefusedError(111, "refused"), ConnectionResetError(),
    OSError(113, "No route to host"), OSError("Multiple exceptions: ..."),
    OperationalError("SELECT 1", None, Exception("database is locked")),
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
])
def test_bugs_and_refusals_are_not_outages(exc: BaseException):
    assert not unavailable(exc)
