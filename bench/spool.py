"""What the write-ahead spool (store/spool.py) costs: how soon an accepted row is durable, how
many rows per second it takes, and what `submit()` costs the event loop. Figures only.

- submit → durable: rows submitted through `InteractionWriter.submit` at a steady rate (turns
  of many sessions), each timed from `submit()` to the spool's commit (fsync, WAL) that holds it;
  p50, p99, max; and the same without an fsync per commit (`synchronous=NORMAL`), to compare.
- rows/s: a burst submitted at once, until all are committed.
- loop cost per submit: the event loop thread's CPU time (`time.thread_time`) and wall time for
  one `submit()`, with the spool and without it (the in-memory queue alone).

The database is not involved (the writer is not started): this is the spool alone.

    python -m bench.spool [--rate 200] [--seconds 5] [--burst 20000] [--dir DIR]

Writes bench/results/spool.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from store.db import Database
from store.spool import Spool
from store.writer import InteractionWriter

from .latency import RESULTS

ANSWER = "A fraction is a part of a whole: three quarters means three of four equal parts. " * 6


def turn(i: int) -> dict[str, Any]:
    return dict(session_id=f"sess-{i % 50}", user_id=None, kind="voice", course="sample",
                response_id=f"resp_{i:012x}", transcript="what is three quarters of twelve?",
                answer=ANSWER, status="completed", cancelled=False, audio_seconds=2.4,
                tokens_in=812, tokens_out=96, stt_ms=180.5, retrieval_ms=12.1,
                llm_first_token_ms=310.2, end_of_turn_to_first_delta_ms=640.0, server_ms=21.3)


class Durable:
    """Times each row from submit to the commit that holds it (the spool commits in order)."""

    def __init__(self) -> None:
        self.submitted: deque[float] = deque()
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.all_done = threading.Event()
        self.expected = 0

    def submit_time(self) -> None:
        with self.lock:
            self.submitted.append(time.perf_counter())

    def on_commit(self, ops: int) -> None:  # the spool's thread
        now = time.perf_counter()
        with self.lock:
            for _ in range(min(ops, len(self.submitted))):
                self.latencies.append(now - self.submitted.popleft())
            if len(self.latencies) >= self.expected:
                self.all_done.set()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def steady(folder: Path, rate: float, seconds: float,
                 synchronous: str = "FULL") -> dict[str, float]:
    durable = Durable()
    durable.expected = int(rate * seconds)
    spool = await Spool.open(folder / f"steady-{synchronous}.db", on_commit=durable.on_commit,
                             synchronous=synchronous)
    writer = InteractionWriter(Database(f"sqlite+aiosqlite:///{folder}/unused.db"), spool=spool)
    start = time.perf_counter()
    for i in range(durable.expected):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        durable.submit_time()
        writer.submit(turn(i))
    await asyncio.to_thread(durable.all_done.wait, 30)
    await spool.close()
    ms = [v * 1000 for v in durable.latencies]
    return {"rows": len(ms), "rate_per_s": rate, "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2),
            "commits": spool.commits}


async def burst(folder: Path, rows: int) -> dict[str, float]:
    spool = await Spool.open(folder / "burst.db")
    writer = InteractionWriter(Database(f"sqlite+aiosqlite:///{folder}/unused.db"), spool=spool)
    start = time.perf_counter()
    for i in range(rows):
        writer.submit(turn(i))
    submitted = time.perf_counter() - start
    await spool.sync()
    elapsed = time.perf_counter() - start
    commits = spool.commits
    await spool.close()
    return {"rows": rows, "rows_per_s": round(rows / elapsed), "commits": commits,
            "submit_all_s": round(submitted, 3), "durable_all_s": round(elapsed, 3)}


async def loop_cost(folder: Path, rows: int, with_spool: bool) -> dict[str, float]:
    spool = await Spool.open(folder / f"cost-{with_spool}.db") if with_spool else None
    writer = InteractionWriter(Database(f"sqlite+aiosqlite:///{folder}/unused.db"), spool=spool)
    cpu, wall = [], []
    for i in range(rows):
        c, w = time.thread_time(), time.perf_counter()
        writer.submit(turn(i))
        wall.append(time.perf_counter() - w)
        cpu.append(time.thread_time() - c)
        if i % 50 == 0:
            await asyncio.sleep(0.001)  # turns arrive spread out, as they do
    if spool is not None:
        await spool.close()
    return {"cpu_us_mean": round(statistics.fmean(cpu) * 1e6, 2),
            "wall_us_p50": round(statistics.median(wall) * 1e6, 2),
            "wall_us_p99": round(percentile(wall, 0.99) * 1e6, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="rows per second (steady)")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=20000)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the spool files go (default: a temporary folder); put it "
                        "on the disk the data dir will use")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "spool_dir": str(folder), "load_1min": round(os.getloadavg()[0], 1)},
            "submit_to_durable": await steady(folder, args.rate, args.seconds),
            # for comparison: without an fsync per commit (survives SIGKILL, not power loss)
            "submit_to_durable_without_fsync": await steady(folder, args.rate, args.seconds,
                                                            "NORMAL"),
            "burst": await burst(folder, args.burst),
            "loop_per_submit": {"with_spool": await loop_cost(folder, 5000, True),
                                "memory_only": await loop_cost(folder, 5000, False)},
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spool.json").write_text(json.dumps(result, indent=2) + "\n")
    d, b, c = result["submit_to_durable"], result["burst"], result["loop_per_submit"]
    print(f"submit → durable at {d['rate_per_s']:.0f} rows/s: p50 {d['p50_ms']} ms, p99 "
          f"{d['p99_ms']} ms, max {d['max_ms']} ms ({d['rows']} rows in {d['commits']} commits)")
    n = result["submit_to_durable_without_fsync"]
    print(f"  (without an fsync per commit: p50 {n['p50_ms']} ms, p99 {n['p99_ms']} ms)")
    print(f"burst of {b['rows']}: {b['rows_per_s']} rows/s durable ({b['commits']} commits)")
    print(f"loop per submit: {c['with_spool']['cpu_us_mean']} µs CPU with the spool, "
          f"{c['memory_only']['cpu_us_mean']} µs without (wall p50 "
          f"{c['with_spool']['wall_us_p50']} / {c['memory_only']['wall_us_p50']} µs, p99 "
          f"{c['with_spool']['wall_us_p99']} / {c['memory_only']['wall_us_p99']} µs)")
    print(f"wrote {args.out / 'spool.json'}")


if __name__ == "__main__":
    asyncio.run(main())
