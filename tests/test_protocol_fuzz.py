"""Property-based fuzzing of the Realtime protocol core (`realtime.RealtimeSession`).

Whatever a client sends, in any order, mixed with audio: the core never raises, every event it
sends has the shape the OpenAI SDK expects, a message that is certainly wrong (not JSON, not an
object, no `type`, an unknown `type`) gets an `error` event with its code, and afterwards the
session still works (a valid `session.update` is applied, audio is still taken).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from realtime import RealtimeSession
from tests.realtime_client import core_session, feed, sent

KNOWN_TYPES = ["session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
               "input_audio_buffer.clear", "conversation.item.create", "response.create",
               "response.cancel", "output_audio_buffer.clear", "conversation.item.truncate",
               "conversation.item.retrieve", "conversation.item.delete"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(2**63 - 2, 2**70)
           | st.floats() | st.text(max_size=20)
           | st.sampled_from(["", "\x00", "AAEC", "AAA=", "item_1", "auto", "none", "user",
                              "assistant", "system", "message", "input_text", "input_audio",
                              "function_call", "function_call_output", "server_vad",
                              "semantic_vad", "text", "audio", "pcm16", "audio/pcm",
                              "audio/pcmu", "alloy", "a" * 300]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)


def some(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict with any of `fields` (each value from its own strategy or any JSON at all),
    sometimes with unknown keys too."""
    own = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()})
    return st.one_of(own, own, st.tuples(own, st.dictionaries(st.text(max_size=8), json_values,
                                                              max_size=2)).map(
        lambda p: p[1] | p[0]))


def one(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


content = st.lists(some({"type": one("input_text", "input_audio", "text", "output_text"),
                         "text": st.text(max_size=20), "audio": one("AAEC", "AAA=", "!!"),
                         "transcript": st.text(max_size=10)}), max_size=3)
items = some({"id": one("item_1", "x" * 40), "type": one("message", "function_call",
                                                          "function_call_output"),
              "role": one("user", "assistant", "system"), "status": one("completed"),
              "call_id": one("call_1"), "name": st.text(max_size=10),
              "arguments": one("{}", "{", '{"a": 1}'), "output": st.text(max_size=10),
              "content": content})
detection = some({"type": one("server_vad", "semantic_vad", "none"),
                  "threshold": st.floats(), "silence_duration_ms": st.integers(),
                  "prefix_padding_ms": st.integers(), "eagerness": one("low", "high", "auto"),
                  "create_response": st.booleans(), "interrupt_response": st.booleans()})
audio_format = some({"type": one("audio/pcm", "audio/pcmu", "audio/pcma", "pcm16"),
                     "rate": one(8000, 16000, 24000, 44100, 0, -1)})
tools = st.lists(some({"type": one("function", "mcp"), "name": st.text(max_size=10),
                       "description": st.text(max_size=10), "parameters": json_values}),
                 max_size=2)
sessions = some({"type": one("realtime", "transcription"), "instructions": st.text(max_size=20),
                 "output_modalities": st.lists(one("text", "audio", "video") | json_values,
                                               max_size=2),
                 "tools": tools, "tool_choice": one("auto", "none", "required"),
                 "max_output_tokens": one(1, 4096, "inf", 0), "turn_detection": detection,
                 "audio": some({"input": some({"format": audio_format,
                                               "turn_detection": detection,
                                               "transcription": some({"model": one("x")})}),
                                "output": some({"format": audio_format,
                                                "voice": one("alloy", "nope")})}),
                 "input_audio_format": one("pcm16", "g711_ulaw"), "voice": one("alloy"),
                 "temperature": st.floats(), "model": one("m"), "include": st.lists(json_values)})
responses = some({"instructions": st.text(max_size=20), "conversation": one("auto", "none"),
                  "output_modalities": st.lists(one("text", "audio"), max_size=2),
                  "input": st.lists(items, max_size=2), "tools": tools,
                  "tool_choice": one("auto", "none"), "metadata": json_values,
                  "max_output_tokens": one(1, "inf", 0)})

events = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(KNOWN_TYPES),
    some({"audio": one("AAEC", "AAA=", "", "!!", "A" * 4000), "item_id": one("item_1"),
          "content_index": st.integers(), "audio_end_ms": st.integers(),
          "previous_item_id": one("root", "item_1"), "response_id": one("resp_1"),
          "event_id": st.text(max_size=8), "item": items, "session": sessions,
          "response": responses}))
