"""Spoken answers end to end: the answer is cut into sentences as it streams, each goes to the
fake provider's `/v1/audio/speech` (streamed PCM) while the next is being written, and the audio
comes back in order, as `response.output_audio.delta` events or as binary frames. Barge-in stops
it at once and the tutor remembers only what was heard; `conversation.item.truncate` too."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import pytest
import websockets

from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update

AUDIO = {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["audio"],
                                               "audio": {"output": {"voice": "coral"}}}}
SENTENCES = ["Fractions are parts of a whole.",
             "To add two fractions, first find a common denominator.",
             "Then add the numerators, and keep the denominator.", "Simplify at the end!"]
REPLY = " ".join(SENTENCES)


@pytest.fixture(autouse=True)
def short_speech(fake):
    fake.behaviour.tts_ms_per_char = 4  # audio goes out at playback pace: keep answers short


async def spoken_session(address: str, conv_params: str = "") -> tuple:
    ws = await websockets.connect(f"ws://{address}/api/voice{conv_params}")
    conv = Conversation(ws)
    await ws.send(session_update(16000))
    await ws.send(json.dumps(AUDIO))
    await conv.until("session.updated")
    updated = await conv.until("session.updated")
    assert updated["session"]["output_modalities"] == ["audio"]
    assert updated["session"]["audio"]["output"]["voice"] == "coral"
    return ws, conv


async def test_a_spoken_answer_streams_its_audio_in_order(fake, start_server):
    fake.behaviour.reply = REPLY
    fake.behaviour.tts_audio = lambda text: struct.pack("<h", len(text))
    address = await start_server(make_settings(fake))
    ws, conv = await spoken_session(address)
    async with ws:
        await conv.stream(read_pcm("q_fractions.wav"), 16000)  # waits for the answer
        metrics = await conv.until("tutor.response.metrics")
        [done] = conv.of("response.done")
    types = conv.types()
    assert done["response"]["status"] == "completed"
    assert done["response"]["output_modalities"] == ["audio"]
    assert done["response"]["output"][0]["content"] == [{"type": "output_audio",
                                                         "transcript": REPLY}]
    assert conv.of("response.content_part.added")[0]["part"] == {"type": "audio",
                                                                 "transcript": ""}
    assert "response.output_text.delta" not in types
    transcript = "".join(e["delta"] for e in conv.of("response.output_audio_transcript.delta"))
    assert transcript == REPLY
    # one synthesis per sentence (two at a time, so they may arrive in either order)
    assert sorted(s["input"] for s in fake.speeches) == sorted([
        "Fractions are parts of a whole.", "To add two fractions, first find a common "
        "denominator.", "Then add the numerators, and keep the denominator.",
        "Simplify at the end!"])
    assert {s["voice"] for s in fake.speeches} == {"coral"}
    assert {s["response_format"] for s in fake.speeches} == {"pcm"}
    audio = b"".join(base64.b64decode(e["delta"]) for e in conv.of("response.output_audio.delta"))
    assert len(audio) == sum(int(len(s["input"]) * 4 * 24) * 2 for s in fake.speeches)
    # each sentence's audio is one constant sample (its length): they came in reply order
    values = np.frombuffer(audio, "<i2")
    runs = [int(v) for k, v in enumerate(values) if k == 0 or v != values[k - 1]]
    assert runs == [len(s) for s in SENTENCES]
    # the closing events come after the last audio, in the protocol's order
    tail = [t for t in types if t not in ("response.output_audio.delta",
                                          "response.output_audio_transcript.delta")]
    i = tail.index("response.output_audio.done")
    assert tail[i:i + 6] == ["response.output_audio.done", "response.output_audio_transcript.done",
                             "response.content_part.done", "response.output_item.done",
                             "conversation.item.done", "response.done"]
    assert types.index("response.output_audio.done") > max(
        i for i, t in enumerate(types) if t == "response.output_audio.delta")
    assert metrics["first_audio_after_first_delta_ms"] > 0


async def test_binary_frames_for_our_own_client(fake, start_server):
    fake.behaviour.reply = REPLY
    address = await start_server(make_settings(fake))
    ws, conv = await spoken_session(address, "?audio=binary")
    frames = []
    async with ws:
        for chunk in [read_pcm("q_war.wav")[i:i + 640] for i in range(0, 2 * 16000 * 5, 640)]:
            await ws.send(chunk)
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                frames.append(message)
                continue
            event = json.loads(message)
            conv.events.append(event)
            if event["type"] == "response.done":
                break
    assert "response.output_audio.delta" not in conv.types()
    assert sum(len(f) for f in frames) == sum(int(len(s["input"]) * 4 * 24) * 2
                                              for s in fake.speeches)
    assert all(len(f) % 2 == 0 for f in frames)


async def test_barge_in_stops_the_audio_and_keeps_only_what_was_heard(fake, start_server):
    fake.behaviour.reply = REPLY
    fake.behaviour.tts_ms_per_char = 60  # a long answer, still being heard when interrupted
    address = await start_server(make_settings(fake, echo_guard_ms=0))
    ws, conv = await spoken_session(address)
    async with ws:
        await conv.stream(read_pcm("q_fractions.wav"), 16000, polite=False)
        await conv.until("response.output_audio.delta")
        fake.behaviour.tts_ms_per_char = 4  # (so the next answer is quick to hear out)
        await conv.stream(read_pcm("q_war.wav"), 16000, polite=False)  # the student cuts in
        cleared = await conv.until("output_audio_buffer.cleared")
        cut = await conv.until("response.done")
        await conv.until("response.done")  # the answer to the new question
    first_id = conv.of("response.created")[0]["response"]["id"]
    assert cleared["response_id"] == first_id
    assert cut["response"]["id"] == first_id and cut["response"]["status"] == "cancelled"
    heard = cut["response"]["output"][0]["content"][0]["transcript"]
    assert len(heard) < len(REPLY) and REPLY.startswith(heard)
    # nothing of the cut answer after the cut
    after = conv.types()[conv.types().index("output_audio_buffer.cleared"):]
    ids = [e.get("response_id") for e in conv.events[len(conv.types()) - len(after):]
           if e["type"] == "response.output_audio.delta"]
    assert first_id not in ids
    # the tutor remembers what the student heard, not the whole answer
    history = fake.chats[-1]["messages"]
    said = [m["content"] for m in history if m["role"] == "assistant"]
    assert said == ([heard] if heard else [])


async def test_truncate_shortens_what_the_tutor_remembers(fake, start_server):
    fake.behaviour.reply = REPLY
    address = await start_server(make_settings(fake))
    ws, conv = await spoken_session(address)
    async with ws:
        await conv.stream(read_pcm("q_fractions.wav"), 16000)
        [done] = conv.of("response.done")
        item_id = done["response"]["output"][0]["id"]
        await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": item_id,
                                  "content_index": 0, "audio_end_ms": 100}))
        truncated = await conv.until("conversation.item.truncated")
        await ws.send(json.dumps({"type": "conversation.item.truncate", "item_id": "nope",
                                  "content_index": 0, "audio_end_ms": 10}))
        error = await conv.until("error")
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "and then?"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        await conv.until("response.done")
    assert truncated["audio_end_ms"] == 100 and truncated["item_id"] == item_id
    assert error["error"]["code"] == "item_truncate_invalid_item_id"
    remembered = [m["content"] for m in fake.chats[-1]["messages"] if m["role"] == "assistant"]
    # 100 ms at 4 ms a character: within the first sentence (31 characters, 124 ms)
    assert remembered[0] and REPLY.startswith(remembered[0]) and len(remembered[0]) < 31


async def test_a_failed_synthesis_is_reported_and_the_answer_still_completes(fake, start_server):
    fake.behaviour.reply = REPLY
    fake.behaviour.tts_failures = ["500"]
    address = await start_server(make_settings(fake))
    ws, conv = await spoken_session(address)
    async with ws:
        await conv.stream(read_pcm("q_fractions.wav"), 16000)
        [done] = conv.of("response.done")
    errors = [e["error"]["code"] for e in conv.of("error")]
    assert errors == ["provider_error"]
    assert done["response"]["status"] == "completed"
    assert conv.of("response.output_audio.delta")  # the other sentences were spoken


async def test_a_plan_without_spoken_answers_stays_text(fake, start_server, tmp_path):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {"free": {"features": []}}, "default": "free"}))
    address = await start_server(make_settings(fake, tiers_file=path, guest_tier="free"))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(json.dumps(AUDIO))
        error = await conv.until("error")
    assert error["error"]["code"] == "feature_not_available"
    assert error["error"]["param"] == "session.output_modalities"
    assert conv.of("session.created")[0]["session"]["output_modalities"] == ["text"]
