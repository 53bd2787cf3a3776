"""Frame-level speech detection with webrtcvad, and the mapping from Realtime's `threshold`.

webrtcvad is a small, deterministic C classifier: a few µs per 30 ms frame, cheap enough to run
inline on the event loop for every session (`make bench` prints the measured cost).
"""

from __future__ import annotations

import math

import numpy as np
import webrtcvad

from .pcm import FRAME_MS, VAD_RATE, ms_to_bytes

FRAME_BYTES = ms_to_bytes(FRAME_MS)
_FULL_SCALE = 32768.0 ** 2


def frame_level(frame: bytes) -> float:
    """The level of a PCM16 frame in dBFS (mean power; digital silence gives -120)."""
    a = np.frombuffer(frame, np.int16).astype(np.float32)
    power = float(np.dot(a, a)) / max(1, len(a))
    return 10.0 * math.log10(power / _FULL_SCALE + 1e-12)


def aggressiveness(threshold: float) -> int:
    """Realtime's `threshold` (0..1, higher = needs louder/clearer speech) → webrtcvad mode 0..3."""
    return max(0, min(3, int(threshold * 4)))


class SpeechClassifier:
    def __init__(self, threshold: float = 0.5) -> None:
        self._vad = webrtcvad.Vad(aggressiveness(threshold))

    def is_speech(self, frame: bytes) -> bool:
        return self._vad.is_speech(frame, VAD_RATE)
