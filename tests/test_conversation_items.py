"""The GA conversation in the protocol core: items of every kind, their placement, retrieval and
deletion, `response.create` options, function calls and `semantic_vad`, driven by plain calls."""

from __future__ import annotations

import json
from typing import Any

from realtime import Cancel, Generate, RealtimeSession, Synthesize, Transcribe
from tests.conftest import read_pcm
from tests.realtime_client import core_session as session
from tests.realtime_client import feed, sent

TOOL = {"type": "function", "name": "lookup_grade", "description": "A student's grade",
        "parameters": {"type": "object", "properties": {"student": {"type": "string"}}}}


def types(actions: list) -> list[str]:
    return [e["type"] for e in sent(actions)]


def send(s: RealtimeSession, event: dict) -> list:
    return s.receive_text(json.dumps(event), 0.0)


def generate(actions: list) -> Generate:
    return next(a for a in actions if isinstance(a, Generate))


def text_item(text: str, role: str = "user", **extra: Any) -> dict:
    kind = {"user": "input_text", "system": "input_text", "assistant": "output_text"}[role]
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}], **extra}


def test_items_of_every_role_are_added_done_and_seen_by_the_next_answer():
    s = session()
    assert types(send(s, {"type": "conversation.item.create",
                          "item": text_item("Answer in French.", "system", id="sys1")})) == [
        "conversation.item.added", "conversation.item.done"]
    send(s, {"type": "conversation.item.create", "item": text_item("Hi", id="u1")})
    send(s, {"type": "conversation.item.create", "item": text_item("Bonjour!", "assistant")})
    send(s, {"type": "conversation.item.create", "item": text_item("2+2?", id="u2")})
    gen = generate(send(s, {"type": "response.create"}))
    assert gen.messages == [{"role": "system", "content": "tutor"},
                            {"role": "system", "content": "Answer in French."},
                            {"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Bonjour!"},
                            {"role": "user", "content": "2+2?"}]
    assert gen.question == "Hi\n2+2?"  # what the student asked since the last answer


def test_previous_item_id_places_an_item_and_added_says_where():
    s = session()
    send(s, {"type": "conversation.item.create", "item": text_item("first", id="a")})
    send(s, {"type": "conversation.item.create", "item": text_item("third", id="c")})
    added = sent(send(s, {"type": "conversation.item.create", "previous_item_id": "a",
                          "item": text_item("second", "system", id="b")}))[0]
    assert added["previous_item_id"] == "a"
    send(s, {"type": "conversation.item.create", "previous_item_id": "root",
             "item": text_item("zeroth", "system", id="z")})
    gen = generate(send(s, {"type": "response.create"}))
    assert [m["content"] for m in gen.messages[1:]] == ["zeroth", "first", "second", "third"]


def test_retrieve_and_delete_items_the_session_holds():
    s = session()
    job = next(a for a in _speak(s) if isinstance(a, Transcribe))
    s.transcription_completed(job.item_id, "What is a fraction?", 2.0)
    retrieved = sent(send(s, {"type": "conversation.item.retrieve", "item_id": job.item_id}))[0]
    assert retrieved["type"] == "conversation.item.retrieved"
    assert retrieved["item"]["content"] == [{"type": "input_audio",
                                             "transcript": "What is a fraction?"}]
    send(s, {"type": "conversation.item.create", "item": text_item("Other", id="x")})
    [deleted] = sent(send(s, {"type": "conversation.item.delete", "item_id": "x"}))
    assert (deleted["type"], deleted["item_id"]) == ("conversation.item.deleted", "x")
    missing = sent(send(s, {"type": "conversation.item.retrieve", "item_id": "x"}))[0]
    assert missing["error"]["code"] == "item_not_found"
    send(s, {"type": "conversation.item.delete", "item_id": job.item_id})  # a spoken turn too
    gone = sent(send(s, {"type": "conversation.item.retrieve", "item_id": job.item_id}))[0]
    assert gone["error"]["code"] == "item_not_found"


