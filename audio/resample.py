"""Streaming sample-rate conversion to the VAD rate (24 kHz Realtime audio → 16 kHz) with soxr.

soxr keeps its filter state between chunks, so chunk boundaries leave no clicks or gaps.
"""

from __future__ import annotations

import numpy as np
import soxr


class Resampler:
    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = (
            soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="MQ")
            if in_rate != out_rate
            else None
        )

    def feed(self, pcm: bytes) -> bytes:
        if self._stream is None:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2")
        return self._stream.resample_chunk(samples).astype("<i2", copy=False).tobytes()
