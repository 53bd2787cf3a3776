"""Beta-protocol clients (`OpenAI-Beta: realtime=v1`): their events become GA for the core, and
the core's GA events become beta ones that the SDK's own beta types accept, field for field."""

from __future__ import annotations

import asyncio
import base64
import json
import typing
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.beta import realtime as beta_types
from openai.types import realtime as ga_types
from pydantic import BaseModel, TypeAdapter
from starlette.datastructures import Headers, QueryParams

from realtime.beta import (BETA_MODELS, GA_ONLY, client_text_to_ga, client_to_ga, ga_to_client,
                         is_beta)
from realtime import Generate, RealtimeSession, Send, SessionConfig, Synthesize
from tests.realtime_client import api_token

BETA_SERVER = TypeAdapter(beta_types.RealtimeServerEvent)
BETA_CLIENT = TypeAdapter(beta_types.RealtimeClientEvent)
GA_CLIENT = TypeAdapter(ga_types.RealtimeClientEvent)

# Fields the beta types do not declare but that a beta client is fine to see: the real beta
# server sent `object` on its session, and `speculative` is our turn-detection extension.
TOLERATED = {"session.object", "session.turn_detection.speculative"}


def undeclared(model: Any, path: str = "") -> list[str]:
    """Every field of a validated SDK model that its type does not declare (the SDK's models
    accept extra fields, so a GA name left untranslated would otherwise validate)."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        found += [f"{path}{name}" for name in (model.model_extra or {})]
        for name in type(model).model_fields:
            found += undeclared(getattr(model, name), f"{path}{name}.")
    elif isinstance(model, list):
        for value in model:
            found += undeclared(value, path)
    return [p.rstrip(".") for p in found]


def strictly(adapter: TypeAdapter, event: dict[str, Any], tolerated: set[str] = TOLERATED
             ) -> BaseModel:
    model = adapter.validate_python(event)
    extra = set(undeclared(model)) - tolerated
    assert not extra, f"{event['type']}: fields the type does not declare: {sorted(extra)}"
    return model


def beta_event(ga_event: dict[str, Any]) -> dict[str, Any]:
    event = ga_to_client(ga_event)
    assert event is not None, ga_event["type"]
    strictly(BETA_SERVER, event)
    return event


# -- client events ------------------------------------------------------------------------------

BETA_SESSION_UPDATE = {  # what beta clients (openai-realtime-api-beta, browser demos) send
    "type": "session.update",
    "event_id": "evt_client_1",
    "session": {
        "modalities": ["text", "audio"],
        "instructions": "You are a patient maths tutor.",
        "voice": "sage",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper-1", "language": "en"},
        "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                           "silence_duration_ms": 500, "create_response": True},
        "tools": [{"type": "function", "name": "show_formula",
                   "description": "Show a formula on the whiteboard",
                   "parameters": {"type": "object",
                                  "properties": {"latex": {"type": "string"}}}}],
        "tool_choice": "auto",
        "max_response_output_tokens": "inf",
        "speed": 1.1,
    },
}


def test_a_beta_session_update_becomes_the_ga_session_it_means():
    strictly(BETA_CLIENT, BETA_SESSION_UPDATE, set())  # the example is itself valid beta
    ga = client_to_ga(BETA_SESSION_UPDATE)
    assert ga == {
        "type": "session.update",
        "event_id": "evt_client_1",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": "You are a patient maths tutor.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                       "prefix_padding_ms": 300, "silence_duration_ms": 500,
                                       "create_response": True},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage",
                           "speed": 1.1},
            },
            "tools": BETA_SESSION_UPDATE["session"]["tools"],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
        },
    }
    strictly(GA_CLIENT, ga, set())
    assert "modalities" in BETA_SESSION_UPDATE["session"]  # the client's dict is left as it was


def test_g711_formats_null_settings_and_text_only_answers_translate_too():
    ga = client_to_ga({"type": "session.update", "session": {
        "modalities": ["text"], "input_audio_format": "g711_ulaw",
        "output_audio_format": "g711_alaw", "turn_detection": None,
        "input_audio_transcription": None}})
    assert ga["session"] == {
        "type": "realtime", "output_modalities": ["text"],
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "turn_detection": None,
                            "transcription": None},
                  "output": {"format": {"type": "audio/pcma"}}}}
    strictly(GA_CLIENT, ga, set())


def test_a_beta_response_create_and_an_assistant_item_become_ga():
    create = {"type": "response.create", "response": {
        "modalities": ["audio", "text"], "voice": "alloy", "output_audio_format": "pcm16",
        "instructions": "Answer in one sentence.", "max_response_output_tokens": 200,
        "tool_choice": {"type": "function", "function": {"name": "show_formula"}},
        "conversation": "none", "metadata": {"topic": "fractions"},
        "input": [{"type": "message", "role": "assistant",
                   "content": [{"type": "text", "text": "Half of six is three."}]}]}}
    ga = client_to_ga(create)
    assert ga["response"] == {
        "output_modalities": ["audio"],
        "audio": {"output": {"voice": "alloy", "format": {"type": "audio/pcm", "rate": 24000}}},
        "instructions": "Answer in one sentence.", "max_output_tokens": 200,
        "tool_choice": {"type": "function", "name": "show_formula"},
        "conversation": "none", "metadata": {"topic": "fractions"},
        "input": [{"type": "message", "role": "assistant",
                   "content": [{"type": "output_text", "text": "Half of six is three."}]}]}
    strictly(GA_CLIENT, ga, set())

    item = client_to_ga({"type": "conversation.item.create", "item": {
        "type": "message", "role": "assistant",
        "content": [{"type": "audio", "transcript": "Good question."}]}})
    assert item["item"]["content"] == [{"type": "output_audio", "transcript": "Good question."}]
    strictly(GA_CLIENT, item, set())


def test_client_events_the_same_in_both_protocols_pass_untouched():
    same = [
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\0\0").decode()},
        {"type": "input_audio_buffer.commit", "event_id": "e1"},
        {"type": "input_audio_buffer.clear"},
        {"type": "response.cancel"},
        {"type": "response.create"},
        {"type": "conversation.item.truncate", "item_id": "item_1", "content_index": 0,
         "audio_end_ms": 1200},
        {"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What is a derivative?"}]}},
        {"type": "output_audio_buffer.clear"},
    ]
    for event in same:
        strictly(BETA_CLIENT, event, set())
        assert client_to_ga(event) == event
        strictly(GA_CLIENT, client_to_ga(event), set())


def test_raw_frames_are_translated_and_what_is_not_json_goes_to_the_core_as_it_came():
    text = client_text_to_ga(json.dumps({"type": "session.update",
                                         "session": {"modalities": ["text"]}}))
    assert json.loads(text)["session"] == {"type": "realtime", "output_modalities": ["text"]}
    for raw in ("{not json", "[1, 2]", json.dumps({"type": "input_audio_buffer.clear"})):
        assert client_text_to_ga(raw) == raw


# -- server events ------------------------------------------------------------------------------

SESSION = {
    "type": "realtime", "object": "realtime.session", "id": "sess_1f2e3d", "model": "gpt-4o-mini",
    "output_modalities": ["audio"], "instructions": "You are a patient maths tutor.",
    "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000},
                  "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                  "turn_detection": {"type": "server_vad", "threshold": 0.5,
                                     "prefix_padding_ms": 300, "silence_duration_ms": 600,
                                     "create_response": True, "interrupt_response": True,
                                     "speculative": True}},
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "sage"}},
}
R, ITEM, USER = "resp_01", "item_02", "item_01"
PART = {"response_id": R, "item_id": ITEM, "output_index": 0, "content_index": 0}
PCM_B64 = base64.b64encode(b"\x01\x00" * 240).decode()


def ga_turn() -> list[dict[str, Any]]:
    """A spoken turn answered in speech, as the GA server sends it (ids as the core makes them)."""
    user_item = {"id": USER, "object": "realtime.item", "type": "message", "role": "user",
                 "status": "completed", "content": [{"type": "input_audio", "transcript": None}]}
    answer = {"id": ITEM, "object": "realtime.item", "type": "message", "role": "assistant",
              "status": "in_progress", "content": []}
    done_item = {**answer, "status": "completed",
                 "content": [{"type": "output_audio", "transcript": "A half is 0.5."}]}
    response = {"id": R, "object": "realtime.response", "status": "in_progress",
                "status_details": None, "output": [], "output_modalities": ["audio"],
                "conversation_id": None,
                "audio": {"output": {"format": {"type": "audio/pcm", "rate": 24000},
                                     "voice": "sage"}}}
    events: list[dict[str, Any]] = [
        {"type": "session.created", "session": SESSION},
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 640, "item_id": USER},
        {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": 2980, "item_id": USER},
        {"type": "input_audio_buffer.committed", "item_id": USER, "previous_item_id": None},
        {"type": "conversation.item.added", "previous_item_id": None, "item": user_item},
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": USER,
         "content_index": 0, "transcript": "What is a half as a decimal?",
         "usage": {"type": "duration", "seconds": 2.34}},
        {"type": "response.created", "response": response},
        {"type": "response.output_item.added", "response_id": R, "output_index": 0,
         "item": answer},
        {"type": "conversation.item.added", "previous_item_id": USER, "item": answer},
        {"type": "response.content_part.added", "part": {"type": "audio", "transcript": ""},
         **PART},
        {"type": "response.output_audio_transcript.delta", "delta": "A half is 0.5.", **PART},
        {"type": "response.output_audio.delta", "delta": PCM_B64, **PART},
        {"type": "response.output_audio.done", **PART},
        {"type": "response.output_audio_transcript.done", "transcript": "A half is 0.5.",
         **PART},
        {"type": "response.content_part.done",
         "part": {"type": "audio", "transcript": "A half is 0.5."}, **PART},
        {"type": "response.output_item.done", "response_id": R, "output_index": 0,
         "item": done_item},
        {"type": "conversation.item.done", "previous_item_id": USER, "item": done_item},
        {"type": "response.done", "response": {
            **response, "status": "completed", "output": [done_item],
            "usage": {"total_tokens": 57, "input_tokens": 40, "output_tokens": 17,
                      "input_token_details": {"text_tokens": 40, "audio_tokens": 0,
                                              "cached_tokens": 0},
                      "output_token_details": {"text_tokens": 17, "audio_tokens": 0}}}},
        {"type": "rate_limits.updated", "rate_limits": [
            {"name": "requests", "limit": 200, "remaining": 199, "reset_seconds": 3600.0}]},
        {"type": "tutor.response.metrics", "response_id": R, "first_token_ms": 412.0},
    ]
    return [{**e, "event_id": f"event_{n:04d}"} for n, e in enumerate(events, 1)]


def ga_text_answer() -> list[dict[str, Any]]:
    """A typed question answered in text, then one the plan refuses, as GA events."""
    item = {"id": ITEM, "object": "realtime.item", "type": "message", "role": "assistant",
            "status": "completed", "content": [{"type": "output_text", "text": "Three."}]}
    events: list[dict[str, Any]] = [
        {"type": "response.content_part.added", "part": {"type": "text", "text": ""}, **PART},
        {"type": "response.output_text.delta", "delta": "Three.", **PART},
        {"type": "response.output_text.done", "text": "Three.", **PART},
        {"type": "response.content_part.done", "part": {"type": "text", "text": "Three."},
         **PART},
        {"type": "response.output_item.done", "response_id": R, "output_index": 0, "item": item},
        {"type": "response.done", "response": {
            "id": R, "object": "realtime.response", "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "turn_detected"},
            "output": [item], "output_modalities": ["text"], "conversation_id": None}},
        {"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value",
                                    "message": "voice must be one of alloy, ash, ...",
                                    "param": "session.audio.output.voice",
                                    "event_id": "evt_client_1"}},
        {"type": "conversation.item.input_audio_transcription.failed", "item_id": USER,
         "content_index": 0, "error": {"type": "server_error", "code": "transcription_failed",
                                       "message": "upstream timed out", "param": None}},
        {"type": "conversation.item.truncated", "item_id": ITEM, "content_index": 0,
         "audio_end_ms": 800},
        {"type": "output_audio_buffer.cleared", "response_id": R},
        {"type": "input_audio_buffer.cleared"},
    ]
    return [{**e, "event_id": f"event_{n:04d}"} for n, e in enumerate(events, 100)]


def test_a_spoken_turn_reaches_a_beta_client_under_beta_names_and_shapes():
    ga = ga_turn()
    beta = [e for e in map(ga_to_client, ga) if e is not None]
    for event in beta:
        if not event["type"].startswith("tutor."):
            strictly(BETA_SERVER, event)
    assert [e["type"] for e in beta] == [
        "session.created",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",
        "response.created", "response.output_item.added", "conversation.item.created",
        "response.content_part.added", "response.audio_transcript.delta",
        "response.audio.delta", "response.audio.done", "response.audio_transcript.done",
        "response.content_part.done", "response.output_item.done",
        "response.done", "rate_limits.updated", "tutor.response.metrics"]
    session = beta[0]["session"]
    assert session == {
        "object": "realtime.session", "id": "sess_1f2e3d",
        "modalities": ["text", "audio"], "instructions": "You are a patient maths tutor.",
        "input_audio_format": "pcm16", "output_audio_format": "pcm16", "voice": "sage",
        "input_audio_transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
        "turn_detection": SESSION["audio"]["input"]["turn_detection"]}  # no `model`: not beta's
    created, done = beta[6]["response"], beta[16]["response"]
    assert created["modalities"] == ["text", "audio"] and "output_modalities" not in created
    assert (created["voice"], created["output_audio_format"]) == ("sage", "pcm16")
    assert done["output"][0]["content"] == [{"type": "audio", "transcript": "A half is 0.5."}]
    assert beta[15]["item"]["content"] == done["output"][0]["content"]
    assert beta[11]["delta"] == PCM_B64 and beta[-1] == ga[-1]
    assert ga[0]["session"] is SESSION and "output_modalities" in SESSION  # inputs untouched


def test_a_text_answer_and_errors_reach_a_beta_client_under_beta_names():
    beta = [beta_event(e) for e in ga_text_answer()]
    assert [e["type"] for e in beta][:3] == [
        "response.content_part.added", "response.text.delta", "response.text.done"]
    assert beta[4]["item"]["content"] == [{"type": "text", "text": "Three."}]
    assert beta[5]["response"]["modalities"] == ["text"]
    assert beta[5]["response"]["status_details"]["reason"] == "turn_detected"
    assert beta[6]["error"]["param"] == "session.voice"  # the field the beta client sent


def test_a_tool_call_reaches_a_beta_client_as_beta_had_it():
    call = {"id": "item_03", "object": "realtime.item", "type": "function_call",
            "status": "completed", "call_id": "call_1", "name": "show_formula",
            "arguments": '{"latex": "\\frac{1}{2}"}'}
    result = {"id": "item_04", "object": "realtime.item", "type": "function_call_output",
              "status": "completed", "call_id": "call_1", "output": "shown"}
    where = {"response_id": R, "item_id": "item_03", "output_index": 0, "call_id": "call_1"}
    ga = [
        {"type": "response.output_item.added", "response_id": R, "output_index": 0,
         "item": {**call, "status": "in_progress", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "delta": call["arguments"], **where},
        {"type": "response.function_call_arguments.done", "arguments": call["arguments"],
         "name": "show_formula", **where},
        {"type": "response.output_item.done", "response_id": R, "output_index": 0, "item": call},
        {"type": "conversation.item.added", "previous_item_id": "item_03", "item": result},
    ]
    beta = [ga_to_client({**e, "event_id": f"event_{n}"}) for n, e in enumerate(ga)]
    for event in beta:  # GA's `done` also names the function: beta clients ignore it
        strictly(BETA_SERVER, event, {"name"} if "arguments" in event else TOLERATED)
    assert [e["type"] for e in beta][-1] == "conversation.item.created"
    assert beta[3]["item"] == call and beta[4]["item"] == result


def test_every_ga_server_event_has_a_beta_name_or_is_deliberately_not_sent():
    beta_names = {typing.get_args(m.model_fields["type"].annotation)[0]
                  for m in typing.get_args(typing.get_args(beta_types.RealtimeServerEvent)[0])}
    ga_names = {typing.get_args(m.model_fields["type"].annotation)[0]
                for m in typing.get_args(typing.get_args(ga_types.RealtimeServerEvent)[0])}
    unmapped = {}
    for name in sorted(ga_names):
        out = ga_to_client({"type": name, "event_id": "event_1"})
        if out is None:
            assert name in GA_ONLY
        elif out["type"] not in beta_names:
            unmapped[name] = out["type"]
    assert unmapped == {}
    assert GA_ONLY <= ga_names  # no stale names in the table


def test_the_beta_model_names_are_the_beta_sdk_s():
    model = beta_types.Session.model_fields["model"].annotation
    literal = next(a for a in typing.get_args(model) if typing.get_args(a))
    assert set(BETA_MODELS) == set(typing.get_args(literal))
    kept = ga_to_client({"type": "session.updated", "event_id": "e",
                         "session": {**SESSION, "model": "gpt-4o-realtime-preview"}})
    assert kept is not None and kept["session"]["model"] == "gpt-4o-realtime-preview"


# -- through the real core ----------------------------------------------------------------------

def sent(actions: list) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, Send)]


def test_a_beta_client_configures_the_real_core_and_hears_its_answer_in_beta():
    core = RealtimeSession(SessionConfig(instructions="tutor", model="llama3.1:8b"))
    out = sent(core.open())
    out += sent(core.receive_text(json.dumps(client_to_ga(BETA_SESSION_UPDATE)), 0.0))
    item = {"type": "conversation.item.create", "item": {
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What is a half as a decimal?"}]}}
    out += sent(core.receive_text(client_text_to_ga(json.dumps(item)), 0.1))
    actions = core.receive_text(client_text_to_ga(json.dumps({"type": "response.create"})), 0.2)
    job = next(a for a in actions if isinstance(a, Generate))
    actions += core.response_delta(job.response_id, "A half is 0.5. Five tenths.")
    actions += core.response_completed(job.response_id)
    for speak in [a for a in actions if isinstance(a, Synthesize)]:  # the shell's TTS, played
        actions += core.speech_audio(speak.response_id, speak.index, b"\x01\x00" * 2400, 0.5)
        actions += core.speech_done(speak.response_id, speak.index)
    out += sent(actions)
    assert not [e for e in out if e["type"] == "error"], out

    beta = [e for e in map(ga_to_client, out) if e is not None]
    for event in beta:
        strictly(BETA_SERVER, event)
    updated = next(e for e in beta if e["type"] == "session.updated")["session"]
    assert updated["modalities"] == ["text", "audio"]
    assert (updated["voice"], updated["input_audio_format"]) == ("sage", "pcm16")
    assert updated["input_audio_transcription"] == {"model": "whisper-1", "language": "en"}
    assert updated["turn_detection"]["silence_duration_ms"] == 500
    assert updated["max_response_output_tokens"] == "inf" and "model" not in updated
    types = [e["type"] for e in beta]
    assert types[types.index("response.created"):] == [
        "response.created", "response.output_item.added", "conversation.item.created",
        "response.content_part.added", "response.audio_transcript.delta",
        "response.audio.delta", "response.audio.delta", "response.audio.done",
        "response.audio_transcript.done", "response.content_part.done",
        "response.output_item.done", "response.done"]
    done = beta[-1]["response"]
    assert done["modalities"] == ["text", "audio"] and done["status"] == "completed"
    assert done["output"][0]["content"] == [
        {"type": "audio", "transcript": "A half is 0.5. Five tenths."}]


# -- end to end: the SDK's own beta client over a real socket ----------------------------------


async def test_the_sdk_beta_client_holds_a_text_turn_with_the_real_server(server):
    client = AsyncOpenAI(api_key=await api_token(server), websocket_base_url=f"ws://{server}/v1")
    events: list[dict[str, Any]] = []

    async def until(kind: str) -> dict[str, Any]:
        while True:  # every event a beta client gets must be beta, field for field
            event = json.loads(await asyncio.wait_for(conn.recv_bytes(), 5))
            if not event["type"].startswith("tutor."):
                strictly(BETA_SERVER, event)
            events.append(event)
            if event["type"] == kind:
                return event

    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        await until("session.created")
        await conn.session.update(session={"modalities": ["text"], "instructions": "Be brief.",
                                           "input_audio_format": "pcm16"})
        updated = (await until("session.updated"))["session"]
        assert (updated["modalities"], updated["input_audio_format"]) == (["text"], "pcm16")
        await conn.conversation.item.create(item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": "2+2?"}]})
        await conn.response.create()
        done = await until("response.done")
    text = "".join(e["delta"] for e in events if e["type"] == "response.text.delta")
    assert text == "Good question! Let us work it out. You said: 2+2?"
    assert done["response"]["output"][0]["content"][0]["type"] == "text"


# -- who speaks beta ----------------------------------------------------------------------------

@pytest.mark.parametrize("headers, query, expected", [
    ({"OpenAI-Beta": "realtime=v1"}, None, True),
    ({"openai-beta": "assistants=v2, realtime=v1"}, None, True),
    (Headers(raw=[(b"openai-beta", b"realtime=v1")]), QueryParams(""), True),
    ([(b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.sk-x, "
                                  b"openai-beta.realtime-v1")], None, True),
    ({}, QueryParams("api-version=2024-10-01-preview&deployment=gpt-4o-realtime-preview"), True),
    ({"OpenAI-Beta": "assistants=v2"}, None, False),
    ({"Authorization": "Bearer sk-x"}, QueryParams("model=gpt-realtime"), False),
    ([(b"sec-websocket-protocol", b"realtime, openai-insecure-api-key.sk-x")], None, False),
])
def test_a_client_is_beta_when_its_handshake_says_so(headers, query, expected):
    assert is_beta(headers, query) is expected


def test_frames_that_need_no_translation_pass_unparsed_and_hostile_ones_reach_the_core():
    append = json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA" * 1000})
    assert client_text_to_ga(append) is append
    deep = '{"type": "session.update", "session": ' + "[" * 3000 + "]" * 3000 + "}"
    assert client_text_to_ga(deep) is deep  # the core answers it: invalid_json