def test_response_options_metadata_instructions_and_modalities():
    s = session(audio_allowed=True)
    out = send(s, {"type": "conversation.item.create", "item": text_item("Hi")}) + send(s, {
        "type": "response.create", "response": {
            "metadata": {"client_event_id": "e1"}, "instructions": "Be brief.",
            "output_modalities": ["audio"], "max_output_tokens": 50}})
    created = next(e for e in sent(out) if e["type"] == "response.created")
    assert created["response"]["metadata"] == {"client_event_id": "e1"}
    assert created["response"]["output_modalities"] == ["audio"]
    gen = generate(out)
    assert gen.messages[0] == {"role": "system", "content": "Be brief."}
    assert gen.max_tokens == 50
    spoken = s.response_delta(gen.response_id, "Hello there. ")
    assert any(isinstance(a, Synthesize) for a in spoken)
    assert "response.output_audio_transcript.delta" in types(spoken)
    s.speech_audio(gen.response_id, 0, b"\x00\x01" * 2400, 1.0)
    s.speech_done(gen.response_id, 0)
    done = [e for e in sent(s.response_completed(gen.response_id))
            if e["type"] == "response.done"][0]
    assert done["response"]["metadata"] == {"client_event_id": "e1"}
    # the next answer is the session's again: text, the session's instructions
    send(s, {"type": "conversation.item.create", "item": text_item("And?")})
    assert generate(send(s, {"type": "response.create"})).messages[0]["content"] == "tutor"


def test_an_out_of_band_answer_is_not_added_to_the_conversation():
    s = session()
    send(s, {"type": "conversation.item.create", "item": text_item("Hi", id="u1")})
    out = send(s, {"type": "response.create", "response": {
        "conversation": "none", "metadata": {"topic": "summary"},
        "input": [{"type": "item_reference", "id": "u1"}, text_item("Summarise that.")]}})
    gen = generate(out)
    assert [m["content"] for m in gen.messages[1:]] == ["Hi", "Summarise that."]
    created = next(e for e in sent(out) if e["type"] == "response.created")
    assert created["response"]["conversation_id"] is None
    delta = s.response_delta(gen.response_id, "A greeting.")
    assert "conversation.item.added" not in types(delta)
    assert "conversation.item.done" not in types(s.response_completed(gen.response_id))
    gen2 = generate(send(s, {"type": "response.create"}))
    assert [m["content"] for m in gen2.messages[1:]] == ["Hi"]  # the summary is not in it


