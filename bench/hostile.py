"""Hostile clients against one real server, measured from outside: issue 15's goals. Figures only.

Three phases against one `tutor serve` (SQLite, the loopback fake provider), its resident
memory (RSS) and open descriptors read from /proc through psutil:

1. **Never-reading clients.** `--readers` clients (4) each send 100 KB typed messages (every
   one echoed back in `conversation.item.added` / `.done`) for `--reader-s` seconds (40) and
   never read a byte. Reported: RSS growth over the phase, and how each client's session ended
   (the close code and reason the server gave; `slow_consumer`, 1008, when it gave up on them).
2. **Closed sessions.** `--sessions` (60) sessions, one after another, each with one spoken
   question answered, then closed. Reported: RSS `--settle-s` seconds (120) after the last one
   closed, against before the first (what closed sessions leave behind: resume states, metrics,
   per-session objects).
3. **Half-open connections.** `--half-open` (200) TCP connections that never send a byte.
   Reported: how many the server still holds `--hold-s` seconds (60) later (its descriptors, and
   the client side seeing EOF), against the request-head deadline (`TUTOR_HTTP_HEAD_TIMEOUT_S`).

    python -m bench.hostile [--readers 4] [--reader-s 40] [--sessions 60] [--settle-s 120]
                            [--half-open 200] [--hold-s 60]

Writes bench/results/hostile.json. The goals: ≤ 50 MB growth from the never-reading clients (and
each closed with a reason), ≤ 20 MB left by 60 closed sessions after 2 minutes, 0 half-open
connections held after 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import websockets
from prometheus_client.parser import text_string_to_metric_families

from .latency import CHUNK_BYTES, QUESTIONS, RESULTS, load, start_stack, wait_healthy
from .soak import SILENCE

BIG = "x" * 100_000


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 1)


async def never_reading(url: str, seconds: float) -> dict:
    """One client sending big typed messages without reading; how its session ended."""
    item = json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": BIG}]}})
    sent, deadline = 0, time.monotonic() + seconds
    # max_queue=1: the client library stops reading the socket after one message
    async with websockets.connect(url, max_queue=1, write_limit=2**24, max_size=None) as ws:
        while time.monotonic() < deadline:
            try:
                await asyncio.wait_for(ws.send(item), 1)
            except asyncio.TimeoutError:  # our own send buffer is full: the server stopped reading too
                continue
            except websockets.ConnectionClosed:
                break
            sent += 1
            await asyncio.sleep(0.005)
        # what the server said when it ended the session, once we read again
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        except (websockets.ConnectionClosed, asyncio.TimeoutError):
            pass
        closed = ws.close_code is not None
        return {"messages_sent": sent, "closed_by_server": closed,
                "close_code": ws.close_code, "close_reason": ws.close_reason}


async def error_count(port: int, code: str) -> float:
    """tutor_errors_total{code=...} from the server's /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tutor_errors_total" and sample.labels.get("code") == code:
                return sample.value
    return 0.0


