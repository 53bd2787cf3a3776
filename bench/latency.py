"""Latency and capacity benchmark of the voice loop: figures, not assertions.

N concurrent sessions (default 1, 10, 50, 100) each stream real speech from the shared corpus
in real time (20 ms binary frames, 16 kHz) to the real server (`tutor serve`, one process),
which talks to the loopback fake provider with set latencies. For every turn:

    server overhead = (first text delta received − last speech frame sent)
                      − silence threshold − fake STT latency − fake time to first token

It also reports server CPU time and memory per session, and the cost of VAD per audio chunk;
and how busy the server says it is, from its own `/metrics` over each level (`busy_figures`):
server CPU ms per second of audio streamed (the whole process, and the sessions' own work on
the event loop), and the event loop's lag p50/p99 (`tutor_event_loop_lag_seconds`).
Writes bench/results/latency.json and .png (with `--speculative off`:
latency-speculation-off.json and .png).

    python -m bench.latency [--sessions 1 10 50 100] [--turns 3] [--together]

`--together` (a class asked to speak at once): every session connects at the same moment and
streams silence before each question, as much as it takes for every session's question to end
at the same wall-clock moment (to the VAD's 30 ms frame); one burst per turn, 4 s apart plus the
longest question. Before it, a warm-up at the same number of sessions (spread over a second, not
reported) leaves the server's provider connections open, as a class's earlier turns would.
Results: latency-together.json (-speculation-off).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import soxr
import websockets

from audio.input import AudioInput, TurnEnded, VadSettings

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("TUTOR_SPEECH_CORPUS", ROOT.parent / "shared" / "audio"))
RESULTS = ROOT / "bench" / "results"
CHUNK_MS = 20
CHUNK_BYTES = 16000 * CHUNK_MS // 1000 * 2
SILENCE_MS = 600
QUESTIONS = ["q_derivative.wav", "q_photosynthesis.wav", "q_french.wav", "q_fractions.wav",
             "q_war.wav"]


# every benchmark client is the one dev guest, from one address: the server's caps on the
# sessions of one user and one address (docs/operations.md) must not count them
BENCH_CAPS = dict(TUTOR_MAX_SESSIONS_PER_USER="1000", TUTOR_MAX_SESSIONS_PER_ADDRESS="1000")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_stack(env_extra: dict[str, str], fake_args: list[str], server_workers: int = 1
                ) -> tuple[subprocess.Popen, subprocess.Popen, int]:
    """The fake provider and one `tutor serve` (no OPENAI_/LLM_/TUTOR_ settings of the caller's
    environment leak in), with `--workers server_workers`; returns both processes and the
    server's port."""
    fake_port, port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_", "TUTOR_"))}
    env.update(OPENAI_API_KEY="bench", OPENAI_BASE_URL=f"http://127.0.0.1:{fake_port}/v1",
               **BENCH_CAPS, **env_extra)
    fake = subprocess.Popen([sys.executable, "-m", "tests.fake_openai", "--port", str(fake_port),
                             *fake_args], cwd=ROOT, env=env)
    server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port),
                               "--log-level", "warning", "--workers", str(server_workers)],
                              cwd=ROOT, env=env)
    return fake, server, port