def test_a_function_call_round_trip():
    s = session()
    updated = sent(send(s, {"type": "session.update", "session": {
        "type": "realtime", "tools": [TOOL], "tool_choice": "auto"}}))
    assert updated[0]["session"]["tools"][0]["name"] == "lookup_grade"
    send(s, {"type": "conversation.item.create", "item": text_item("Ada's grade?")})
    gen = generate(send(s, {"type": "response.create"}))
    assert gen.tools == ({"type": "function", "function": {
        "name": "lookup_grade", "description": "A student's grade",
        "parameters": TOOL["parameters"]}},)
    assert gen.tool_choice == "auto"
    rid = gen.response_id
    opened = sent(s.response_tool_call(rid, 0, "call_1", "lookup_grade", ""))
    assert [e["type"] for e in opened] == ["response.output_item.added",
                                           "conversation.item.added"]
    assert opened[0]["item"]["type"] == "function_call"
    assert opened[0]["item"]["status"] == "in_progress"
    deltas = sent(s.response_tool_call(rid, 0, None, None, '{"student"')
                  + s.response_tool_call(rid, 0, None, None, ': "Ada"}'))
    assert "".join(d["delta"] for d in deltas) == '{"student": "Ada"}'
    assert {d["call_id"] for d in deltas} == {"call_1"}
    closing = sent(s.response_completed(rid))
    assert [e["type"] for e in closing] == [
        "response.function_call_arguments.done", "response.output_item.done",
        "conversation.item.done", "response.done"]
    assert closing[0]["arguments"] == '{"student": "Ada"}' and closing[0]["name"] == "lookup_grade"
    [call] = closing[-1]["response"]["output"]
    assert (call["type"], call["call_id"], call["status"]) == ("function_call", "call_1",
                                                               "completed")
    # the client runs the tool and asks the tutor to go on
    send(s, {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_1", "output": '{"grade": "A-"}'}})
    follow = generate(send(s, {"type": "response.create"}))
    assert follow.messages[-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup_grade", "arguments": '{"student": "Ada"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"grade": "A-"}'}]


def test_parallel_calls_after_text_each_get_their_output_index():
    s = session(tools=(TOOL,))
    send(s, {"type": "conversation.item.create", "item": text_item("Both grades?")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_delta(rid, "Let me check.")
    s.response_tool_call(rid, 0, "call_a", "lookup_grade", '{"student": "Ada"}')
    s.response_tool_call(rid, 1, "call_b", "lookup_grade", '{"student": "Bo"}')
    done = sent(s.response_completed(rid))[-1]
    assert [(o["type"], o.get("call_id")) for o in done["response"]["output"]] == [
        ("message", None), ("function_call", "call_a"), ("function_call", "call_b")]
    # one output only: the call without an output is left out of the next prompt
    send(s, {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_a", "output": "A-"}})
    follow = generate(send(s, {"type": "response.create"}))
    assert follow.messages[-2] == {"role": "assistant", "content": "Let me check.",
                                   "tool_calls": [{"id": "call_a", "type": "function", "function": {
                                       "name": "lookup_grade",
                                       "arguments": '{"student": "Ada"}'}}]}
    assert follow.messages[-1]["role"] == "tool"


def test_an_output_sent_after_the_student_spoke_is_placed_after_its_call():
    s = session(tools=(TOOL,))
    send(s, {"type": "conversation.item.create", "item": text_item("Grade?")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_tool_call(rid, 0, "call_1", "lookup_grade", "{}")
    s.response_completed(rid)
    send(s, {"type": "conversation.item.create", "item": text_item("Hurry up!")})
    send(s, {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": "call_1", "output": "B+"}})
    roles = [m["role"] for m in generate(send(s, {"type": "response.create"})).messages]
    assert roles == ["system", "user", "assistant", "tool", "user"]


def test_barge_in_during_a_call_leaves_it_incomplete():
    s = session(tools=(TOOL,))
    send(s, {"type": "conversation.item.create", "item": text_item("Grade?")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_tool_call(rid, 0, "call_1", "lookup_grade", '{"stu')
    out = _speak(s, t0=5.0)
    assert Cancel(rid) in out
    done = next(e for e in sent(out) if e["type"] == "response.done")
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["output"][0]["status"] == "incomplete"
    assert "response.function_call_arguments.done" not in types(out)
    call_id = done["response"]["output"][0]["id"]
    retrieved = sent(send(s, {"type": "conversation.item.retrieve", "item_id": call_id}))[0]
    assert retrieved["item"]["status"] == "incomplete"  # as its item.done said


def test_a_call_while_the_answer_is_spoken_closes_after_its_audio():
    s = session(tools=(TOOL,), audio_allowed=True, output_audio=True)
    send(s, {"type": "conversation.item.create", "item": text_item("Grade?")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_delta(rid, "One moment. ")
    s.response_tool_call(rid, 0, "call_1", "lookup_grade", "{}")
    assert "response.done" not in types(s.response_completed(rid))  # still speaking
    s.speech_audio(rid, 0, b"\x00\x01" * 2400, 1.0)
    closing = s.speech_done(rid, 0)
    done = next(e for e in sent(closing) if e["type"] == "response.done")
    assert [o["type"] for o in done["response"]["output"]] == ["message", "function_call"]


def test_a_call_of_a_tool_never_offered_is_passed_on_as_the_model_made_it():
    s = session(tools=(TOOL,))
    send(s, {"type": "conversation.item.create", "item": text_item("Grade?")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_tool_call(rid, 0, "call_x", "delete_everything", "{}")
    done = sent(s.response_completed(rid))[-1]
    assert done["response"]["output"][0]["name"] == "delete_everything"


def test_semantic_vad_is_accepted_and_its_eagerness_sets_the_silence():
    s = session()
    updated = sent(send(s, {"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}}}))
    assert [e["type"] for e in updated] == ["session.updated"]
    td = updated[0]["session"]["audio"]["input"]["turn_detection"]
    assert (td["type"], td["eagerness"]) == ("semantic_vad", "high")
    assert s.config.turn_detection.silence_duration_ms == 400
    send(s, {"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}}})
    assert s.config.turn_detection.silence_duration_ms == 1000
    # a spoken turn still ends and is transcribed
    assert any(isinstance(a, Transcribe) for a in _speak(s))


def test_an_update_applies_what_is_valid_and_names_what_is_not_in_one_error():
    s = session()
    out = sent(send(s, {"type": "session.update", "event_id": "u1", "session": {
        "instructions": "Be kind.", "audio": {"output": {"voice": "robot"}},
        "tools": [{"type": "mcp", "server_label": "x"}], "tracing": "auto",
        "audio_noise": None}}))
    assert [e["type"] for e in out] == ["session.updated", "error"]
    assert s.config.instructions == "Be kind."
    assert out[1]["error"]["event_id"] == "u1"
    assert "session.audio.output.voice" in out[1]["error"]["message"]
    assert "session.tools[0].type" in out[1]["error"]["message"]


def _speak(s: RealtimeSession, t0: float = 0.0) -> list:
    """A question and one second of silence: a whole spoken turn."""
    return feed(s, read_pcm("q_war.wav") + b"\x00" * 32000, t0)


def test_an_answer_cut_at_its_token_cap_is_incomplete():
    s = session()
    send(s, {"type": "conversation.item.create", "item": text_item("Tell me everything.")})
    rid = generate(send(s, {"type": "response.create",
                            "response": {"max_output_tokens": 3}})).response_id
    s.response_delta(rid, "Once upon a")
    done = sent(s.response_completed(rid, truncated=True))[-1]
    assert done["response"]["status"] == "incomplete"
    assert done["response"]["status_details"] == {"type": "incomplete",
                                                  "reason": "max_output_tokens"}
    assert done["response"]["output"][0]["status"] == "incomplete"


def test_cancelling_an_answer_the_student_just_cut_is_harmless():
    s = session()
    send(s, {"type": "conversation.item.create", "item": text_item("Tell me a story.")})
    rid = generate(send(s, {"type": "response.create"})).response_id
    s.response_delta(rid, "Once")
    cut = _speak(s, t0=5.0)
    assert Cancel(rid) in cut
    s.transcription_completed(next(a for a in cut if isinstance(a, Transcribe)).item_id, "", 1.0)
    # the client saw speech_started and cancels too (LiveKit does): nothing to say
    assert sent(send(s, {"type": "response.cancel"})) == []
    job = next(a for a in _speak(s, t0=20.0) if isinstance(a, Transcribe))
    later = generate(s.transcription_completed(job.item_id, "Go on", 1.0))
    s.response_completed(later.response_id)  # an answer started and ended since: a real error
    refused = sent(send(s, {"type": "response.cancel"}))[0]
    assert refused["error"]["code"] == "response_cancel_not_active"
    assert refused["error"]["message"].startswith("Cancellation failed")  # OpenAI's words


def test_an_item_created_after_the_last_one_moves_the_end_of_the_conversation():
    s = session()
    send(s, {"type": "conversation.item.create", "item": text_item("a", id="a")})
    added = sent(send(s, {"type": "conversation.item.create", "previous_item_id": "a",
                          "item": text_item("b", id="b")}))[0]
    assert added["previous_item_id"] == "a"
    after = sent(send(s, {"type": "conversation.item.create", "item": text_item("c", id="c")}))
    assert after[0]["previous_item_id"] == "b"  # b is now the last item


def test_the_first_item_placed_at_root_is_the_end_of_the_conversation():
    s = session()
    first = sent(send(s, {"type": "conversation.item.create", "previous_item_id": "root",
                          "item": text_item("hi", id="a")}))[0]
    assert first["previous_item_id"] is None
    rid = generate(send(s, {"type": "response.create"})).response_id
    opened = sent(s.response_delta(rid, "Hello"))
    assert opened[1]["type"] == "conversation.item.added"
    assert opened[1]["previous_item_id"] == "a"  # the answer follows the message it answers


def test_a_tool_schema_nested_too_deeply_is_refused_and_the_rest_applies():
    s = session()
    deep: dict = {"type": "object"}
    for _ in range(200):
        deep = {"type": "object", "properties": {"x": deep}}
    out = sent(send(s, {"type": "session.update", "session": {"instructions": "Hi", "tools": [
        {"type": "function", "name": "deep", "parameters": deep}]}}))
    assert [e["type"] for e in out] == ["session.updated", "error"]
    assert out[1]["error"]["param"] == "session.tools[0].parameters"
    assert s.config.tools == () and s.config.instructions == "Hi"
