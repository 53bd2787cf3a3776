"""Speculative turn ends, without sockets: the endpointer's pauses, the `Speculator`'s decisions
and caps, and the protocol core adopting or abandoning speculative work, fed real speech from
the shared corpus (hesitation.wav pauses 0.25 s inside one question; conversation.wav has three
utterances 1.2 s apart)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from audio.endpointer import (Endpointer, EndpointerConfig, SpeechEnded, SpeechPaused,
                              SpeechResumed, SpeechStarted)
from audio.input import AudioInput, TurnEnded, TurnPaused, TurnResumed, TurnStarted, VadSettings
from dialogue.speculation import Speculator
from realtime import (Abandon, Adopt, Generate, RealtimeSession, Release, Send,
                             SessionConfig, Transcribe)
from tests.conftest import MANIFEST, read_pcm
from tests.test_protocol import sent

CFG = EndpointerConfig(frame_samples=10, min_speech_frames=3, silence_frames=5, padding_frames=1,
                       max_turn_frames=100, pause_frames=2)


def run(ep: Endpointer, pattern: str) -> list:
    return [e for c in pattern if (e := ep.push(c == "1")) is not None]


# -- the endpointer ----------------------------------------------------------------------------
def test_a_pause_that_becomes_the_end_keeps_its_speech_end():
    events = run(Endpointer(CFG), "0111100000")
    assert events == [SpeechStarted(0, 10), SpeechPaused(0, 70, 50),
                      SpeechEnded(0, 100, 50)]


def test_speech_after_a_pause_resumes_and_a_later_pause_is_signalled_again():
    events = run(Endpointer(CFG), "0111100110000000")
    assert events == [SpeechStarted(0, 10), SpeechPaused(0, 70, 50), SpeechResumed(80),
                      SpeechPaused(0, 110, 90), SpeechEnded(0, 140, 90)]


def test_no_pause_events_when_off_or_not_shorter_than_the_silence():
    for pause in (0, 5, 7):
        cfg = EndpointerConfig(frame_samples=10, min_speech_frames=3, silence_frames=5,
                               padding_frames=1, max_turn_frames=100, pause_frames=pause)
        kinds = {type(e) for e in run(Endpointer(cfg), "01111001100000000")}
        assert kinds == {SpeechStarted, SpeechEnded}


def turn_events(name: str, pause_ms: int = 200) -> list:
    ai = AudioInput(input_rate=16000, vad=VadSettings(pause_ms=pause_ms), max_turn_ms=30000)
    pcm = read_pcm(name)
    out = []
    for i in range(0, len(pcm), 640):
        out += ai.feed(pcm[i : i + 640])
    return out


def test_conversation_each_turn_pauses_then_ends_on_the_same_speech():
    events = turn_events("conversation.wav")
    turns = [e for e in events if isinstance(e, TurnEnded)]
    assert len(turns) == MANIFEST["files"]["conversation.wav"]["utterances"] == 3
    for turn in turns:
        before = events[: events.index(turn)]
        last_pause = [e for e in before if isinstance(e, TurnPaused)][-1]
        # nothing voiced between the last pause and the end: the guess is the turn's speech,
        # and its audio is the start of the turn's audio (the end only adds silence)
        assert not isinstance(before[-1], TurnResumed)
        assert last_pause.speech_end_ms == turn.speech_end_ms
        assert last_pause.start_ms == turn.start_ms and turn.audio.startswith(last_pause.audio)
        # the pause is counted from where the speech really ended (the sharper end of speech);
        # the turn still ends on the configured silence of webrtcvad's unvoiced frames
        assert last_pause.at_ms - turn.speech_end_ms == 210  # the pause, in 30 ms frames
        assert last_pause.at_ms < turn.end_ms and turn.end_ms - turn.speech_end_ms >= 600


def test_hesitation_pauses_resumes_then_ends_on_the_last_pause():
    events = turn_events("hesitation.wav")
    kinds = [type(e).__name__ for e in events]
    assert kinds[0] == "TurnStarted" and kinds[-1] == "TurnEnded" and kinds.count("TurnEnded") == 1
    assert "TurnResumed" in kinds  # the 0.25 s hesitation is a pause the student speaks through
    pauses = [e for e in events if isinstance(e, TurnPaused)]
    end = events[-1]
    assert pauses[0].speech_end_ms < end.speech_end_ms == pauses[-1].speech_end_ms


def test_without_a_pause_threshold_no_pause_events():
    assert {type(e) for e in turn_events("hesitation.wav", 0)} == {TurnStarted, TurnEnded}


# -- the speculator ----------------------------------------------------------------------------
def test_at_most_max_per_turn_guesses_and_none_twice_for_the_same_speech():
    spec = Speculator(max_per_turn=2)
    first = spec.paused("item_1", 1000)
    assert first is not None and spec.paused("item_1", 1000) is None
    assert spec.resumed() is first
    assert spec.paused("item_1", 2000) is not None
    spec.resumed()
    assert spec.paused("item_1", 3000) is None  # this turn had its two
    assert spec.turn_ended("item_1", 3000) == (None, None)
    spec.turn_started()
    assert spec.paused("item_2", 500) is not None  # a new turn, a new allowance
    assert spec.stats.wasted_stt == 2 and spec.stats.misses == 2


def test_a_guess_is_used_only_on_unchanged_speech_and_when_it_did_not_fail():
    spec = Speculator()
    g = spec.paused("item_1", 1000)
    assert spec.turn_ended("item_1", 1200) == (None, g)  # voiced frames since: discarded
    g = spec.paused("item_2", 500)
    spec.transcription_failed(g.serial)
    assert spec.turn_ended("item_2", 500) == (None, g)
    g = spec.paused("item_3", 700)
    assert spec.turn_ended("item_3", 700) == (g, None)
    assert (spec.stats.hits, spec.stats.misses, spec.stats.turns) == (1, 2, 3)


def test_a_late_transcript_of_an_abandoned_guess_is_ignored():
    spec = Speculator()
    old = spec.paused("item_1", 1000)
    spec.resumed()
    new = spec.paused("item_1", 2000)
    assert spec.transcribed(old.serial, "stale", 1.0) is None
    assert spec.transcribed(new.serial, "fresh", 1.0) is new and new.text == "fresh"


def test_the_session_budget_stops_guessing_for_a_student_who_hesitates_a_lot():
    spec = Speculator(max_per_turn=10, budget=0.5)
    guesses = 0
    for turn in range(4):
        spec.turn_started()
        for k in range(10):  # ten pauses spoken through in every turn
            if spec.paused(f"item_{turn}", k) is not None:
                guesses += 1
                spec.resumed()
        spec.turn_ended(f"item_{turn}", 99)
    # wasted guesses never exceed budget × turns + 2 (+1: the one that crossed the line)
    assert spec.stats.misses == guesses <= 0.5 * 4 + 2 + 1
    assert guesses < 40


def test_discards_not_caused_by_the_student_do_not_count_against_the_budget():
    spec = Speculator(max_per_turn=100, budget=0.0)
    for k in range(10):
        assert spec.paused("item_1", k) is not None
        spec.discard()  # cleared by the client, or the session is closing
    assert spec.stats.misses == 0 and spec.stats.wasted_stt == 10


# -- the protocol core -------------------------------------------------------------------------
@dataclass
class Driver:
    """Plays the providers for a session: answers transcriptions and completions at once (with
    `late`, a speculative transcript comes once its turn has ended, or when told), and records
    every action."""

    session: RealtimeSession
    late: bool | str = False  # "after-end": after the turn ended; True: when told
    actions: list = field(default_factory=list)
    held: set = field(default_factory=set)  # speculative answers running, not yet released
    deferred: list = field(default_factory=list)
    items: dict = field(default_factory=dict)  # item id → turn index (for its transcript)
    texts: list = field(default_factory=list)

    def text(self, item_id: str) -> str:
        index = self.items.setdefault(item_id, len(self.items))
        return self.texts[index] if index < len(self.texts) else f"turn {index}"

    def run(self, actions: list) -> list:
        todo = list(actions)
        while todo:
            action = todo.pop(0)
            self.actions.append(action)
            s = self.session
            if isinstance(action, Transcribe) and action.speculative:
                if self.late:
                    self.deferred.append(action)
                else:
                    todo += s.speculative_transcribed(action.speculative,
                                                      self.text(action.item_id), 1.0)
            elif isinstance(action, Transcribe):
                todo += s.transcription_completed(action.item_id, self.text(action.item_id), 1.0)
            elif isinstance(action, Generate) and action.held:
                self.held.add(action.response_id)
            elif isinstance(action, (Generate, Release)):
                self.held.discard(action.response_id)
                todo += s.response_delta(action.response_id, "An answer.")
                todo += s.response_completed(action.response_id)
            elif isinstance(action, Adopt) and self.late == "after-end":  # the transcript comes after the end
                job = next(j for j in self.deferred if j.speculative == action.serial)
                self.deferred.remove(job)
                todo += s.speculative_transcribed(job.speculative, self.text(job.item_id), 1.0)
            elif isinstance(action, Abandon) and action.response_id:
                assert action.response_id in self.held  # only speculative answers are abandoned
                self.held.discard(action.response_id)
        return actions

    def feed(self, pcm: bytes, t0: float = 0.0) -> None:
        for k, i in enumerate(range(0, len(pcm), 640)):
            self.run(self.session.receive_audio(pcm[i : i + 640], t0 + k * 0.02))

    def release_deferred(self) -> None:
        while self.deferred:
            job = self.deferred.pop(0)
            self.run(self.session.speculative_transcribed(job.speculative,
                                                          self.text(job.item_id), 1.0))

    def client_events(self) -> list[dict]:
        return sent(self.actions)

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


def after_last_pause(name: str) -> int:
    """A byte offset into the file after its last pause was noticed, before its turn ended."""
    last = [e for e in turn_events(name) if isinstance(e, TurnPaused)][-1]
    return (last.at_ms + 90) * 32  # 16 kHz PCM16: 32 bytes a millisecond


def make(pause_ms: int = 200, **kw) -> RealtimeSession:
    s = RealtimeSession(SessionConfig(instructions="tutor", model="m", input_rate=16000,
                                      speculative_pause_ms=pause_ms, **kw))
    s.open()
    return s


def shape(events: list[dict]) -> list[tuple]:
    """What a client sees, without ids: event types, transcripts and answer texts."""
    return [(e["type"], e.get("transcript"), e.get("delta"), e.get("text")) for e in events]


@pytest.mark.parametrize("name", ["conversation.wav", "hesitation.wav", "q_fractions.wav"])
@pytest.mark.parametrize("late", [False, True], ids=["transcript-early", "transcript-late"])
def test_the_client_sees_exactly_what_it_would_without_speculation(name, late):
    texts = MANIFEST["files"][name]["texts"]
    plain = Driver(make(pause_ms=0), texts=texts)
    plain.feed(read_pcm(name))
    spec = Driver(make(), late=late and "after-end", texts=texts)
    spec.feed(read_pcm(name))
    spec.release_deferred()
    assert shape(spec.client_events()) == shape(plain.client_events())
    assert len(plain.of(Transcribe)) == len(texts)
    # every turn was speculated on and its guess used: no transcription after the turn ended
    assert len(spec.of(Adopt)) == len(texts)
    assert all(t.speculative for t in spec.of(Transcribe)[-len(texts):])
    assert not spec.held
    if late:  # transcripts after the end: answers start then, as usual
        assert spec.of(Release) == [] and not [g for g in spec.of(Generate) if g.held]
    else:  # transcripts before the end: the held answers are the turns' answers
        assert len(spec.of(Release)) == len(texts)


def test_conversation_wastes_nothing_and_hesitation_only_the_pause_spoken_through():
    conv = Driver(make(), texts=MANIFEST["files"]["conversation.wav"]["texts"])
    conv.feed(read_pcm("conversation.wav"))
    assert conv.of(Abandon) == [] and len(conv.of(Transcribe)) == 3
    assert (conv.session.spec.stats.hits, conv.session.spec.stats.wasted_stt) == (3, 0)
    hes = Driver(make(), texts=MANIFEST["files"]["hesitation.wav"]["texts"])
    hes.feed(read_pcm("hesitation.wav"))
    [abandoned] = hes.of(Abandon)
    first = hes.of(Transcribe)[0]
    assert abandoned.serial == first.speculative
    # its transcript came at once, so an answer had been started (held) and is thrown away
    assert abandoned.response_id is not None
    stats = hes.session.spec.stats
    assert (stats.hits, stats.misses, stats.wasted_stt, stats.wasted_llm) == (1, 1, 1, 1)


def test_a_held_answer_that_no_longer_fits_is_abandoned_and_the_turn_answered_afresh():
    d = Driver(make(), texts=["What is a fraction?"])
    pcm = read_pcm("q_fractions.wav")
    cut = after_last_pause("q_fractions.wav")
    d.feed(pcm[:cut])
    [held] = [g for g in d.of(Generate) if g.held]
    # the client adds a typed message before the turn ends: the conversation changed
    d.run(d.session.receive_text('{"type": "conversation.item.create", "item": {"type": '
                                 '"message", "role": "user", "content": [{"type": "input_text",'
                                 ' "text": "Also, simply please."}]}}', 5.0))
    d.feed(pcm[cut:], t0=10.0)
    assert Abandon(0, held.response_id) in d.actions
    fresh = [g for g in d.of(Generate) if not g.held]
    assert len(fresh) == 1 and fresh[0].messages[-2]["content"] == "Also, simply please."
    assert d.session.spec.stats.wasted_llm == 1 and d.session.spec.stats.hits == 1


def test_a_failed_speculative_transcription_means_the_turn_is_transcribed_afresh():
    s = make()
    d = Driver(s, late=True)
    pcm = read_pcm("q_war.wav")
    d.feed(pcm)
    [guess] = d.deferred
    d.deferred.clear()
    # the turn already ended on the guess; its transcription failing fails the turn, reported
    out = d.run(s.speculative_transcription_failed(guess.speculative, "provider_error", "boom"))
    assert [e["type"] for e in sent(out)] == [
        "conversation.item.input_audio_transcription.failed", "error"]
    # a guess failing before the end: the end transcribes the turn itself
    d2 = Driver(make(), late=True)
    cut = after_last_pause("q_war.wav")
    d2.feed(pcm[:cut])
    [guess] = d2.deferred
    d2.deferred.clear()
    d2.run(d2.session.speculative_transcription_failed(guess.speculative, "x", "y"))
    d2.feed(pcm[cut:], t0=10.0)
    assert [t for t in d2.of(Transcribe) if not t.speculative]
    assert any(e["type"] == "response.done" for e in d2.client_events())


@pytest.mark.parametrize("how", ["clear", "expire", "update"])
def test_work_of_a_pause_is_abandoned_when_the_turn_is_cleared_or_the_session_ends(how):
    s = make()
    d = Driver(s, late=True)
    d.feed(read_pcm("q_war.wav")[: after_last_pause("q_war.wav")])
    [guess] = d.deferred
    if how == "clear":
        out = s.receive_text('{"type": "input_audio_buffer.clear"}', 9.0)
    elif how == "expire":
        out = s.expire()
    else:
        out = s.receive_text('{"type": "session.update", "session": {"audio": {"input": '
                             '{"turn_detection": {"silence_duration_ms": 800}}}}}', 9.0)
    assert Abandon(guess.speculative, None) in out
    assert s.speculative_transcribed(guess.speculative, "late", 1.0) == []  # nothing leaks
    assert s.spec.stats.misses == 0  # not the student's doing


def test_speculation_is_off_per_session_and_unavailable_when_the_plan_lacks_it():
    s = make()
    out = s.receive_text('{"type": "session.update", "session": {"audio": {"input": '
                         '{"turn_detection": {"speculative": false}}}}}', 0.0)
    assert sent(out)[0]["session"]["audio"]["input"]["turn_detection"]["speculative"] is False
    d = Driver(s)
    d.feed(read_pcm("conversation.wav"))
    assert not any(t.speculative for t in d.of(Transcribe)) and len(d.of(Transcribe)) == 3
    off = make(pause_ms=0)  # the plan (or the server) has no speculation
    created = sent(off.open())[0]
    assert created["session"]["audio"]["input"]["turn_detection"]["speculative"] is False
    refused = sent(off.receive_text('{"type": "session.update", "session": {"audio": {"input": '
                                    '{"turn_detection": {"speculative": true}}}}}', 0.0))
    assert [e["type"] for e in refused] == ["session.updated", "error"]  # the rest applies
    assert refused[1]["error"]["code"] == "feature_not_available"


def test_the_pause_is_at_most_half_the_silence_threshold():
    s = make(pause_ms=400)
    s.receive_text('{"type": "session.update", "session": {"audio": {"input": '
                   '{"turn_detection": {"silence_duration_ms": 300}}}}}', 0.0)
    assert s.config.pause_ms == 150
    assert isinstance(s.open()[0], Send)