class ServerProcesses:
    """`tutor serve` and its children (the workers of `--workers N`, a document reader), with
    the two figures `run_level` reads of a psutil.Process: CPU times and RSS, summed."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)

    def _all(self) -> list[psutil.Process]:
        return [self.root, *self.root.children(recursive=True)]

    def cpu_times(self):  # type: ignore[no-untyped-def]
        user = system = 0.0
        for p in self._all():
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user, system = user + t.user, system + t.system
        return SimpleNamespace(user=user, system=system)

    def memory_info(self):  # type: ignore[no-untyped-def]
        rss = 0
        for p in self._all():
            try:
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return SimpleNamespace(rss=rss)


async def wait_healthy(port: int, server: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Until the server says it has a chat provider; raises if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"tutor serve exited with status {server.returncode}")
            try:
                if (await client.get(f"http://127.0.0.1:{port}/healthz")).json()["chat"]:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"tutor serve on port {port} was not ready after {timeout_s:.0f} s")


def load(name: str) -> bytes:
    with wave.open(str(CORPUS / name)) as w:
        return w.readframes(w.getnframes())


@functools.cache
def speech_end_s(pcm: bytes) -> float:
    """Where the server's VAD (same settings as the server's) finds the end of the question's
    speech in `pcm`, in seconds from its start: what `--together` aligns across sessions."""
    ai = AudioInput(input_rate=16000, vad=VadSettings(silence_duration_ms=SILENCE_MS),
                    max_turn_ms=30000)
    for k in range(0, len(pcm) // CHUNK_BYTES):
        for event in ai.feed(pcm[k * CHUNK_BYTES : (k + 1) * CHUNK_BYTES]):
            if isinstance(event, TurnEnded):
                return event.speech_end_ms / 1000
    raise ValueError("no end of turn in the question's audio")


async def session(url: str, files: list[bytes], start_delay: float,
                  out: list[tuple[float, float, dict]], errors: list[str],
                  ends_at: list[float] | None = None,
                  speech_ends: list[tuple[int, float]] | None = None) -> None:
    """Stream the files one after another in real time, as one student asking in turn.

    `ends_at` (`--together`): for each file, the perf_counter moment its speech must end;
    the file is preceded by as much silence as that takes (none if the session is late).

    Which frame carried the last speech is known exactly from the server's own
    `speech_stopped.audio_end_ms`: the end was decided one silence threshold after the last
    voiced frame, so that frame ends at `audio_end_ms - SILENCE_MS` of the session's audio."""
    await asyncio.sleep(start_delay)
    sent_at: list[float] = []  # send time of every chunk of the session, by index
    async with websockets.connect(url, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "output_modalities": ["text"], "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 16000}}}}}))
        loop = asyncio.get_running_loop()
        for turn, pcm in enumerate(files):
            first_delta: asyncio.Future[float] = loop.create_future()
            done: asyncio.Future[dict | None] = loop.create_future()
            audio_end_ms: list[int] = []

            async def reader() -> None:
                async for message in ws:
                    event = json.loads(message)
                    kind = event["type"]
                    if kind == "response.output_text.delta" and not first_delta.done():
                        first_delta.set_result(time.perf_counter())
                    elif kind == "input_audio_buffer.speech_stopped":
                        audio_end_ms.append(event["audio_end_ms"])
                    elif kind == "error":
                        errors.append(event["error"]["code"])
                    elif kind == "response.done" and event["response"]["status"] != "completed":
                        errors.append(event["response"]["status"])
                        done.set_result(None)
                        return
                    elif kind == "tutor.response.metrics":  # follows response.done
                        done.set_result(event)
                        return

            read = asyncio.create_task(reader())
            t0 = time.perf_counter()
            if ends_at is not None:
                lead = ends_at[turn] - speech_end_s(pcm) - t0
                if lead < 0:
                    errors.append("late")  # its previous answer took longer than the gap
                pcm = bytes(max(0, round(lead * 1000 / CHUNK_MS)) * CHUNK_BYTES) + pcm
            for k in range(0, len(pcm) // CHUNK_BYTES):
                await asyncio.sleep(max(0.0, t0 + k * CHUNK_MS / 1000 - time.perf_counter()))
                await ws.send(pcm[k * CHUNK_BYTES : (k + 1) * CHUNK_BYTES])
                sent_at.append(time.perf_counter())
                if done.done():
                    break
            try:
                metrics = await asyncio.wait_for(asyncio.shield(done), 10)
            except asyncio.TimeoutError:
                errors.append("no_response")
                read.cancel()
                continue
            if metrics is None or len(audio_end_ms) != 1:
                errors.append(f"turns={len(audio_end_ms)}")
                continue
            decided = -(-audio_end_ms[0] // CHUNK_MS) - 1  # chunk that completed the silence
            last_speech = -(-(audio_end_ms[0] - SILENCE_MS) // CHUNK_MS) - 1
            if speech_ends is not None:
                speech_ends.append((turn, sent_at[last_speech]))
            out.append(((first_delta.result() - sent_at[last_speech]) * 1000 - SILENCE_MS,
                        (first_delta.result() - sent_at[decided]) * 1000, metrics))


async def run_level(url: str, n: int, turns: int, proc: psutil.Process,
                    stt_ms: float, ttft_ms: float, together: bool = False) -> dict:
    provider_ms = stt_ms + ttft_ms
    rng = random.Random(n)
    corpus = {name: load(name) for name in QUESTIONS}
    # make every file a whole number of chunks, so chunk k of a session starts at k * 20 ms
    corpus = {name: pcm[: len(pcm) // CHUNK_BYTES * CHUNK_BYTES] for name, pcm in corpus.items()}
    latencies: list[tuple[float, float, dict]] = []
    errors: list[str] = []
    rss0 = proc.memory_info().rss
    cpu0 = proc.cpu_times()
    peak = rss0

    async def sample_memory() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_memory())
    busy0 = await scrape_busy(url)
    started = time.perf_counter()
    asked = [[corpus[rng.choice(QUESTIONS)] for _ in range(turns)] for _ in range(n)]
    ends_at: list[float] | None = None
    if together:
        # 2 s for every session to connect, then one burst per turn: the longest question,
        # plus 4 s for the answers (~1 s with the default fake) and the next question's start
        longest = max(speech_end_s(pcm) for pcm in corpus.values())
        ends_at = [started + 2.0 + longest + k * (longest + 4.0) for k in range(turns)]
    speech_ends: list[tuple[int, float]] = []
    await asyncio.gather(*(
        session(url, files, 0.0 if together else rng.random(), latencies, errors, ends_at,
                speech_ends)
        for files in asked))
    # how far apart the sessions' questions ended (the last speech frame sent), per turn
    by_turn: dict[int, list[float]] = {}
    for turn, at in speech_ends:
        by_turn.setdefault(turn, []).append(at)
    spread = max((max(v) - min(v) for v in by_turn.values()), default=0.0)
    wall = time.perf_counter() - started
    busy = busy_figures(busy0, await scrape_busy(url), [c for _, _, c in latencies])
    sampler.cancel()
    cpu1 = proc.cpu_times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    def summary(values: list[float]) -> dict[str, float | None]:
        values = sorted(values)
        if not values:
            return {"p50": None, "p95": None, "p99": None, "mean": None}
        def pct(p: float) -> float:
            return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2)
        return {"p50": pct(50), "p95": pct(95), "p99": pct(99),
                "mean": round(statistics.fmean(values), 2)}

    return {
        "sessions": n, "turns": len(latencies), "errors": errors, "wall_s": round(wall, 1),
        "together": together,
        # widest spread of one turn's question ends across the sessions (--together: ≤ ~60 ms)
        "speech_end_spread_ms": round(spread * 1000, 1),
        # as the issue defines it: from the last speech frame sent, minus silence and provider
        "overhead_ms": summary([a - provider_ms for a, _, _ in latencies]),
        # the same, timed from the frame that completes the silence: excludes the client's own
        # pacing lag (at high N the client process is late sending frames, not the server)
        "overhead_from_end_frame_ms": summary([b - provider_ms for _, b, _ in latencies]),
        # the server's own share, as it reports in tutor.response.metrics: end of turn → first
        # delta, minus the time spent in the provider calls (SDK request + fake's answer)
        "server_internal_ms": summary([c["server_ms"] for _, _, c in latencies]),
        # time spent in provider calls beyond the fake's set latency: the SDK's request and
        # response handling, loopback HTTP, and the fake's own scheduling
        "stt_call_overhead_ms": summary([c["stt_ms"] - stt_ms for _, _, c in latencies]),
        "llm_call_overhead_ms": summary([c["llm_first_token_ms"] - ttft_ms
                                         for _, _, c in latencies]),
        # course retrieval (query embedding, full-text + vector search, fusion, student memory)
        "retrieval_ms": summary([c.get("retrieval_ms", 0.0) for _, _, c in latencies]),
        # turns whose transcript was known when the turn ended (speculation hid its latency)
        "transcript_hidden_share": round(
            sum(1 for _, _, c in latencies if c.get("transcript_wait_ms", 1) < 1)
            / max(1, len(latencies)), 3),
        "server_cpu_s_per_session": round(cpu / n, 4),
        "server_cpu_utilisation": round(cpu / wall, 3),
        "server_rss_mb_per_session": round((peak - rss0) / n / 2**20, 3),
        "server_rss_mb_peak": round(peak / 2**20, 1),
        **busy,
    }


def metrics_url(ws_url: str) -> str:
    """The server's `/metrics`, from the voice socket's URL."""
    return "/".join(ws_url.replace("ws://", "http://", 1).split("/")[:3]) + "/metrics"


async def scrape_busy(ws_url: str) -> dict[str, float]:
    """The server's own figures of how busy it is, from its `/metrics` (counters: the
    difference of two scrapes covers what happened in between)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient() as client:
        text = (await client.get(metrics_url(ws_url))).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tutor_event_loop_lag_seconds_bucket":
                out[f"lag_le_{s.labels['le']}"] = s.value
            elif s.name in ("process_cpu_seconds_total", "tutor_session_cpu_seconds_total",
                            "tutor_session_audio_seconds_total",
                            "tutor_event_loop_lag_seconds_count",
                            "tutor_event_loop_lag_seconds_sum"):
                out[s.name] = s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The q-quantile of a histogram's cumulative bucket counts {upper bound: count},
    interpolated within its bucket as Prometheus' histogram_quantile does."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower  # beyond the largest finite bucket: its bound, as Prometheus says
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower


def busy_figures(before: dict[str, float], after: dict[str, float],
                 metrics: list[dict]) -> dict:
    """What the server said about its own load over one level: CPU ms per second of audio
    (process, and the sessions' own work), the event loop's lag from its histogram, and the
    lag and session CPU its `tutor.response.metrics` reported with each answer."""
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    audio_s = delta("tutor_session_audio_seconds_total")
    buckets = {float(k[len("lag_le_"):]): after[k] - before.get(k, 0.0)
               for k in after if k.startswith("lag_le_")}
    lag_n = delta("tutor_event_loop_lag_seconds_count")

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    def pct(values: list[float], p: float) -> float | None:
        values = sorted(values)
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 2) \
            if values else None

    at_answer = [m["loop_lag_ms"] for m in metrics if "loop_lag_ms" in m]
    return {
        "audio_s_streamed": round(audio_s, 1),
        # all of the server process's CPU (psutil's figure too, from /proc) per audio second
        "server_cpu_ms_per_audio_s": round(delta("process_cpu_seconds_total") * 1000
                                           / audio_s, 2) if audio_s else None,
        # the part the sessions' own work took on the event loop (core, actions, events)
        "session_cpu_ms_per_audio_s": round(delta("tutor_session_cpu_seconds_total") * 1000
                                            / audio_s, 2) if audio_s else None,
        "loop_lag_ms": {"p50": ms(histogram_quantile(0.5, buckets)),
                        "p99": ms(histogram_quantile(0.99, buckets)),
                        "mean": ms(delta("tutor_event_loop_lag_seconds_sum") / lag_n)
                        if lag_n else None, "samples": int(lag_n)},
        # the largest lag of the second before each answer's metrics (tutor.response.metrics)
        "loop_lag_at_answer_ms": {"p50": pct(at_answer, 50), "p99": pct(at_answer, 99)},
    }


def print_busy(r: dict) -> None:
    lag, at = r["loop_lag_ms"], r["loop_lag_at_answer_ms"]
    print(f"        server says: cpu {r['server_cpu_ms_per_audio_s']} ms per audio s "
          f"(sessions' own {r['session_cpu_ms_per_audio_s']}), loop lag p50={lag['p50']} ms "
          f"p99={lag['p99']} ms mean={lag['mean']} ms ({lag['samples']} wakes; at answers "
          f"p50={at['p50']} p99={at['p99']} ms), {r['audio_s_streamed']} s of audio",
          flush=True)


def vad_cost_us(rate: int = 16000) -> float:
    """Mean time of AudioInput.feed per 20 ms chunk: (resampling at 24 kHz,) VAD, endpointer."""
    pcm = load("conversation.wav")
    if rate != 16000:
        pcm = soxr.resample(np.frombuffer(pcm, "<i2"), 16000, rate).astype("<i2").tobytes()
    ai = AudioInput(input_rate=rate, vad=VadSettings(), max_turn_ms=30000)
    size = rate * CHUNK_MS // 1000 * 2
    chunks = [pcm[i : i + size] for i in range(0, len(pcm), size)]
    t = time.perf_counter()
    for _ in range(20):
        for c in chunks:
            ai.feed(c)
    return (time.perf_counter() - t) / (20 * len(chunks)) * 1e6


def plot(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = [r["sessions"] for r in results]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in ("p50", "p95", "p99"):
        ax.plot(ns, [r["overhead_ms"][key] for r in results], marker="o", label=f"overhead {key}")
    for key in ("p50", "p99"):
        ax.plot(ns, [r["server_internal_ms"][key] for r in results], marker=".", linestyle="--",
                label=f"server's own share {key}")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("server overhead (ms)")
    ax.set_title("Last speech frame → first text delta, minus fixed waits")
    ax.plot(ns, [r["retrieval_ms"]["p50"] for r in results], marker="x", linestyle=":",
            label="retrieval p50")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> None:
    parser = argparse.ArgumentParser(description="voice loop latency benchmark")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--turns", type=int, default=3, help="questions per session")
    parser.add_argument("--stt-latency", type=float, default=0.3)
    parser.add_argument("--ttft", type=float, default=0.4)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--speculative", choices=["on", "off"], default="on",
                        help="speculative turn ends (the server's default: on)")
    parser.add_argument("--together", action="store_true",
                        help="every session's question ends at the same moment (a burst)")
    parser.add_argument("--database-url", default=None,
                        help="TUTOR_DATABASE_URL for the server (default: SQLite in a temp dir)")
    parser.add_argument("--server-workers", type=int, default=1,
                        help="tutor serve --workers N (more than 1 needs --database-url "
                        "PostgreSQL and --redis-url)")
    parser.add_argument("--redis-url", default=None,
                        help="TUTOR_REDIS_URL for the server (default: none, in-process)")
    args = parser.parse_args()

    env = dict(TUTOR_VAD_SILENCE_MS=str(SILENCE_MS),
               TUTOR_GUEST_TIER="unlimited",  # metered, but 100 sessions of one guest allowed
               TUTOR_SPECULATIVE="true" if args.speculative == "on" else "false",
               # the server records every turn here
               TUTOR_DATA_DIR=tempfile.mkdtemp(prefix="tutor-bench-"))
    if args.database_url:
        env["TUTOR_DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["TUTOR_REDIS_URL"] = args.redis_url
    fake, server, port = start_stack(env, ["--stt-latency", str(args.stt_latency),
                                           "--ttft", str(args.ttft)], args.server_workers)
    try:
        await wait_healthy(port, server)
        proc = ServerProcesses(server.pid)  # with --server-workers: every worker's CPU and RSS
        latency = (args.stt_latency * 1000, args.ttft * 1000)
        # warm-up (not reported): the first request opens the server's provider connections
        await run_level(f"ws://127.0.0.1:{port}/api/voice", 2, 1, proc, *latency)
        results = []
        for n in args.sessions:
            if args.together:  # as many provider connections open as a class's earlier turns
                await run_level(f"ws://127.0.0.1:{port}/api/voice", n, 1, proc, *latency)
            r = await run_level(f"ws://127.0.0.1:{port}/api/voice", n, args.turns, proc, *latency,
                                together=args.together)
            results.append(r)
            o = r["overhead_ms"]
            e = r["overhead_from_end_frame_ms"]
            i = r["server_internal_ms"]
            st, ll = r["stt_call_overhead_ms"], r["llm_call_overhead_ms"]
            rt = r["retrieval_ms"]
            print(f"N={n:4d}  turns={r['turns']:4d}  overhead p50={o['p50']} ms  p95={o['p95']} ms  "
                  f"p99={o['p99']} ms  (from end frame: p50={e['p50']} p99={e['p99']}; server internal: p50={i['p50']} p99={i['p99']}; stt call +{st['p50']}/+{st['p99']}; llm call +{ll['p50']}/+{ll['p99']}; retrieval {rt['p50']}/{rt['p99']})  cpu/session={r['server_cpu_s_per_session']} s  "
                  f"server cpu={r['server_cpu_utilisation']:.0%}  "
                  f"mem/session={r['server_rss_mb_per_session']} MB  "
                  f"transcript hidden={r['transcript_hidden_share']:.0%}  errors={len(r['errors'])}"
                  + (f"  speech ends within {r['speech_end_spread_ms']} ms" if args.together
                     else ""),
                  flush=True)
            print_busy(r)
    finally:
        for p in (server, fake):
            p.terminate()
            p.wait(10)
    vad_us, vad24_us = vad_cost_us(), vad_cost_us(24000)
    print(f"VAD + endpointer: {vad_us:.1f} µs per 20 ms chunk per session at 16 kHz, "
          f"{vad24_us:.1f} µs at 24 kHz (with resampling)")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python -m bench.latency " + " ".join(sys.argv[1:]),
        "database": "postgresql" if args.database_url else "sqlite",
        "redis": bool(args.redis_url), "server_workers": args.server_workers,
        "speculative": args.speculative == "on",
        "together": args.together,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "fake_provider": {"stt_latency_s": args.stt_latency, "ttft_s": args.ttft,
                          "token_delay_s": 0.02},
        "silence_ms": SILENCE_MS, "chunk_ms": CHUNK_MS,
        "vad_us_per_chunk": round(vad_us, 1),
        "vad_us_per_chunk_24khz": round(vad24_us, 1),
        "levels": results,
    }
    # speculation on (the server's default): latency.*; off: latency-speculation-off.*
    name = "latency" + ("-together" if args.together else "") + (
        "" if args.speculative == "on" else "-speculation-off")
    if args.server_workers > 1:  # not the one-process figures
        name += f"-workers{args.server_workers}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / f"{name}.png")
    print(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.png')}")


if __name__ == "__main__":
    asyncio.run(main())
