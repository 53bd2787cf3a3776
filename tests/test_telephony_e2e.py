"""G.711 sessions over the socket, as a telephony bridge uses them: the caller's speech arrives
as 8 kHz µ-law (or A-law) and the tutor's spoken answer leaves in the same format."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import websockets

from audio.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, append_event, chunks, to_rate

CODECS = {"audio/pcmu": (ulaw_encode, ulaw_decode), "audio/pcma": (alaw_encode, alaw_decode)}


@pytest.mark.parametrize("kind", sorted(CODECS))
async def test_a_g711_call_is_heard_and_answered_in_kind(kind, fake, start_server):
    encode, decode = CODECS[kind]
    fake.behaviour.reply = "A fraction is a part of a whole."
    fake.behaviour.tts_ms_per_char = 4
    fake.behaviour.tts_audio = np.full(2400, 4000, dtype="<i2").tobytes()  # a constant level
    address = await start_server(make_settings(fake))
    pcm8k = to_rate(read_pcm("q_fractions.wav"), 8000)
    async with websockets.connect(f"ws://{address}/v1/realtime") as ws:
        conv = Conversation(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": kind}}, "output": {"format": {"type": kind}}}}}))
        updated = await conv.until("session.updated")
        assert updated["session"]["audio"]["input"]["format"] == {"type": kind}
        assert updated["session"]["audio"]["output"]["format"] == {"type": kind}
        for chunk in chunks(encode(pcm8k + bytes(8000 * 2)), 8000, ms=40):  # 1 s of silence after
            await ws.send(append_event(chunk))  # 320 G.711 bytes = 40 ms
        done = await conv.until("response.done", timeout=15)
    assert done["response"]["status"] == "completed"
    assert done["response"]["audio"]["output"]["format"] == {"type": kind}
    # the turn was cut where the speech is: the fake transcriber got the 16 kHz WAV of it
    [heard] = fake.transcriptions
    assert heard["rate"] == 16000 and 2.0 < heard["seconds"] < len(pcm8k) / 16000 + 0.5
    stopped = conv.of("input_audio_buffer.speech_stopped")[0]
    assert 2000 < stopped["audio_end_ms"] <= len(pcm8k) / 16 + 700  # ms of the 8 kHz audio
    # the answer's audio: one byte a sample at 8 kHz, the level the provider spoke at
    audio = b"".join(base64.b64decode(e["delta"]) for e in conv.of("response.output_audio.delta"))
    spoken_s = sum(len(s["input"]) for s in fake.speeches) * 4 / 1000
    assert abs(len(audio) / 8000 - spoken_s) < 0.05
    level = np.frombuffer(decode(audio), dtype="<i2")[400:-400]
    assert abs(np.median(level) - 4000) < 200
