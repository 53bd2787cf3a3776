"""One user's plan holds across server processes: two `tutor serve` subprocesses share one
PostgreSQL database and one Redis, and the per-minute request limit and the daily voice minutes
are counted once for both.

The user (and an API token) is created in a fresh PostgreSQL database before the servers start,
on a tiny plan from a tiers file: 4 billing requests a minute, 0.1 voice minutes (6 s) a day.
Request limits (limits' sliding window in Redis) and voice counters (billing.quota's Lua scripts)
live under keys that contain the user's id, which is new for every run; those keys are deleted
at the end.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import httpx
import pytest
import websockets
from sqlalchemy import func, select

from billing.quota import day_key
from store import queries
from store.db import Database, migrate
from store.models import UsageEntry
from tests.conftest import read_pcm
from tests.processes import ServerProcess, refused, wait_for
from tests.realtime_client import Conversation, chunks, session_update
from tests.services import redis_client, redis_url  # noqa: F401
from tests.storage_fixtures import blank_database

STEP_MS = 500
DAY_MS = 6000  # voice_minutes_per_day 0.1
TIERS = {
    "tiers": {
        "free": {"label": "Free", "rank": 0, "voice_minutes_per_day": 10,
                 "requests_per_minute": {"default": 120}},
        "tiny": {"label": "Tiny", "rank": 1, "voice_minutes_per_day": 0.1,
                 "chat_messages_per_day": 10,
                 "requests_per_minute": {"billing": 4, "default": 100, "voice": 100},
                 "max_session_minutes": 10, "max_concurrent_sessions": 5},
    },
    "default": "free",
}


async def test_quota_and_rate_limit_hold_across_two_server_processes(fake, redis_client,
                                                                      tmp_path):
    started = time.monotonic()
    tiers_file = tmp_path / "tiers.json"
    tiers_file.write_text(json.dumps(TIERS))
    async with blank_database("postgresql", tmp_path) as db_url:
        await asyncio.to_thread(migrate, db_url)
        db = Database(db_url)
        async with db.session() as s, s.begin():
            user = await queries.upsert_user(s, provider="supabase", subject="multiprocess",
                                             email="mp@example.com", name="Multi Process")
            user.tier = "tiny"
            token, _ = await queries.issue_api_token(s, user.id, name="test")
        uid = user.id
        bearer = {"Authorization": f"Bearer {token}"}
        voice_key = f"tutor:quota:{uid}:voice:d:{day_key(time.time())}"
        sessions_key = f"tutor:quota:{uid}:sessions"

        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("OPENAI_", "LLM_", "TUTOR_", "STRIPE_"))}
        env.update({
            "TUTOR_DATABASE_URL": db_url, "TUTOR_AUTO_MIGRATE": "false",
            "TUTOR_REDIS_URL": redis_url(), "TUTOR_TIERS_FILE": str(tiers_file),
            "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test",
            "TUTOR_LOAD_SAMPLE_COURSE": "false", "TUTOR_DEV_GUEST": "false",
            "TUTOR_AUDIO_BURST_MS": str(10**9), "TUTOR_QUOTA_STEP_MS": str(STEP_MS),
            "TUTOR_PROVIDER_TIMEOUT_S": "5", "TUTOR_PROVIDER_MAX_RETRIES": "0",
        })
        servers: list[ServerProcess] = []
        try:
            servers = [ServerProcess(name, env, tmp_path) for name in ("server-a", "server-b")]
            deadline = time.monotonic() + 20
            await asyncio.gather(*(s.ready(deadline) for s in servers))
            a, b = (s.address for s in servers)
            print(f"servers up after {time.monotonic() - started:.1f} s")

            # -- the per-minute request limit is one window for both processes ----------------
            async with httpx.AsyncClient(headers=bearer) as client:
                remaining = []
                for address in (a, b, a, b):
                    r = await client.get(f"http://{address}/api/billing/usage")
                    assert r.status_code == 200, r.text
                    usage = r.json()
                    assert usage["tier"] == "tiny"
                    assert usage["requests"]["billing"]["limit_per_minute"] == 4
                    remaining.append(usage["requests"]["billing"]["remaining"])
                assert remaining == [3, 2, 1, 0]  # each process saw the other's requests
                assert usage["voice"]["remaining_seconds"] == DAY_MS / 1000
                for address in (a, b):  # the 5th, and the 6th, on either process
                    r = await client.get(f"http://{address}/api/billing/usage")
                    assert r.status_code == 429, (address, r.text)
                    assert r.json()["error"]["code"] == "rate_limited"
                    assert 1 <= int(r.headers["retry-after"]) <= 60
                # other route groups have their own limits
                assert (await client.get(f"http://{b}/api/auth/me")).status_code == 200

            # -- 4 s of speech on server A --------------------------------------------------
            speech = read_pcm("q_war.wav")[: 4 * 16000 * 2]
            async with websockets.connect(f"ws://{a}/api/voice", additional_headers=bearer) as ws:
                conv = Conversation(ws)
                created = await conv.until("session.created")
                session_a = created["session"]["id"]
                [voice] = [e for e in (await conv.until("tutor.rate_limits.updated"))["rate_limits"]
                           if e["name"] == "voice_seconds"]
                assert (voice["limit"], voice["remaining"]) == (6, 6)
                await ws.send(session_update(16000))
                await conv.stream(speech, 16000)
                assert not conv.of("error"), conv.of("error")
            # A charges what is left when the socket closes, then releases the session
            await wait_for(lambda: _settled(redis_client, voice_key, sessions_key, 4000),
                           "server A to charge 4 s and release the session")

            # -- server B has 2 s left, and ends the session when they are used ---------------
            pcm = read_pcm("q_derivative.wav")  # 4.6 s: more than is left
            sent_ms = 0
            async with websockets.connect(f"ws://{b}/api/voice", additional_headers=bearer) as ws:
                conv = Conversation(ws)
                session_b = (await conv.until("session.created"))["session"]["id"]
                [voice] = [e for e in (await conv.until("tutor.rate_limits.updated"))["rate_limits"]
                           if e["name"] == "voice_seconds"]
                assert voice["remaining"] == 2  # A's 4 s counted
                await ws.send(session_update(16000))
                await conv.until("session.updated")
                with pytest.raises(websockets.ConnectionClosed) as info:
                    for chunk in chunks(pcm, 16000):
                        await ws.send(chunk)
                        sent_ms += 20
                        await conv.drain()
                    while True:  # all audio sent before the server ended it: read to the end
                        await conv.next()
            assert info.value.rcvd is not None and info.value.rcvd.code == 4402, info.value
            errors = conv.of("error")
            assert [e["error"]["code"] for e in errors] == ["quota_exceeded"], errors
            assert conv.events[-1]["type"] == "error"  # the last word before the close
            [voice] = [e for e in conv.of("tutor.rate_limits.updated")[-1]["rate_limits"]
                       if e["name"] == "voice_seconds"]
            assert voice["remaining"] == 0
            assert sent_ms >= 2000

            await wait_for(lambda: _settled(redis_client, voice_key, sessions_key),
                           "server B to release the session")

            # -- a new session is refused up front, on either process -------------------------
            event, code = await refused(f"ws://{a}/api/voice", bearer)
            assert event["type"] == "error" and event["error"]["code"] == "quota_exceeded", event
            assert code == 4402
            async with httpx.AsyncClient(headers=bearer) as client:
                for address in (a, b):
                    r = await client.post(f"http://{address}/api/voice/session")
                    assert r.status_code == 402, (address, r.text)
                    assert r.json()["error"]["code"] == "quota_exceeded"
                    assert int(r.headers["retry-after"]) > 0

            # -- the ledger in PostgreSQL records the same use as the counters ----------------
            async def ledger() -> tuple[int, dict[str, int]] | None:
                used = int(await redis_client.get(voice_key) or 0)
                async with db.session() as s:
                    rows = (await s.execute(
                        select(UsageEntry.session_id, func.sum(UsageEntry.amount))
                        .where(UsageEntry.user_id == uid, UsageEntry.kind == "voice_ms")
                        .group_by(UsageEntry.session_id))).all()
                by_session = {sid: int(total) for sid, total in rows}
                return (used, by_session) if sum(by_session.values()) == used else None

            used, by_session = await wait_for(ledger, "the ledger to catch up with the counters")
            assert DAY_MS <= used <= DAY_MS + 20, used  # one 20 ms chunk may cross the line
            assert by_session[session_a] == 4000
            assert 2000 <= by_session[session_b] <= 2020, by_session  # about 2 s more, not 6
            assert set(by_session) == {session_a, session_b}
            assert sum(by_session.values()) >= DAY_MS
            print(f"voice charged: A {by_session[session_a]} ms, B {by_session[session_b]} ms "
                  f"(B was sent {sent_ms} ms before it closed the session)")
        finally:
            await asyncio.gather(*(s.stop() for s in servers), return_exceptions=True)
            for s in servers:
                print(f"--- {s.name} (exit {s.proc.returncode}) ---\n{s.log()}")
            keys = [k async for k in redis_client.scan_iter(match=f"tutor:*{uid}*")]
            if keys:
                await redis_client.delete(*keys)
            await db.close()
    elapsed = time.monotonic() - started
    print(f"test took {elapsed:.1f} s")
    assert elapsed < 30


async def _settled(redis, voice_key: str, sessions_key: str,  # type: ignore[no-untyped-def]
                   expected_ms: int | None = None) -> bool:
    """No live session of the user is left, and (if given) the counter holds `expected_ms`."""
    if await redis.zcard(sessions_key):
        return False
    if expected_ms is None:
        return True
    return int(await redis.get(voice_key) or 0) == expected_ms
