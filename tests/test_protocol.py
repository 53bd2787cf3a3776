"""The Realtime protocol core driven by plain calls: time is a parameter, nothing is awaited."""

from __future__ import annotations

import json

from realtime import Cancel, Generate, RealtimeSession, SessionConfig, Transcribe
from tests.conftest import read_pcm
from tests.realtime_client import core_session as session
from tests.realtime_client import feed, sent


def test_a_spoken_turn_is_committed_then_transcribed_then_answered():
    s = session()
    actions = feed(s, read_pcm("q_war.wav"))
    assert [e["type"] for e in sent(actions)] == [
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    job = next(a for a in actions if isinstance(a, Transcribe))
    after = s.transcription_completed(job.item_id, "When did the war end?", 3.3)
    assert [e["type"] for e in sent(after)][:2] == [
        "conversation.item.input_audio_transcription.completed", "response.created"]
    gen = next(a for a in after if isinstance(a, Generate))
    assert gen.messages[-1] == {"role": "user", "content": "When did the war end?"}
    deltas = sent(s.response_delta(gen.response_id, "In 1945."))
    assert [e["type"] for e in deltas] == [  # the answer's item opens with its first delta
        "response.output_item.added", "conversation.item.added", "response.content_part.added",
        "response.output_text.delta"]
    assert deltas[-1]["delta"] == "In 1945."
    done = sent(s.response_completed(gen.response_id))
    assert done[-1]["type"] == "response.done" and done[-1]["response"]["status"] == "completed"


def test_barge_in_cancels_the_answer_with_reason_turn_detected():
    s = session()
    job = next(a for a in feed(s, read_pcm("q_war.wav")) if isinstance(a, Transcribe))
    gen = next(a for a in s.transcription_completed(job.item_id, "q", 1) if isinstance(a, Generate))
    s.response_delta(gen.response_id, "Well")
    actions = feed(s, read_pcm("q_french.wav")[:64000], t0=10)
    assert Cancel(gen.response_id) in actions
    done = [e for e in sent(actions) if e["type"] == "response.done"][0]
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "turn_detected"
    assert s.response_delta(gen.response_id, "late") == []


def test_audio_faster_than_real_time_beyond_the_burst_is_dropped():
    s = session(audio_burst_ms=200)
    chunk = b"\x00\x00" * 320  # 20 ms
    results = [s.receive_audio(chunk, now=0.0) for _ in range(12)]
    assert all(r == [] for r in results[:10])
    assert sent(results[10])[0]["error"]["code"] == "input_audio_rate_exceeded"
    assert s.receive_audio(chunk, now=0.1) == []  # time passing refills the allowance


def test_a_turn_longer_than_the_maximum_is_cut_reported_and_still_answered():
    s = session(max_turn_ms=1500)
    actions = feed(s, read_pcm("hesitation.wav"))
    events = sent(actions)
    codes = [e["error"]["code"] for e in events if e["type"] == "error"]
    # ~5 s of speech cut every 1.5 s: each cut is reported, and each piece is still transcribed
    assert codes == ["input_audio_turn_too_long"] * 3
    assert sum(isinstance(a, Transcribe) for a in actions) >= len(codes)


def test_text_turn_then_response_create():
    s = session()
    out = s.receive_text(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}), 0)
    assert sent(out)[0]["item"]["content"][0]["text"] == "hi"
    gen = next(a for a in s.receive_text('{"type": "response.create"}', 0) if isinstance(a, Generate))
    assert gen.messages[-1] == {"role": "user", "content": "hi"}
    again = sent(s.receive_text('{"type": "response.create", "event_id": "e9"}', 0))
    assert again[0]["error"]["code"] == "conversation_already_has_active_response"
    assert again[0]["error"]["event_id"] == "e9"


