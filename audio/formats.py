"""The audio formats a Realtime session can choose, and the conversions at the session's edges.

`parse` validates a client's `session.audio.{input,output}.format` object into an `AudioFormat`;
`InputDecoder` turns client bytes into PCM16 for `AudioInput`, `OutputEncoder` the tutor's 24 kHz
PCM16 into the session's output format. Pure computation: no sockets, no clocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from .pcm import SAMPLE_WIDTH, SPEECH_RATE, AudioFormatError
from .resample import Resampler

Direction = Literal["input", "output"]

PCM = "audio/pcm"
PCMU = "audio/pcmu"
PCMA = "audio/pcma"


@dataclass(frozen=True)
class _Codec:
    bytes_per_sample: int
    rates: tuple[int, ...]  # the first is the default when the client gives none
    input_only_rates: tuple[int, ...]  # our extensions to the OpenAI protocol
    rate_in_json: bool  # OpenAI's G.711 objects carry no rate: it is always 8000
    decode: Callable[[bytes], bytes] | None  # None: already PCM16
    encode: Callable[[bytes], bytes] | None


_CODECS: dict[str, _Codec] = {
    PCM: _Codec(SAMPLE_WIDTH, (24000,), (16000,), True, None, None),
    PCMU: _Codec(1, (8000,), (), False, ulaw_decode, ulaw_encode),
    PCMA: _Codec(1, (8000,), (), False, alaw_decode, alaw_encode),
}


@dataclass(frozen=True)
class AudioFormat:
    type: str  # "audio/pcm" | "audio/pcmu" | "audio/pcma"
    rate: int  # samples per second on the wire

    @property
    def _codec(self) -> _Codec:
        return _CODECS[self.type]

    @property
    def is_extension(self) -> bool:
        """Accepted by this server but not by OpenAI's (audio/pcm at 16 kHz, input only)."""
        return self.rate in self._codec.input_only_rates

    @property
    def pcm_rate(self) -> int:
        """The rate of the PCM16 that `InputDecoder` gives (G.711 decodes to its own 8 kHz)."""
        return self.rate

    @property
    def bytes_per_ms(self) -> int:
        return self.rate * self._codec.bytes_per_sample // 1000

    def ms(self, n_bytes: int) -> float:
        """How long `n_bytes` of audio in this format play."""
        return n_bytes / self.bytes_per_ms

    def to_json(self) -> dict[str, Any]:
        """The GA shape: `{"type": "audio/pcm", "rate": 24000}`, `{"type": "audio/pcmu"}`."""
        if self._codec.rate_in_json:
            return {"type": self.type, "rate": self.rate}
        return {"type": self.type}


DEFAULT_FORMAT = AudioFormat(PCM, 24000)


def parse(obj: Any, direction: Direction) -> AudioFormat:
    """A client's `session.audio.<direction>.format` object, validated; raises AudioFormatError
    with the protocol error code and the offending field as `param`."""
    param = f"session.audio.{direction}.format"
    if not isinstance(obj, dict):
        raise AudioFormatError("invalid_value", f"{param} must be an object such as "
                               f"{{\"type\": \"audio/pcm\", \"rate\": 24000}}", param)
    kind = obj.get("type")
    if kind is None:  # the SDK's models leave it optional; PCM is what the protocol defaults to
        kind = PCM
    codec = _CODECS.get(kind) if isinstance(kind, str) else None
    if codec is None:
        raise AudioFormatError("unsupported_audio_format",
                               f"{direction} audio format {kind!r} is not supported; use one of "
                               f"{', '.join(_CODECS)}", f"{param}.type")
    rate = obj.get("rate")
    if rate is None:
        rate = codec.rates[0]
    allowed = codec.rates + (codec.input_only_rates if direction == "input" else ())
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate not in allowed:
        if rate in codec.input_only_rates:  # a format we know, but only for the student's audio
            raise AudioFormatError("unsupported_audio_format",
                                   f"{kind} at {rate} Hz is accepted for input only; output "
                                   f"{kind} is {codec.rates[0]} Hz", param)
        raise AudioFormatError("unsupported_sample_rate",
                               f"{kind} {direction} audio at rate {rate!r} is not supported; use "
                               f"{' or '.join(map(str, allowed))}", f"{param}.rate")
    return AudioFormat(kind, int(rate))


class InputDecoder:
    """Client bytes in the session's input format → PCM16 mono at `fmt.pcm_rate`. PCM goes
    through as it came (`AudioInput.feed` checks it is whole samples)."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self.decode: Callable[[bytes], bytes] = fmt._codec.decode or _same


def _same(data: bytes) -> bytes:
    return data


class OutputEncoder:
    """The tutor's 24 kHz PCM16 → the session's output format, chunk by chunk.

    Resampling keeps state across chunks (and holds back a few tens of ms), so call `flush()`
    when an answer's audio ends, and `reset()` when it is cut off.
    """

    def __init__(self, fmt: AudioFormat, source_rate: int = SPEECH_RATE) -> None:
        self.format = fmt
        self._resampler = Resampler(source_rate, fmt.rate)
        self._encode = fmt._codec.encode

    def encode(self, pcm: bytes) -> bytes:
        """PCM16 at the source rate (whole samples) → bytes to send; may be empty while the
        resampler fills. audio/pcm at 24 kHz returns `pcm` itself."""
        out = self._resampler.feed(pcm)
        return out if self._encode is None else self._encode(out)

    def flush(self) -> bytes:
        """The rest of the audio fed so far; the encoder then starts afresh."""
        out = self._resampler.flush()
        return out if self._encode is None else self._encode(out)

    def reset(self) -> None:
        """Forget audio fed but not yet returned (the answer was interrupted)."""
        self._resampler.reset()
