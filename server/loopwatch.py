"""`LoopWatch`: how late this process's event loop wakes up, the first sign that it is full.

A background task sleeps a fixed interval (`TUTOR_LOOP_WATCH_INTERVAL_MS`, 100 ms) and records how
much later than asked it woke (actual − expected) in `tutor_event_loop_lag_seconds`. Every
callback of every session runs on this one loop: when the loop has more work than one core does in
time, every timer and every socket read waits, and the lag grows with it. So the lag is what the
server says about its own load, independent of whether the client measuring it is saturated
(docs/operations.md, "How busy is a process").

It costs one timer and one histogram observation per interval (about 10 µs a second). The largest
lag of the last second (`recent_ms`) is what `tutor.response.metrics` reports as `loop_lag_ms`.
Started and stopped with the app's lifespan (`server.app`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from prometheus_client import Histogram

log = logging.getLogger("tutor")


class LoopWatch:
    def __init__(self, histogram: Histogram, interval_s: float = 0.1) -> None:
        self.histogram = histogram
        self.interval_s = interval_s
        # the lags of the last second's wakes (at least one)
        self._recent: deque[float] = deque(maxlen=max(1, round(1.0 / interval_s)))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="loopwatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def recent_ms(self) -> float:
        """The largest lag of the last second's wakes, in ms (0 before the first)."""
        return round(max(self._recent, default=0.0) * 1000, 3)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.interval_s
        observe, recent = self.histogram.observe, self._recent
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - expected)
            observe(lag)
            recent.append(lag)
