"""PCM16 in one place: its constants (sample width, the rates, the VAD frame), durations (bytes,
samples ↔ ms), validating client chunks, cutting them into fixed frames, packing WAV.

Kept free of numpy where plain bytes do: the hot path touches every chunk of every session.
"""

from __future__ import annotations

import io
import wave

SAMPLE_WIDTH = 2  # bytes per PCM16 sample (mono throughout)
VAD_RATE = 16000  # the rate the VAD, the endpointer and transcription work at
SPEECH_RATE = 24000  # the rate the tutor's speech is synthesised at
FRAME_MS = 30  # one webrtcvad frame


class AudioFormatError(ValueError):
    """Audio, or an audio format, we cannot take; `code` is the protocol error code and `param`
    the offending field of the client event, when there is one."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def check_pcm16(chunk: bytes) -> None:
    if len(chunk) % SAMPLE_WIDTH:
        raise AudioFormatError(
            "invalid_audio_length",
            f"PCM16 audio must have an even number of bytes; got {len(chunk)}",
        )


def samples_to_ms(samples: int, rate: int = VAD_RATE) -> int:
    return samples * 1000 // rate


def bytes_to_ms(n_bytes: int, rate: int = VAD_RATE) -> float:
    """How long `n_bytes` of PCM16 mono at `rate` play."""
    return n_bytes / SAMPLE_WIDTH * 1000 / rate


def bytes_to_seconds(n_bytes: int, rate: int = VAD_RATE) -> float:
    """How long `n_bytes` of PCM16 mono at `rate` play, in seconds."""
    return n_bytes / SAMPLE_WIDTH / rate


def ms_to_bytes(ms: int, rate: int = VAD_RATE) -> int:
    """The bytes of `ms` of PCM16 mono at `rate` (whole samples)."""
    return rate * ms // 1000 * SAMPLE_WIDTH


class Reframer:
    """Cuts a stream of arbitrarily sized chunks into frames of exactly `frame_bytes`.

    The remainder is kept for the next call, so no sample is lost or duplicated.
    """

    def __init__(self, frame_bytes: int) -> None:
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._pending += chunk
        n = len(self._pending) // self.frame_bytes
        if not n:
            return []
        cut = n * self.frame_bytes
        view = bytes(self._pending[:cut])
        del self._pending[:cut]
        return [view[i : i + self.frame_bytes] for i in range(0, cut, self.frame_bytes)]

    def clear(self) -> None:
        self._pending.clear()


def wav_bytes(pcm: bytes, rate: int = VAD_RATE) -> bytes:
    """Wrap mono PCM16 in a WAV container, the upload format every transcription API takes."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_WIDTH)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()
