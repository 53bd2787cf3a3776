"""Scale-out without sticky sessions: two `tutor serve` subprocesses on one PostgreSQL database
and one Redis behave as one server to a client that lands on either.

- a voice session dropped on process A resumes, with its conversation, on process B (resume
  tokens live in Redis);
- the plan's concurrent-session limit counts the sessions of both processes (one session plan:
  a socket on B is refused 4429 while A holds the slot, and accepted once A has released it);
- what one process writes another reads: an API token made through A signs in on B, a voice
  ticket issued by A opens a socket on B (once), the interactions of a turn answered by A are
  listed by B.

The user and its first API token are created in a fresh PostgreSQL database before the servers
start; the Redis keys of the run contain the new user's id (or a token's hash) and are deleted at
the end. Under CI=true an unreachable PostgreSQL or Redis fails these tests (tests.services).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import httpx
import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from store import queries
from store.db import Database, migrate
from store.models import Interaction
from tests.conftest import read_pcm
from tests.fake_openai import FakeOpenAI
from tests.realtime_client import Conversation, session_update
from tests.services import redis_client, redis_url  # noqa: F401  (a fixture)
from tests.storage_fixtures import blank_database
from tests.processes import ServerProcess, refused, wait_for

TIERS = {
    "tiers": {
        "free": {"label": "Free", "rank": 0, "voice_minutes_per_day": 10},
        "one": {"label": "One at a time", "rank": 1, "voice_minutes_per_day": 30,
                "requests_per_minute": {"default": 1000, "voice": 1000},
                "max_concurrent_sessions": 1},
    },
    "default": "free",
}
TIMEOUT_S = 10.0  # waits on events across processes; never a latency assertion


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    db: Database
    user_id: str
    bearer: dict[str, str]
    resume_tokens: list[str] = field(default_factory=list)  # deleted from Redis at the end

    def voice_url(self, server: ServerProcess, query: str = "") -> str:
        return f"ws://{server.address}/api/voice" + (f"?{query}" if query else "")

    @property
    def sessions_key(self) -> str:
        return f"tutor:quota:{self.user_id}:sessions"


@pytest.fixture
async def cluster(fake: FakeOpenAI, redis_client, tmp_path: Path  # noqa: F811
                  ) -> AsyncIterator[Cluster]:
    tiers_file = tmp_path / "tiers.json"
    tiers_file.write_text(json.dumps(TIERS))
    async with blank_database("postgresql", tmp_path) as db_url:
        await asyncio.to_thread(migrate, db_url)
        db = Database(db_url)
        async with db.session() as s, s.begin():
            user = await queries.upsert_user(s, provider="supabase", subject="scale-out",
                                             email="scale@example.com", name="Scale Out")
            user.tier = "one"
            token, _ = await queries.issue_api_token(s, user.id, name="test")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}
        env.update({
            "TUTOR_DATABASE_URL": db_url, "TUTOR_AUTO_MIGRATE": "false",
            "TUTOR_REDIS_URL": redis_url(), "TUTOR_TIERS_FILE": str(tiers_file),
            # what every process of one deployment shares (docs/operations.md, Scale-out)
            "TUTOR_SESSION_SECRET": secrets.token_urlsafe(32),
            "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test",
            "TUTOR_LOAD_SAMPLE_COURSE": "false", "TUTOR_DEV_GUEST": "false",
            "TUTOR_AUDIO_BURST_MS": str(10**9),
            "TUTOR_PROVIDER_TIMEOUT_S": "5", "TUTOR_PROVIDER_MAX_RETRIES": "0",
        })
        servers: list[ServerProcess] = []
        c: Cluster | None = None
        try:
            servers = [ServerProcess(name, env, tmp_path) for name in ("server-a", "server-b")]
            deadline = time.monotonic() + 30
            await asyncio.gather(*(s.ready(deadline) for s in servers))
            c = Cluster(*servers, db=db, user_id=user.id,
                        bearer={"Authorization": f"Bearer {token}"})
            yield c
        finally:
            await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
            for s in servers:
                print(f"--- {s.name} (exit {s.proc.returncode}) ---\n{s.log()}")
            keys = [k async for k in redis_client.scan_iter(match=f"tutor:*{user.id}*")]
            keys += ["tutor:resume:" + hashlib.sha256(t.encode()).hexdigest()
                     for t in (c.resume_tokens if c else [])]
            if keys:
                await redis_client.delete(*keys)
            await db.close()


async def sessions_connected(server: ServerProcess) -> float:
    """The process's own `tutor_sessions_connected` (each process has its own registry)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://{server.address}/metrics")).text
    for family in text_string_to_metric_families(text):
        if family.name == "tutor_sessions_connected":
            return family.samples[0].value
    raise AssertionError("tutor_sessions_connected is missing from /metrics")


