"""Streaming sample-rate conversion with soxr: client audio (24 or 8 kHz) to the VAD rate (16 kHz),
and the tutor's 24 kHz speech to 8 kHz for G.711 sessions.

soxr keeps its filter state between chunks, so chunk boundaries leave no clicks or gaps. It also
holds back up to a block of samples (tens of ms) until more input or `flush()` arrives.
"""

from __future__ import annotations

import numpy as np
import soxr


class Resampler:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = self._new_stream()

    def _new_stream(self) -> soxr.ResampleStream | None:
        # a new stream rather than `clear()`: clear leaves the int16 dither state behind, and
        # a new one costs tens of microseconds
        if self.in_rate == self.out_rate:
            return None
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", quality="MQ")

    def feed(self, pcm: bytes) -> bytes:
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        return self._stream.resample_chunk(samples).astype("<i2", copy=False).tobytes()

    def flush(self) -> bytes:
        """End the stream: the samples soxr still holds, then a fresh stream for what follows."""
        if self._stream is None:
            return b""
        tail = self._stream.resample_chunk(np.zeros(0, dtype="<i2"), last=True)
        self._stream = self._new_stream()
        return tail.astype("<i2", copy=False).tobytes()

    def reset(self) -> None:
        """Drop what soxr holds (audio cut off, never to be heard) and start a fresh stream."""
        self._stream = self._new_stream()
