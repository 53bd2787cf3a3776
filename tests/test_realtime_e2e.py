"""End to end: the real app under uvicorn, real sockets, the real `openai` SDK, a loopback fake
provider. Every corpus file is streamed in 20 ms chunks and the events are checked against the
manifest, through a plain `websockets` client and through `AsyncOpenAI().realtime.connect()`."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import websockets
from openai import AsyncOpenAI

from tests.conftest import CORPUS_FILES, expected_turns, make_settings, read_pcm
from tests.realtime_client import (TURN_END, TURN_EVENTS, Conversation, api_token, check_shape,
                                   chunks, session_update, to_rate)



def check_turns(conv: Conversation, n: int) -> None:
    types = [t for t in conv.types()
             if t not in ("session.created", "session.updated", "tutor.session.resumable")]
    for i in range(n):  # each turn: the fixed prologue, ≥1 delta, the fixed epilogue
        assert types[: len(TURN_EVENTS)] == TURN_EVENTS, f"turn {i}: {types[:12]}"
        types = types[len(TURN_EVENTS):]
        deltas = 0
        while types and types[0] == "response.output_text.delta":
            types, deltas = types[1:], deltas + 1
        assert deltas > 0
        assert types[: len(TURN_END)] == TURN_END
        types = types[len(TURN_END):]
    assert types == [], types
    dones = conv.of("response.done")
    assert len(dones) == n and all(d["response"]["status"] == "completed" for d in dones)
    # what the fake transcriber heard matches the turn the server cut
    for start, stop, text in zip(conv.of("input_audio_buffer.speech_started"),
                                 conv.of("input_audio_buffer.speech_stopped"),
                                 conv.of("conversation.item.input_audio_transcription.completed")):
        assert start["item_id"] == stop["item_id"] == text["item_id"]
        seconds = (stop["audio_end_ms"] - start["audio_start_ms"]) / 1000
        assert text["transcript"] == f"[{seconds:.2f} s of audio at 16000 Hz]"
    for metrics in conv.of("tutor.response.metrics"):  # stage latencies of each spoken turn
        assert metrics["end_of_turn_to_first_delta_ms"] >= metrics["stt_ms"] > 0
        assert metrics["server_ms"] == pytest.approx(
            metrics["end_of_turn_to_first_delta_ms"] - metrics["stt_ms"]
            - metrics["llm_first_token_ms"] - metrics["retrieval_ms"], abs=0.01)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "append"])
@pytest.mark.parametrize("name", CORPUS_FILES)
async def test_corpus_over_websocket(server, name, binary):
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        assert (await conv.next())["type"] == "session.created"
        await ws.send(session_update(16000))
        await conv.until("session.updated")
        await conv.stream(read_pcm(name), 16000, binary=binary)
        check_turns(conv, expected_turns(name))


@pytest.mark.parametrize("name", CORPUS_FILES)
async def test_corpus_through_the_openai_sdk(server, fake, name):
    client = AsyncOpenAI(api_key=await api_token(server), websocket_base_url=f"ws://{server}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        first = await conn.recv()
        assert first.type == "session.created" and first.session.type == "realtime"
        await conn.session.update(session={"type": "realtime", "instructions": "Be brief.",
                                           "audio": {"input": {"format": {"type": "audio/pcm",
                                                                          "rate": 24000}}}})
        event = await conn.recv()
        while event.type.startswith("tutor."):  # our extensions (tutor.session.resumable)
            event = await conn.recv()
        assert event.type == "session.updated"
        pcm = to_rate(read_pcm(name), 24000)
        seen: list = []

        async def receive(wait: float) -> None:
            while True:
                try:
                    seen.append(await asyncio.wait_for(conn.recv(), wait))
                except (asyncio.TimeoutError, TimeoutError):
                    return
                if wait > 0.01 and seen[-1].type == "response.done":
                    return

        def count(kind: str) -> int:
            return sum(e.type == kind for e in seen)

        for chunk in chunks(pcm, 24000):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
            await receive(0.001)
            if count("input_audio_buffer.speech_stopped") > count("response.done"):
                await receive(5)  # a polite student waits for the answer
        await receive(0.3)
        turns = expected_turns(name)
        assert count("input_audio_buffer.speech_started") == turns
        assert [e.response.status for e in seen if e.type == "response.done"] == ["completed"] * turns
    # the session's instructions, followed by what retrieval adds
    assert [c["messages"][0]["content"].split("\n")[0] for c in fake.chats] == ["Be brief."] * turns
    assert all(t["rate"] == 16000 for t in fake.transcriptions)


async def test_sdk_text_turn(server):
    client = AsyncOpenAI(api_key=await api_token(server), websocket_base_url=f"ws://{server}/v1")
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.conversation.item.create(item={"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "2+2?"}]})
        await conn.response.create()
        text = []
        async for event in conn:
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            if event.type == "response.done":
                break
    assert "".join(text) == "Good question! Let us work it out. You said: 2+2?"


async def test_barge_in_cancels_the_answer(server, fake):
    fake.behaviour.token_delay = 0.05  # a long, slow answer
    fake.behaviour.reply = "word " * 200
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_derivative.wav"), 16000, polite=False)
        await conv.until("response.output_text.delta")
        fake.behaviour.reply = "Here is a hint."  # what the next request will get
        # the student speaks again while the tutor is answering
        await conv.stream(read_pcm("q_fractions.wav"), 16000, polite=False)
        while conv.count("response.done") < 2:
            await conv.next()
        cancelled, answered = conv.of("response.done")
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        barge_in = conv.of("input_audio_buffer.speech_started")[1]
        # cancellation follows the new speech at once: nothing of the old answer in between
        between = conv.events[conv.events.index(barge_in) + 1 : conv.events.index(cancelled)]
        assert [e["type"] for e in between] == [
            "response.output_text.done", "response.content_part.done", "response.output_item.done",
            "conversation.item.done"]
        late = [e for e in conv.events[conv.events.index(cancelled) + 1 :]
                if e.get("response_id") == cancelled["response"]["id"]]
        assert late == []
        assert answered["response"]["status"] == "completed"
        assert answered["response"]["output"][0]["content"][0]["text"] == "Here is a hint."
    history = fake.chats[-1]["messages"]
    assert history[2]["role"] == "assistant" and history[2]["content"].startswith("word ")
    assert len(history[2]["content"]) < len("word " * 200)


async def test_response_cancel_by_client(server, fake):
    fake.behaviour.token_delay = 0.05
    fake.behaviour.reply = "word " * 100
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        await conv.until("response.output_text.delta")
        await ws.send(json.dumps({"type": "response.cancel"}))
        done = await conv.until("response.done")
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        await ws.send(json.dumps({"type": "response.cancel", "event_id": "ev_x"}))
        err = await conv.until("error")
        assert (err["error"]["code"], err["error"]["event_id"]) == ("response_cancel_not_active", "ev_x")


async def test_manual_commit_mode(server, fake):
    async with websockets.connect(f"ws://{server}/v1/realtime") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000, turn_detection=None))
        updated = await conv.until("session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        pcm = read_pcm("conversation.wav")  # three utterances, but nobody listens for pauses
        await conv.stream(pcm, 16000)
        assert conv.count("input_audio_buffer.speech_started") == 0
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await ws.send(json.dumps({"type": "response.create"}))
        text = await conv.until("conversation.item.input_audio_transcription.completed")
        seconds = len(pcm) / 32000
        assert text["transcript"] == f"[{seconds:.2f} s of audio at 16000 Hz]"
        done = await conv.until("response.done")
        assert done["response"]["status"] == "completed"
        await ws.send(json.dumps({"type": "input_audio_buffer.commit", "event_id": "c2"}))
        err = await conv.until("error")
        assert err["error"]["code"] == "input_audio_buffer_commit_empty"
        await ws.send(chunks(pcm, 16000)[30])
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await conv.until("input_audio_buffer.cleared")
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        assert (await conv.until("error"))["error"]["code"] == "input_audio_buffer_commit_empty"
    assert len(fake.transcriptions) == 1


async def test_text_turns_keep_history(server, fake):
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        for question in ("What is a fraction?", "And a decimal?"):
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": question}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            await conv.until("response.done")
    roles = [(m["role"], m["content"][:10]) for m in fake.chats[-1]["messages"]]
    assert roles[1:] == [("user", "What is a "), ("assistant", "Good quest"), ("user", "And a deci")]


BAD_INPUT = [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_json"),
    ('{"no_type": 1}', "missing_required_parameter"),
    ('{"type": "no.such.event"}', "unknown_event_type"),
    ('{"type": "conversation.item.delete", "item_id": "x"}', "item_not_found"),
    ('{"type": "conversation.item.retrieve", "item_id": "x"}', "item_not_found"),
    ('{"type": "transcription_session.update", "session": {}}', "unsupported_event"),
    ('{"type": "conversation.item.truncate"}', "missing_required_parameter"),
    ('{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": -1}',
     "invalid_value"),
    ('{"type": "conversation.item.truncate", "item_id": "x", "audio_end_ms": 5}',
     "item_truncate_invalid_item_id"),
    ('{"type": "output_audio_buffer.clear"}', "response_cancel_not_active"),
    ('{"type": "session.update", "session": {"output_modalities": ["text", "audio"]}}',
     "invalid_value"),
    ('{"type": "session.update", "session": {"audio": {"output": {"voice": "robot"}}}}',
     "invalid_value"),
    ('{"type": "session.update", "session": {"audio": {"output": {"format": '
     '{"type": "audio/pcm", "rate": 16000}}}}}', "unsupported_audio_format"),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter"),
    ('{"type": "input_audio_buffer.append", "audio": "%%%not-base64"}', "invalid_base64"),
    ('{"type": "input_audio_buffer.append", "audio": "AAEC"}', "invalid_audio_length"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": '
     '{"type": "audio/pcm", "rate": 44100}}}}}', "unsupported_sample_rate"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": '
     '{"type": "audio/pcmu", "rate": 16000}}}}}', "unsupported_sample_rate"),
    ('{"type": "session.update", "session": {"audio": {"input": {"format": '
     '{"type": "audio/opus"}}}}}', "unsupported_audio_format"),
    ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection": '
     '{"type": "server_vad", "threshold": 7}}}}}', "invalid_value"),
    ('{"type": "session.update"}', "missing_required_parameter"),
    ('{"type": "conversation.item.create", "item": {"type": "message", "role": "user"}}',
     "missing_required_parameter"),
    ('{"type": "response.cancel"}', "response_cancel_not_active"),
]


async def test_bad_input_gets_precise_errors_and_the_session_survives(server):
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await conv.until("session.created")
        for i, (message, code) in enumerate(BAD_INPUT):
            if message.startswith("{") and '"type"' in message:
                message = message[:-1] + f', "event_id": "bad{i}"}}'
            await ws.send(message)
            err = await conv.until("error")
            assert err["error"]["code"] == code, message
            if '"type"' in message:
                assert err["error"]["event_id"] == f"bad{i}"
        await ws.send(b"\x00\x01\x02")  # odd-length binary frame
        assert (await conv.until("error"))["error"]["code"] == "invalid_audio_length"
        # after all that, a normal spoken turn still works
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000)
        assert conv.of("response.done")[-1]["response"]["status"] == "completed"


async def test_oversized_messages(fake, start_server):
    server = await start_server(make_settings(fake, max_message_bytes=4096, ws_max_size=16384))
    async with websockets.connect(f"ws://{server}/api/voice", max_size=None, compression=None) as ws:
        conv = Conversation(ws)
        await ws.send(b"\x00" * 8000)  # over the message limit: an error event, socket stays open
        assert (await conv.until("error"))["error"]["code"] == "message_too_large"
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": base64.b64encode(b"\x00" * 4000).decode()}))
        assert (await conv.until("error"))["error"]["code"] == "message_too_large"
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000)  # the session still works
        assert conv.of("response.done")[-1]["response"]["status"] == "completed"
        await ws.send(b"\x00" * 20000)  # over the WebSocket layer's hard cap: closed with 1009
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await conv.next()
        assert info.value.rcvd.code == 1009


async def test_audio_faster_than_real_time_is_refused(fake, start_server):
    server = await start_server(make_settings(fake, audio_burst_ms=1000))
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.until("session.updated")
        pcm = read_pcm("q_war.wav")  # ~5 s of audio, sent in one go
        for chunk in chunks(pcm, 16000):
            await ws.send(chunk)
        await conv.sync()
        errors = conv.of("error")
        assert errors and {e["error"]["code"] for e in errors} == {"input_audio_rate_exceeded"}
        accepted_ms = (len(chunks(pcm, 16000)) - len(errors)) * 20
        assert 1000 <= accepted_ms < 1300  # the burst, plus what real time added meanwhile
        # streamed in real time, as a microphone does (after a moment's pause, so the
        # allowance is not still at zero), the next question goes through whole
        await asyncio.sleep(0.2)
        start = asyncio.get_running_loop().time()
        for k, chunk in enumerate(chunks(read_pcm("q_french.wav"), 16000)):
            await asyncio.sleep(max(0, start + k * 0.02 - asyncio.get_running_loop().time()))
            await ws.send(chunk)
        done = await conv.until("response.done")
        assert done["response"]["status"] == "completed"
        assert len(conv.of("error")) == len(errors)


async def test_turn_longer_than_maximum(fake, start_server):
    server = await start_server(make_settings(fake, max_turn_ms=2000))
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("hesitation.wav"), 16000, polite=False)
        err = await conv.until("error")
        assert err["error"]["code"] == "input_audio_turn_too_long"
        stopped = await conv.until("input_audio_buffer.speech_stopped")
        start = conv.of("input_audio_buffer.speech_started")[0]
        assert stopped["audio_end_ms"] - start["audio_start_ms"] == 2010  # 67 frames of 30 ms
        await conv.until("response.done")


@pytest.mark.parametrize("failure, code", [("500", "provider_error"),
                                           ("timeout", "provider_timeout"),
                                           ("cut", "provider_stream_interrupted"),
                                           ("stall", "provider_timeout")])
async def test_chat_provider_failures(server, fake, failure, code):
    fake.behaviour.chat_failures = [failure]
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_derivative.wav"), 16000, polite=False)
        err = await conv.until("error", timeout=10)
        assert err["error"]["code"] == code
        done = await conv.until("response.done")
        assert done["response"]["status"] == "failed"
        assert done["response"]["status_details"]["error"]["code"] == code
        # the next turn works
        await conv.stream(read_pcm("q_war.wav"), 16000)
        assert conv.of("response.done")[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize("failure, code", [("500", "provider_error"), ("timeout", "provider_timeout")])
async def test_transcription_failures(server, fake, failure, code):
    fake.behaviour.stt_failures = [failure]
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_derivative.wav"), 16000, polite=False)
        failed = await conv.until("conversation.item.input_audio_transcription.failed", timeout=10)
        assert failed["error"]["code"] == code
        assert (await conv.until("error"))["error"]["code"] == code
        await conv.stream(read_pcm("q_war.wav"), 16000, polite=False)
        assert (await conv.until("response.done"))["response"]["status"] == "completed"
        assert conv.count("response.done") == 1


async def test_no_provider_configured(start_server):
    server = await start_server(make_settings(None))
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        conv = Conversation(ws)
        await conv.until("session.created")
        err = await conv.until("error")
        assert err["error"]["code"] == "provider_not_configured"
        assert "OPENAI_API_KEY" in err["error"]["message"]
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_war.wav"), 16000, polite=False)
        # VAD still works; the turn's transcription fails with the same clear reason
        failed = await conv.until("conversation.item.input_audio_transcription.failed")
        assert failed["error"]["code"] == "provider_not_configured"


async def test_server_events_parse_with_the_sdk_types(server):
    async with websockets.connect(f"ws://{server}/api/voice") as ws:
        raw = json.loads(await ws.recv())
    check_shape(raw)
    assert raw["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
