"""Plans enforced end to end on the real server: voice minutes metered inside the live socket,
the graceful `quota_exceeded` close, refusals up front, typed-question allowance, per-minute
request limits, concurrent sessions, session length, the tier's model, and the usage report.

The dev guest's plan (`guest_tier`) is one from a tiers file with tiny limits, so no sign-in is
needed; the two-process variant with a signed-in user is in test_billing_multiprocess.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from sqlalchemy import func, select

from billing.quota import RedisQuotas
from store.models import UsageEntry
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, chunks, session_update
from tests.services import TcpProxy, redis_client  # noqa: F401  (a fixture)

TIERS = {
    "tiny": dict(voice_minutes_per_day=0.1, voice_minutes_per_month=10, chat_messages_per_day=2,
                 requests_per_minute={"billing": 3, "default": 100}, max_session_minutes=10,
                 max_concurrent_sessions=1, chat_model="large"),
    "short": dict(voice_minutes_per_day=10, max_session_minutes=0.02,
                  max_concurrent_sessions=3),
    "free": dict(voice_minutes_per_day=10),
}


async def plan_server(fake, start_server, tmp_path, tier: str, **overrides):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": TIERS, "default": "free"}))
    address = await start_server(make_settings(fake, tiers_file=path, guest_tier=tier,
                                               quota_step_ms=500, llm_model_large="big-model",
                                               **overrides))
    return address, start_server.apps[-1]


async def talk_until_closed(ws, conv: Conversation, pcm: bytes) -> None:
    """Stream like a student who waits for each answer, until the server closes the socket.
    What the server sent before closing is read to the end: a `send` that meets the close
    raises while the last events (the `error`) still wait in the client's buffer."""
    try:
        for chunk in chunks(pcm, 16000):
            await ws.send(chunk)
            await conv.drain()
            if conv.count("input_audio_buffer.speech_stopped") > conv.count("response.done"):
                await conv.until("response.done")
    except websockets.ConnectionClosed:
        pass
    try:
        while True:
            await conv.next()
    except websockets.ConnectionClosed:
        pass


async def test_voice_minutes_run_out_mid_session_after_the_answer(fake, start_server, tmp_path):
    address, app = await plan_server(fake, start_server, tmp_path, "tiny")
    speech = read_pcm("q_war.wav") + read_pcm("q_french.wav") + read_pcm("q_war.wav")
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await talk_until_closed(ws, conv, speech)
        assert ws.close_code == 4402 and ws.close_reason == "quota_exceeded"
    types = conv.types()
    assert types[-1] == "error" and conv.events[-1]["error"]["code"] == "quota_exceeded"
    # every answer that started was finished before the error; none started after
    assert conv.count("response.created") == conv.count("response.done") >= 1
    assert types.index("error") > max(i for i, t in enumerate(types) if t == "response.done")
    limits = [{r["name"]: r for r in e["rate_limits"]}
              for e in conv.of("tutor.rate_limits.updated")]
    # the standard event carries only the names OpenAI's type allows
    assert all(r["name"] == "requests"
               for e in conv.of("rate_limits.updated") for r in e["rate_limits"])
    assert limits[0]["voice_seconds"]["remaining"] == 6 and limits[0]["voice_seconds"]["limit"] == 6
    assert limits[0]["requests"] == {"name": "requests", "limit": 2, "remaining": 2,
                                     "reset_seconds": limits[0]["requests"]["reset_seconds"]}
    assert limits[-1]["voice_seconds"]["remaining"] == 0
    assert len(limits) >= 3  # at the start, after each answer, and at the end
    # a new session is refused up front, with the same code and close code
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        refusal = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4402
    assert refusal["type"] == "error" and refusal["error"]["code"] == "quota_exceeded"
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        ticket = await client.post("/api/voice/session")
        usage = (await client.get("/api/billing/usage")).json()
    assert ticket.status_code == 402 and ticket.json()["error"]["code"] == "quota_exceeded"
    assert 0 < int(ticket.headers["retry-after"]) <= 86400
    assert usage["tier"] == "tiny" and usage["voice"]["remaining_seconds"] == 0
    assert usage["voice"]["used_today_seconds"] == pytest.approx(6.0, abs=0.1)
    # the ledger (written off the hot path) has the same total
    assert await app.state.services.usage_writer.flush(5)
    async with app.state.services.db.session() as s:
        total = (await s.execute(select(func.sum(UsageEntry.amount))
                                 .where(UsageEntry.kind == "voice_ms"))).scalar_one()
    assert total == pytest.approx(6000, abs=100)


