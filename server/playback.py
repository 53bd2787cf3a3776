"""`Playback`: one spoken answer's synthesis and its audio sent at the pace it plays.

Each piece the core hands over (`Synthesize`) goes to text-to-speech at once (at most `AHEAD`
requests at a time, so the next sentence is being synthesised while the current one plays),
and the audio is fed back to the core strictly in piece order, `audio_lead_ms` ahead of where
the student's playback is: the answer stays live while it is heard, so barge-in cuts it where
the student is, and little is buffered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from audio.pcm import SPEECH_RATE, bytes_to_seconds
from providers import ProviderError
from realtime import Synthesize

if TYPE_CHECKING:
    from .session_runner import SessionRunner

log = logging.getLogger("tutor.voice")


class Playback:
    AHEAD = 2

    def __init__(self, runner: SessionRunner, response_id: str) -> None:
        self.runner = runner
        self.response_id = response_id
        self.queues: dict[int, asyncio.Queue[bytes | ProviderError | None]] = {}
        self.order: asyncio.Queue[int] = asyncio.Queue()
        self.slots = asyncio.Semaphore(self.AHEAD)
        self.tasks: set[asyncio.Task[None]] = set()
        self.first_chunk_at: float | None = None  # perf_counter of the first audio sent
        self.player = self._spawn(self._play())

    def _spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def add(self, piece: Synthesize) -> None:
        queue: asyncio.Queue[bytes | ProviderError | None] = asyncio.Queue()
        self.queues[piece.index] = queue
        self._spawn(self._synthesise(piece, queue))
        self.order.put_nowait(piece.index)

    def cancel(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _synthesise(self, piece: Synthesize, queue: asyncio.Queue) -> None:  # type: ignore[type-arg]
        speech = self.runner.providers.speech
        async with self.slots:
            try:
                if speech is None:
                    raise ProviderError("provider_not_configured", "no text-to-speech provider")
                async for chunk in speech.stream(piece.text, voice=piece.voice):
                    queue.put_nowait(chunk)
            except ProviderError as exc:
                if self.runner.metrics is not None:
                    self.runner.metrics.provider_failed("tts", exc.code)
                queue.put_nowait(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("speech of %s failed", self.response_id)
                queue.put_nowait(ProviderError("internal_error", str(exc)))
            queue.put_nowait(None)

    async def _play(self) -> None:
        runner, rid = self.runner, self.response_id
        lead_s = runner.session.config.audio_lead_ms / 1000
        started: float | None = None
        sent_s = 0.0
        while True:
            index = await self.order.get()
            queue = self.queues.pop(index)
            while (item := await queue.get()) is not None:
                if isinstance(item, ProviderError):
                    runner.step(runner.session.speech_failed, rid, index, item.code,
                                item.message)
                    while await queue.get() is not None:
                        pass
                    break
                if self.first_chunk_at is None:
                    self.first_chunk_at = time.perf_counter()
                    runner.first_audio(rid, self.first_chunk_at)
                    started = runner.loop.time()
                else:
                    ahead = sent_s - (runner.loop.time() - started) - lead_s  # type: ignore[operator]
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                sent_s += bytes_to_seconds(len(item), SPEECH_RATE)
                runner.step(runner.session.speech_audio, rid, index, item, runner.loop.time())
            else:
                runner.step(runner.session.speech_done, rid, index)
