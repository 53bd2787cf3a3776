"""Semantic end of turn, in the protocol core: the sharper end of speech on the project's own
corpus (tests/speech: where each stretch of speech really ends is known from how it was made),
`dialogue.endofturn`'s judge, and a `semantic_vad` session whose end-of-turn verdicts are given
by the test (the model itself: tests/test_turn_model.py)."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from audio.input import AudioInput, TurnEnded, VadSettings
from dialogue.endofturn import EAGERNESS, Judge, text_verdict
from realtime import JudgeTurn, Transcribe, TurnDetection
from tests.realtime_client import core_session, sent

SPEECH = Path(__file__).parent / "speech"
CORPUS = json.loads((SPEECH / "manifest.json").read_text())["files"]


def pcm_of(name: str, extra_silence_ms: int = 0) -> bytes:
    with wave.open(str(SPEECH / name)) as w:
        return w.readframes(w.getnframes()) + b"\0\0" * (16 * extra_silence_ms)


def true_end(name: str) -> int:
    return CORPUS[name]["speech_ms"][-1][1]


def turns(name: str, quiet_db: float) -> list[TurnEnded]:
    ai = AudioInput(input_rate=16000, vad=VadSettings(quiet_db=quiet_db), max_turn_ms=30000)
    pcm = pcm_of(name)
    out = []
    for i in range(0, len(pcm), 640):
        out += [e for e in ai.feed(pcm[i:i + 640]) if isinstance(e, TurnEnded)]
    return out


# -- the sharper end of speech -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CORPUS))
def test_the_end_of_speech_is_found_within_a_frame_of_where_it_really_ended(name):
    sharp, plain = turns(name, 30.0), turns(name, 0.0)
    assert len(sharp) == len(plain) == CORPUS[name]["utterances"]  # the same turns
    ends = [seg[1] for seg in CORPUS[name]["speech_ms"]]
    truth = ends[-len(sharp):] if len(sharp) == 1 else [ends[0], ends[-1]]
    for turn, plain_turn, end in zip(sharp, plain, truth):
        assert 0 <= turn.speech_end_ms - end <= 30  # within one 30 ms frame after the truth
        assert plain_turn.speech_end_ms - end >= 60  # webrtcvad alone hears the tail as speech
        assert turn.end_ms == plain_turn.end_ms  # the configured silence still ends the turn


# -- the judge -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, verdict", [
    ("So if I have three apples and", False), ("I think the answer is", False),
    ("Um, what about the", False), ("It rains because,", False), ("Well...", False),
    ("What is a prime number?", True), ("Why?", None), ("I finished the exercise.", None),
    ("", None), ("[1.25 s of audio at 16000 Hz]", None)])
def test_text_verdicts(text, verdict):
    assert text_verdict(text) is verdict


def test_the_judge_ends_a_complete_turn_soon_and_waits_for_an_incomplete_one():
    e = EAGERNESS["auto"]
    judge = Judge("auto")
    serial = judge.paused(1000)
    assert serial is not None and judge.paused(1000) is None  # the same speech: judged once
    assert judge.judged(serial, 0.9) == e.complete_ms
    serial = judge.paused(2000)
    assert judge.judged(serial, 0.1) == e.incomplete_ms
    judge.resumed()
    assert judge.judged(serial, 0.9) is None  # the student spoke again: too late


def test_with_a_transcript_coming_a_complete_sound_waits_for_the_words():
    e = EAGERNESS["high"]
    judge = Judge("high")
    serial = judge.paused(1000, text_coming=True)
    assert judge.judged(serial, 0.95) is None  # not before the transcript
    assert judge.transcribed(1000, "It rains because") == e.incomplete_ms  # the words overrule
    serial = judge.paused(3000, text_coming=True)
    assert judge.judged(serial, 0.95) is None
    assert judge.transcribed(3000, "[2.0 s of audio]") == e.complete_ms  # words say nothing
    serial = judge.paused(5000, text_coming=True)
    assert judge.judged(serial, 0.2) == e.incomplete_ms  # not done: no need to wait
    assert judge.transcribed(5000, "How many are left?") == e.complete_ms
    assert judge.transcribed(4000, "And?") is None  # another pause's transcript


# -- a semantic_vad session (verdicts given by the test) ------------------------------------------
def semantic_session(eagerness: str = "auto", speculative_pause_ms: int = 0):
    td = TurnDetection(type="semantic_vad", eagerness=eagerness)
    return core_session(turn_detection=td, default_turn_detection=td, turn_model=True,
                        semantic_pause_ms=150, speculative_pause_ms=speculative_pause_ms)


def run(s, pcm: bytes, verdict, transcripts=None) -> list[dict]:
    """Feed `pcm` in 20 ms chunks; each JudgeTurn is answered at once with `verdict(pcm)`
    and each speculative transcription with the next of `transcripts`. The events sent."""
    events, texts = [], list(transcripts or [])
    for i in range(0, len(pcm), 640):
        actions = s.receive_audio(pcm[i:i + 640], i / 32000)
        while actions:
            action = actions.pop(0)
            if isinstance(action, JudgeTurn):
                actions += s.turn_judged(action.serial, verdict(action.pcm))
            elif isinstance(action, Transcribe) and action.speculative and texts:
                actions += s.speculative_transcribed(action.speculative, texts.pop(0), 1.0)
            else:
                events += sent([action])
    return events


def stops(events: list[dict]) -> list[int]:
    return [e["audio_end_ms"] for e in events if e["type"] == "input_audio_buffer.speech_stopped"]


@pytest.mark.parametrize("eagerness", ["high", "auto", "low"])
def test_a_complete_turn_ends_on_the_verdict_not_on_the_silence(eagerness):
    name = "end_statement.wav"
    ends = stops(run(semantic_session(eagerness), pcm_of(name), lambda pcm: 0.9))
    complete = EAGERNESS[eagerness].complete_ms
    assert len(ends) == 1
    # from the true end: the pause that is judged (150 ms, or the complete silence if longer)
    assert ends[0] - true_end(name) <= max(complete, 150) + 60
    plain = stops(run(core_session(), pcm_of(name), lambda pcm: 0.9))  # server_vad
    assert plain[0] - true_end(name) >= 600


@pytest.mark.parametrize("name", [n for n in sorted(CORPUS) if CORPUS[n]["kind"] == "hesitation"])
def test_an_incomplete_verdict_waits_through_the_hesitation(name):
    events = run(semantic_session("high"), pcm_of(name, 1000), lambda pcm: 0.05)
    assert len(stops(events)) == 1  # one turn, however long the hesitation
    assert stops(events)[0] - true_end(name) >= EAGERNESS["high"].incomplete_ms


def test_a_complete_sound_is_overruled_by_dangling_words():
    """The model hears 'It rains because' as done (espeak's flat fragments fool it); the
    speculative transcript's last word says otherwise, and the turn waits."""
    name = "hes_because.wav"
    s = semantic_session("high", speculative_pause_ms=150)
    events = run(s, pcm_of(name, 1000), lambda pcm: 0.95,
                 transcripts=["It rains because", "It rains because the clouds get too heavy."])
    assert len(stops(events)) == 1
    assert stops(events)[0] - true_end(name) <= EAGERNESS["high"].complete_ms + 60


def test_without_a_model_semantic_vad_ends_on_its_eagerness_silence():
    td = TurnDetection(type="semantic_vad", eagerness="high", silence_duration_ms=400)
    s = core_session(turn_detection=td, turn_model=False)
    actions = []
    pcm = pcm_of("end_statement.wav")
    for i in range(0, len(pcm), 640):
        actions += s.receive_audio(pcm[i:i + 640], i / 32000)
    assert not any(isinstance(a, JudgeTurn) for a in actions)
    assert len(stops(sent(actions))) == 1
