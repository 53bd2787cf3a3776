"""The endpointer and the audio input, fed real speech from the shared corpus (no sockets)."""

from __future__ import annotations

import random

import pytest

from audio.endpointer import Endpointer, EndpointerConfig, SpeechEnded, SpeechStarted
from audio.pcm import AudioFormatError, Reframer, wav_bytes
from audio.input import AudioInput, TurnEnded, TurnStarted, VadSettings
from tests.conftest import CORPUS_FILES, expected_turns, read_pcm
from tests.realtime_client import to_rate


def run(ep: Endpointer, pattern: str) -> list[SpeechStarted | SpeechEnded]:
    out = []
    for c in pattern:
        e = ep.push(c == "1")
        if e:
            out.append(e)
    return out


CFG = EndpointerConfig(frame_samples=10, min_speech_frames=3, silence_frames=4, padding_frames=2,
                       max_turn_frames=12)


def test_short_blips_never_start_a_turn():
    assert run(Endpointer(CFG), "0110110011000000") == []


def test_turn_starts_with_padding_and_ends_after_silence():
    events = run(Endpointer(CFG), "00000111110000000")
    assert events == [SpeechStarted(start=30, speech_start=50),
                      SpeechEnded(start=30, end=140, speech_end=100)]


def test_pause_shorter_than_silence_keeps_one_turn():
    events = run(Endpointer(CFG), "0111001110000")
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]


def test_turn_is_forced_to_end_at_maximum_length():
    events = run(Endpointer(CFG), "1" * 20)
    started, ended = events[0], events[1]
    assert isinstance(ended, SpeechEnded) and ended.forced
    assert ended.end - started.start == CFG.max_turn_frames * CFG.frame_samples


def test_padding_never_reaches_into_the_previous_turn():
    events = run(Endpointer(CFG), "1110000" + "111")
    assert events[2].start == events[1].end  # second start clamped to the end of the first


def test_reframer_keeps_every_byte():
    r = Reframer(4)
    frames = r.feed(b"abcdef") + r.feed(b"gh") + r.feed(b"ij")
    assert frames == [b"abcd", b"efgh"]
    assert r.feed(b"kl") == [b"ijkl"]


def test_odd_length_pcm_is_refused():
    ai = AudioInput(input_rate=16000, vad=VadSettings(), max_turn_ms=30000)
    with pytest.raises(AudioFormatError) as info:
        ai.feed(b"\x00\x01\x02")
    assert info.value.code == "invalid_audio_length"


def turns_of(pcm: bytes, rate: int, sizes, threshold: float = 0.5) -> list[TurnEnded]:
    ai = AudioInput(input_rate=rate, vad=VadSettings(threshold=threshold), max_turn_ms=30000)
    out, i = [], 0
    while i < len(pcm):
        n = next(sizes)
        out += ai.feed(pcm[i : i + n])
        i += n
    starts = [e for e in out if isinstance(e, TurnStarted)]
    ends = [e for e in out if isinstance(e, TurnEnded)]
    assert len(starts) == len(ends)
    return ends


def fixed(n: int):
    while True:
        yield n


@pytest.mark.parametrize("name", CORPUS_FILES)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_corpus_turn_counts_match_the_manifest(name, threshold):
    assert len(turns_of(read_pcm(name), 16000, fixed(640), threshold)) == expected_turns(name)


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_24khz_input_finds_the_same_turns(name):
    ends = turns_of(to_rate(read_pcm(name), 24000), 24000, fixed(960))
    assert len(ends) == expected_turns(name)


@pytest.mark.parametrize("name", ["conversation.wav", "hesitation.wav"])
def test_chunk_sizes_do_not_change_the_turns(name):
    pcm = read_pcm(name)
    rng = random.Random(7)
    ragged = iter(lambda: rng.randrange(1, 2000) * 2, None)
    a = turns_of(pcm, 16000, fixed(640))
    b = turns_of(pcm, 16000, ragged)
    assert [(t.start_ms, t.end_ms, t.audio) for t in a] == [(t.start_ms, t.end_ms, t.audio) for t in b]


def test_turn_audio_is_the_exact_slice_of_the_input():
    pcm = read_pcm("conversation.wav")
    for turn in turns_of(pcm, 16000, fixed(640)):
        assert turn.audio == pcm[turn.start_ms * 32 : turn.end_ms * 32]
        assert turn.end_ms - turn.start_ms >= 1000


def test_idle_session_keeps_only_the_padding():
    ai = AudioInput(input_rate=16000, vad=VadSettings(), max_turn_ms=30000)
    pcm = read_pcm("silence_noise.wav")
    for i in range(0, len(pcm), 640):
        ai.feed(pcm[i : i + 640])
    assert ai.buffered_ms <= 2 * (300 + 210)


def test_manual_mode_buffers_until_commit():
    ai = AudioInput(input_rate=16000, vad=None, max_turn_ms=1000)
    assert ai.feed(b"\x01\x00" * 8000) == []
    turn = ai.commit()
    assert turn is not None and (turn.start_ms, turn.end_ms) == (0, 500)
    assert ai.commit() is None
    with pytest.raises(AudioFormatError) as info:
        ai.feed(b"\x00\x00" * 17000)
    assert info.value.code == "input_audio_buffer_full"


def test_wav_bytes_round_trip():
    import io
    import wave
    with wave.open(io.BytesIO(wav_bytes(b"\x01\x02" * 160))) as w:
        assert (w.getframerate(), w.getnframes()) == (16000, 160)