async def wait_until_closed(server: ServerProcess) -> None:
    """The process has noticed its socket went and finished with the session (the state for
    resuming is saved before the gauge goes down)."""
    async def closed() -> bool:
        return await sessions_connected(server) == 0
    await wait_for(closed, f"{server.name} to close its voice session", TIMEOUT_S)


async def wait_until_released(c: Cluster, redis) -> None:  # type: ignore[no-untyped-def]
    """No session of the user counts against the plan any more (in Redis)."""
    async def released() -> bool:
        return await redis.zcard(c.sessions_key) == 0
    await wait_for(released, "the user's session slot to be released", TIMEOUT_S)


async def voice_turn(conv: Conversation) -> tuple[str, str]:
    """One spoken question (corpus audio, 16 kHz binary frames) and its answer: (transcript,
    answer text)."""
    await conv.ws.send(session_update(16000))
    await conv.stream(read_pcm("q_war.wav"), 16000)
    assert not conv.of("error"), conv.of("error")
    [transcribed] = conv.of("conversation.item.input_audio_transcription.completed")
    [done] = conv.of("response.done")
    assert done["response"]["status"] == "completed", done
    [text] = conv.of("response.output_text.done")
    return transcribed["transcript"], text["text"]


async def ask(conv: Conversation, text: str) -> dict[str, Any]:
    await conv.ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await conv.ws.send(json.dumps({"type": "response.create"}))
    return await conv.until("response.done", TIMEOUT_S)


