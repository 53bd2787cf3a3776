"""A dropped connection resumes the same conversation: `tutor.session.resumable` gives a token,
a new socket with `?resume=<token>` continues with the history (and a new token); a token works
once, for its own user, for a short time; through Redis, on another server process too."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from server.resume import MemoryResume, RedisResume
from server.voice import take_resume
from tests.conftest import make_settings
from tests.realtime_client import Conversation
from tests.services import redis_client  # noqa: F401  (a fixture)


async def ask(conv: Conversation, text: str) -> dict:
    await conv.ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await conv.ws.send(json.dumps({"type": "response.create"}))
    return await conv.until("response.done")


async def latest_token(conv: Conversation) -> str:
    await asyncio.sleep(0.05)
    await conv.drain()
    return conv.of("tutor.session.resumable")[-1]["resume_token"]


async def test_a_dropped_session_resumes_its_conversation(fake, start_server):
    address = await start_server(make_settings(fake, resume_ttl_s=5))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        first = await conv.until("tutor.session.resumable")
        assert first["expires_in_s"] == 5
        await ws.send(json.dumps({"type": "session.update", "session": {
            "instructions": "Be brief.", "audio": {"input": {"format": {
                "type": "audio/pcm", "rate": 16000}}}}}))
        await ask(conv, "What is a fraction?")
        token = await latest_token(conv)
        ws.transport.abort()  # the network goes away: no close handshake
    await asyncio.sleep(0.1)
    async with websockets.connect(f"ws://{address}/api/voice?resume={token}") as ws:
        conv = Conversation(ws)
        resumed = await conv.until("tutor.session.resumed")
        [updated] = conv.of("session.updated")  # the restored settings, just before
        fresh = await conv.until("tutor.session.resumable")
        await ask(conv, "And a decimal?")
    assert resumed["messages"] == 2
    assert updated["session"]["instructions"] == "Be brief."
    assert updated["session"]["audio"]["input"]["format"]["rate"] == 16000
    assert fresh["resume_token"] != token
    history = [(m["role"], m["content"][:12]) for m in fake.chats[-1]["messages"][1:]]
    assert history == [("user", "What is a fr"), ("assistant", "Good questio"),
                       ("user", "And a decima")]
    # the token worked once
    async with websockets.connect(f"ws://{address}/api/voice?resume={token}") as ws:
        conv = Conversation(ws)
        error = await conv.until("error")
        await conv.until("tutor.session.resumable")  # a new conversation, resumable in turn
    assert error["error"]["code"] == "resume_not_found"
    assert conv.count("tutor.session.resumed") == 0 and conv.count("tutor.session.resumable") == 1


async def test_tokens_expire_and_belong_to_their_user():
    clock = [100.0]
    store = MemoryResume(clock=lambda: clock[0])
    await store.save("t1", {"user_id": "u1", "history": []}, 10)
    clock[0] = 111
    assert await store.take("t1") is None
    await store.save("t2", {"user_id": "u1", "history": []}, 10)
    assert (await store.take("t2"))["user_id"] == "u1"
    assert await store.take("t2") is None
    # the socket's check: another user's token is refused (and used up)
    await store.save("t3", {"user_id": "u1", "history": []}, 10)
    assert await take_resume(store, "t3", "u2") is False
    assert await take_resume(store, "t3", "u1") is False


async def test_expired_states_are_let_go_without_any_further_use_of_the_store():
    """Closed sessions' states leave memory when their time is up, even if no one connects
    again (they were kept until 10 000 had piled up), and there are never more than the cap."""
    store = MemoryResume(max_entries=3)
    big = {"user_id": "u1", "history": [{"role": "user", "content": "x" * 100_000}] * 20}
    for i in range(5):
        await store.save(f"t{i}", big, 0.05)
    assert len(store) == 3  # the two oldest went at once
    assert await store.take("t0") is None and (await store.take("t4"))["user_id"] == "u1"
    await asyncio.sleep(0.1)
    assert len(store) == 0 and not store._timers


async def test_through_redis_another_process_resumes(fake, start_server, redis_client):  # noqa: F811
    settings = make_settings(fake, redis_url="redis://127.0.0.1:6379/15")
    one, two = await start_server(settings), await start_server(settings)
    async with websockets.connect(f"ws://{one}/api/voice") as ws:
        conv = Conversation(ws)
        await ask(conv, "What is photosynthesis?")
        token = await latest_token(conv)
    for _ in range(50):  # the closing session saves its state as it goes
        if await redis_client.exists("tutor:resume:" + __import__("hashlib").sha256(
                token.encode()).hexdigest()):
            break
        await asyncio.sleep(0.02)
    async with websockets.connect(f"ws://{two}/api/voice?resume={token}") as ws:
        conv = Conversation(ws)
        resumed = await conv.until("tutor.session.resumed")
    assert resumed["messages"] == 2
    assert await RedisResume(redis_client).take(token) is None  # taken


async def test_a_resume_takes_the_place_of_its_dropped_session_on_a_one_session_plan(
        fake, start_server, tmp_path):
    # After a real network drop the old socket can look alive until it times out; the plan's
    # one-session limit must not refuse the resume meanwhile.
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {"one": {"max_concurrent_sessions": 1}},
                                "default": "one"}))
    address = await start_server(make_settings(fake, tiers_file=path, guest_tier="one"))
    async with websockets.connect(f"ws://{address}/api/voice") as old:
        conv = Conversation(old)
        await ask(conv, "What is a fraction?")
        token = await latest_token(conv)
        async with websockets.connect(f"ws://{address}/api/voice") as other:
            assert (await Conversation(other).until("error"))["error"]["code"] == \
                "too_many_sessions"
        async with websockets.connect(f"ws://{address}/api/voice?resume={token}") as new:
            resumed = await Conversation(new).until("tutor.session.resumed")
    assert resumed["messages"] == 2
