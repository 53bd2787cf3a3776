"""Interop driver: LiveKit Agents' OpenAI Realtime model against the tutor, without a room.

Written on livekit-agents 1.8.9 and livekit-plugins-openai 1.8.9 (openai 3.60.0). It builds
`livekit.plugins.openai.realtime.RealtimeModel` on its defaults (semantic_vad that creates and
interrupts responses, audio output, 24 kHz pcm, gpt-4o-mini-transcribe) with only base_url set
(TUTOR_HTTP_URL, which the plugin turns into ws://.../v1/realtime?model=gpt-realtime; the key it
reads itself from OPENAI_API_KEY and sends as a bearer), and drives `model.session()` as the
framework's AgentActivity does:
- at start: update_instructions, update_tools (session.update each);
- typed input: update_chat_ctx with a user message, then generate_reply;
- speech: a live microphone, push_audio of 20 ms frames at real-time pace, silence between
  utterances (the plugin sends 100 ms input_audio_buffer.append events);
- a barge-in: on input_speech_started, interrupt() at once (a response.cancel if a response is
  open), playback stops, interrupt() again if the generation has not ended, then truncate() at
  the playback position;
- a tool call: the handler's output as a function_call_output item through update_chat_ctx,
  interrupt(), then generate_reply(tool_choice="auto").

Env: TUTOR_HTTP_URL, OPENAI_API_KEY, SPEECH_PCM and BARGE_PCM (24 kHz PCM16 mono), INTEROP_TOOL
(JSON: name, schema, prompt, output). Prints a condensed wire trace, then the JSON report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from importlib.metadata import version
from typing import Any, Awaitable, Callable

from livekit import rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import RealtimeModel

RATE = 24000  # the plugin's SAMPLE_RATE, in and out
FRAME = RATE // 50  # 20 ms
T0 = time.monotonic()
CLIENT = "livekit-agents"
VERSION = (f"livekit-agents {version('livekit-agents')}, livekit-plugins-openai "
           f"{version('livekit-plugins-openai')}, openai {version('openai')}")


def trace(direction: str, event: dict[str, Any]) -> None:
    """One line per wire event, leaving out audio and text deltas."""
    kind = event.get("type", "?")
    if kind.endswith(".delta") or kind == "input_audio_buffer.append":
        return
    brief = {k: v for k, v in event.items() if k not in ("type", "event_id")}
    print(f"{time.monotonic() - T0:6.2f} {direction} {kind} {json.dumps(brief)[:300]}", flush=True)


class Wire:
    """Every event the session received and sent, and waits on the received ones."""

    def __init__(self, session: Any) -> None:
        self.received: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.client_errors: list[str] = []  # the plugin's own `error` emissions
        session.on("openai_server_event_received", self._received)
        session.on("openai_client_event_queued", self._sent)
        session.on("error", lambda e: self.client_errors.append(f"{e.error!r}"))

    def _received(self, event: dict[str, Any]) -> None:
        self.received.append(event)
        trace("<<", event)

    def _sent(self, event: dict[str, Any]) -> None:
        self.sent.append(event)
        trace(">>", event)

    def mark(self) -> int:
        return len(self.received)

    def seen(self, kind: str, since: int = 0,
             where: Callable[[dict[str, Any]], bool] = lambda e: True) -> list[dict[str, Any]]:
        return [e for e in self.received[since:] if e.get("type") == kind and where(e)]

    async def next(self, kind: str, since: int, timeout: float,
                   where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not (found := self.seen(kind, since, where)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {kind} within {timeout} s")
            await asyncio.sleep(0.02)
        return found[0]

    def errors(self, since: int = 0) -> list[dict[str, Any]]:
        return self.seen("error", since)


class Answer:
    """One generation as the framework's playout takes it: transcript deltas, audio frames and
    function calls, and the position of a real-time speaker that starts at the first frame."""

    def __init__(self, generation: llm.GenerationCreatedEvent) -> None:
        self.generation = generation
        self.deltas: list[str] = []
        self.audio_s = 0.0
        self.first_audio_at: float | None = None
        self.stopped_at: float | None = None
        self.messages: list[llm.MessageGeneration] = []
        self.calls: list[llm.FunctionCall] = []
        self.task = asyncio.create_task(self._consume())

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def ended(self) -> bool:
        """response.done closed every stream of the generation."""
        return self.task.done()

    def position(self) -> float:
        if self.first_audio_at is None:
            return 0.0
        now = self.stopped_at or time.monotonic()
        return min(self.audio_s, now - self.first_audio_at)

    async def _consume(self) -> None:
        async def text(msg: llm.MessageGeneration) -> None:
            async for delta in msg.text_stream:
                self.deltas.append(str(delta))

        async def audio(msg: llm.MessageGeneration) -> None:
            async for frame in msg.audio_stream:
                self.first_audio_at = self.first_audio_at or time.monotonic()
                self.audio_s += frame.samples_per_channel / frame.sample_rate

        async def messages() -> None:
            streams = []
            async for msg in self.generation.message_stream:
                self.messages.append(msg)
                streams += [asyncio.create_task(text(msg)), asyncio.create_task(audio(msg))]
            await asyncio.gather(*streams)

        async def calls() -> None:
            async for call in self.generation.function_stream:
                self.calls.append(call)

        await asyncio.gather(messages(), calls())

    async def finished(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)

    def summary(self) -> str:
        return (f"{len(self.deltas)} text deltas {self.text[:60]!r}, {self.audio_s:.2f} s audio, "
                f"calls {[c.name for c in self.calls]}, ended={self.ended}")


class Microphone:
    """A live input: 20 ms frames at real-time pace, the queued utterances, else silence."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.queue: list[bytes] = []
        self.task = asyncio.create_task(self._run())

    def say(self, pcm: bytes) -> None:
        self.queue.append(pcm)

    async def _run(self) -> None:
        start, sent = time.monotonic(), 0
        current, offset = b"", 0
        while True:
            if offset >= len(current):
                current, offset = (self.queue.pop(0) if self.queue else b""), 0
            chunk = current[offset:offset + FRAME * 2].ljust(FRAME * 2, b"\0")
            offset += FRAME * 2
            self.session.push_audio(rtc.AudioFrame(chunk, RATE, 1, FRAME))
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * 0.02 - time.monotonic()))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class Scenario:
    def __init__(self, session: Any, wire: Wire) -> None:
        self.session, self.wire = session, wire
        self.checks: dict[str, dict[str, Any]] = {}
        self.answers: list[Answer] = []
        self.speech_started = 0
        self.transcripts: list[llm.InputTranscriptionCompleted] = []
        session.on("generation_created", lambda g: self.answers.append(Answer(g)))
        session.on("input_speech_started", lambda _: self._speech_started())
        session.on("input_audio_transcription_completed",
                   lambda t: t.is_final and self.transcripts.append(t))

    def _speech_started(self) -> None:
        """AgentActivity._on_input_speech_started -> AgentActivity.interrupt(), which calls the
        session's interrupt() there and then: a response.cancel while a response is open."""
        self.speech_started += 1
        self.session.interrupt()

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = {"ok": bool(ok), "detail": detail}
        print(f"{time.monotonic() - T0:6.2f} CHECK {name}: {'ok' if ok else 'FAILED'} {detail}",
              flush=True)

    async def step(self, name: str, run: Callable[[], Awaitable[None]], timeout: float) -> None:
        """Run one step; a timeout or exception fails its check (and keeps the others going)."""
        try:
            await asyncio.wait_for(run(), timeout)
        except Exception as exc:  # noqa: BLE001 - every failure is a finding to report
            if name not in self.checks or self.checks[name]["ok"]:
                self.check(name, False, f"{type(exc).__name__}: {exc}"[:400])

    def answer_of(self, generation: llm.GenerationCreatedEvent) -> Answer:
        return next(a for a in self.answers if a.generation is generation)

    async def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not (value := condition()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout} s")
            await asyncio.sleep(0.02)
        return value

    async def typed(self, text: str, **reply: Any) -> tuple[Answer | None, list[str]]:
        """The framework's typed input: a user item through update_chat_ctx, then generate_reply.
        Returns the answer and what went wrong on the way (update_chat_ctx's and generate_reply's
        own waits: conversation.item.added for the item id, response.created echoing
        response.metadata.client_event_id)."""
        problems = []
        chat_ctx = self.session.chat_ctx.copy()
        item = chat_ctx.add_message(role="user", content=text)
        mark = self.wire.mark()
        try:
            await self.session.update_chat_ctx(chat_ctx)
        except llm.RealtimeError as exc:  # AgentActivity logs this and still asks for the reply
            echoed = self.wire.seen("conversation.item.added", mark,
                                    lambda e: e["item"].get("id") == item.id)
            problems.append(f"update_chat_ctx: {exc} (conversation.item.added for {item.id}: "
                            f"{bool(echoed)})")
        try:
            generation = await self.session.generate_reply(**reply)
        except llm.RealtimeError as exc:
            created = self.wire.seen("response.created", mark)
            problems.append(f"generate_reply: {exc} (response.created metadata: "
                            f"{[c['response'].get('metadata') for c in created]})")
            return None, problems
        return self.answer_of(generation), problems

    # -- the scenario ------------------------------------------------------------------------

    async def session_setup(self) -> None:
        created = await self.wire.next("session.created", 0, 10)
        updated = await self.wire.next("session.updated", 0, 10)
        # AgentActivity's start: instructions, then the agent's (here: no) tools
        mark = self.wire.mark()
        await self.session.update_instructions("You are a patient tutor. Answer briefly.")
        await self.session.update_tools([])
        await self.wait(lambda: len(self.wire.seen("session.updated", mark)) >= 2, 10,
                        "session.updated for the instructions and the tools")
        errors = self.wire.errors()
        session = updated["session"]
        audio_in = session.get("audio", {}).get("input", {})
        self.check("session_setup", not errors and not self.wire.client_errors,
                   f"session.created {created['session'].get('id')}; session.updated: "
                   f"output_modalities={session.get('output_modalities')}, turn_detection="
                   f"{audio_in.get('turn_detection')}, format={audio_in.get('format')}, "
                   f"transcription={audio_in.get('transcription')}; "
                   f"{len(self.wire.seen('session.updated'))} session.updated for "
                   f"{sum(e['type'] == 'session.update' for e in self.wire.sent)} session.update; "
                   f"errors {[e['error'] for e in errors]} {self.wire.client_errors}")

    async def typed_turn(self) -> None:
        mark = self.wire.mark()
        answer, problems = await self.typed("Can you help me understand fractions?")
        self.check("update_chat_ctx", not any(p.startswith("update_chat_ctx") for p in problems),
                   "; ".join(problems) or "conversation.item.added echoed the client's item id")
        self.check("generate_reply", answer is not None,
                   "; ".join(problems) or "response.created echoed metadata.client_event_id")
        assert answer is not None, problems
        await answer.finished(30)
        errors = self.wire.errors(mark)
        self.check("typed_turn", bool(answer.deltas) and not errors and not problems,
                   f"{answer.summary()}; problems {problems}; errors {errors}")

    async def spoken_turn(self, pcm: bytes) -> Answer:
        mark, started = self.wire.mark(), self.speech_started
        answers_before, transcripts = len(self.answers), len(self.transcripts)
        self.mic.say(pcm)
        await self.wait(lambda: self.speech_started > started, 10, "input_speech_started")
        transcript = await self.wait(lambda: self.transcripts[transcripts:], 15,
                                     "a final input_audio_transcription_completed")
        answer = await self.wait(lambda: self.answers[answers_before:], 15,
                                 "generation_created after the speech")
        answer = answer[0]
        await self.wait(lambda: answer.deltas, 10, "a transcript delta of the answer")
        self.check("spoken_turn", transcript[0].transcript and not self.wire.errors(mark),
                   f"transcript {transcript[0].transcript!r}; answer created by the server "
                   f"(user_initiated={answer.generation.user_initiated}); "
                   f"{len(answer.deltas)} deltas so far; errors {self.wire.errors(mark)}")
        return answer

    async def spoken_answer_audio(self, answer: Answer) -> None:
        modalities = await asyncio.wait_for(answer.messages[0].modalities, 10) \
            if answer.messages else None
        await self.wait(lambda: answer.audio_s > 0.5, 10, "0.5 s of answer audio")
        # the plugin takes every output_audio.delta as 24 kHz pcm, whatever the server says
        output = self.wire.seen("session.updated")[-1]["session"].get("audio", {}).get("output", {})
        self.check("spoken_answer_audio", "audio" in (modalities or []) and
                   output.get("format") == {"type": "audio/pcm", "rate": RATE},
                   f"modalities {modalities}; output format {output.get('format')}; "
                   f"{answer.summary()}")

    async def barge_in(self, answer: Answer, pcm: bytes) -> None:
        """Speak over the playing answer; interrupt as AgentActivity does."""
        await self.wait(lambda: answer.position() >= 1.0, 10, "1 s of the answer played")
        mark, started = self.wire.mark(), self.speech_started
        answers_before, transcripts = len(self.answers), len(self.transcripts)
        self.mic.say(pcm)
        await self.wait(lambda: self.speech_started > started, 10,
                        "input_speech_started over the answer")
        answer.stopped_at = time.monotonic()
        played_ms = int(answer.position() * 1000)
        generating = not answer.ended
        if generating:  # the generation task's own cancel, once playout has stopped
            self.session.interrupt()
        for msg in answer.messages:
            modalities = await asyncio.wait_for(msg.modalities, 5)
            self.session.truncate(message_id=msg.message_id, modalities=modalities,
                                  audio_end_ms=played_ms, audio_transcript=answer.text)
        item_id = answer.messages[0].message_id if answer.messages else None
        truncated = await self.wire.next("conversation.item.truncated", mark, 5,
                                         lambda e: e.get("item_id") == item_id)
        await answer.finished(10)
        done = [e["response"].get("status") for e in self.wire.seen("response.done", mark)]
        await self.wait(lambda: self.transcripts[transcripts:], 15,
                        "the barge-in's transcript")
        new = await self.wait(lambda: self.answers[answers_before:], 15,
                              "generation_created for the barge-in")
        await self.wait(lambda: new[0].deltas, 10, "a transcript delta of the new answer")
        errors = self.wire.errors(mark)
        self.check("barge_in", not errors,
                   f"speech_started at {played_ms} ms played (still generating: {generating}); "
                   f"truncated {truncated.get('item_id')} at {truncated.get('audio_end_ms')} ms; "
                   f"response.done statuses {done}; new turn {self.transcripts[-1].transcript!r} "
                   f"-> {new[0].summary()}; errors {errors}")

    async def function_call(self, tool: dict[str, Any]) -> None:
        calls: list[dict[str, Any]] = []

        async def lookup(raw_arguments: dict[str, object]) -> str:
            calls.append(raw_arguments)
            return tool["output"]

        mark = self.wire.mark()
        function = llm.function_tool(lookup, raw_schema={
            "name": tool["name"], "description": "Look up a student's grade.",
            "parameters": tool["schema"]})
        await self.session.update_tools([function])
        updated = await self.wire.next("session.updated", mark, 5)
        answer, problems = await self.typed(tool["prompt"])
        assert answer is not None, problems
        await answer.finished(15)
        assert answer.calls, f"no function call in the generation: {answer.summary()}; {problems}"
        call = answer.calls[0]
        output = await lookup(raw_arguments=json.loads(call.arguments))
        # AgentActivity: the output item through update_chat_ctx, interrupt, then the reply
        chat_ctx = self.session.chat_ctx.copy()
        chat_ctx.items.append(llm.FunctionCallOutput(name=call.name, call_id=call.call_id,
                                                     output=output, is_error=False))
        try:
            await self.session.update_chat_ctx(chat_ctx)
        except llm.RealtimeError as exc:
            problems.append(f"update_chat_ctx(function_call_output): {exc}")
        self.session.interrupt()
        generation = await self.session.generate_reply(tool_choice="auto")
        reply = self.answer_of(generation)
        await reply.finished(30)
        errors = self.wire.errors(mark)
        # the reply quotes the output only if the fake model does (the test checks the model
        # got the call and its output); here: a spoken answer, not another call
        tools = [t.get("name") for t in updated["session"].get("tools", [])]
        self.check("function_call", not problems and not errors and calls == [
            json.loads(call.arguments)] and bool(reply.deltas) and not reply.calls,
            f"session.updated tools {tools}; call {call.name}({call.arguments}) "
            f"call_id {call.call_id}; reply {reply.summary()}; problems {problems}; "
            f"errors {errors}")

    def items_in_order(self) -> None:
        """Every item of this run joins the end of the conversation, so each
        conversation.item.added must name the item added before it: the plugin's mirror
        (RemoteChatContext.insert) places items by previous_item_id, and later item creates
        anchor on that mirror."""
        previous, wrong = None, []
        for event in self.wire.seen("conversation.item.added"):
            item = event["item"]
            if event.get("previous_item_id") != previous:
                wrong.append(f"{item.get('type')} {item.get('id')} after "
                             f"{event.get('previous_item_id')} (tail: {previous})")
            previous = item.get("id")
        self.check("items_in_order", not wrong,
                   "; ".join(wrong) or f"{len(self.wire.seen('conversation.item.added'))} items, "
                   "each after the one before")

    async def run(self, speech: bytes, barge: bytes, tool: dict[str, Any]) -> None:
        await self.step("session_setup", self.session_setup, 15)
        self.mic = Microphone(self.session)
        try:
            await self.step("typed_turn", self.typed_turn, 45)
            spoken: list[Answer] = []

            async def spoken_turn() -> None:
                spoken.append(await self.spoken_turn(speech))

            await self.step("spoken_turn", spoken_turn, 30)
            if spoken:
                await self.step("spoken_answer_audio",
                                lambda: self.spoken_answer_audio(spoken[0]), 15)
                await self.step("barge_in", lambda: self.barge_in(spoken[0], barge), 45)
            else:
                for name in ("spoken_answer_audio", "barge_in"):
                    self.check(name, False, "not run: the spoken turn brought no answer")
            # the framework speaks the next reply once the current one is over
            await asyncio.gather(*(a.finished(30) for a in self.answers), return_exceptions=True)
            await self.step("function_call", lambda: self.function_call(tool), 45)
        finally:
            await self.mic.close()
            self.items_in_order()
            self.check("no_plugin_errors", not self.wire.client_errors,
                       f"the plugin's error events: {self.wire.client_errors}")


async def main() -> dict[str, Any]:
    model = RealtimeModel(base_url=os.environ["TUTOR_HTTP_URL"])  # the key: OPENAI_API_KEY
    session = model.session()
    wire = Wire(session)
    scenario = Scenario(session, wire)
    try:
        await asyncio.wait_for(scenario.run(open(os.environ["SPEECH_PCM"], "rb").read(),
                                            open(os.environ["BARGE_PCM"], "rb").read(),
                                            json.loads(os.environ["INTEROP_TOOL"])), 100)
    except asyncio.TimeoutError:
        print("the scenario ran out of its 100 s", flush=True)
    finally:
        await asyncio.gather(asyncio.wait_for(session.aclose(), 5), return_exceptions=True)
        await asyncio.gather(asyncio.wait_for(model.aclose(), 5), return_exceptions=True)
    kinds = list(dict.fromkeys(e.get("type", "?") for e in wire.received))
    return {"client": CLIENT, "version": VERSION, "checks": scenario.checks,
            "errors": wire.errors(), "client_errors": wire.client_errors, "events": kinds,
            "sent": list(dict.fromkeys(e.get("type", "?") for e in wire.sent))}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s "
                        "%(message)s")
    print(json.dumps(asyncio.run(main())), flush=True)