def test_failed_answer_reports_error_and_failed_status():
    s = session()
    s.receive_text(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}), 0)
    gen = next(a for a in s.receive_text('{"type": "response.create"}', 0) if isinstance(a, Generate))
    events = sent(s.response_failed(gen.response_id, "provider_timeout", "too slow"))
    assert events[0]["error"]["code"] == "provider_timeout"
    assert events[-1]["response"]["status"] == "failed"
    assert events[-1]["response"]["status_details"]["error"]["code"] == "provider_timeout"


def test_reenabling_turn_detection_starts_from_the_server_defaults():
    from realtime import TurnDetection
    server_vad = TurnDetection(threshold=0.8, silence_duration_ms=900)
    s = RealtimeSession(SessionConfig(instructions="t", model="m", turn_detection=server_vad,
                                      default_turn_detection=server_vad))
    s.receive_text(json.dumps({"type": "session.update", "session": {"audio": {"input": {
        "turn_detection": None}}}}), 0)
    out = sent(s.receive_text(json.dumps({"type": "session.update", "session": {"audio": {
        "input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": 100}}}}}), 0))
    td = out[0]["session"]["audio"]["input"]["turn_detection"]
    assert (td["threshold"], td["silence_duration_ms"], td["prefix_padding_ms"]) == (0.8, 900, 100)


def test_transcription_settings_persist_until_changed():
    s = session()
    update = {"type": "session.update", "session": {"audio": {"input": {
        "transcription": {"model": "whisper-1", "language": "fr"}}}}}
    s.receive_text(json.dumps(update), 0)
    update["session"]["audio"]["input"]["transcription"] = {"model": "gpt-4o-transcribe"}
    out = sent(s.receive_text(json.dumps(update), 0))
    assert out[0]["session"]["audio"]["input"]["transcription"] == {
        "model": "gpt-4o-transcribe", "language": "fr"}


def test_non_string_event_ids_are_not_echoed():
    s = session()
    out = sent(s.receive_text('{"type": "input_audio_buffer.append", "audio": "AAEC", '
                              '"event_id": 5}', 0))
    assert out[0]["error"]["code"] == "invalid_audio_length"
    assert out[0]["error"]["event_id"] is None


def test_a_frame_nested_thousands_deep_is_refused_and_the_session_goes_on():
    s = session()
    [refused] = sent(s.receive_text("[" * 3000 + "]" * 3000, 0.0))
    assert refused["error"]["code"] == "invalid_json"
    assert "nested too deeply" in refused["error"]["message"]
    [deep_object] = sent(s.receive_text('{"type": "session.update", "session": ' + '{"a": ' * 3000
                                        + "1" + "}" * 3001, 0.0))
    assert deep_object["error"]["code"] == "invalid_json"
    assert sent(s.receive_text('{"type": "session.update", "session": {}}', 0.0))[0]["type"] == \
        "session.updated"


def test_ids_come_from_the_factory_passed_in_the_session_id_first():
    from realtime import Ids
    s = RealtimeSession(SessionConfig(instructions="t", model="m", input_rate=16000),
                        ids=Ids("t"))
    created = sent(s.open())[0]
    assert s.id == created["session"]["id"] == "sess_t0001"
    assert created["event_id"].startswith("event_t")
    job = next(a for a in feed(s, read_pcm("q_war.wav")) if isinstance(a, Transcribe))
    again = RealtimeSession(SessionConfig(instructions="t", model="m", input_rate=16000),
                            ids=Ids("t"))
    again.open()
    assert next(a for a in feed(again, read_pcm("q_war.wav"))
                if isinstance(a, Transcribe)).item_id == job.item_id  # deterministic


def test_a_turn_to_transcribe_carries_its_length():
    s = session()
    pcm = read_pcm("q_war.wav")
    job = next(a for a in feed(s, pcm) if isinstance(a, Transcribe))
    assert job.seconds == (len(job.wav) - 44) / 2 / 16000  # what the WAV holds, told not read
    assert 0 < job.seconds <= len(pcm) / 32000
