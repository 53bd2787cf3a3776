"""G.711 µ-law and A-law (ITU-T G.711) to and from PCM16, as table lookups over numpy arrays.

The tables are computed once at import from the reference algorithm (the one in Sun's g711.c
and CPython's audioop): decoding is a 256-entry table indexed by the code byte, encoding a
65536-entry table indexed by the sample's uint16 bit pattern. No rate conversion here: G.711 is
one byte per sample at whatever rate the samples have (8 kHz on the telephone network).
"""

from __future__ import annotations

import numpy as np

_PCM16 = np.dtype("<i2")

# The end of each of the eight segments (chords) of the companding curve, in the code's own
# linear scale: 14-bit magnitudes (+ bias) for µ-law, 13-bit magnitudes for A-law.
_ULAW_SEGMENT_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159

_ALL_SAMPLES = np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)


def _ulaw_encode_table() -> np.ndarray:
    value = _ALL_SAMPLES >> 2  # 14-bit
    mask = np.where(value < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(value), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_END, magnitude)  # first segment whose end >= value
    code = np.where(segment >= 8, 0x7F,  # past the last segment: the loudest code
                    (segment << 4) | ((magnitude >> (segment + 1)) & 0xF))
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _ulaw_decode_table() -> np.ndarray:
    u = ~_ALL_CODES & 0xFF
    t = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(_PCM16)


def _alaw_encode_table() -> np.ndarray:
    value = _ALL_SAMPLES >> 3  # 13-bit
    mask = np.where(value >= 0, 0xD5, 0x55)
    magnitude = np.where(value >= 0, value, -value - 1)  # at most 0xFFF: always in a segment
    segment = np.searchsorted(_ALAW_SEGMENT_END, magnitude)
    shift = np.where(segment < 2, 1, segment)
    code = (segment << 4) | ((magnitude >> shift) & 0xF)
    return ((code ^ mask) & 0xFF).astype(np.uint8)


def _alaw_decode_table() -> np.ndarray:
    a = _ALL_CODES ^ 0x55
    segment = (a & 0x70) >> 4
    t = ((a & 0x0F) << 4) + np.where(segment == 0, 8, 0x108)
    t = np.where(segment > 1, t << np.maximum(segment - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(_PCM16)


_ULAW_ENCODE = _ulaw_encode_table()
_ULAW_DECODE = _ulaw_decode_table()
_ALAW_ENCODE = _alaw_encode_table()
_ALAW_DECODE = _alaw_decode_table()


def _encode(table: np.ndarray, pcm: bytes) -> bytes:
    if len(pcm) % 2:
        raise ValueError(f"PCM16 audio must have an even number of bytes; got {len(pcm)}")
    return table[np.frombuffer(pcm, dtype="<u2")].tobytes()


def _decode(table: np.ndarray, codes: bytes) -> bytes:
    return table[np.frombuffer(codes, dtype=np.uint8)].tobytes()


def ulaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian → µ-law, one byte per sample."""
    return _encode(_ULAW_ENCODE, pcm)


def ulaw_decode(codes: bytes) -> bytes:
    """µ-law → PCM16 little-endian, two bytes per code."""
    return _decode(_ULAW_DECODE, codes)


def alaw_encode(pcm: bytes) -> bytes:
    """PCM16 little-endian → A-law, one byte per sample."""
    return _encode(_ALAW_ENCODE, pcm)


def alaw_decode(codes: bytes) -> bytes:
    """A-law → PCM16 little-endian, two bytes per code."""
    return _decode(_ALAW_DECODE, codes)
