"""What moderation costs a passing turn: N concurrent sessions (default 10) ask typed questions
over the voice socket of the real app, once with moderation off and once on, against the
loopback fake provider with a real provider's latencies (moderation check, time to first token,
token pace, embeddings). Figures, not assertions.

For every answer: the time from `response.create` to the first text delta the client gets (and,
in a second pair of runs with spoken answers, to the first audio delta), and
the server's own `tutor.response.metrics`: `moderation_wait_ms` is how long the model's first
token waited for the verdict on the student's words (the input side: the check runs beside
retrieval and the model's first token, so 0 when it came first). The rest of the difference
between on and off is the output side: the first sentence is shown once it is complete and
checked (one check, sentence by sentence after that).

    python -m bench.moderation [--sessions 10] [--turns 5] [--moderation-latency 0.15]

Writes bench/results/moderation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from server.app import create_app
from server.cli import uvicorn_options
from server.config import Settings
from tests.fake_openai import Behaviour, FakeOpenAI, serve_in_loop

from .latency import RESULTS

QUESTIONS = ["What is photosynthesis?", "How do I solve a linear equation?",
             "What does a mitochondrion do?", "How should I revise for a test?",
             "What is a fraction?", "Why do plants need light?"]
REPLY = ("Let us work it out together. What do you already know about it? "
         "Try the first step, and tell me what you find.")


def settings(fake: FakeOpenAI, moderation: bool, scratch: Path, spoken: bool = False
             ) -> Settings:
    return Settings(
        _env_file=None, openai_api_key="bench", openai_base_url=fake.base_url,
        llm_api_key=None, llm_base_url=None, moderation=moderation,
        database_url=f"sqlite+aiosqlite:///{scratch}/tutor-{moderation}-{spoken}.db",
        spool_file=scratch / f"spool-{moderation}-{spoken}.db", google_client_id=None, supabase_url=None,
        supabase_jwt_secret=None, redis_url=None, guest_tier="unlimited", speculative=False,
        output_modalities="auto" if spoken else "text", max_sessions_per_user=1000, max_sessions_per_address=1000)


async def student(address: str, turns: int, offset: int, out: list[dict[str, Any]],
                  spoken: bool = False) -> None:
    async with websockets.connect(f"ws://{address}/api/voice", compression=None) as ws:
        async def until(kind: str) -> dict[str, Any]:
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == kind:
                    return event
                if event["type"] == "error":
                    raise RuntimeError(event["error"])

        await until("session.created")
        for turn in range(turns):
            question = QUESTIONS[(offset + turn) % len(QUESTIONS)]
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": question}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            asked = time.perf_counter()
            await until("response.output_audio.delta" if spoken else "response.output_text.delta")
            first_delta_ms = (time.perf_counter() - asked) * 1000  # spoken: the first audio
            metrics = await until("tutor.response.metrics")
            out.append({"first_delta_ms": first_delta_ms, **metrics.get("metrics", metrics)})
            await asyncio.sleep(0.2)


def summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {"p50": round(statistics.median(values), 1),
            "p95": round(values[min(len(values) - 1, int(len(values) * 0.95))], 1),
            "mean": round(statistics.fmean(values), 1)}


async def run(moderation: bool, args: argparse.Namespace, scratch: Path, spoken: bool = False
              ) -> dict[str, Any]:
    fake = FakeOpenAI(Behaviour(ttft=args.ttft, token_delay=args.token_delay, reply=REPLY,
                                moderation_latency=args.moderation_latency,
                                embedding_latency=args.embedding_latency,
                                tts_latency=args.tts_latency, tts_ms_per_char=5.0))
    await fake.start()
    config = settings(fake, moderation, scratch, spoken)
    server, task, port = await serve_in_loop(create_app(config), **uvicorn_options(config))
    try:
        out: list[dict[str, Any]] = []
        await asyncio.gather(*(student(f"127.0.0.1:{port}", args.turns, i, out, spoken)
                               for i in range(args.sessions)))
    finally:
        server.should_exit = True
        await task
        await fake.stop()
    result = {"answers": len(out), "moderation_checks": len(fake.moderations),
              "first_delta_ms": summary([o["first_delta_ms"] for o in out]),
              "retrieval_ms": summary([o.get("retrieval_ms", 0.0) for o in out]),
              "llm_first_token_ms": summary([o["llm_first_token_ms"] for o in out])}
    if moderation:
        result["moderation_wait_ms"] = summary([o.get("moderation_wait_ms", 0.0) for o in out])
    return result


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-moderation-") as tmp:
        off = await run(False, args, Path(tmp))
        on = await run(True, args, Path(tmp))
        spoken_off = await run(False, args, Path(tmp), spoken=True)
        spoken_on = await run(True, args, Path(tmp), spoken=True)
    added = {k: round(on["first_delta_ms"][k] - off["first_delta_ms"][k], 1)
             for k in ("p50", "p95", "mean")}
    added_spoken = {k: round(spoken_on["first_delta_ms"][k] - spoken_off["first_delta_ms"][k], 1)
                    for k in ("p50", "p95", "mean")}
    return {"machine": {"python": platform.python_version(), "platform": platform.platform()},
            "setup": {"sessions": args.sessions, "turns": args.turns,
                      "moderation_latency_s": args.moderation_latency, "ttft_s": args.ttft,
                      "token_delay_s": args.token_delay,
                      "embedding_latency_s": args.embedding_latency,
                      "tts_latency_s": args.tts_latency},
            "off": off, "on": on,
            "added_first_delta_ms": added,
            # spoken answers: first_delta_ms is the first audio delta (synthesis waits for a
            # whole sentence either way; with moderation, also for its check)
            "spoken_off": spoken_off, "spoken_on": spoken_on,
            "added_first_audio_ms": added_spoken,
            "added_input_side_ms": on["moderation_wait_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--moderation-latency", type=float, default=0.15)
    parser.add_argument("--ttft", type=float, default=0.4)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--embedding-latency", type=float, default=0.2)
    parser.add_argument("--tts-latency", type=float, default=0.2)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "moderation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
