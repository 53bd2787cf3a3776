"""Soak benchmark: N students reconnecting for T minutes against one real server. Figures only.

Each of N concurrent clients opens a voice session (`/api/voice`, the dev guest), asks 1 to
`--turns` spoken questions from the shared corpus (16 kHz, followed by a second of silence;
sent as fast as the server takes them unless `--realtime`), waits for each answer
(`response.done`), closes, and reconnects at once, until T minutes have passed. The server
(`tutor serve`, one process) talks to the loopback fake provider (tests/fake_openai.py).

Every `--sample-s` seconds the server's resident memory (RSS) and open file descriptors are
sampled. At the end the server is stopped with SIGTERM (its writer flushes) and the stored
turns are matched exactly against the answers the clients received, by response id: a turn
answered but not stored is lost; a stored row no client saw finish is reported too.

    python -m bench.soak [--sessions 10] [--minutes 2] [--turns 3] [--database-url URL]

Writes bench/results/soak.json. The issue's goal: a 1-hour soak at 50 sessions with RSS flat
within 5 % and no lost rows (`--sessions 50 --minutes 60`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import websockets

from .latency import CHUNK_BYTES, CHUNK_MS, QUESTIONS, RESULTS, load, start_stack, wait_healthy

SILENCE = bytes(CHUNK_BYTES * (1000 // CHUNK_MS))  # one second: ends the turn (VAD 600 ms)
TURN_TIMEOUT_S = 30.0


@dataclass
class Tally:
    sessions: int = 0
    answered: dict[str, str] = field(default_factory=dict)  # response id → response.done status
    errors: Counter[str] = field(default_factory=Counter)  # error event codes, and failures
    turn_s: list[float] = field(default_factory=list)  # last audio sent → response.done


async def student(url: str, deadline: float, corpus: list[bytes], max_turns: int,
                  realtime: bool, rng: random.Random, tally: Tally) -> None:
    """One client: session after session until the deadline."""
    while time.monotonic() < deadline:
        try:
            async with websockets.connect(url, compression=None, max_size=None,
                                          open_timeout=10) as ws:
                tally.sessions += 1
                await one_session(ws, deadline, corpus, rng.randint(1, max_turns), realtime,
                                  rng, tally)
        except (websockets.WebSocketException, OSError, asyncio.TimeoutError) as exc:
            tally.errors[f"client:{type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)


async def one_session(ws: websockets.ClientConnection, deadline: float, corpus: list[bytes],
                      turns: int, realtime: bool, rng: random.Random, tally: Tally) -> None:
    await ws.send(json.dumps({"type": "session.update", "session": {
        "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
    done = asyncio.Event()

    async def reader() -> None:
        async for message in ws:
            if isinstance(message, bytes):
                continue
            event = json.loads(message)
            if event["type"] == "response.done":
                tally.answered[event["response"]["id"]] = event["response"]["status"]
                done.set()
            elif event["type"] == "error":
                tally.errors[event["error"]["code"]] += 1

    reading = asyncio.create_task(reader())
    try:
        for _ in range(turns):
            if time.monotonic() >= deadline:
                break
            done.clear()
            pcm = rng.choice(corpus) + SILENCE
            t0 = time.perf_counter()
            for k in range(len(pcm) // CHUNK_BYTES):
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + k * CHUNK_MS / 1000 - time.perf_counter()))
                await ws.send(pcm[k * CHUNK_BYTES: (k + 1) * CHUNK_BYTES])
            sent = time.perf_counter()
            try:
                await asyncio.wait_for(done.wait(), TURN_TIMEOUT_S)
            except asyncio.TimeoutError:
                tally.errors["no_response"] += 1
                return
            tally.turn_s.append(time.perf_counter() - sent)
    finally:
        reading.cancel()


async def sample(proc: psutil.Process, every_s: float, started: float,
                 out: list[tuple[float, float, int]]) -> None:
    while True:
        with proc.oneshot():
            out.append((round(time.monotonic() - started, 1),
                        round(proc.memory_info().rss / 2**20, 2), proc.num_fds()))
        await asyncio.sleep(every_s)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return 0.0
    return statistics.linear_regression([t for t, _ in points],
                                        [v for _, v in points]).slope * 60


async def stored_turns(database_url: str) -> dict[str, str]:
    """response id → status of every voice turn the server stored."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import create_async_engine

    from store.models import Interaction

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(Interaction.response_id, Interaction.status)
                                      .where(Interaction.kind == "voice"))
            return {rid: status for rid, status in rows if rid}
    finally:
        await engine.dispose()


