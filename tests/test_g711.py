"""G.711 audio at the session's edges: codecs, format objects, and 8 kHz speech through the VAD."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pydantic import TypeAdapter

from audio import g711
from audio.formats import (DEFAULT_FORMAT, PCM, PCMA, PCMU, AudioFormat, InputDecoder,
                           OutputEncoder, parse)
from audio.pcm import AudioFormatError
from audio.input import AudioInput, TurnEnded, TurnStarted, VadSettings
from openai.types.realtime.realtime_audio_formats import RealtimeAudioFormats
from tests.conftest import CORPUS_FILES, expected_turns, read_pcm
from tests.realtime_client import to_rate

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    # the reference G.711 (CPython's C code); gone in 3.13, used only here
    audioop = pytest.importorskip("audioop")

ALL_SAMPLES = np.arange(65536, dtype=np.uint16).view("<i2").tobytes()
ALL_CODES = bytes(range(256))
CODECS = {PCMU: (g711.ulaw_encode, g711.ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
          PCMA: (g711.alaw_encode, g711.alaw_decode, audioop.lin2alaw, audioop.alaw2lin)}


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float64)


# -- the codecs -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_every_pcm16_sample_encodes_exactly_as_the_reference(kind):
    encode, _, reference, _ = CODECS[kind]
    assert encode(ALL_SAMPLES) == reference(ALL_SAMPLES, 2)


@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_every_code_decodes_exactly_as_the_reference(kind):
    _, decode, _, reference = CODECS[kind]
    assert decode(ALL_CODES) == reference(ALL_CODES, 2)


@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_decoded_codes_encode_back_to_themselves(kind):
    encode, decode, _, _ = CODECS[kind]
    round_trip = encode(decode(ALL_CODES))
    if kind == PCMU:  # µ-law has two zeros (0x7F, 0xFF); both decode to 0, which encodes as 0xFF
        assert round_trip == ALL_CODES.replace(b"\x7f", b"\xff")
    else:
        assert round_trip == ALL_CODES


# -- format objects ---------------------------------------------------------------------------
@pytest.mark.parametrize("obj, direction, fmt", [
    ({"type": "audio/pcm", "rate": 24000}, "input", AudioFormat(PCM, 24000)),
    ({"type": "audio/pcm"}, "output", AudioFormat(PCM, 24000)),
    ({}, "output", DEFAULT_FORMAT),
    ({"type": "audio/pcm", "rate": 16000}, "input", AudioFormat(PCM, 16000)),
    ({"type": "audio/pcmu"}, "input", AudioFormat(PCMU, 8000)),
    ({"type": "audio/pcma", "rate": 8000}, "output", AudioFormat(PCMA, 8000)),
])
def test_valid_formats_parse(obj, direction, fmt):
    assert parse(obj, direction) == fmt


@pytest.mark.parametrize("obj, direction, code, param", [
    ("audio/pcmu", "input", "invalid_value", "session.audio.input.format"),
    ({"type": "g711_ulaw"}, "input", "unsupported_audio_format", "session.audio.input.format.type"),
    ({"type": 7}, "output", "unsupported_audio_format", "session.audio.output.format.type"),
    ({"type": "audio/pcm", "rate": 44100}, "input", "unsupported_sample_rate",
     "session.audio.input.format.rate"),
    ({"type": "audio/pcm", "rate": True}, "input", "unsupported_sample_rate",
     "session.audio.input.format.rate"),
    ({"type": "audio/pcm", "rate": "24000"}, "input", "unsupported_sample_rate",
     "session.audio.input.format.rate"),
    ({"type": "audio/pcmu", "rate": 16000}, "input", "unsupported_sample_rate",
     "session.audio.input.format.rate"),
    ({"type": "audio/pcma", "rate": 24000}, "output", "unsupported_sample_rate",
     "session.audio.output.format.rate"),
    ({"type": "audio/pcm", "rate": 16000}, "output", "unsupported_audio_format",
     "session.audio.output.format"),
])
def test_invalid_formats_are_refused_with_a_precise_code(obj, direction, code, param):
    with pytest.raises(AudioFormatError) as info:
        parse(obj, direction)
    assert (info.value.code, info.value.param) == (code, param)


@pytest.mark.parametrize("fmt", [AudioFormat(PCM, 24000), AudioFormat(PCMU, 8000),
                                 AudioFormat(PCMA, 8000)])
def test_format_json_is_the_shape_the_openai_sdk_reads_back(fmt):
    sdk = TypeAdapter(RealtimeAudioFormats).validate_python(fmt.to_json())
    assert sdk.model_dump(exclude_none=True) == fmt.to_json()
    assert parse(fmt.to_json(), "output") == fmt


def test_bytes_per_ms_and_played_ms_follow_the_format():
    assert [f.bytes_per_ms for f in (AudioFormat(PCM, 24000), AudioFormat(PCM, 16000),
                                     AudioFormat(PCMU, 8000))] == [48, 32, 8]
    assert AudioFormat(PCMA, 8000).ms(1600) == 200
    assert AudioFormat(PCM, 24000).ms(4800) == 100


# -- input: decoding, and 8 kHz speech through the VAD ----------------------------------------
def test_pcm_input_passes_through_and_half_samples_are_refused():
    data = b"\x01\x02" * 10
    assert InputDecoder(DEFAULT_FORMAT).decode(data) is data
    # half a sample is refused where PCM is checked, by the session's audio input
    with pytest.raises(AudioFormatError) as info:
        AudioInput(input_rate=24000, vad=VadSettings(), max_turn_ms=30000).feed(
            InputDecoder(DEFAULT_FORMAT).decode(b"\x01\x02\x03"))
    assert info.value.code == "invalid_audio_length"
    assert len(InputDecoder(AudioFormat(PCMU, 8000)).decode(b"\xff" * 3)) == 6  # any length


def turns_through_g711(kind: str, pcm8k: bytes, chunk_ms: int = 20) -> list:
    encode = CODECS[kind][0]
    wire = encode(pcm8k)
    fmt = AudioFormat(kind, 8000)
    decoder = InputDecoder(fmt)
    audio = AudioInput(input_rate=fmt.pcm_rate, vad=VadSettings(), max_turn_ms=30000)
    events = []
    step = fmt.bytes_per_ms * chunk_ms
    for i in range(0, len(wire), step):
        events += audio.feed(decoder.decode(wire[i : i + step]))
    assert audio.position_ms > len(wire) / fmt.bytes_per_ms - 200  # the timeline kept up
    return events


@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_telephone_speech_gives_exactly_one_turn(kind):
    pcm16k = read_pcm("q_derivative.wav")
    events = turns_through_g711(kind, to_rate(pcm16k, 8000))
    assert [type(e) for e in events] == [TurnStarted, TurnEnded] * expected_turns("q_derivative.wav")
    turn = events[1]
    wideband = [e for e in AudioInput(input_rate=16000, vad=VadSettings(), max_turn_ms=30000)
                .feed(pcm16k) if isinstance(e, TurnEnded)]
    assert abs(turn.start_ms - wideband[0].start_ms) <= 60
    assert abs(turn.end_ms - wideband[0].end_ms) <= 60
    assert len(turn.audio) == (turn.end_ms - turn.start_ms) * 32  # handed on at 16 kHz


@pytest.mark.parametrize("name", CORPUS_FILES)
@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_every_corpus_recording_gives_its_turns_over_the_telephone(kind, name):
    events = turns_through_g711(kind, to_rate(read_pcm(name), 8000))
    assert sum(isinstance(e, TurnEnded) for e in events) == expected_turns(name)


# -- output: the tutor's 24 kHz speech onto the wire ------------------------------------------
SPEECH_24K = to_rate(read_pcm("q_derivative.wav"), 24000)


def encode_in_chunks(fmt: AudioFormat, pcm: bytes, chunk_ms: int) -> bytes:
    encoder = OutputEncoder(fmt)
    step = 48 * chunk_ms
    return b"".join(encoder.encode(pcm[i : i + step]) for i in range(0, len(pcm), step)) \
        + encoder.flush()


def test_pcm_output_at_24khz_is_the_speech_itself():
    encoder = OutputEncoder(DEFAULT_FORMAT)
    assert encoder.encode(SPEECH_24K) is SPEECH_24K
    assert encoder.flush() == b""


@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_encoding_in_20ms_chunks_sounds_the_same_as_encoding_at_once(kind):
    fmt = AudioFormat(kind, 8000)
    decode = CODECS[kind][1]
    whole = samples(decode(encode_in_chunks(fmt, SPEECH_24K, 10**6)))
    chunked = samples(decode(encode_in_chunks(fmt, SPEECH_24K, 20)))
    assert abs(len(chunked) - len(SPEECH_24K) // 2 / 3) <= 2  # nothing lost or doubled
    assert len(chunked) == len(whole)
    # soxr's chunked arithmetic differs by a least significant bit or two, which can move a
    # sample across a G.711 decision level: at most one step (1024 in the loudest segment)
    diff = chunked - whole
    assert np.max(np.abs(diff)) <= 1024
    assert 10 * np.log10(np.sum(whole**2) / np.sum(diff**2)) > 45
    assert abs(fmt.ms(len(chunked)) - DEFAULT_FORMAT.ms(len(SPEECH_24K))) <= 0.25


@pytest.mark.parametrize("kind", [PCMU, PCMA])
def test_encoded_speech_is_the_speech_at_telephone_quality(kind):
    fmt = AudioFormat(kind, 8000)
    heard = samples(CODECS[kind][1](encode_in_chunks(fmt, SPEECH_24K, 20)))
    reference = samples(to_rate(read_pcm("q_derivative.wav"), 8000))
    n = min(len(heard), len(reference))
    noise = heard[:n] - reference[:n]
    snr_db = 10 * np.log10(np.sum(reference[:n] ** 2) / np.sum(noise**2))
    assert snr_db > 25


def test_an_interrupted_answer_leaves_nothing_behind_for_the_next():
    fmt = AudioFormat(PCMU, 8000)
    encoder = OutputEncoder(fmt)
    encoder.encode(SPEECH_24K[: 48 * 500])
    encoder.reset()
    again = encoder.encode(SPEECH_24K) + encoder.flush()
    assert again == encode_in_chunks(fmt, SPEECH_24K, 10**6)