async def test_the_tiers_model_answers(fake, start_server, tmp_path):
    address, _ = await plan_server(fake, start_server, tmp_path, "tiny")
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        assert conv.events == [] and (await conv.next())["session"]["model"] == "big-model"
        await conv.stream(read_pcm("q_war.wav"), 16000)
    assert fake.chats[-1]["model"] == "big-model"


async def test_typed_questions_have_a_daily_allowance(fake, start_server, tmp_path):
    address, _ = await plan_server(fake, start_server, tmp_path, "tiny")
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        answers = [await client.post("/api/ai/chat", json={"message": f"q{i}"}) for i in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 402]
    assert answers[2].json()["error"]["code"] == "quota_exceeded"
    assert "retry-after" in answers[2].headers
    assert fake.chats[-1]["model"] == "big-model" and len(fake.chats) == 2


async def test_requests_over_the_per_minute_limit_get_429(fake, start_server, tmp_path):
    address, _ = await plan_server(fake, start_server, tmp_path, "tiny", anonymous_rpm=2)
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        usage = [await client.get("/api/billing/usage") for _ in range(4)]
        other_group = await client.get("/api/auth/me")  # its own window
    assert [r.status_code for r in usage] == [200, 200, 200, 429]
    assert usage[3].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(usage[3].headers["retry-after"]) <= 60
    assert other_group.status_code == 200
    assert usage[2].json()["requests"]["ai"]["limit_per_minute"] == 100


async def test_callers_without_credentials_are_limited_by_address(fake, start_server):
    # With sign-in configured there is no guest: these requests have no user.
    address = await start_server(make_settings(fake, supabase_jwt_secret="s" * 32,
                                               anonymous_rpm=2))
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        codes = [(await client.get("/api/billing/tiers")).status_code for _ in range(3)]
        health = [(await client.get("/healthz")).status_code for _ in range(5)]
    assert codes == [200, 200, 429] and health == [200] * 5


async def test_concurrent_sessions_are_capped(fake, start_server, tmp_path):
    address, _ = await plan_server(fake, start_server, tmp_path, "tiny")
    async with websockets.connect(f"ws://{address}/api/voice") as first:
        assert json.loads(await first.recv())["type"] == "session.created"
        async with websockets.connect(f"ws://{address}/api/voice") as second:
            refusal = json.loads(await second.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await second.recv()
            assert second.close_code == 4429
        assert refusal["error"]["code"] == "too_many_sessions"
    for _ in range(50):  # the first socket's slot is released when its handler ends
        async with websockets.connect(f"ws://{address}/api/voice") as again:
            event = json.loads(await again.recv())
        if event["type"] == "session.created":
            break
        await asyncio.sleep(0.02)
    assert event["type"] == "session.created"


async def test_the_plans_session_length_ends_the_session(fake, start_server, tmp_path):
    address, _ = await plan_server(fake, start_server, tmp_path, "short")
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await conv.next(timeout=5)
        assert ws.close_code == 4408
    assert conv.events[-1]["error"]["code"] == "session_expired"


async def test_quotas_fail_open_when_redis_goes_away_and_nothing_goes_unbilled(
        fake, start_server, tmp_path, redis_client):
    proxy = TcpProxy("127.0.0.1", 6379)
    await proxy.start()
    TIERS["roomy"] = dict(voice_minutes_per_day=30, requests_per_minute={"default": 1000})
    try:
        address, app = await plan_server(fake, start_server, tmp_path, "roomy",
                                         redis_url=f"redis://127.0.0.1:{proxy.port}/15")
    finally:
        del TIERS["roomy"]
    guest = await app.state.services.auth.guest()
    await redis_client.delete(*[k async for k in redis_client.scan_iter(
        f"tutor:quota:{guest.id}:*")] or ["-"])
    question = read_pcm("q_war.wav")
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(question, 16000)
        proxy.cut()  # Redis is gone: the session goes on, the charges wait
        await conv.stream(question, 16000)
        assert conv.count("response.done") == 2
        assert conv.of("response.done")[-1]["response"]["status"] == "completed"
        async with httpx.AsyncClient(base_url=f"http://{address}") as client:
            assert (await client.get("/api/billing/tiers")).status_code == 200  # fails open
        assert app.state.services.billing.store_failures > 0
        await proxy.restore()
        await conv.stream(question, 16000)
    sent_ms = 3 * len(question) / 32
    counters = RedisQuotas(redis_client)  # a connection of its own: the app's pool may still
    for _ in range(100):  # hold one the cut killed. The last charge lands as the session closes
        usage = await counters.voice_usage(guest.id, app.state.services.billing.clock())
        if usage.day_ms >= sent_ms - 1:
            break
        await asyncio.sleep(0.05)
    assert usage.day_ms == pytest.approx(sent_ms, abs=2)
    proxy.cut()
