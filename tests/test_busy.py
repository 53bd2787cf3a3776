"""How busy the server says it is (issue 16): the event loop's lag on `/metrics`
(`server.loopwatch`), and the CPU each voice session's own work takes, on `/metrics` and in
`tutor.response.metrics`. No speed is asserted: only that the figures are there, that they
count something, and that a loop deliberately blocked shows as lag."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets

from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update
from tests.test_metrics import samples

LAG = "tutor_event_loop_lag_seconds"


async def scrape(address: str) -> dict[tuple[str, tuple], float]:
    async with httpx.AsyncClient() as client:
        return samples((await client.get(f"http://{address}/metrics")).text)


async def test_the_loop_lag_is_observed_and_a_blocked_loop_shows_as_lag(fake, start_server):
    address = await start_server(make_settings(fake, loop_watch_interval_ms=20))
    for _ in range(200):  # until the watch has woken a few times (the app's lifespan started it)
        first = await scrape(address)
        if first.get((f"{LAG}_count", ()), 0) >= 3:
            break
        await asyncio.sleep(0.02)
    assert first[(f"{LAG}_count", ())] >= 3
    over_quarter = first[(f"{LAG}_count", ())] - first[(f"{LAG}_bucket", (("le", "0.25"),))]

    # the server runs on this test's event loop: blocking it blocks the server's loop
    time.sleep(0.3)
    await asyncio.sleep(0.1)  # the watch wakes (late), then a few times on time
    after = await scrape(address)
    late = after[(f"{LAG}_count", ())] - after[(f"{LAG}_bucket", (("le", "0.25"),))]
    assert late >= over_quarter + 1  # the wake that waited behind the block: over 0.25 s late
    # the whole block, less at most one interval, is in the sum
    assert after[(f"{LAG}_sum", ())] - first[(f"{LAG}_sum", ())] >= 0.3 - 0.02
    watch = start_server.apps[-1].state.services.loopwatch
    assert watch.recent_ms >= 280  # the largest lag of the last second


async def test_a_spoken_turn_reports_its_session_cpu_and_the_loop_lag(fake, start_server):
    address = await start_server(make_settings(fake))
    pcm = read_pcm("q_war.wav")
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(pcm, 16000)
        metrics = await conv.until("tutor.response.metrics")
        live = await scrape(address)
    assert metrics["session_cpu_ms"] > 0
    assert metrics["loop_lag_ms"] >= 0
    assert live[("tutor_session_cpu_seconds_total", ())] > 0  # a live session's, at scrape time
    # every byte streamed was heard: 16 kHz, 16-bit mono
    assert live[("tutor_session_audio_seconds_total", ())] == pytest.approx(len(pcm) / 32000)
    for _ in range(100):  # the session's end is seen once the server has closed it
        after = await scrape(address)
        if after[("tutor_sessions_connected", ())] == 0:
            break
        await asyncio.sleep(0.02)
    assert after[("tutor_session_cpu_seconds_total", ())] >= \
        live[("tutor_session_cpu_seconds_total", ())]  # never goes back when a session ends
    assert after[("tutor_session_audio_seconds_total", ())] == pytest.approx(len(pcm) / 32000)
    assert after[("tutor_session_cpu_ms_per_audio_second_count", ())] == 1
    assert after[("tutor_session_cpu_ms_per_audio_second_sum", ())] > 0


async def test_a_spoken_answer_reports_them_when_its_audio_ends(fake, start_server):
    fake.behaviour.tts_ms_per_char = 4  # audio goes out at playback pace: keep it short
    fake.behaviour.reply = "One third plus one third is two thirds."
    address = await start_server(make_settings(fake))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}}))
        await conv.stream(read_pcm("q_fractions.wav"), 16000)
        metrics = await conv.until("tutor.response.metrics")
    assert conv.of("response.output_audio.delta")
    assert metrics["session_cpu_ms"] > 0 and metrics["loop_lag_ms"] >= 0


async def test_without_the_watch_there_is_no_lag_but_still_the_session_cpu(fake, start_server):
    address = await start_server(make_settings(fake, loop_watch_interval_ms=0))
    assert start_server.apps[-1].state.services.loopwatch is None
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000)
        metrics = await conv.until("tutor.response.metrics")
    assert "loop_lag_ms" not in metrics and metrics["session_cpu_ms"] > 0
    assert (await scrape(address))[(f"{LAG}_count", ())] == 0


async def test_every_audio_chunk_is_timed_once(fake, start_server, monkeypatch):
    """With a thread-CPU clock that advances one tick per read, a timed section adds exactly one
    tick (a step inside another reads no clock): the session's CPU then counts its timed
    sections, and streaming N chunks of silence adds N, and not twice N."""
    ticks = iter(range(10**9))
    monkeypatch.setattr(time, "thread_time", lambda: float(next(ticks)))
    address = await start_server(make_settings(fake))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.sync()
        [runner] = start_server.apps[-1].state.services.runners
        before = runner.cpu_s
        n = 100  # 2 s of silence: no turn, no answer
        await conv.stream(bytes(640 * n), 16000)
        after = runner.cpu_s
    # each chunk once; besides them only the sync's session.update and the voice charges (one
    # per second of audio) are timed
    assert n <= after - before <= n + 10
