"""Interop driver: Pipecat's `OpenAIRealtimeLLMService` (written on pipecat-ai 1.14.0) plays the
interop scenario against the tutor, inside a Pipecat pipeline built as the Pipecat examples
build one (examples/realtime/realtime-openai.py):

    Microphone → user aggregator → Keyboard → OpenAIRealtimeLLMService → Speaker
               → assistant aggregator

The service is on its defaults (`SessionProperties()`: no turn detection, audio format or
modalities given, so the tutor's defaults apply and answers are asked for as audio); only its
`base_url` and `api_key` are set. The conversation is an `LLMContext` holding the typed question
and the `lookup_grade` tool (`ToolsSchema` / `FunctionSchema`), the handler is registered with
`register_function`, and `LLMRunFrame` starts the first answer, as an app does on connect.

- Microphone: stands in for `transport.input()`: 20 ms of PCM16 at 24 kHz every 20 ms, silence
  unless it is saying the corpus speech.
- Keyboard: appends a typed message with `LLMMessagesAppendFrame(run_llm=True)`. It sits after
  the user aggregator because the aggregator keeps that frame to itself; the service sends
  appended messages as `conversation.item.create` with role "system" (llm.py
  `_handle_messages_append`), and the assistant aggregator then asks for the answer.
- Speaker: stands in for `transport.output()`: plays the tutor's audio on a real-time clock,
  so Pipecat sees the bot start and stop speaking, and an interruption cuts the rest.
- Recorder: an observer of the frames an application sees (audio, text, transcripts,
  interruptions, function calls, `ErrorFrame`).

Between the service and the tutor sits a transparent relay (`WireTap`) that logs every event
each way for the report; the client's URL path, query and Authorization header pass unchanged.

Env: TUTOR_URL, OPENAI_API_KEY, INTEROP_SPEECH (raw PCM16 mono 24 kHz), INTEROP_TOOL (JSON:
name, schema, prompt, output); INTEROP_TRACE=<file> writes the wire log; INTEROP_LOG=DEBUG
shows Pipecat's own log. Prints one JSON report as its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any
from urllib.parse import urlsplit

from loguru import logger
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (BotStartedSpeakingFrame, BotStoppedSpeakingFrame, CancelFrame,
                                   EndFrame, ErrorFrame, FunctionCallResultFrame,
                                   InputAudioRawFrame, InterruptionFrame, LLMFullResponseEndFrame,
                                   LLMMessagesAppendFrame, LLMRunFrame, LLMTextFrame, StartFrame,
                                   TranscriptionFrame, TTSAudioRawFrame)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime.events import parse_server_event
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

RATE = 24000  # what the service sends (it resamples anything else to 24 kHz PCM)
CHUNK = RATE * 2 // 50  # 20 ms of PCM16
TYPED_TEXT = "What is a derivative, in one sentence?"
RUN_LIMIT_S = 105.0


class WireTap:
    """A transparent WebSocket relay between the service and the tutor that logs every event
    (audio payloads reduced to their length) and parses each server event with the service's
    own parser, which raises, and so ends the service's receive loop, on an event of a type it
    models that fails its pydantic model. It changes nothing the client sends or gets."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.path = parts.path
        self.log: list[tuple[str, float, dict[str, Any]]] = []  # (in | out, monotonic, event)
        self.refused: str | None = None
        self.unparsed: list[str] = []  # server events the service's parser rejects

    async def __aenter__(self) -> WireTap:
        self.server = await serve(self._relay, "127.0.0.1", 0, max_size=None)
        port = next(iter(self.server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}{self.path}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    def _record(self, direction: str, message: str | bytes) -> None:
        if direction == "in":
            try:
                parse_server_event(message)
            except Exception as exc:  # noqa: BLE001 - what the service would die of
                self.unparsed.append(str(exc)[:400])
        try:
            event = json.loads(message)
        except ValueError:
            event = {"type": "<not json>", "raw": str(message)[:200]}
        for key in ("audio", "delta"):
            if event.get("type", "").endswith(("audio.delta", "buffer.append")) and key in event:
                event[key] = len(event[key])
        self.log.append((direction, time.monotonic(), event))

    async def _relay(self, client: Any) -> None:
        headers = {k: v for k, v in client.request.headers.raw_items()
                   if k.lower() == "authorization"}
        try:
            server = await connect(self.upstream + client.request.path, additional_headers=headers,
                                   max_size=None)
        except Exception as exc:  # noqa: BLE001 - the refusal is the finding
            self.refused = f"{type(exc).__name__}: {exc}"
            await client.close(1011, self.refused[:120])
            return

        async def pump(source: Any, sink: Any, direction: str) -> None:
            async for message in source:
                self._record(direction, message)
                await sink.send(message)

        async with server:
            tasks = [asyncio.create_task(pump(client, server, "out")),
                     asyncio.create_task(pump(server, client, "in"))]
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    self.refused = self.refused or repr(task.exception())
            if server.close_code not in (None, 1000):
                self.refused = f"tutor closed the socket: {server.close_code} {server.close_reason}"
        await client.close()

    def events(self, direction: str, kind: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [e for d, t, e in self.log
                if d == direction and t >= since and e.get("type") == kind]


class Microphone(FrameProcessor):
    """Stands in for `transport.input()`: 20 ms of audio every 20 ms, silence unless saying."""

    def __init__(self) -> None:
        super().__init__()
        self._speech = bytearray()
        self._said: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._task = self.create_task(self._stream())
        elif isinstance(frame, (EndFrame, CancelFrame)) and self._task:
            await self.cancel_task(self._task)

    def say(self, pcm: bytes) -> asyncio.Future[None]:
        self._speech[:] = pcm
        self._said = asyncio.get_running_loop().create_future()
        return self._said

    async def _stream(self) -> None:
        start, n = time.monotonic(), 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
            chunk = bytes(self._speech[:CHUNK]).ljust(CHUNK, b"\0")
            del self._speech[:CHUNK]
            if not self._speech and self._said and not self._said.done():
                self._said.set_result(None)
            await self.push_frame(InputAudioRawFrame(audio=chunk, sample_rate=RATE, num_channels=1))


class Keyboard(FrameProcessor):
    """Types a student message into the conversation, the way Pipecat appends messages."""

    async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)

    async def type(self, text: str) -> None:
        await self.push_frame(LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}],
                                                     run_llm=True))