non_objects = scalars | st.lists(json_values, max_size=3)

# (what to send, the error code it must get or None when it may be right)
steps = st.one_of(
    events.map(lambda e: ("text", json.dumps(e), None)),
    events.map(lambda e: ("text", json.dumps(e), None)),
    events.map(lambda e: ("text", json.dumps(e), None)),
    non_objects.map(lambda v: ("text", json.dumps(v), "invalid_json")),
    st.text(max_size=30).filter(lambda t: not _is_json(t)).map(
        lambda t: ("text", t, "invalid_json")),
    st.dictionaries(st.sampled_from(["event_id", "item", "session"]), json_values, max_size=2)
    .map(lambda d: ("text", json.dumps(d), "missing_required_parameter")),
    st.text(min_size=1, max_size=30).filter(lambda t: t not in KNOWN_TYPES).map(
        lambda t: ("text", json.dumps({"type": t}), "unknown_event_type|unsupported_event")),
    st.binary(max_size=2000).map(lambda b: ("audio", b, None)),
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def step(s: RealtimeSession, kind: str, payload: Any, now: float) -> list[dict[str, Any]]:
    actions = s.receive_text(payload, now) if kind == "text" else s.receive_audio(payload, now)
    return sent(actions)  # every event checked against the SDK's types


@settings(max_examples=150, deadline=None)
@given(st.lists(steps, min_size=1, max_size=8))
# found by this test: an unhashable modality raised TypeError out of the core (the socket died)
@example([("text", '{"type": "session.update", "session": {"output_modalities": [[]]}}', None)])
@example([("text", '{"type": "response.create", "response": {"output_modalities": [{}]}}', None)])
def test_any_message_sequence_gets_answers_or_errors_and_the_session_keeps_working(sequence):
    s = core_session()
    for i, (kind, payload, must_fail) in enumerate(sequence):
        out = step(s, kind, payload, i * 0.05)
        errors = [e["error"] for e in out if e["type"] == "error"]
        event(errors[0]["code"] if errors else f"accepted: {out[0]['type'] if out else '-'}")
        for error in errors:
            assert isinstance(error["code"], str) and error["code"]
            assert isinstance(error["message"], str) and error["message"]
        if must_fail:
            assert errors and errors[0]["code"] in must_fail.split("|"), (payload, out)

    # the session goes on: a valid update is applied, and audio is still taken
    [updated] = step(s, "text", json.dumps({"type": "session.update", "event_id": "ok",
                                            "session": {"instructions": "after the junk"}}), 9.0)
    assert updated["type"] == "session.updated", updated
    assert updated["session"]["instructions"] == "after the junk"
    assert not [e for e in sent(feed(s, bytes(6400), t0=10.0)) if e["type"] == "error"]


@settings(max_examples=100, deadline=None)
@given(json_values | non_objects)
def test_any_json_value_that_is_not_an_object_is_an_invalid_json_error(value):
    s = core_session()
    if not isinstance(value, dict):
        [error] = step(s, "text", json.dumps(value), 0.0)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_json"
    else:
        out = step(s, "text", json.dumps(value), 0.0)
        assert out and out[0]["type"] == "error"  # no string `type` of a known event
    assert step(s, "text", '{"type": "input_audio_buffer.clear"}', 1.0)[0]["type"] == \
        "input_audio_buffer.cleared"
