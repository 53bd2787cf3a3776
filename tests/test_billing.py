"""Billing's pure parts and stores: the voice meter, the session's quota close, the shared
counters (in-process and real Redis) and the request limiter (the `limits` library)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone

import pytest

from billing.meter import VoiceLimits, VoiceMeter, VoiceUsage
from billing.quota import MemoryQuotas, RedisQuotas, seconds_to_next_month
from billing.ratelimit import RequestLimiter, storage_for
from billing.tiers import DEFAULT_TIERS, TierCatalog, route_group
from realtime import (Charge, Close, Generate, RealtimeSession, ReportLimits, Send,
                             SessionConfig, Transcribe)
from tests.conftest import read_pcm
from tests.realtime_client import check_shape
from tests.services import redis_url, unavailable

CHUNK = 640  # 20 ms at 16 kHz


# -- the meter -------------------------------------------------------------------------------
def test_meter_charges_in_steps_and_one_at_a_time():
    m = VoiceMeter(VoiceLimits(day_ms=60_000), step_ms=1000)
    charges = [m.audio(20) for _ in range(50)]  # 1 s of audio
    assert [c for c in charges if c] == [1000]
    assert all(m.audio(20) is None for _ in range(60))  # 1.2 s more, but a charge is in flight
    assert m.charged(VoiceUsage(1000, 1000)) == 1200  # the backlog goes next
    assert m.remaining_ms == 60_000 - 1000 - 1200
    assert m.received_ms == pytest.approx(2200)


def test_meter_notices_exhaustion_at_the_chunk_that_crosses_the_limit():
    m = VoiceMeter(VoiceLimits(day_ms=500, month_ms=10_000), step_ms=1000)
    results = [m.audio(20) for _ in range(25)]
    assert m.exhausted and m.remaining_ms == 0
    assert results[-1] == 500  # charged at once, without waiting for a full step
    assert [r for r in results[:-1] if r] == []


def test_meter_keeps_a_failed_charge_for_the_next_one():
    m = VoiceMeter(VoiceLimits(), step_ms=100)
    assert m.audio(100) == 100
    m.charge_failed()
    assert m.audio(20) == 120
    m.charged(VoiceUsage(120, 120))
    assert m.flush() is None  # nothing left
    m.audio(30)
    assert m.flush() == 30


def test_usage_from_other_sessions_counts():
    m = VoiceMeter(VoiceLimits(day_ms=10_000), step_ms=1000)
    m.audio(1000)
    m.charged(VoiceUsage(day_ms=9_500, month_ms=9_500))  # another session used the rest
    assert m.remaining_ms == 500
    assert VoiceLimits(day_ms=100, month_ms=50).remaining_ms(VoiceUsage(10, 60)) == 0
    assert VoiceLimits().remaining_ms(VoiceUsage(10**9, 10**9)) is None


# -- the session ends gracefully when the plan runs out --------------------------------------
def metered(limit_ms: int, step_ms: int = 1000) -> RealtimeSession:
    s = RealtimeSession(SessionConfig(instructions="tutor", model="m", input_rate=16000),
                        meter=VoiceMeter(VoiceLimits(day_ms=limit_ms), step_ms=step_ms))
    assert any(isinstance(a, ReportLimits) for a in s.open())
    return s


def feed(s: RealtimeSession, pcm: bytes, t0: float = 0.0) -> list:
    """Streams 20 ms chunks; like the shell, answers each charge as the counter would."""
    out: list = []
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        actions = s.receive_audio(pcm[i: i + CHUNK], t0 + k * 0.02)
        while any(isinstance(a, Charge) for a in actions):
            out += actions
            total = sum(a.ms for a in out if isinstance(a, Charge))
            actions = s.quota_charged(VoiceUsage(total, total))
        out += actions
    return out


def events(actions) -> list[dict]:
    out = [a.event for a in actions if isinstance(a, Send)]
    for e in out:
        check_shape(e)
    return out


def test_quota_running_out_during_an_answer_lets_it_finish_then_closes():
    pcm = read_pcm("q_war.wav")
    turn_ms = len(pcm) / 2 / 16
    s = metered(int(turn_ms) + 300)  # the question fits; the silence after it does not
    actions = feed(s, pcm)
    charged = sum(a.ms for a in actions if isinstance(a, Charge))
    assert charged == pytest.approx(turn_ms, abs=1000)
    job = next(a for a in actions if isinstance(a, Transcribe))
    gen = next(a for a in s.transcription_completed(job.item_id, "When did the war end?", 3)
               if isinstance(a, Generate))
    assert gen.model == "m"
    s.response_delta(gen.response_id, "In 1945")
    more = feed(s, b"\x00\x00" * 16000, t0=100)  # 1 s of silence: the allowance runs out
    assert not any(isinstance(a, Close) for a in more)  # the answer is still being given
    assert [e for e in events(more) if e["type"] == "error"] == []
    assert feed(s, pcm, t0=200) == []  # now nothing is heard, nor billed
    done = s.response_completed(gen.response_id)
    kinds = [e["type"] for e in events(done)]
    assert kinds[-2:] == ["response.done", "error"]
    assert events(done)[-1]["error"]["code"] == "quota_exceeded"
    assert isinstance(done[-1], Close) and done[-1].code == 4402
    assert isinstance(done[-3], ReportLimits)


def test_quota_running_out_while_listening_closes_at_once():
    s = metered(400, step_ms=1000)
    out = feed(s, b"\x00\x00" * 8000)  # 500 ms of silence
    assert [e["error"]["code"] for e in events(out) if e["type"] == "error"] == ["quota_exceeded"]
    assert out[-1] == Close(4402, "quota_exceeded")
    assert sum(a.ms for a in out if isinstance(a, Charge)) == 400  # charged up to the limit


def test_a_finished_turn_still_gets_its_answer_and_new_work_is_refused():
    pcm = read_pcm("q_war.wav")
    s = metered(len(pcm) // 32 + 30)  # runs out right after the turn ends
    actions = feed(s, pcm + b"\x00\x00" * 16000)
    job = next(a for a in actions if isinstance(a, Transcribe))
    assert not any(isinstance(a, Close) for a in actions)  # a transcript is pending
    refused = s.receive_text(json.dumps({"type": "response.create"}), 1.0)
    assert events(refused)[0]["error"]["code"] == "quota_exceeded"
    after = s.transcription_completed(job.item_id, "q", 2)
    gen = next(a for a in after if isinstance(a, Generate))
    done = s.response_completed(gen.response_id)
    assert isinstance(done[-1], Close)


def test_another_sessions_use_can_end_this_one():
    s = metered(60_000, step_ms=1000)
    charge = next(a for a in s.receive_audio(b"\x00\x00" * 16000, 0.0) if isinstance(a, Charge))
    out = s.quota_charged(VoiceUsage(day_ms=60_000, month_ms=60_000))
    assert charge.ms == 1000 and out[-1] == Close(4402, "quota_exceeded")


def test_the_maximum_session_length_closes_with_session_expired():
    s = metered(60_000)
    out = s.expire()
    assert events(out)[0]["error"]["code"] == "session_expired" and out[-1].code == 4408
    assert s.expire() == []  # once


# -- tiers -------------------------------------------------------------------------------------
def test_tiers_from_a_file_and_prices(tmp_path):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {"basic": {"voice_minutes_per_day": 1},
                                          "gold": {"rank": 3, "chat_model": "big"}},
                                "default": "basic"}))
    catalog = TierCatalog.load(path, {"gold": "price_gold"})
    assert catalog.get("nope").name == "basic"
    assert catalog.for_price("price_gold").name == "gold"
    assert catalog.best("basic", "gold").name == "gold"
    assert catalog.get("basic").voice_limits_ms() == (60_000, None)
    with pytest.raises(ValueError):
        TierCatalog.load(path, {"platinum": "price_x"})
    assert set(DEFAULT_TIERS) >= {"free", "pro", "school"}
    assert route_group("/api/ai/chat") == "ai" and route_group("/api/aix") == "default"


# -- shared counters: in-process and Redis ------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
async def store(request):
    if request.param == "memory":
        yield MemoryQuotas()
        return
    client = await connected_redis()
    prefix = f"test:quota:{uuid.uuid4().hex}"
    yield RedisQuotas(client, prefix=prefix)
    keys = [k async for k in client.scan_iter(prefix + ":*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def connected_redis():
    from redis.asyncio import Redis
    client = Redis.from_url(redis_url(), socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        unavailable("Redis", f"{type(error).__name__}: {error}")
    return client


NOV_30_23H = datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc).timestamp()


async def test_voice_counters_roll_over_by_utc_day_and_month(store):
    assert await store.charge_voice("u", 1000, NOV_30_23H) == VoiceUsage(1000, 1000)
    assert await store.charge_voice("u", 500, NOV_30_23H + 60) == VoiceUsage(1500, 1500)
    assert await store.charge_voice("v", 7, NOV_30_23H) == VoiceUsage(7, 7)  # per user
    dec_1 = NOV_30_23H + 3600 + 10
    assert await store.voice_usage("u", dec_1) == VoiceUsage(0, 0)  # new day, new month
    assert await store.charge_voice("u", 10, dec_1) == VoiceUsage(10, 10)
    assert await store.voice_usage("u", NOV_30_23H) == VoiceUsage(1500, 1500)
    assert seconds_to_next_month(NOV_30_23H) == 3600


async def test_daily_chat_allowance_is_taken_atomically(store):
    import asyncio
    taken = await asyncio.gather(*(store.take_chat("u", 5, NOV_30_23H) for _ in range(8)))
    assert sorted(t for t in taken if t is not None) == [1, 2, 3, 4, 5]
    assert taken.count(None) == 3
    assert await store.chat_used("u", NOV_30_23H) == 5
    assert await store.take_chat("u", None, NOV_30_23H) == 6  # unlimited still counts


async def test_concurrent_sessions_are_capped_and_expire(store):
    assert await store.acquire_session("u", "s1", 2, 60, 1000.0)
    assert await store.acquire_session("u", "s2", 2, 60, 1000.0)
    assert not await store.acquire_session("u", "s3", 2, 60, 1001.0)
    assert await store.acquire_session("u", "s1", 2, 60, 1001.0)  # the same session again
    await store.release_session("u", "s2")
    assert await store.acquire_session("u", "s3", 2, 60, 1002.0)
    await store.refresh_session("u", "s3", 60, 1050.0)
    # s1 was last seen at 1001 (+60 s): gone by 1070, a crashed process frees its slot
    assert await store.acquire_session("u", "s4", 2, 60, 1070.0)
    assert not await store.acquire_session("u", "s5", 2, 60, 1070.0)
    assert await store.acquire_session("u", "s5", None, 60, 1070.0)


# -- request limits ---------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
async def limiter(request):
    if request.param == "memory":
        yield RequestLimiter(storage_for(None))
        return
    await (await connected_redis()).aclose()  # fails under CI, skips on a laptop, without Redis
    yield RequestLimiter(storage_for(redis_url()))


async def test_requests_over_the_limit_are_refused_with_a_retry_time(limiter):
    who = uuid.uuid4().hex
    decisions = [await limiter.hit("ai", who, 3) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions[:3]] == [2, 1, 0]
    assert all(1 <= d.retry_after_s <= 60 for d in decisions[3:])
    assert (await limiter.hit("rag", who, 3)).allowed  # another group, another window
    assert (await limiter.hit("ai", who + "x", 3)).allowed  # another caller
    assert (await limiter.hit("ai", who, None)).allowed  # no limit


async def test_refused_requests_do_not_use_up_the_window(limiter):
    who = uuid.uuid4().hex
    for _ in range(2):
        assert (await limiter.hit("ai", who, 2)).allowed
    for _ in range(20):
        assert not (await limiter.hit("ai", who, 2)).allowed
    peek = await limiter.peek("ai", who, 2)
    assert peek.remaining == 0  # 2 counted, not 22


def test_a_plan_turns_the_server_defaults_into_the_session_config():
    from billing.plan import planned
    from realtime import SessionConfig
    catalog = TierCatalog.load()
    base = SessionConfig(instructions="t", model="small", voice="alloy", speculative_pause_ms=200)
    free = planned(base, catalog.get("free"), None, speech=True, speak_by_default=True)
    assert (free.model, free.audio_allowed, free.output_audio, free.speculative_pause_ms) == (
        "small", False, False, 0)  # no spoken answers, no speculation on the free plan
    pro = planned(base, catalog.get("pro"), "large-model", speech=True, speak_by_default=True)
    assert (pro.model, pro.audio_allowed, pro.output_audio, pro.speculative_pause_ms) == (
        "large-model", True, True, 200)
    unspoken = planned(base, catalog.get("pro"), None, speech=False, speak_by_default=True)
    assert (unspoken.audio_allowed, unspoken.output_audio) == (False, False)  # no TTS provider
    assert not planned(base, catalog.get("pro"), None, speech=True,
                       speak_by_default=False).output_audio  # TUTOR_OUTPUT_MODALITIES=text
