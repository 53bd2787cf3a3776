"""The real backing services the tests use (Redis, PostgreSQL), and what to do when one is missing.

The project's CI rule: a missing service fails the tests under CI=true (CI must never pass by
skipping) and skips them, with the reason, on a developer's machine.
"""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, NoReturn
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

CONNECT_TIMEOUT_S = 2.0


def unavailable(service: str, reason: str) -> NoReturn:
    message = f"{service} is not reachable: {reason}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def redacted(url: str) -> str:
    """`url` without its password, for messages that end up in CI logs."""
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url


def redis_url() -> str:
    """Database 15, so the tests stay clear of a developer's own data in the usual database 0."""
    return os.environ.get("TUTOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    """A connected client on redis_url(); tests clean up the keys they write."""
    client = Redis.from_url(redis_url(), socket_connect_timeout=CONNECT_TIMEOUT_S,
                            socket_timeout=CONNECT_TIMEOUT_S)
    try:
        await client.ping()
    except Exception as error:  # any failure to talk to it means the same: no Redis here
        await client.aclose()
        unavailable(f"Redis at {redacted(redis_url())}", type(error).__name__ + ": " + str(error))
    try:
        yield client
    finally:
        await client.aclose()


def postgres_url() -> str:
    """A SQLAlchemy URL (asyncpg driver)."""
    return os.environ.get("TUTOR_TEST_POSTGRES_URL",
                          "postgresql+asyncpg://root@127.0.0.1:5432/test")


async def require_postgres() -> str:
    """postgres_url() once PostgreSQL answers there; otherwise skip, or fail under CI=true."""
    import asyncpg  # here, so test modules that never need PostgreSQL do not need asyncpg

    url = postgres_url()
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
    except Exception as error:  # refused, unknown database, bad credentials: all mean unusable
        unavailable(f"PostgreSQL at {redacted(dsn)}", type(error).__name__ + ": " + str(error))
    await connection.close()
    return url


class TcpProxy:
    """127.0.0.1:<port> → target. `cut()` drops every connection and refuses new ones (nothing
    listens on the port any more); `hang()` keeps every connection open and accepts new ones but
    forwards nothing either way (a server that stopped answering, a network that drops packets);
    `restore()` ends either: it listens on the same port again and lets bytes flow."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._transports.add(client_w.transport)
        await self._flowing.wait()
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._transports |= {client_w.transport, upstream_w.transport}

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    await self._flowing.wait()
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.transport.abort()

        await asyncio.gather(pump(client_r, upstream_w), pump(upstream_r, client_w))
        self._transports -= {client_w.transport, upstream_w.transport}

    def cut(self) -> None:
        """Synchronous, so it can also be called from inside an engine event."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()  # an abrupt close: the client sees its connection die
        self._transports.clear()

    def hang(self) -> None:
        self._flowing.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()
