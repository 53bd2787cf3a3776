"""The tutor's voice leaking into the student's microphone when it starts speaking (before the
browser's echo canceller has adapted) must not interrupt it; the student speaking over it must.
Driven through the protocol core with the real VAD on real speech from ../shared/audio."""

from __future__ import annotations

import numpy as np

from realtime import (Cancel, Generate, RealtimeSession, Send, SessionConfig, Transcribe)
from tests.conftest import read_pcm

CHUNK = 640  # 20 ms at 16 kHz


def answering() -> tuple[RealtimeSession, str, float]:
    """A session whose spoken answer has just started playing; returns it, the response id and
    the time its first audio went out."""
    s = RealtimeSession(SessionConfig(instructions="t", model="m", input_rate=16000,
                                      output_audio=True, echo_guard_ms=400, echo_persist_ms=300))
    s.open()
    t = feed(s, read_pcm("q_war.wav"), 0.0)[1]
    job = next(a for a in t if isinstance(a, Transcribe))
    gen = next(a for a in s.transcription_completed(job.item_id, "When did the war end?", 3)
               if isinstance(a, Generate))
    s.response_delta(gen.response_id, "The war ended in 1945. ")
    now = 10.0
    s.speech_audio(gen.response_id, 0, b"\0\0" * 2400, now)
    return s, gen.response_id, now


def feed(s: RealtimeSession, pcm: bytes, t0: float) -> tuple[float, list]:
    out = []
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        out += s.receive_audio(pcm[i:i + CHUNK], t0 + k * 0.02)
    return t0 + len(pcm) / 32000, out


def mix(*signals: tuple[bytes, float]) -> bytes:
    arrays = [np.frombuffer(pcm, "<i2").astype(np.float32) * gain for pcm, gain in signals]
    n = max(len(a) for a in arrays)
    total = sum(np.pad(a, (0, n - len(a))) for a in arrays)
    return np.clip(total, -32768, 32767).astype("<i2").tobytes()


def kinds(actions: list) -> list[str]:
    return [a.event["type"] for a in actions if isinstance(a, Send)]


def test_a_burst_of_echo_as_the_tutor_starts_speaking_is_ignored():
    s, rid, now = answering()
    tutor = read_pcm("q_french.wav")
    # the first ~350 ms of the tutor's own voice leaks back (the canceller is still adapting)
    onset = next(i for i in range(0, len(tutor), CHUNK)
                 if np.abs(np.frombuffer(tutor[i:i + CHUNK], "<i2")).max() > 2000)
    echo = mix((tutor[onset:onset + 11200], 0.5)) + b"\0\0" * 16000
    _, actions = feed(s, echo, now)
    assert "input_audio_buffer.speech_started" not in kinds(actions)
    assert not any(isinstance(a, (Cancel, Transcribe)) for a in actions)
    assert s.turns.response is not None and s.turns.response.id == rid  # still speaking


def test_the_student_speaking_over_the_tutor_interrupts_after_it_persists():
    s, rid, now = answering()
    student = read_pcm("q_derivative.wav")
    tutor = read_pcm("q_french.wav")
    mic = mix((student, 1.0), (tutor[:len(student)], 0.3))  # speech, with the tutor's echo under it
    _, actions = feed(s, mic, now)
    types = kinds(actions)
    assert "input_audio_buffer.speech_started" in types
    assert Cancel(rid) in actions
    started = next(a.event for a in actions if isinstance(a, Send)
                   and a.event["type"] == "input_audio_buffer.speech_started")
    assert types.index("output_audio_buffer.cleared") > types.index(
        "input_audio_buffer.speech_started")
    assert started["audio_start_ms"] >= 0


def voiced_from_onset(name: str) -> bytes:
    pcm = read_pcm(name)
    onset = next(i for i in range(0, len(pcm), CHUNK)
                 if np.abs(np.frombuffer(pcm[i:i + CHUNK], "<i2")).max() > 2000)
    return pcm[onset:]


def test_outside_the_guard_window_speech_interrupts_at_once():
    s, rid, now = answering()
    pcm = voiced_from_onset("q_derivative.wav")
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        if Cancel(rid) in s.receive_audio(pcm[i:i + CHUNK], now + 1.0 + k * 0.02):
            cut_at_ms = (k + 1) * 20
            break
    s2, rid2, now2 = answering()
    for k, i in enumerate(range(0, len(pcm), CHUNK)):
        if Cancel(rid2) in s2.receive_audio(pcm[i:i + CHUNK], now2 + k * 0.02):
            guarded_cut_ms = (k + 1) * 20
            break
    # inside the window the same speech needs 300 ms more voice before it counts (the VAD's
    # own onset needs 200 ms either way)
    assert 280 <= guarded_cut_ms - cut_at_ms <= 340
