"""Speculative turn ends end to end: the real app under uvicorn, real sockets, the `openai` SDK
against the loopback fake provider, corpus speech. What is checked is what a client and an
operator can see: the events (nothing of discarded work), the provider calls made, and the
speculation counters on `/metrics`. How much latency it saves is measured in `bench/`."""

from __future__ import annotations

import json

import httpx
import websockets

from tests.conftest import make_settings, read_pcm
from tests.realtime_client import TURN_END as END, TURN_EVENTS as TURN, Conversation, session_update
from tests.test_metrics import samples

def check_turns(conv: Conversation, n: int) -> None:
    """Each turn exactly as without speculation: prologue, deltas, epilogue; nothing else."""
    types = [t for t in conv.types()
             if t not in ("session.created", "session.updated", "tutor.session.resumable",
                          "rate_limits.updated", "tutor.rate_limits.updated")]
    for i in range(n):
        assert types[: len(TURN)] == TURN, f"turn {i}: {types[:12]}"
        types = types[len(TURN):]
        deltas = 0
        while types and types[0] == "response.output_text.delta":
            types, deltas = types[1:], deltas + 1
        assert deltas > 0 and types[: len(END)] == END
        types = types[len(END):]
    assert types == []
    # each answer answers its own turn's transcript (the fake quotes the student's words)
    for text, done in zip(conv.of("conversation.item.input_audio_transcription.completed"),
                          conv.of("response.done")):
        assert done["response"]["status"] == "completed"
        answer = done["response"]["output"][0]["content"][0]["text"]
        assert answer.endswith("You said: " + text["transcript"])


async def metrics(address: str) -> dict:
    async with httpx.AsyncClient() as client:
        return samples((await client.get(f"http://{address}/metrics")).text)


async def talk(address: str, name: str, update: str | None = None) -> Conversation:
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(update or session_update(16000))
        await conv.until("session.updated")
        await conv.stream(read_pcm(name), 16000)
    return conv


async def test_every_turn_of_the_conversation_uses_its_guess_and_nothing_is_wasted(
        fake, start_server):
    address = await start_server(make_settings(fake, speculative=True))
    conv = await talk(address, "conversation.wav")
    check_turns(conv, 3)
    # one transcription and one completion per turn: the guesses were the turns
    assert len(fake.transcriptions) == 3 and len(fake.chats) == 3
    assert all(m["speculative"] is True and m["transcript_wait_ms"] >= 0
               for m in conv.of("tutor.response.metrics"))
    m = await metrics(address)
    assert m[("tutor_speculations_total", (("outcome", "hit"),))] == 3
    assert ("tutor_speculations_total", (("outcome", "miss"),)) not in m
    assert m[("tutor_speculative_calls_total", (("kind", "stt"), ("result", "used")))] == 3
    assert ("tutor_speculative_calls_total", (("kind", "stt"), ("result", "wasted"))) not in m
    assert m[("tutor_stage_seconds_count", (("stage", "transcript_wait"),))] == 3


async def test_a_hesitation_wastes_one_guess_and_the_client_sees_one_clean_turn(
        fake, start_server):
    address = await start_server(make_settings(fake, speculative=True))
    conv = await talk(address, "hesitation.wav")
    check_turns(conv, 1)
    assert len(fake.transcriptions) == 2  # the pause spoken through, then the real end
    # the guess at the hesitation heard only the start of the question
    assert fake.transcriptions[0]["seconds"] < fake.transcriptions[1]["seconds"]
    m = await metrics(address)
    assert m[("tutor_speculations_total", (("outcome", "miss"),))] == 1
    assert m[("tutor_speculations_total", (("outcome", "hit"),))] == 1
    assert m[("tutor_speculative_calls_total", (("kind", "stt"), ("result", "wasted")))] == 1
    # an answer may have been started for the guess (its transcript came fast): it is counted
    # as wasted and never reached the client (check_turns saw one answer)
    wasted_llm = m.get(("tutor_speculative_calls_total", (("kind", "llm"), ("result", "wasted"))),
                       0)
    assert len(fake.chats) == 1 + wasted_llm


async def test_a_plan_without_speculation_and_a_session_that_turns_it_off(fake, start_server):
    address = await start_server(make_settings(fake, speculative=True, guest_tier="free"))
    conv = await talk(address, "conversation.wav")
    td = conv.of("session.updated")[0]["session"]["audio"]["input"]["turn_detection"]
    assert td["speculative"] is False
    check_turns(conv, 3)
    assert len(fake.transcriptions) == 3
    assert not any("speculative" in m for m in conv.of("tutor.response.metrics"))
    assert not [k for k in await metrics(address) if k[0].startswith("tutor_specul")]

    fake.transcriptions.clear()
    address = await start_server(make_settings(fake, speculative=True))
    update = json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "format": {"type": "audio/pcm", "rate": 16000},
        "turn_detection": {"type": "server_vad", "speculative": False}}}}})
    conv = await talk(address, "hesitation.wav", update)
    check_turns(conv, 1)
    assert len(fake.transcriptions) == 1
    assert not [k for k in await metrics(address) if k[0].startswith("tutor_specul")]


async def test_a_spoken_answer_of_a_speculative_turn(fake, start_server):
    fake.behaviour.reply = "In 1945."  # half a second of speech, played in real time
    address = await start_server(make_settings(fake, speculative=True))
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(json.dumps({"type": "session.update", "session": {
            "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}}))
        await conv.until("session.updated")
        await conv.stream(read_pcm("q_war.wav"), 16000)  # waits for the answer to end
    [done] = conv.of("response.done")
    assert done["response"]["status"] == "completed"
    assert conv.count("response.output_audio.delta") > 0
    assert conv.of("tutor.response.metrics")[0]["speculative"] is True
    assert len(fake.transcriptions) == 1