def summarise(args: argparse.Namespace, tally: Tally, samples: list[tuple[float, float, int]],
              stored: dict[str, str], wall_s: float) -> dict:
    # memory settles in the first minutes (imports, pools, caches): the slope is taken after
    # the first fifth of the run
    settled = [s for s in samples if s[0] >= samples[-1][0] / 5] or samples
    rss = [(t, r) for t, r, _ in settled]
    fds = [(t, f) for t, _, f in settled]
    rss_slope = slope_per_min(rss)
    span_min = (settled[-1][0] - settled[0][0]) / 60 if len(settled) > 1 else 0.0
    answered, rows = set(tally.answered), set(stored)
    completed = {r for r, s in tally.answered.items() if s == "completed"}
    return {
        "sessions_concurrent": args.sessions, "minutes": args.minutes,
        "realtime_audio": args.realtime, "wall_s": round(wall_s, 1),
        "sessions_opened": tally.sessions, "turns_answered": len(answered),
        "turns_completed": len(completed),
        "turns_per_s": round(len(answered) / wall_s, 2),
        "turn_s_p50": round(statistics.median(tally.turn_s), 3) if tally.turn_s else None,
        "errors": dict(tally.errors),
        "rows_stored": len(rows),
        "lost_rows": len(answered - rows),  # answered, never stored
        "unseen_rows": len(rows - answered),  # stored, no client saw it finish
        "status_mismatches": sum(1 for r in answered & rows if tally.answered[r] != stored[r]),
        "rss_mb_start": samples[0][1], "rss_mb_settled": settled[0][1],
        "rss_mb_end": samples[-1][1], "rss_mb_max": max(r for _, r, _ in samples),
        "rss_slope_mb_per_min": round(rss_slope, 3),
        # the fitted growth over the settled part of the run, relative to where it started
        "rss_growth_settled_pct": round(100 * rss_slope * span_min / settled[0][1], 2),
        "fds_start": samples[0][2], "fds_end": samples[-1][2],
        "fds_max": max(f for _, _, f in samples),
        "fds_slope_per_min": round(slope_per_min([(t, float(f)) for t, f in fds]), 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description="soak: sessions reconnecting for a while")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent clients")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--turns", type=int, default=3, help="at most this many per session")
    parser.add_argument("--realtime", action="store_true",
                        help="send audio at playback pace (default: as fast as it is taken)")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--stt-latency", type=float, default=0.1)
    parser.add_argument("--ttft", type=float, default=0.1)
    parser.add_argument("--database-url", default=None,
                        help="TUTOR_DATABASE_URL for the server (default: SQLite in a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="tutor-soak-")
    database_url = args.database_url or f"sqlite+aiosqlite:///{data_dir}/tutor.db"
    env = dict(TUTOR_GUEST_TIER="unlimited", TUTOR_DATA_DIR=data_dir,
               TUTOR_DATABASE_URL=database_url)
    if not args.realtime:
        env["TUTOR_AUDIO_BURST_MS"] = str(10**9)
    fake, server, port = start_stack(env, ["--stt-latency", str(args.stt_latency),
                                           "--ttft", str(args.ttft), "--token-delay", "0.005"])
    corpus = [load(name) for name in QUESTIONS]
    corpus = [pcm[: len(pcm) // CHUNK_BYTES * CHUNK_BYTES] for pcm in corpus]
    tally, samples = Tally(), []
    try:
        await wait_healthy(port, server, 90)  # a loaded machine starts it slowly
        proc = psutil.Process(server.pid)
        started = time.monotonic()
        sampler = asyncio.create_task(sample(proc, args.sample_s, started, samples))
        deadline = started + args.minutes * 60
        rng = random.Random(1)
        url = f"ws://127.0.0.1:{port}/api/voice"
        await asyncio.gather(*(student(url, deadline, corpus, args.turns, args.realtime,
                                       random.Random(rng.random()), tally)
                               for _ in range(args.sessions)))
        wall = time.monotonic() - started
        await asyncio.sleep(args.sample_s)  # one more sample, the sessions closed
        sampler.cancel()
    finally:
        server.send_signal(signal.SIGTERM)  # drains; the writer stores what it holds
        server.wait(60)
        fake.terminate()
        fake.wait(10)
    stored = await stored_turns(database_url)
    result = summarise(args, tally, samples, stored, wall)
    print(f"{result['sessions_concurrent']} clients for {args.minutes:g} min: "
          f"{result['sessions_opened']} sessions, {result['turns_answered']} turns answered "
          f"({result['turns_per_s']}/s, p50 {result['turn_s_p50']} s), {result['rows_stored']} "
          f"rows stored: lost {result['lost_rows']}, unseen {result['unseen_rows']}, "
          f"status mismatches {result['status_mismatches']}; errors {result['errors']}")
    print(f"server RSS {result['rss_mb_start']} → {result['rss_mb_end']} MB (max "
          f"{result['rss_mb_max']}), slope after warm-up {result['rss_slope_mb_per_min']} MB/min "
          f"({result['rss_growth_settled_pct']} % over the settled run); fds "
          f"{result['fds_start']} → {result['fds_end']} (max {result['fds_max']}, slope "
          f"{result['fds_slope_per_min']}/min)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
        "database": "postgresql" if args.database_url and "postgres" in args.database_url
        else "sqlite",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "fake_provider": {"stt_latency_s": args.stt_latency, "ttft_s": args.ttft,
                          "token_delay_s": 0.005},
        "result": result,
        "samples": [{"t_s": t, "rss_mb": r, "fds": f} for t, r, f in samples],
    }
    path = args.out / "soak.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
