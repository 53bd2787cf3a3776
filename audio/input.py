"""The audio input of a session: client-rate PCM16 in, user turns (with their 16 kHz audio) out.

Chains resampling → 30 ms framing → webrtcvad → `Endpointer`, and keeps just enough audio to
hand each finished turn to transcription: while nobody speaks only the prefix padding is kept,
so an idle session holds a few kilobytes. With turn detection off (manual commits) it simply
buffers until the client commits or clears. With a pause threshold set, a pause in a turn
gives `TurnPaused` with the turn's audio so far (for speculative transcription) and speech after
it `TurnResumed`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .endpointer import (Endpointer, EndpointerConfig, SpeechEnded, SpeechPaused, SpeechResumed,
                         SpeechStarted)
from .pcm import (FRAME_MS, SAMPLE_WIDTH, VAD_RATE, AudioFormatError, Reframer, bytes_to_ms,
                  check_pcm16, samples_to_ms)
from .resample import Resampler
from .vad import FRAME_BYTES, SpeechClassifier, frame_level


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 600
    min_speech_ms: int = 200
    pause_ms: int = 0  # a pause this long in a turn says TurnPaused (0: never)
    # the sharper end of speech (audio.endpointer): a frame this far below the turn's loudest
    # is the end of the speech even when webrtcvad still hears speech in it (0: off)
    quiet_db: float = 30.0


@dataclass(frozen=True)
class TurnStarted:
    start_ms: int


@dataclass(frozen=True)
class TurnEnded:
    start_ms: int
    end_ms: int
    audio: bytes  # PCM16 mono at 16 kHz
    forced: bool = False  # cut at the maximum turn length
    speech_end_ms: int = -1  # end of the last voiced frame (-1: manual commit, unknown)


@dataclass(frozen=True)
class TurnPaused:
    """The student paused mid-turn; `audio` is the turn so far (PCM16, 16 kHz)."""

    start_ms: int
    at_ms: int
    speech_end_ms: int  # a later TurnEnded with the same speech_end_ms has the same speech
    audio: bytes


@dataclass(frozen=True)
class TurnResumed:
    at_ms: int


class AudioInput:
    def __init__(self, *, input_rate: int, vad: VadSettings | None, max_turn_ms: int) -> None:
        self.input_rate = input_rate
        self.vad = vad
        self.max_turn_ms = max_turn_ms
        self._resampler = Resampler(input_rate, VAD_RATE)
        self._buf = bytearray()  # 16 kHz audio from sample self._buf_start on
        self._buf_start = 0
        self._samples = 0  # 16 kHz samples appended so far (for manual mode offsets)
        if vad is not None:
            cfg = EndpointerConfig.from_ms(
                frame_ms=FRAME_MS,
                min_speech_ms=vad.min_speech_ms,
                silence_ms=vad.silence_duration_ms,
                padding_ms=vad.prefix_padding_ms,
                max_turn_ms=max_turn_ms,
                pause_ms=vad.pause_ms,
                quiet_db=vad.quiet_db,
            )
            self._endpointer: Endpointer | None = Endpointer(cfg)
            self._classifier = SpeechClassifier(vad.threshold)
            self._reframer = Reframer(FRAME_BYTES)
            self._keep_idle = (cfg.padding_frames + cfg.min_speech_frames) * FRAME_BYTES
            self._levels = vad.quiet_db > 0
        else:
            self._endpointer = None

    @property
    def speaking(self) -> bool:
        return self._endpointer is not None and self._endpointer.speaking

    @property
    def position_ms(self) -> int:
        """How much input audio the endpointer has consumed (16 kHz timeline)."""
        return 0 if self._endpointer is None else samples_to_ms(self._endpointer.position)

    @property
    def last_voiced_ms(self) -> int:
        """Where the last voiced frame of the turn in progress ended (16 kHz timeline)."""
        return 0 if self._endpointer is None else samples_to_ms(self._endpointer.last_voiced_end)

    @property
    def buffered_ms(self) -> int:
        return int(bytes_to_ms(len(self._buf)))

    def feed(self, pcm: bytes) -> list[TurnStarted | TurnEnded | TurnPaused | TurnResumed]:
        """Take one client chunk (PCM16 at the input rate). Raises AudioFormatError if unusable."""
        check_pcm16(pcm)
        audio = self._resampler.feed(pcm)
        if self._endpointer is None:
            if self.buffered_ms + int(bytes_to_ms(len(audio))) > self.max_turn_ms:
                raise AudioFormatError(
                    "input_audio_buffer_full",
                    f"the uncommitted audio would exceed the maximum turn of {self.max_turn_ms} ms; "
                    "commit or clear the buffer",
                )
            self._buf += audio
            self._samples += len(audio) // SAMPLE_WIDTH
            return []
        events: list[TurnStarted | TurnEnded | TurnPaused | TurnResumed] = []
        ep = self._endpointer
        for frame in self._reframer.feed(audio):
            self._buf += frame
            speech = self._classifier.is_speech(frame)
            decision = ep.push(speech, frame_level(frame) if self._levels else None)
            if isinstance(decision, SpeechStarted):
                events.append(TurnStarted(samples_to_ms(decision.start)))
            elif isinstance(decision, SpeechEnded):
                events.append(self._take_turn(decision))
            elif isinstance(decision, SpeechPaused):
                lo = decision.start * SAMPLE_WIDTH - self._buf_start
                hi = decision.at * SAMPLE_WIDTH - self._buf_start
                events.append(TurnPaused(samples_to_ms(decision.start), samples_to_ms(decision.at),
                                         samples_to_ms(decision.speech_end),
                                         bytes(self._buf[lo:hi])))
            elif isinstance(decision, SpeechResumed):
                events.append(TurnResumed(samples_to_ms(decision.at)))
        if not ep.speaking and len(self._buf) > 2 * self._keep_idle:
            self._drop_before(ep.position * SAMPLE_WIDTH - self._keep_idle)
        return events

    def end_after(self, silence_ms: int) -> TurnEnded | None:
        """The turn in progress ends once its pause lasts `silence_ms` (from the end of the
        speech), instead of the configured silence: the turn, if that is already so."""
        if self._endpointer is None:
            return None
        ended = self._endpointer.end_after(-(-silence_ms // FRAME_MS))
        return self._take_turn(ended) if ended else None

    def commit(self) -> TurnEnded | None:
        """End the current turn now: in VAD mode the turn in progress, else all buffered audio."""
        if self._endpointer is None:
            if not self._buf:
                return None
            end = self._samples
            start = end - len(self._buf) // SAMPLE_WIDTH
            turn = TurnEnded(samples_to_ms(start), samples_to_ms(end), bytes(self._buf),
                             speech_end_ms=samples_to_ms(end))
            self._buf.clear()
            return turn
        ended = self._endpointer.end_now()
        return self._take_turn(ended) if ended else None

    def clear(self) -> None:
        if self._endpointer is not None:
            self._reframer.clear()  # a partial frame is uncommitted audio too
            self._endpointer.reset()
            self._buf_start = self._endpointer.position * SAMPLE_WIDTH
        self._buf.clear()

    def _take_turn(self, ended: SpeechEnded) -> TurnEnded:
        lo = ended.start * SAMPLE_WIDTH - self._buf_start
        hi = ended.end * SAMPLE_WIDTH - self._buf_start
        turn = TurnEnded(samples_to_ms(ended.start), samples_to_ms(ended.end),
                         bytes(self._buf[lo:hi]), ended.forced, samples_to_ms(ended.speech_end))
        self._drop_before(ended.end * SAMPLE_WIDTH)
        return turn

    def _drop_before(self, byte_offset: int) -> None:
        cut = byte_offset - self._buf_start
        if cut > 0:
            del self._buf[:cut]
            self._buf_start = byte_offset
