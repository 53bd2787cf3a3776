"""What quota metering adds to the voice loop: per audio frame, and per session. Figures only.

Per frame: `RealtimeSession.receive_audio` over real speech (20 ms chunks, 16 kHz) with a voice
meter and without, next to the VAD + endpointing cost of the same chunks (`AudioInput.feed`).
Per session: the shared-counter calls a session makes (open: usage read + concurrent-session
slot; every `quota_step_ms` of audio: one atomic charge; close: release), timed against the
in-process store and against Redis, and what they cost per minute of a session.

    python -m bench.quota [--redis-url redis://127.0.0.1:6379/15] [--step-ms 1000]

Writes bench/results/quota.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
import uuid
from pathlib import Path

from audio.input import AudioInput, VadSettings
from billing.meter import VoiceLimits, VoiceMeter, VoiceUsage
from billing.quota import MemoryQuotas, RedisQuotas
from realtime import Charge, RealtimeSession, SessionConfig

from .latency import CHUNK_BYTES, RESULTS, load

ROUNDS = 20


def frames() -> list[bytes]:
    pcm = load("conversation.wav")
    return [pcm[i: i + CHUNK_BYTES] for i in range(0, len(pcm) - CHUNK_BYTES + 1, CHUNK_BYTES)]


def per_frame_us(chunks: list[bytes], metered: bool, step_ms: int) -> float:
    """Mean µs of receive_audio per chunk (best of 5 runs, to keep the machine's noise out)."""
    best = float("inf")
    for _ in range(5):
        total = 0.0
        for _ in range(ROUNDS // 5):
            meter = VoiceMeter(VoiceLimits(day_ms=10**9), step_ms=step_ms) if metered else None
            s = RealtimeSession(SessionConfig(instructions="t", model="m", input_rate=16000,
                                              audio_burst_ms=10**9), meter=meter)
            s.open()
            used = 0
            t = time.perf_counter()
            for k, chunk in enumerate(chunks):
                for action in s.receive_audio(chunk, k * 0.02):
                    if isinstance(action, Charge):  # answer at once, as a counter would
                        used += action.ms
                        s.quota_charged(VoiceUsage(used, used))
            total += time.perf_counter() - t
        best = min(best, total / (ROUNDS // 5 * len(chunks)) * 1e6)
    return best


def meter_only_us(chunks: int) -> float:
    m = VoiceMeter(VoiceLimits(day_ms=10**9), step_ms=1000)
    used = 0
    t = time.perf_counter()
    for _ in range(ROUNDS):
        for _ in range(chunks):
            ms = m.audio(20)
            if ms:
                used += ms
                m.charged(VoiceUsage(used, used))
    return (time.perf_counter() - t) / (ROUNDS * chunks) * 1e6


def vad_us(chunks: list[bytes]) -> float:
    best = float("inf")
    for _ in range(5):
        ai = AudioInput(input_rate=16000, vad=VadSettings(), max_turn_ms=30000)
        t = time.perf_counter()
        for _ in range(ROUNDS // 5):
            for c in chunks:
                ai.feed(c)
        best = min(best, (time.perf_counter() - t) / (ROUNDS // 5 * len(chunks)) * 1e6)
    return best


async def store_costs(store, n: int = 500) -> dict[str, float]:
    """Median µs of each call a session makes to the counters."""
    user = "bench-" + uuid.uuid4().hex
    at = time.time()

    async def timed(make) -> float:  # type: ignore[no-untyped-def]
        samples = []
        for i in range(n):
            t = time.perf_counter()
            await make(i)
            samples.append((time.perf_counter() - t) * 1e6)
        return statistics.median(samples)

    costs = {
        "open_read_usage_us": await timed(lambda i: store.voice_usage(user, at)),
        "open_acquire_slot_us": await timed(
            lambda i: store.acquire_session(user, f"s{i}", None, 120, at)),
        "charge_us": await timed(lambda i: store.charge_voice(user, 1000, at)),
        "keepalive_us": await timed(lambda i: store.refresh_session(user, f"s{i}", 120, at)),
        "close_release_us": await timed(lambda i: store.release_session(user, f"s{i}")),
    }
    return costs


def per_minute(costs: dict[str, float], step_ms: int, ttl_s: float = 120) -> float:
    """µs of counter calls in one minute of a session (open and close spread over it)."""
    charges = 60_000 / step_ms
    keepalives = 60 / (ttl_s / 3)
    return (costs["open_read_usage_us"] * 2 + costs["open_acquire_slot_us"]
            + costs["close_release_us"] + charges * costs["charge_us"]
            + keepalives * costs["keepalive_us"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--step-ms", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    chunks = frames()
    plain = per_frame_us(chunks, False, args.step_ms)
    metered = per_frame_us(chunks, True, args.step_ms)
    vad = vad_us(chunks)
    frame = {"receive_audio_unmetered_us": round(plain, 2),
             "receive_audio_metered_us": round(metered, 2),
             "metering_added_us": round(metered - plain, 2),
             "meter_alone_us": round(meter_only_us(len(chunks)), 3),
             "vad_and_endpointing_us": round(vad, 2)}
    frame["metering_vs_vad_percent"] = round(100 * frame["meter_alone_us"] / vad, 1)

    stores: dict[str, dict[str, float]] = {}
    stores["memory"] = await store_costs(MemoryQuotas())
    try:
        import redis.asyncio as redis
        client = redis.from_url(args.redis_url)
        await client.ping()
        prefix = "bench:quota:" + uuid.uuid4().hex
        stores["redis"] = await store_costs(RedisQuotas(client, prefix=prefix))
        keys = [k async for k in client.scan_iter(prefix + ":*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    except Exception as exc:  # a laptop without Redis still gets the in-process figures
        print(f"Redis not measured: {exc}")
    session = {name: {**{k: round(v, 1) for k, v in costs.items()},
                      "per_session_minute_us": round(per_minute(costs, args.step_ms), 1),
                      "share_of_one_core_per_session_percent":
                          round(per_minute(costs, args.step_ms) / 60e6 * 100, 5)}
               for name, costs in stores.items()}
    result = {"machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
              "step_ms": args.step_ms, "frames": len(chunks), "per_frame": frame,
              "per_session": session}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quota.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"per 20 ms frame: receive_audio {plain:.2f} µs unmetered, {metered:.2f} µs metered "
          f"(+{metered - plain:.2f} µs); the meter alone {frame['meter_alone_us']:.3f} µs; "
          f"VAD + endpointing {vad:.2f} µs (meter = {frame['metering_vs_vad_percent']}% of VAD)")
    for name, costs in session.items():
        print(f"per session on {name}: charge {costs['charge_us']} µs, open "
              f"{costs['open_read_usage_us'] * 2 + costs['open_acquire_slot_us']:.0f} µs, close "
              f"{costs['close_release_us']} µs; {costs['per_session_minute_us']:.0f} µs of "
              f"counter calls per session-minute at a {args.step_ms} ms step")
    print(f"wrote {args.out / 'quota.json'}")


if __name__ == "__main__":
    asyncio.run(main())
