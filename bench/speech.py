"""First-audio latency of spoken answers: how long after the first text delta the first audio
of the answer reaches the client, minus the fake provider's configured TTS latency. Figures only.

N concurrent sessions (default 1, 10, 50) on one `tutor serve` process, each asking typed
questions with spoken answers (binary audio frames). The fake provider (a separate process)
streams the answer with no delay between tokens, so the first sentence is complete when the
first delta arrives, and answers text-to-speech after `--tts-latency`. For each answer:

    our own share = (first audio frame received − first transcript delta received) − TTS latency

which is the server's sentence splitting, the TTS request through the `openai` SDK and loopback
HTTP, and getting the first chunk onto the socket. Writes bench/results/speech.json.

    python -m bench.speech [--sessions 1 10 50] [--questions 4] [--tts-latency 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import websockets

from .latency import RESULTS, start_stack, wait_healthy

QUESTIONS = ["What is a fraction?", "How do plants make food?", "What is a derivative?",
             "When did the war end?", "How do I say thank you in French?"]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)


async def session(url: str, questions: int, tts_latency_ms: float, out: list[float],
                  server_side: list[float]) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"]}}))
        for q in range(questions):
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": QUESTIONS[q % len(QUESTIONS)]}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            first_delta = first_audio = None
            while True:
                message = await ws.recv()
                now = time.perf_counter()
                if isinstance(message, bytes):
                    if first_audio is None:
                        first_audio = now
                    continue
                event = json.loads(message)
                if event["type"] == "response.output_audio_transcript.delta" and first_delta is None:
                    first_delta = now
                elif event["type"] == "tutor.response.metrics":
                    if "first_audio_after_first_delta_ms" in event:
                        server_side.append(event["first_audio_after_first_delta_ms"]
                                           - tts_latency_ms)
                    break
                elif event["type"] == "error":
                    raise RuntimeError(event["error"])
            assert first_delta is not None and first_audio is not None
            out.append((first_audio - first_delta) * 1000 - tts_latency_ms)


async def run_level(url: str, n: int, questions: int, tts_latency_ms: float) -> dict:
    own: list[float] = []
    server_side: list[float] = []
    started = time.perf_counter()
    await asyncio.gather(*(session(url, questions, tts_latency_ms, own, server_side)
                           for _ in range(n)))
    return {"sessions": n, "answers": len(own),
            "own_first_audio_ms": {"p50": pct(own, 50), "p95": pct(own, 95), "p99": pct(own, 99),
                                   "mean": round(statistics.fmean(own), 2)},
            "server_measured_own_ms": {"p50": pct(server_side, 50), "p99": pct(server_side, 99)},
            "wall_s": round(time.perf_counter() - started, 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--questions", type=int, default=4)
    parser.add_argument("--tts-latency", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    fake, server, port = start_stack(
        dict(TUTOR_GUEST_TIER="unlimited", TUTOR_DATA_DIR=tempfile.mkdtemp(prefix="tutor-b-"),
             TUTOR_LOAD_SAMPLE_COURSE="false"),
        ["--ttft", "0.05", "--token-delay", "0", "--tts-latency", str(args.tts_latency),
         "--tts-ms-per-char", "5"])
    try:
        await wait_healthy(port, server)
        url = f"ws://127.0.0.1:{port}/api/voice?audio=binary"
        tts_ms = args.tts_latency * 1000
        await run_level(url, 2, 1, tts_ms)  # warm-up: opens the provider connections
        results = []
        for n in args.sessions:
            r = await run_level(url, n, args.questions, tts_ms)
            results.append(r)
            o = r["own_first_audio_ms"]
            print(f"N={n:4d} answers={r['answers']:4d}  own first-audio latency p50={o['p50']} ms "
                  f"p95={o['p95']} ms p99={o['p99']} ms (server-measured p50="
                  f"{r['server_measured_own_ms']['p50']} ms)")
    finally:
        for proc in (server, fake):
            proc.terminate()
            proc.wait(timeout=10)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speech.json").write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "tts_latency_ms": tts_ms, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out / 'speech.json'}")


if __name__ == "__main__":
    asyncio.run(main())
