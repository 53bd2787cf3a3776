"""Test-side helpers for talking to the Realtime socket like a browser would."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import numpy as np
import soxr
from pydantic import TypeAdapter

from openai.types.realtime import RealtimeServerEvent

from realtime import RealtimeSession, Send, SessionConfig

SERVER_EVENTS = TypeAdapter(RealtimeServerEvent)
CHUNK_MS = 20


def to_rate(pcm16k: bytes, rate: int) -> bytes:
    if rate == 16000:
        return pcm16k
    samples = np.frombuffer(pcm16k, dtype="<i2")
    return soxr.resample(samples, 16000, rate).astype("<i2").tobytes()


def chunks(pcm: bytes, rate: int, ms: int = CHUNK_MS) -> list[bytes]:
    size = rate * ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# One spoken turn answered in text, as the client sees it: the fixed prologue, then one or more
# `response.output_text.delta`, then the fixed epilogue.
TURN_EVENTS = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "tutor.citations",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
TURN_END = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done", "conversation.item.done", "response.done",
            "tutor.response.metrics"]

KEEP = object()  # session_update: leave turn detection as it is


def session_update(rate: int = 16000, turn_detection: Any = KEEP) -> str:
    session: dict[str, Any] = {"type": "realtime",
                               "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate}}}}
    if turn_detection is not KEEP:
        session["audio"]["input"]["turn_detection"] = turn_detection
    return json.dumps({"type": "session.update", "session": session})


def append_event(chunk: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})


def check_shape(event: dict[str, Any]) -> None:
    """Every OpenAI-named event must validate against the SDK's own pydantic types."""
    if event["type"].startswith("tutor."):
        return
    if event["type"] in ("session.created", "session.updated"):
        rate = event["session"]["audio"]["input"]["format"].get("rate", 24000)
        if rate != 24000:  # the SDK types the rate as Literal[24000]; 16000 is our extension
            event = json.loads(json.dumps(event))
            event["session"]["audio"]["input"]["format"]["rate"] = 24000
    SERVER_EVENTS.validate_python(event)


class Conversation:
    """A plain `websockets` client that records every event and checks its shape."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.cursor = 0  # events before this index were already matched by `until`

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        check_shape(event)
        self.events.append(event)
        return event

    async def until(self, kind: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next event of this type not matched before, whether already read or still to come."""
        while True:
            for i in range(self.cursor, len(self.events)):
                if self.events[i]["type"] == kind:
                    self.cursor = i + 1
                    return self.events[i]
            self.cursor = len(self.events)
            await self.next(timeout)

    async def drain(self) -> None:
        """Read whatever has already arrived, without waiting."""
        while True:
            try:
                event = json.loads(await asyncio.wait_for(self.ws.recv(), 0.001))
            except (asyncio.TimeoutError, TimeoutError):
                return
            check_shape(event)
            self.events.append(event)

    async def sync(self) -> None:
        """Round-trip a no-op session.update: all earlier input has then been processed."""
        seen = self.count("session.updated")
        await self.ws.send(json.dumps({"type": "session.update", "session": {}}))
        while self.count("session.updated") == seen:
            await self.next()

    async def stream(self, pcm: bytes, rate: int, *, binary: bool = True, polite: bool = True) -> None:
        """Send audio in 20 ms chunks as fast as the socket takes it. A polite student waits
        for the tutor's answer after each turn, as a person would, before speaking on."""
        for chunk in chunks(pcm, rate):
            await self.ws.send(chunk if binary else append_event(chunk))
            await self.drain()
            if polite and self.count("input_audio_buffer.speech_stopped") > self.count("response.done"):
                await self.until("response.done")
        await self.sync()

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e["type"] == kind)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def sse_events(body: str) -> list[tuple[str, Any]]:
    """Server-Sent Events (`event:` and JSON `data:` lines) of a whole response body."""
    out = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


async def api_token(server: str) -> str:
    """An API token of the local guest (dev mode), as a program would use for the SDK."""
    async with httpx.AsyncClient() as client:
        r = await client.post(f"http://{server}/api/auth/token", json={"name": "sdk test"})
    assert r.status_code == 201
    return r.json()["token"]


# -- the protocol core driven by plain calls (no socket): a session, what it sent, audio fed in
def core_session(**kw: Any) -> RealtimeSession:
    s = RealtimeSession(SessionConfig(instructions="tutor", model="m", input_rate=16000, **kw))
    s.open()
    return s


def sent(actions: list) -> list[dict[str, Any]]:
    """The events among `actions`, each checked against the SDK's own types."""
    events = [a.event for a in actions if isinstance(a, Send)]
    for e in events:
        check_shape(e)
    return events


def feed(s: RealtimeSession, pcm: bytes, t0: float = 0.0, chunk: int = 640) -> list:
    """16 kHz PCM into the core in 20 ms chunks, 20 ms apart from `t0`: its actions."""
    out = []
    for k, i in enumerate(range(0, len(pcm), chunk)):
        out += s.receive_audio(pcm[i: i + chunk], t0 + k * 0.02)
    return out