async def one_question(url: str, pcm: bytes) -> str:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "output_modalities": ["text"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
        for k in range(len(pcm) // CHUNK_BYTES):
            await ws.send(pcm[k * CHUNK_BYTES: (k + 1) * CHUNK_BYTES])
        async for message in ws:
            if isinstance(message, str):
                event = json.loads(message)
                if event["type"] == "response.done":
                    return event["response"]["status"]
    return "closed"


async def half_open(port: int, count: int, hold_s: float, proc: psutil.Process) -> dict:
    fds_before = proc.num_fds()
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(s)
    await asyncio.sleep(1.0)
    fds_open = proc.num_fds()
    await asyncio.sleep(max(0.0, hold_s - 1.0))
    fds_after = proc.num_fds()
    still_open = 0
    for s in socks:
        try:
            closed = s.recv(1) == b""  # EOF: the server closed it
        except BlockingIOError:
            closed = False  # nothing to read and not closed: the server still holds it
        except OSError:
            closed = True  # reset
        finally:
            s.close()
        still_open += not closed
    return {"connections": count, "server_fds_before": fds_before,
            "server_fds_with_them_open": fds_open, f"server_fds_after_{hold_s:g}s": fds_after,
            "held_after": still_open}


async def main() -> None:
    parser = argparse.ArgumentParser(description="hostile clients, measured from outside")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--reader-s", type=float, default=40.0)
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--settle-s", type=float, default=120.0)
    parser.add_argument("--half-open", type=int, default=200)
    parser.add_argument("--hold-s", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    data_dir = tempfile.mkdtemp(prefix="tutor-hostile-")
    env = dict(TUTOR_GUEST_TIER="unlimited", TUTOR_DATA_DIR=data_dir,
               TUTOR_AUDIO_BURST_MS=str(10**9))
    fake, server, port = start_stack(env, ["--stt-latency", "0.05", "--ttft", "0.05"])
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    result: dict = {}
    try:
        await wait_healthy(port, server, 90)
        proc = psutil.Process(server.pid)
        pcm = load(QUESTIONS[0])
        pcm = pcm[: len(pcm) // CHUNK_BYTES * CHUNK_BYTES] + SILENCE
        await one_question(url, pcm)  # warm: imports, pools, the first turn's caches
        await asyncio.sleep(2)

        before = rss_mb(proc)
        clients = await asyncio.gather(*(never_reading(url, args.reader_s)
                                         for _ in range(args.readers)))
        peak_after = rss_mb(proc)
        await asyncio.sleep(5)
        result["never_reading"] = {
            "clients": args.readers, "seconds": args.reader_s, "rss_mb_before": before,
            "rss_mb_right_after": peak_after, "rss_mb_5s_after": rss_mb(proc),
            "rss_growth_mb": round(peak_after - before, 1),
            # the reason, as the server counted it (a client that never reads never gets to
            # read its close frame: it sees the connection end)
            "slow_consumer_errors_sent": await error_count(port, "slow_consumer"),
            "sessions": clients}

        before = rss_mb(proc)
        statuses = [await one_question(url, pcm) for _ in range(args.sessions)]
        right_after = rss_mb(proc)
        await asyncio.sleep(args.settle_s)
        later = rss_mb(proc)
        result["closed_sessions"] = {
            "sessions": args.sessions, "completed": statuses.count("completed"),
            "rss_mb_before": before, "rss_mb_right_after": right_after,
            f"rss_mb_{args.settle_s:g}s_after": later,
            "rss_left_mb": round(later - before, 1)}

        result["half_open"] = await half_open(port, args.half_open, args.hold_s, proc)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        fake.terminate()
        fake.wait(10)

    n, c, h = result["never_reading"], result["closed_sessions"], result["half_open"]
    print(f"{n['clients']} never-reading clients for {n['seconds']:g} s: RSS "
          f"{n['rss_mb_before']} → {n['rss_mb_right_after']} MB (+{n['rss_growth_mb']}); "
          f"closed by the server: {sum(s['closed_by_server'] for s in n['sessions'])} of "
          f"{n['clients']}, slow_consumer errors sent: {n['slow_consumer_errors_sent']:g}")
    print(f"{c['sessions']} sessions closed ({c['completed']} answered): RSS {c['rss_mb_before']} "
          f"→ {c['rss_mb_right_after']} MB right after, {c['rss_left_mb']:+} MB left "
          f"{args.settle_s:g} s later")
    print(f"{h['connections']} half-open connections: {h['held_after']} still held after "
          f"{args.hold_s:g} s (server fds {h['server_fds_before']} → "
          f"{h['server_fds_with_them_open']} → {h[f'server_fds_after_{args.hold_s:g}s']})")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python -m bench.hostile " + " ".join(sys.argv[1:]),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              "result": result}
    path = args.out / "hostile.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    asyncio.run(main())
