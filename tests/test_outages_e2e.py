"""Outages of the backing services, faked with a TCP proxy between the server and the real
PostgreSQL or Redis (`cut()`: refused and reset; `hang()`: accepted, nothing answered):

- a socket opened while PostgreSQL is cut or hung is refused at once with the protocol's
  `error` `service_unavailable` and close 1013, not an HTTP 500; a REST call gets 503;
- a turn whose retrieval hangs on PostgreSQL is answered within the retrieval budget, and
  `tutor.response.metrics` says `"retrieval": "timed_out"` (`"failed"` when it is refused);
- a hung Redis holds neither a socket open nor a turn beyond its timeouts.

Every timeout is set short here through the settings. Each test takes 3-5 s, about 2 of them
the server's start on a fresh database, about 1 the fault itself.
"""

from __future__ import annotations

import json
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from sqlalchemy.engine import make_url

from rag.ingest import ingest
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update
from tests.services import TcpProxy, redis_client, redis_url  # noqa: F401  (fixture)
from tests.storage_fixtures import blank_database

DOC = b"# The war\n\nThe war began with an assassination and spread through alliances.\n"
TIMEOUT_S = 0.3  # every database and Redis bound in these tests
DB_BOUNDS = dict(database_timeout_s=TIMEOUT_S, database_connect_timeout_s=TIMEOUT_S,
                 database_pool_timeout_s=TIMEOUT_S)


@asynccontextmanager
async def proxied(host: str, port: int) -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        proxy.cut()


@pytest.fixture
async def pg(fake, start_server, tmp_path) -> AsyncIterator[tuple[TcpProxy, Any]]:
    """A server whose PostgreSQL is behind a proxy: (proxy, start(**settings) → address)."""
    async with blank_database("postgresql", tmp_path) as url:
        real = make_url(url)
        async with proxied(real.host or "127.0.0.1", real.port or 5432) as proxy:
            via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False)

            async def start(**overrides: Any) -> str:
                return await start_server(make_settings(fake, database_url=via_proxy,
                                                        **{**DB_BOUNDS, **overrides}))

            try:
                yield proxy, start
            finally:
                await proxy.restore()  # the rows written meanwhile land, the pool closes cleanly
                for app in start_server.apps:  # before the database is dropped
                    for writer in (app.state.services.writer, app.state.services.usage_writer):
                        assert await writer.flush(5)
                    await app.state.services.db.close()


async def refusal(address: str) -> tuple[dict[str, Any], int | None, float]:
    """Opens a voice socket: its first event, its close code, and how long that took."""
    started = time.perf_counter()
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        event = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    return event, ws.close_code, time.perf_counter() - started


def check_refusal(event: dict[str, Any], code: int | None) -> None:
    assert event["type"] == "error" and code == 1013, (event, code)
    assert event["error"]["code"] == "service_unavailable"
    assert event["error"]["type"] == "server_error"
    assert "try again" in event["error"]["message"]


@pytest.mark.parametrize("fault", ["cut", "hang"])
async def test_a_socket_opened_while_postgres_is_out_is_refused_with_1013(pg, fault):
    proxy, start = pg
    address = await start()
    getattr(proxy, fault)()
    event, code, took = await refusal(address)
    check_refusal(event, code)
    # cut: refused at once; hung: the pooled connection's statement, then its rollback
    assert took < 4 * TIMEOUT_S + 1.5, took
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        r = await client.get("/api/auth/me")
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    assert r.json()["error"]["code"] == "service_unavailable"

    await proxy.restore()  # and the server is back as soon as the database is
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"


async def ask(conv: Conversation) -> tuple[dict[str, Any], float]:
    """A spoken question: its `tutor.response.metrics`, and the time to the answer's end."""
    started = time.perf_counter()
    await conv.stream(read_pcm("q_war.wav"), 16000)
    metrics = [e for e in conv.events if e["type"] == "tutor.response.metrics"][-1]
    return metrics, time.perf_counter() - started


async def test_a_turn_whose_retrieval_hangs_is_answered_within_the_budget(pg):
    proxy, start = pg
    budget_s = 0.4
    # the database's own bounds beyond the budget: the budget is what answers
    address = await start(database_timeout_s=1.0, database_connect_timeout_s=1.0,
                          database_pool_timeout_s=1.0, rag_retrieval_budget_s=budget_s)
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        proxy.hang()
        hung, took = await ask(conv)
        assert hung["retrieval"] == "timed_out", hung
        assert budget_s * 1000 <= hung["retrieval_ms"] < budget_s * 1000 + 500, hung
        assert took < 4.0, took  # the whole turn, audio included
        assert [d["response"]["status"] for d in conv.of("response.done")] == ["completed"]

        proxy.cut()  # refused outright: answered at once, without retrieval
        refused, _ = await ask(conv)
        assert refused["retrieval"] == "failed" and refused["retrieval_ms"] < budget_s * 1000
        assert conv.of("response.done")[-1]["response"]["status"] == "completed"


@pytest.fixture
async def redis_proxy(redis_client) -> AsyncIterator[TcpProxy]:  # noqa: F811
    url = urlsplit(redis_url())
    async with proxied(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        yield proxy


async def test_a_hung_redis_holds_neither_a_socket_open_nor_a_turn(fake, start_server,
                                                                   redis_proxy):
    database = urlsplit(redis_url()).path  # "/15"
    budget_s = 2.0
    address = await start_server(make_settings(
        fake, redis_url=f"redis://127.0.0.1:{redis_proxy.port}{database}",
        redis_timeout_s=TIMEOUT_S, redis_connect_timeout_s=TIMEOUT_S,
        default_course="maths", rag_retrieval_budget_s=budget_s))
    retriever = start_server.apps[-1].state.services.retriever  # a course with vectors
    await ingest(retriever.db, retriever.embedder, start_server.apps[-1].state.services.parser,
                 course="maths", source="war.md", filename="war.md", data=DOC)
    fake.behaviour.transcripts = ["How did the war begin?"]
    redis_proxy.hang()
    started = time.perf_counter()
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        # the rate limit, the quota and the session count fail open, each after its timeout
        assert json.loads(await ws.recv())["type"] == "session.created"
        opened = time.perf_counter() - started
        assert opened < 6 * TIMEOUT_S + 1.0, opened
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        # the course has vectors, so retrieval asks Redis for the question's cached embedding:
        # it gives up after the Redis timeout, a cache miss, and ranks by full-text
        metrics, _ = await ask(conv)
    assert "retrieval" not in metrics, metrics
    assert TIMEOUT_S * 1000 <= metrics["retrieval_ms"] < budget_s * 1000, metrics
    assert conv.of("response.done")[-1]["response"]["status"] == "completed"
    assert conv.of("tutor.citations")[-1]["citations"]
