"""bench.side_by_side finds the true end of speech: from the audio, or from a manifest field."""

import json
import wave

import numpy as np

from bench.side_by_side import load_speech, manifest_ends_ms, true_speech_ends_ms

RATE = 16000


def burst(ms: int, dbfs: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(RATE * ms // 1000) / RATE
    return np.sqrt(2) * 10 ** (dbfs / 20) * 32768 * np.sin(2 * np.pi * freq * t)


def quiet(ms: int, dbfs: float = -90.0) -> np.ndarray:
    rng = np.random.default_rng(ms)
    return rng.normal(0, 10 ** (dbfs / 20) * 32768, RATE * ms // 1000)


def pcm(*parts: np.ndarray) -> bytes:
    return np.concatenate(parts).clip(-32768, 32767).astype("<i2").tobytes()


def test_ends_of_two_utterances_with_a_quiet_tail():
    # utterance 1: loud 800 ms, then a tail 30 dB down (still speech) for 130 ms, ends at 1430;
    # utterance 2 after 1 s of near-silence: ends at 3430 + 600 = 4030 ms
    audio = pcm(quiet(500), burst(800, -15), burst(130, -45), quiet(1000), burst(600, -20),
                quiet(1500))
    ends = true_speech_ends_ms(audio)
    assert len(ends) == 2
    assert abs(ends[0] - 1430) <= 10, ends
    assert abs(ends[1] - 2430 - 600) <= 10, ends


def test_a_tail_far_below_the_utterance_is_not_speech():
    # 60 dB below the utterance: under its level − 40 dB, so the speech ends with the loud part
    audio = pcm(quiet(300), burst(700, -12), burst(300, -72), quiet(1200, -100))
    assert abs(true_speech_ends_ms(audio)[0] - 1000) <= 10


def test_manifest_speech_ends_ms_is_taken_as_a_number_or_a_list(tmp_path):
    audio = pcm(quiet(500), burst(1000, -15), quiet(1500))
    for name in ("one.wav", "many.wav"):
        with wave.open(str(tmp_path / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(audio)
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {
        "one.wav": {"utterances": 1, "speech_ends_ms": 1490},
        "many.wav": {"utterances": 1, "speech_ends_ms": [1480]}}}))
    assert manifest_ends_ms(tmp_path, "one.wav") == [1490.0]
    assert manifest_ends_ms(tmp_path, "missing.wav") is None
    one = load_speech("one.wav", tmp_path)
    assert (one.true_ends_ms, one.true_ends_source) == ([1490.0], "manifest")
    assert load_speech("many.wav", tmp_path).true_ends_ms == [1480.0]
    # a manifest that disagrees with the audio about the number of utterances is not used
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {
        "one.wav": {"speech_ends_ms": [700, 1490]}}}))
    one = load_speech("one.wav", tmp_path)
    assert one.true_ends_source == "audio" and abs(one.true_ends_ms[0] - 1500) <= 10


def test_manifest_speech_ms_spans_give_the_end_of_each_utterance(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {
        "hes.wav": {"utterances": 1, "speech_ms": [[500, 1913], [2313, 4329]]},
        "two.wav": {"utterances": 2, "speech_ms": [[500, 1788], [2988, 4311]]},
        "odd.wav": {"utterances": 2, "speech_ms": [[500, 900], [1200, 1800], [3000, 3500]]}}}))
    assert manifest_ends_ms(tmp_path, "hes.wav") == [4329.0]
    assert manifest_ends_ms(tmp_path, "two.wav") == [1788.0, 4311.0]
    assert manifest_ends_ms(tmp_path, "odd.wav") is None  # which segment ends which: unknown
