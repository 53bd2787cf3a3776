"""Turn-taking as a pure state machine: when answers start, and how barge-in stops them."""

from __future__ import annotations

import itertools

import pytest

from dialogue.turntaking import CancelResponse, ResponseAlreadyActive, StartResponse, TurnState, TurnTaker


def taker(**kw) -> TurnTaker:
    n = itertools.count(1)
    return TurnTaker(instructions="be kind", new_response_id=lambda: f"r{next(n)}", **kw)


def test_answer_starts_once_the_turn_is_transcribed():
    t = taker()
    assert t.speech_started() is None
    t.turn_committed("i1")
    assert t.state is TurnState.TRANSCRIBING
    start = t.transcribed("i1", "what is x?")
    assert isinstance(start, StartResponse)
    assert start.messages == [{"role": "system", "content": "be kind"},
                              {"role": "user", "content": "what is x?"}]
    assert t.state is TurnState.RESPONDING


def test_speech_during_an_answer_cancels_it_and_keeps_what_was_said():
    t = taker()
    t.turn_committed("i1")
    start = t.transcribed("i1", "q")
    t.delta(start.response_id, "Let us ")
    cut = t.speech_started()
    assert cut == CancelResponse(start.response_id, "turn_detected", "Let us ")
    assert t.state is TurnState.LISTENING
    assert list(t.history)[-1] == {"role": "assistant", "content": "Let us ", "_incomplete": True}
    assert t.delta(start.response_id, "late") is False  # a late delta is dropped


def test_without_interrupt_the_answer_goes_on():
    t = taker(interrupt=False)
    t.turn_committed("i1")
    t.transcribed("i1", "q")
    assert t.speech_started() is None
    assert t.state is TurnState.RESPONDING


def test_no_answer_while_the_student_is_still_speaking_or_a_turn_is_pending():
    t = taker()
    t.turn_committed("i1")
    t.turn_committed("i2")
    assert t.transcribed("i1", "first") is None  # i2 still being transcribed
    t.speech_started()
    assert t.transcribed("i2", "second") is None  # the student speaks again
    t.turn_committed("i3")
    start = t.transcribed("i3", "third")
    assert [m["content"] for m in start.messages[1:]] == ["first", "second", "third"]


def test_empty_transcript_gets_no_answer():
    t = taker()
    t.turn_committed("i1")
    assert t.transcribed("i1", "  ") is None
    assert t.state is TurnState.LISTENING


def test_explicit_request_while_answering_is_refused():
    t = taker(auto_respond=False)
    t.user_text("hi")
    t.request_response()
    with pytest.raises(ResponseAlreadyActive):
        t.request_response()


def test_history_window_is_bounded():
    t = taker(history_messages=4)
    for i in range(10):
        t.user_text(f"m{i}")
    assert [m["content"] for m in t.history] == ["m6", "m7", "m8", "m9"]


def test_finished_answer_joins_history_and_a_queued_request_starts():
    t = taker(interrupt=False)
    t.turn_committed("i1")
    first = t.transcribed("i1", "q1")
    t.turn_committed("i2")
    assert t.transcribed("i2", "q2") is None  # an answer is already running
    t.delta(first.response_id, "a1")
    text, nxt = t.finished(first.response_id)
    assert text == "a1" and nxt is not None
    assert [m["content"] for m in nxt.messages[1:]] == ["q1", "q2", "a1"]


def test_a_failed_transcript_leaves_nothing_to_answer():
    t = taker(auto_respond=False)
    t.turn_committed("i1")
    assert t.request_response() is None  # waits for the transcript
    assert t.transcription_failed("i1") is None  # ... which never comes: no empty answer
    t.user_text("typed instead")
    assert t.request_response() is not None


def test_cancel_drops_a_requested_answer_that_had_not_started():
    t = taker(auto_respond=False)
    t.turn_committed("i1")
    t.request_response()
    assert t.cancel() is None
    assert t.transcribed("i1", "hello") is None  # the dropped request does not fire later


def test_an_answer_queued_behind_a_failed_one_starts_at_once():
    t = taker(interrupt=False)
    t.turn_committed("i1")
    first = t.transcribed("i1", "q1")
    t.turn_committed("i2")
    t.transcribed("i2", "q2")
    assert t.failed(first.response_id) == ""
    nxt = t.next_response()
    assert nxt is not None and nxt.messages[-1]["content"] == "q2"