class Speaker(BaseOutputTransport):
    """Stands in for `transport.output()`: plays audio on a real-time clock, as the WebSocket
    transports do, so BotStarted/StoppedSpeakingFrame and interruptions behave as in an app."""

    def __init__(self) -> None:
        super().__init__(TransportParams(audio_out_enabled=True, audio_out_sample_rate=RATE))
        self._clock = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def write_audio_frame(self, frame: Any) -> bool:
        now = time.monotonic()
        await asyncio.sleep(max(0.0, self._clock - now))
        self._clock = max(self._clock, now) + len(frame.audio) / (2 * frame.sample_rate)
        return True


class Recorder(BaseObserver):
    """Every frame of interest the pipeline pushes, once, with the time it was first pushed."""

    KINDS = (TTSAudioRawFrame, LLMTextFrame, TranscriptionFrame, InterruptionFrame,
             BotStartedSpeakingFrame, BotStoppedSpeakingFrame, LLMFullResponseEndFrame,
             FunctionCallResultFrame, ErrorFrame)

    def __init__(self) -> None:
        super().__init__(observe_every_push=False)
        self.frames: list[tuple[float, Any]] = []

    async def on_push_frame(self, data: FramePushed) -> None:
        if isinstance(data.frame, self.KINDS):
            self.frames.append((time.monotonic(), data.frame))

    def of(self, kind: type, since: float = 0.0) -> list[tuple[float, Any]]:
        return [(t, f) for t, f in self.frames if t >= since and type(f) is kind]

    def text(self, since: float) -> str:
        return "".join(f.text for _, f in self.of(LLMTextFrame, since))


