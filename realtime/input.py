"""The student's audio as a session takes it: at most `audio_burst_ms` ahead of real time,
decoded from the session's input format, through VAD and endpointing (`audio.input`), and a
turn start held back while it may be the tutor's own voice leaking into the microphone.

Pure: every chunk comes with the time the shell saw it. What comes out is the turn events
(`TurnStarted`, `TurnPaused`, `TurnResumed`, `TurnEnded`) the session acts on.
"""

from __future__ import annotations

from typing import Callable, Union

from audio.formats import InputDecoder
from audio.input import AudioInput, TurnEnded, TurnPaused, TurnResumed, TurnStarted, VadSettings
from audio.pcm import AudioFormatError

from .config import SessionConfig
from .errors import ClientError

TurnEvent = Union[TurnStarted, TurnEnded, TurnPaused, TurnResumed]


class InputAudio:
    def __init__(self, config: SessionConfig, echo_window: Callable[[float], bool]) -> None:
        self.echo_window = echo_window  # the tutor started speaking just now (at this time)
        self._tokens_ms = float(config.audio_burst_ms)  # token bucket for audio ahead of real time
        self._last_audio_at: float | None = None
        # a speech start held as possible echo, and where voice must reach for it to count (ms)
        self._held: tuple[TurnStarted, float] | None = None
        self.reset(config)

    def reset(self, config: SessionConfig) -> None:
        """A fresh input for this config (a new format or turn detection): what was buffered
        is dropped."""
        self.config = config
        self._decoder = InputDecoder(config.input_format)
        td = config.turn_detection
        vad = None if td is None else VadSettings(
            threshold=td.threshold, prefix_padding_ms=td.prefix_padding_ms,
            silence_duration_ms=td.silence_duration_ms, min_speech_ms=config.min_speech_ms,
            pause_ms=config.pause_ms)
        self.audio = AudioInput(input_rate=config.input_rate, vad=vad,
                                max_turn_ms=config.max_turn_ms)

    def feed(self, data: bytes, now: float) -> list[TurnEvent]:
        """A client chunk in the session's input format, received at `now`. Raises ClientError
        when it comes too far ahead of real time (dropped) or is not audio we can take."""
        burst_ms = self.config.audio_burst_ms
        chunk_ms = self.config.input_format.ms(len(data))
        if self._last_audio_at is not None:
            refill = (now - self._last_audio_at) * 1000
            self._tokens_ms = min(float(burst_ms), self._tokens_ms + refill)
        self._last_audio_at = now
        if chunk_ms > self._tokens_ms:
            raise ClientError("input_audio_rate_exceeded",
                              f"audio is arriving faster than real time (more than {burst_ms}"
                              " ms ahead); this chunk was dropped")
        try:
            turn_events = self.audio.feed(self._decoder.decode(data))
        except AudioFormatError as exc:
            raise ClientError(exc.code, str(exc))
        self._tokens_ms -= chunk_ms
        out: list[TurnEvent] = []
        for event in turn_events:
            if isinstance(event, TurnStarted) and self.echo_window(now):
                # voice must go on this much longer to count
                self._held = (event, self.audio.position_ms + self.config.echo_persist_ms)
            elif isinstance(event, TurnEnded) and self._held is not None:
                self._held = None  # it stopped before it persisted: the tutor's echo, dropped
            else:
                out.append(event)
        if self._held is not None and self.audio.last_voiced_ms >= self._held[1]:
            out.append(self._held[0])  # it persisted: the student speaks
            self._held = None
        return out
