"""Interop driver: the official `openai` Python SDK (`AsyncOpenAI().realtime.connect`, GA
interface, written on openai 3.60.0) plays the interop scenario against the tutor.

It is set up as the SDK's own example app (examples/realtime/push_to_talk_app.py) sets it up:
`base_url` points at the tutor, `realtime.connect(model="gpt-realtime")`, one `session.update`
with `type`, `model` and server VAD; audio in and out is PCM16 at 24 kHz, the GA default. The
SDK leaves interruption to the app, so this driver does what the Realtime guide says an app
does: it "plays" the answer at real-time pace and, on `input_audio_buffer.speech_started`,
stops and sends `conversation.item.truncate` at the point heard. Tools are registered with
`session.update` and answered with a `function_call_output` item and `response.create`.

Every server event is also validated, strictly, against the SDK's own
`openai.types.realtime.RealtimeServerEvent` union (events named `tutor.*` excepted): check
`events_validate`.

Usage: python openai_python.py <speech.pcm (24 kHz PCM16)>; env TUTOR_HTTP_URL, OPENAI_API_KEY,
INTEROP_TOOL (JSON: name, schema, prompt, output), INTEROP_LOG (optional: a file to log each
server event to, cut at 300 characters). Prints one JSON report as its last line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import time
import typing
from typing import Annotated, Any, Callable, Union

import openai
import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

RATE = 24000  # the GA default input and output format: audio/pcm at 24 kHz
CHUNK = RATE * 2 // 50  # 20 ms of PCM16
STEP_TIMEOUT_S = 20.0  # answers are spoken at real-time pace: the fake's take ~11 s
TOTAL_TIMEOUT_S = 100.0
LOG = open(os.environ["INTEROP_LOG"], "w") if os.environ.get("INTEROP_LOG") else None  # wire log

# The SDK's union, with its `type` discriminator made one pydantic understands, so a failure
# names the event and field instead of listing every member of the union.
MEMBERS = typing.get_args(typing.get_args(RealtimeServerEvent)[0])
EVENT = pydantic.TypeAdapter(Annotated[Union[MEMBERS], pydantic.Field(discriminator="type")])


class Inbox:
    """Every server event in arrival order (parsed by the SDK), with a waiter."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.invalid: list[str] = []
        self.listeners: list[Callable[[Any], None]] = []
        self.changed = asyncio.Event()
        self.closed: str | None = None  # why the connection ended, once it has

    def close(self, why: str) -> None:
        self.closed = why
        self.changed.set()

    def add(self, raw: bytes, event: Any) -> None:
        data = json.loads(raw)
        kind = data.get("type", "")
        if kind == "error":
            self.errors.append(data)
        if not str(kind).startswith("tutor."):
            try:
                EVENT.validate_json(raw, strict=True)
            except pydantic.ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}"
                                     for e in exc.errors(include_url=False)[:4])
                self.invalid.append(f"{kind}: {problems}")
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        self.changed.set()

    async def wait(self, kinds: str, start: int = 0, where: Callable[[Any], bool] = lambda e: True,
                   timeout: float = STEP_TIMEOUT_S) -> Any:
        """The first event from index `start` on whose type is one of `kinds` (space-separated)
        and that passes `where`; TimeoutError naming what was awaited if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[start:]:
                if event.type in kinds.split() and where(event):
                    return event
            start = len(self.events)
            if self.closed:
                raise ConnectionError(f"no {kinds}: the connection ended ({self.closed})")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise TimeoutError(f"no {kinds} within {timeout:.0f} s") from None


class Player:
    """Stands in for the speaker: answer audio "plays" at real-time pace from its first delta,
    so at any moment the app knows how much of the item the student has heard."""

    def __init__(self) -> None:
        self.item_id: str | None = None
        self.started = 0.0
        self.received_ms = 0.0
        self.stopped: set[str] = set()

    def feed(self, event: Any) -> None:
        if event.type != "response.output_audio.delta" or event.item_id in self.stopped:
            return
        if event.item_id != self.item_id:
            self.item_id, self.started, self.received_ms = event.item_id, time.monotonic(), 0.0
        self.received_ms += len(base64.b64decode(event.delta)) / 2 / RATE * 1000

    def playing(self) -> bool:
        return self.item_id is not None and self.item_id not in self.stopped \
            and self.played_ms() < self.received_ms

    def played_ms(self) -> int:
        return int(min(self.received_ms, (time.monotonic() - self.started) * 1000))

    def stop(self) -> tuple[str, int]:
        assert self.item_id is not None
        self.stopped.add(self.item_id)
        return self.item_id, self.played_ms()


def answer_text(inbox: Inbox, response_id: str) -> str:
    return "".join(e.delta for e in inbox.events
                   if e.type in ("response.output_audio_transcript.delta",
                                 "response.output_text.delta") and e.response_id == response_id)


def audio_ms(inbox: Inbox, response_id: str) -> float:
    pcm = sum(len(base64.b64decode(e.delta)) for e in inbox.events
              if e.type == "response.output_audio.delta" and e.response_id == response_id)
    return pcm / 2 / RATE * 1000


class Scenario:
    def __init__(self, speech: bytes, tool: dict[str, Any]) -> None:
        self.speech, self.tool = speech, tool
        self.inbox, self.player = Inbox(), Player()
        self.checks: dict[str, dict[str, Any]] = {}
        self.conn: Any = None
        self.truncated_at: tuple[str, int] | None = None  # the last truncate sent: item, ms
        self.barged_at = -1  # the index of the speech_started event that made it

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = {"ok": bool(ok), "detail": detail}

    async def step(self, name: str, play: Callable[[], Any], timeout: float = 30.0) -> None:
        """Run one step; a failure or timeout is recorded as its check and the run goes on."""
        try:
            await asyncio.wait_for(play(), timeout)
        except Exception as exc:  # noqa: BLE001 - each step reports, the next one still runs
            seen = [e.type for e in self.inbox.events[-8:]]
            self.checks.setdefault(name, {"ok": False, "detail": f"{type(exc).__name__}: {exc} "
                                                                 f"(last events: {seen})"})

    async def read(self) -> None:
        try:
            while True:
                raw = await self.conn.recv_bytes()
                if LOG:
                    print(raw.decode()[:300], file=LOG, flush=True)
                self.inbox.add(raw, self.conn.parse_event(raw))
        except Exception as exc:  # noqa: BLE001 - every waiting step hears why
            self.inbox.close(f"{type(exc).__name__}: {exc}")

    async def stream_speech(self) -> None:
        """The corpus speech in 20 ms chunks at real-time pace, as a microphone sends it."""
        begin = time.monotonic()
        for n, offset in enumerate(range(0, len(self.speech), CHUNK)):
            await self.conn.input_audio_buffer.append(
                audio=base64.b64encode(self.speech[offset:offset + CHUNK]).decode())
            await asyncio.sleep(max(0.0, begin + (n + 1) * 0.02 - time.monotonic()))

    async def interrupt(self, event: Any) -> None:
        """The app's barge-in handling: stop playing and tell the server what was heard."""
        if event.type == "input_audio_buffer.speech_started" and self.player.playing():
            item_id, heard_ms = self.player.stop()
            self.truncated_at, self.barged_at = (item_id, heard_ms), self.inbox.events.index(event)
            await self.conn.conversation.item.truncate(item_id=item_id, content_index=0,
                                                       audio_end_ms=heard_ms)

    async def session_setup(self) -> None:
        created = await self.inbox.wait("session.created")
        mark = len(self.inbox.events)
        await self.conn.session.update(session={
            "type": "realtime", "model": "gpt-realtime",
            "audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
        updated = await self.inbox.wait("session.updated error", mark)
        self.check("session_setup", updated.type == "session.updated",
                   f"session.created {created.session.id}; answer to session.update: "
                   f"{updated.type}")

    async def typed_turn(self) -> None:
        mark = len(self.inbox.events)
        await self.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What is a derivative?"}]})
        await self.conn.response.create()
        done = await self.inbox.wait("response.done", mark)
        text = answer_text(self.inbox, done.response.id)
        self.check("typed_turn", done.response.status == "completed" and bool(text),
                   f"response.done {done.response.status}; {len(text)} chars streamed: "
                   f"{text[:60]!r}")

    async def spoken_turns(self) -> None:
        """A spoken question; while its answer plays, a second one (the barge-in)."""
        mark = len(self.inbox.events)
        await self.stream_speech()
        heard = await self.inbox.wait("conversation.item.input_audio_transcription.completed", mark)
        created = await self.inbox.wait("response.created", mark)
        rid = created.response.id
        await self.inbox.wait("response.output_audio.delta response.output_audio_transcript.delta "
                              "response.output_text.delta", mark, lambda e: e.response_id == rid)
        await asyncio.sleep(1.0)  # the student listens for a second
        text = answer_text(self.inbox, rid)
        self.check("spoken_turn", bool(heard.transcript) and bool(text),
                   f"transcript {heard.transcript!r}; answer streaming: {text[:60]!r}")
        self.check("spoken_answer_audio", audio_ms(self.inbox, rid) > 0,
                   f"{audio_ms(self.inbox, rid):.0f} ms of answer audio by now")

        self.truncated_at, self.barged_at = None, -1
        mark = len(self.inbox.events)
        await self.stream_speech()
        cut = await self.inbox.wait("response.done", 0, lambda e: e.response.id == rid)
        truncated = await self.inbox.wait("conversation.item.truncated", mark) \
            if self.truncated_at else None
        second = await self.inbox.wait("response.created", mark, lambda e: e.response.id != rid)
        done = await self.inbox.wait("response.done", mark,
                                     lambda e: e.response.id == second.response.id)
        answered = answer_text(self.inbox, second.response.id)
        # the answer still being generated when the student spoke is cancelled; one already
        # complete (its audio still playing here) is only truncated
        stopped = cut.response.status == "cancelled" or (
            cut.response.status == "completed" and self.inbox.events.index(cut) < self.barged_at)
        self.check("barge_in", self.truncated_at is not None and truncated is not None
                   and truncated.audio_end_ms == self.truncated_at[1] and stopped
                   and done.response.status == "completed" and bool(answered),
                   f"truncate sent {self.truncated_at}; conversation.item.truncated "
                   f"{truncated and (truncated.item_id, truncated.audio_end_ms)}; interrupted "
                   f"response {cut.response.status}; next answer {done.response.status}: "
                   f"{answered[:40]!r}")

    async def function_call(self) -> None:
        name = self.tool["name"]
        mark = len(self.inbox.events)
        await self.conn.session.update(session={"type": "realtime", "tools": [{
            "type": "function", "name": name, "description": "Look up a student's grade.",
            "parameters": self.tool["schema"]}]})
        updated = await self.inbox.wait("session.updated error", mark)
        if updated.type != "session.updated":
            raise RuntimeError(f"session.update with tools answered by {updated.type}: {updated}")
        mark = len(self.inbox.events)
        await self.conn.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": self.tool["prompt"]}]})
        await self.conn.response.create()
        done = await self.inbox.wait("response.done", mark)
        calls = [item for item in done.response.output or [] if item.type == "function_call"]
        if not calls:
            raise RuntimeError(f"response.done {done.response.status} without a function_call "
                               f"item: {answer_text(self.inbox, done.response.id)[:80]!r}")
        call = calls[0]
        mark = len(self.inbox.events)
        await self.conn.conversation.item.create(item={
            "type": "function_call_output", "call_id": call.call_id, "output": self.tool["output"]})
        await self.conn.response.create()
        final = await self.inbox.wait("response.done", mark)
        text = answer_text(self.inbox, final.response.id)
        self.check("function_call", call.name == name and bool(json.loads(call.arguments or "{}"))
                   and final.response.status == "completed" and "The tool said" in text,
                   f"{call.name}({call.arguments}) call_id {call.call_id}; after its output: "
                   f"{final.response.status} {[i.type for i in final.response.output or []]} "
                   f"{text[:80]!r}")

    async def run(self) -> None:
        client = AsyncOpenAI(base_url=os.environ["TUTOR_HTTP_URL"],
                             api_key=os.environ["OPENAI_API_KEY"])
        try:
            self.conn = await client.realtime.connect(model="gpt-realtime").enter()
        except Exception as exc:  # noqa: BLE001 - reported as the setup check
            self.check("session_setup", False, f"connect failed: {type(exc).__name__}: {exc}")
            return
        reader = asyncio.create_task(self.read())
        self.inbox.listeners += [self.player.feed,
                                 lambda e: asyncio.ensure_future(self.interrupt(e))]
        try:
            await self.step("session_setup", self.session_setup, 20)
            await self.step("typed_turn", self.typed_turn, 25)
            await self.step("barge_in", self.spoken_turns, 50)
            await self.step("function_call", self.function_call, 25)
        finally:
            reader.cancel()
            await self.conn.close()


async def main() -> None:
    scenario = Scenario(open(sys.argv[1], "rb").read(), json.loads(os.environ["INTEROP_TOOL"]))
    try:
        await asyncio.wait_for(scenario.run(), TOTAL_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - the report is printed whatever happened
        scenario.check("run", False, f"{type(exc).__name__}: {exc}")
    inbox = scenario.inbox
    for name in ("spoken_turn", "spoken_answer_audio"):
        scenario.checks.setdefault(name, scenario.checks.get("barge_in",
                                                             {"ok": False, "detail": "not run"}))
    scenario.check("events_validate", not inbox.invalid and bool(inbox.events),
                   f"{len(inbox.events)} events, {len(inbox.invalid)} invalid: "
                   f"{inbox.invalid[:12]}")
    print(json.dumps({"client": "openai-python", "version": openai.__version__,
                      "checks": scenario.checks, "errors": inbox.errors,
                      "events": sorted({e.type for e in inbox.events})}))


if __name__ == "__main__":
    asyncio.run(main())