async def until(predicate: Callable[[], Any], timeout: float) -> Any:
    """predicate()'s first truthy value, polled every 50 ms; None after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value or None
        await asyncio.sleep(0.05)


class Scenario:
    """The interop scenario, one method per step, each wait with its own timeout; a step that
    fails or raises is reported and the next one still runs."""

    def __init__(self, tap: WireTap, tool: dict[str, Any], speech: bytes) -> None:
        self.tap, self.tool, self.speech = tap, tool, speech
        self.checks: dict[str, dict[str, Any]] = {}
        self.recorder = Recorder()
        self.tool_calls: list[dict[str, Any]] = []
        schema = tool["schema"]
        function = FunctionSchema(name=tool["name"], description="Look up a student's grade.",
                                  properties=schema["properties"], required=schema["required"])
        self.llm = OpenAIRealtimeLLMService(api_key=os.environ["OPENAI_API_KEY"], base_url=tap.url)
        self.llm.register_function(tool["name"], self._lookup_grade)
        context = LLMContext([{"role": "user", "content": TYPED_TEXT}],
                             ToolsSchema(standard_tools=[function]))
        user, assistant = LLMContextAggregatorPair(context)
        self.mic, self.keyboard = Microphone(), Keyboard()
        self.worker = PipelineWorker(
            Pipeline([self.mic, user, self.keyboard, self.llm, Speaker(), assistant]),
            params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
            observers=[self.recorder], idle_timeout_secs=None)

    async def _lookup_grade(self, params: FunctionCallParams) -> None:
        self.tool_calls.append(dict(params.arguments))
        await params.result_callback(json.loads(self.tool["output"]))

    def check(self, name: str, ok: Any, detail: str) -> None:
        self.checks[name] = {"ok": bool(ok), "detail": detail}

    async def play(self) -> None:
        steps = [("session_setup", self.session_setup), ("typed_turn", self.typed_turn),
                 ("spoken_turn", self.spoken_turns), ("function_call", self.function_call)]
        for name, step in steps:
            try:
                await step()
            except Exception as exc:  # noqa: BLE001 - reported, and the next step still runs
                self.check(name, False, f"the step raised {exc!r}")

    async def session_setup(self) -> None:
        tap = self.tap
        ready = await until(lambda: tap.events("in", "session.updated") or tap.refused, 10)
        update = (tap.events("out", "session.update") or [{}])[0].get("session")
        outcome = tap.refused or ("session.updated received" if ready else "no session.updated")
        self.check("session_setup", ready and not tap.refused,
                   f"sent session.update {json.dumps(update)}; {outcome}")

    async def typed_turn(self) -> None:
        """The context's user message, sent when `LLMRunFrame` starts the conversation."""
        r, t = self.recorder, time.monotonic()
        await self.worker.queue_frames([LLMRunFrame()])
        ended = await until(lambda: r.text(t) and r.of(LLMFullResponseEndFrame, t), 15)
        items = [e["item"] for e in self.tap.events("out", "conversation.item.create", t)]
        self.check("typed_turn", ended and r.text(t).strip(),
                   f"items sent {[(i.get('type'), i.get('role')) for i in items]}; "
                   f"answer {r.text(t)[:80]!r}")
        await self.played_out(t)

    async def spoken_turns(self) -> None:
        """A spoken question, then the same again while its spoken answer plays."""
        r, tap, t = self.recorder, self.tap, time.monotonic()
        said = self.mic.say(self.speech)
        heard = await until(lambda: r.of(TranscriptionFrame, t), 20)
        t_heard = heard[0][0] if heard else t
        answer = await until(lambda: r.text(t_heard), 10)
        self.check("spoken_turn", heard and answer,
                   f"transcript {heard[0][1].text if heard else None!r}; answer {answer!r:.80}")
        playing = await until(lambda: r.of(BotStartedSpeakingFrame, t_heard), 10)
        spoken = sum(len(f.audio) for _, f in r.of(TTSAudioRawFrame, t_heard))
        modalities = [e["response"].get("output_modalities")
                      for e in tap.events("in", "response.created", t)]
        self.check("spoken_answer_audio", playing,
                   f"{spoken / (2 * RATE):.2f} s of {RATE} Hz audio so far, "
                   f"{'playing' if playing else 'never played'}; the response the turn made "
                   f"had output_modalities {modalities}")

        await asyncio.wait_for(said, 10)
        await asyncio.sleep(1.0)  # the student lets the tutor talk for a moment, then cuts in
        t = time.monotonic()
        said = self.mic.say(self.speech)
        truncate = await until(lambda: tap.events("out", "conversation.item.truncate", t), 10)
        heard = await until(lambda: r.of(TranscriptionFrame, t), 20)
        t_heard = heard[0][0] if heard else t
        text = await until(lambda: r.text(t_heard), 10)
        audio = await until(lambda: r.of(TTSAudioRawFrame, t_heard), 5)
        cut = truncate[0] if truncate else {}
        truncated = [e for e in tap.events("in", "conversation.item.truncated", t)
                     if e.get("item_id") == cut.get("item_id")]
        statuses = [e["response"].get("status") for e in tap.events("in", "response.done", t)]
        late = self._audio_after(cut)
        self.check("barge_in", cut and truncated and not late and heard and text and audio,
                   (f"truncate sent for {cut.get('item_id')} at {cut.get('audio_end_ms')} ms"
                    if cut else "no truncate sent (no answer audio was playing)") +
                   f"; conversation.item.truncated {'received' if truncated else 'not received'}"
                   f"; response.done statuses {statuses}; {late} audio deltas of the cut item "
                   f"after the truncate; {len(r.of(InterruptionFrame, t))} InterruptionFrames; "
                   f"new transcript {heard[0][1].text if heard else None!r}; new answer text "
                   f"{'yes' if text else 'no'}, audio {'yes' if audio else 'no'}")
        await asyncio.wait_for(said, 10)
        await self.played_out(t_heard)

    async def function_call(self) -> None:
        """A typed request for the tool, appended mid-session (a "system" item, in Pipecat)."""
        r, t = self.recorder, time.monotonic()
        await self.keyboard.type(self.tool["prompt"])
        called = await until(lambda: self.tool_calls, 10)
        result = await until(lambda: r.of(FunctionCallResultFrame, t), 5)
        t_result = result[0][0] if result else t
        answer = await until(lambda: r.of(LLMFullResponseEndFrame, t_result)
                             and r.text(t_result), 15)
        items = [(e["item"].get("type"), e["item"].get("role") or e["item"].get("output"))
                 for e in self.tap.events("out", "conversation.item.create", t)]
        # One call, then an answer: a second call means the output never reached the model.
        self.check("function_call", called and len(self.tool_calls) == 1 and answer,
                   f"items sent {items[:3]}"
                   f"; handler called {len(self.tool_calls)} times, first with "
                   f"{self.tool_calls[:1]}; answer {r.text(t_result)[:80]!r}")

    async def played_out(self, since: float, timeout: float = 25.0) -> None:
        """Waits until the answer's audio (after `since`) has been played to the end, if any
        came: the student does not talk over the tutor unless the step says so."""
        def done() -> bool:
            audio = self.recorder.of(TTSAudioRawFrame, since)
            return not audio or any(t > audio[-1][0] for t, _ in
                                    self.recorder.of(BotStoppedSpeakingFrame, since))
        await until(done, timeout)

    def _audio_after(self, truncate: dict[str, Any]) -> int:
        """Audio deltas of the truncated item that arrived after the client sent the truncate."""
        if not truncate:
            return 0
        sent_at = next(t for _, t, e in self.tap.log if e is truncate)
        return sum(1 for d, t, e in self.tap.log if d == "in" and t > sent_at
                   and e.get("type") == "response.output_audio.delta"
                   and e.get("item_id") == truncate.get("item_id"))