async def test_a_session_dropped_on_one_process_resumes_on_the_other(
        cluster: Cluster, fake: FakeOpenAI, redis_client):  # noqa: F811
    c = cluster
    async with websockets.connect(c.voice_url(c.a), additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        session_a = (await conv.until("session.created"))["session"]["id"]
        token = (await conv.until("tutor.session.resumable"))["resume_token"]
        c.resume_tokens.append(token)
        transcript, answer = await voice_turn(conv)
        assert conv.of("tutor.session.resumable")[-1]["resume_token"] == token
        ws.transport.abort()  # the network goes away: no close handshake
    await wait_until_closed(c.a)

    async with websockets.connect(c.voice_url(c.b, f"resume={token}"),
                                  additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        session_b = (await conv.until("session.created"))["session"]["id"]
        updated = await conv.until("session.updated")  # the restored settings
        resumed = await conv.until("tutor.session.resumed")
        fresh = await conv.until("tutor.session.resumable")
        c.resume_tokens.append(fresh["resume_token"])
        assert not conv.of("error"), conv.of("error")
        done = await ask(conv, "And in Asia?")
        assert done["response"]["status"] == "completed", done
    assert session_b != session_a
    assert resumed["messages"] == 2
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 16000
    assert fresh["resume_token"] != token
    # B answered with A's conversation as its history
    history = [(m["role"], m["content"]) for m in fake.chats[-1]["messages"]
               if m["role"] in ("user", "assistant")]
    assert history == [("user", transcript), ("assistant", answer), ("user", "And in Asia?")]

    # the token was used up on B: A does not know it either (a fresh conversation there)
    await wait_until_released(c, redis_client)
    async with websockets.connect(c.voice_url(c.a, f"resume={token}"),
                                  additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        error = await conv.until("error")
        c.resume_tokens.append((await conv.until("tutor.session.resumable"))["resume_token"])
    assert error["error"]["code"] == "resume_not_found"
    assert conv.count("tutor.session.resumed") == 0


async def test_the_concurrent_session_limit_counts_both_processes(cluster: Cluster,
                                                                  redis_client):  # noqa: F811
    c = cluster
    async with websockets.connect(c.voice_url(c.a), additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        await conv.until("session.created")
        c.resume_tokens.append((await conv.until("tutor.session.resumable"))["resume_token"])
        assert await redis_client.zcard(c.sessions_key) == 1
        event, code = await refused(c.voice_url(c.b), c.bearer)  # B sees A's session
        assert event["type"] == "error" and event["error"]["code"] == "too_many_sessions", event
        assert code == 4429
        await conv.sync()  # A's session is unaffected by B's refusal
    await wait_until_released(c, redis_client)

    async with websockets.connect(c.voice_url(c.b), additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        await conv.until("session.created")
        c.resume_tokens.append((await conv.until("tutor.session.resumable"))["resume_token"])
        assert not conv.of("error"), conv.of("error")
        event, code = await refused(c.voice_url(c.a), c.bearer)  # and now the other way round
        assert event["error"]["code"] == "too_many_sessions" and code == 4429, (event, code)


async def test_what_one_process_writes_the_other_reads(cluster: Cluster, redis_client):  # noqa: F811
    c = cluster
    async with httpx.AsyncClient() as client:
        # an API token made through A signs in on B (PostgreSQL)
        r = await client.post(f"http://{c.a.address}/api/auth/token", headers=c.bearer,
                              json={"name": "made on A"})
        assert r.status_code == 201, r.text
        made_on_a = {"Authorization": f"Bearer {r.json()['token']}"}
        me = await client.get(f"http://{c.b.address}/api/auth/me", headers=made_on_a)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == c.user_id

        # a voice ticket issued by A opens a socket on B, once (Redis)
        r = await client.post(f"http://{c.a.address}/api/voice/session", headers=made_on_a)
        assert r.status_code == 201, r.text
        ticket = r.json()["ticket"]

    async with websockets.connect(c.voice_url(c.b, f"ticket={ticket}")) as ws:
        conv = Conversation(ws)
        session_b = (await conv.until("session.created"))["session"]["id"]
        c.resume_tokens.append((await conv.until("tutor.session.resumable"))["resume_token"])
        transcript_b, _ = await voice_turn(conv)
    await wait_until_released(c, redis_client)
    event, code = await refused(c.voice_url(c.a, f"ticket={ticket}"), {})
    assert event["error"]["code"] == "invalid_ticket" and code == 1008, (event, code)

    # a turn answered by A is recorded (off the hot path) and listed by B
    async with websockets.connect(c.voice_url(c.a), additional_headers=c.bearer) as ws:
        conv = Conversation(ws)
        session_a = (await conv.until("session.created"))["session"]["id"]
        c.resume_tokens.append((await conv.until("tutor.session.resumable"))["resume_token"])
        transcript_a, answer_a = await voice_turn(conv)

    async def recorded() -> bool:
        async with c.db.session() as s:
            rows = (await s.execute(select(Interaction.session_id)
                                    .where(Interaction.user_id == c.user_id))).scalars().all()
        return {session_a, session_b} <= set(rows)
    await wait_for(recorded, "both turns to be recorded", TIMEOUT_S)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"http://{c.b.address}/api/me/interactions", headers=c.bearer)
    assert r.status_code == 200, r.text
    items = {item["session_id"]: item for item in r.json()["items"]}
    assert set(items) == {session_a, session_b}
    assert (items[session_a]["kind"], items[session_a]["status"]) == ("voice", "completed")
    assert items[session_a]["transcript"] == transcript_a
    assert items[session_a]["answer"] == answer_a
    assert items[session_b]["transcript"] == transcript_b