async def main() -> dict[str, Any]:
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("INTEROP_LOG", "WARNING"))
    tool = json.loads(os.environ["INTEROP_TOOL"])
    with open(os.environ["INTEROP_SPEECH"], "rb") as f:
        speech = f.read()
    async with WireTap(os.environ["TUTOR_URL"]) as tap:
        scenario = Scenario(tap, tool, speech)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(scenario.worker)
        running = asyncio.create_task(runner.run())
        try:
            await asyncio.wait_for(scenario.play(), RUN_LIMIT_S)
        except TimeoutError:
            scenario.check("run_limit", False, f"the scenario ran past {RUN_LIMIT_S} s")
        await asyncio.sleep(0.5)  # a late error still counts
        scenario.check("events_parse", not tap.unparsed,
                       f"{len(tap.unparsed)} server events the service's parser rejects: "
                       f"{tap.unparsed[:3]}")
        await scenario.worker.cancel()
        try:
            await asyncio.wait_for(running, 10)
        except (TimeoutError, asyncio.CancelledError):
            pass
    if trace := os.environ.get("INTEROP_TRACE"):
        with open(trace, "w") as f:
            for direction, t, event in tap.log:
                f.write(json.dumps({"dir": direction, "t": round(t - tap.log[0][1], 3), **event})
                        + "\n")
    wire_errors = [e for d, _, e in tap.log if d == "in" and e.get("type") == "error"]
    frames = [{"error_frame": str(f.error)} for _, f in scenario.recorder.of(ErrorFrame)]
    seen = list(dict.fromkeys(e.get("type") for d, _, e in tap.log if d == "in"))
    sent = list(dict.fromkeys(e.get("type") for d, _, e in tap.log if d == "out"))
    return {"client": "pipecat-openai-realtime", "version": version("pipecat-ai"),
            "checks": scenario.checks, "errors": wire_errors + frames, "events": seen,
            "sent": sent}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())), flush=True)
