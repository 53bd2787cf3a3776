"""The endpointer: a pure state machine that turns per-frame speech decisions into turns.

Fed one boolean per fixed-size frame, it answers with `SpeechStarted` / `SpeechEnded` carrying
sample offsets, and, when a pause threshold is set, `SpeechPaused` (the student has been silent
for `pause_frames`, well short of the end: a turn end is likely) and `SpeechResumed` (they went
on after such a pause) so that work can start speculatively before the end is certain. It
never reads a clock and never sees a socket: its only notion of time is the number of frames it
has been fed, so a WAV file replays to exactly the same turns every time.

The sharper end of speech: webrtcvad hears the quiet tail of a word as speech for about 100 ms
after it really ended. Given each frame's level (dBFS) as well, a frame webrtcvad calls speech
but that is `quiet_db` below the loudest frame of the turn, or within `floor_margin_db` of the
background level heard between turns, is past the end of the speech: `speech_end` is where the
speech really ended, and the pause clock (SpeechPaused, `end_after`) starts there. The
configured silence (`silence_frames`) still counts webrtcvad's unvoiced frames, so a client's
`silence_duration_ms` means what it always meant.

The silence that ends the turn in progress can be set while it runs (`end_after`, counted from
the true end): a semantic end-of-turn verdict shortens it when the student is done and
lengthens it when not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pcm import FRAME_MS, VAD_RATE


@dataclass(frozen=True)
class EndpointerConfig:
    frame_samples: int = VAD_RATE * FRAME_MS // 1000
    min_speech_frames: int = 7  # voiced run needed to start a turn (shorter blips are dropped)
    silence_frames: int = 20  # unvoiced run that ends a turn
    padding_frames: int = 10  # audio kept before the first voiced frame
    max_turn_frames: int = 1000  # a turn this long is ended by force
    pause_frames: int = 0  # unvoiced run that signals SpeechPaused (0: never; < silence_frames)
    quiet_db: float = 0.0  # a frame this far below the turn's loudest is quiet (0: levels unused)
    floor_margin_db: float = 10.0  # ... or this close to the background level between turns

    @classmethod
    def from_ms(
        cls,
        *,
        frame_ms: int = FRAME_MS,
        sample_rate: int = VAD_RATE,
        min_speech_ms: int = 200,
        silence_ms: int = 600,
        padding_ms: int = 300,
        max_turn_ms: int = 30000,
        pause_ms: int = 0,
        quiet_db: float = 0.0,
    ) -> EndpointerConfig:
        def frames(ms: int) -> int:
            return max(1, -(-ms // frame_ms))  # ceil: never shorter than asked

        return cls(
            frame_samples=sample_rate * frame_ms // 1000,
            min_speech_frames=frames(min_speech_ms),
            silence_frames=frames(silence_ms),
            padding_frames=padding_ms // frame_ms,  # floor: never more padding than asked
            max_turn_frames=frames(max_turn_ms),
            pause_frames=frames(pause_ms) if pause_ms > 0 else 0,
            quiet_db=quiet_db,
        )


@dataclass(frozen=True)
class SpeechStarted:
    start: int  # first sample of the turn, prefix padding included
    speech_start: int  # first sample of the first voiced frame


@dataclass(frozen=True)
class SpeechEnded:
    start: int  # same as the matching SpeechStarted.start
    end: int  # sample at which the end was decided: the turn's audio is [start, end)
    speech_end: int  # end of the last voiced frame
    forced: bool = False  # True when max_turn_frames cut the turn


@dataclass(frozen=True)
class SpeechPaused:
    start: int  # same as the matching SpeechStarted.start
    at: int  # sample at which the pause was noticed: the turn's audio so far is [start, at)
    speech_end: int  # end of the last voiced frame (the turn's audio is unchanged while equal)


@dataclass(frozen=True)
class SpeechResumed:
    at: int  # end of the voiced frame that broke the pause


class Endpointer:
    """IDLE → (min_speech_frames voiced in a row) → SPEAKING → (silence_frames unvoiced in a row,
    or max_turn_frames since start) → IDLE. While SPEAKING, pause_frames unvoiced in a row say
    SpeechPaused, and a voiced frame after that says SpeechResumed."""

    def __init__(self, config: EndpointerConfig | None = None) -> None:
        self.config = config or EndpointerConfig()
        self.frames = 0  # frames consumed so far
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self._turn_start = 0
        self._last_voiced_end = 0
        self._floor = 0  # a turn never starts before the previous one ended
        self._quiet_run = 0  # frames since the speech really ended (the sharper end)
        self._after: int | None = None  # end_after's silence for the pause in progress
        self._peak = -200.0  # loudest frame of the turn in progress (dBFS)
        self._background: float | None = None  # level heard between turns (dBFS, smoothed)

    @property
    def position(self) -> int:
        return self.frames * self.config.frame_samples

    @property
    def last_voiced_end(self) -> int:
        """Sample position where the last voiced frame of the current turn ended."""
        return self._last_voiced_end

    def push(self, is_speech: bool, level: float | None = None
             ) -> SpeechStarted | SpeechEnded | SpeechPaused | SpeechResumed | None:
        """One frame: webrtcvad's decision and, for the sharper end of speech, its level (dBFS)."""
        cfg = self.config
        self.frames += 1
        if not self.speaking:
            if level is not None and not is_speech:  # the background, between turns
                bg = self._background
                self._background = level if bg is None else bg + 0.05 * (level - bg)
            self._voiced_run = self._voiced_run + 1 if is_speech else 0
            if self._voiced_run < cfg.min_speech_frames:
                return None
            first_voiced = self.frames - self._voiced_run
            start_frame = max(first_voiced - cfg.padding_frames, self._floor)
            self.speaking = True
            self._silent_run = self._quiet_run = 0
            self._peak = -200.0 if level is None else level
            self._after = None
            self._turn_start = start_frame * cfg.frame_samples
            self._last_voiced_end = self.position
            return SpeechStarted(self._turn_start, first_voiced * cfg.frame_samples)

        loud = is_speech
        if is_speech and level is not None and cfg.quiet_db > 0:
            if level > self._peak:
                self._peak = level
            loud = level > self._peak - cfg.quiet_db and (
                self._background is None or level > self._background + cfg.floor_margin_db)
        pausing = 0 < cfg.pause_frames and (self._after is None or cfg.pause_frames < self._after)
        resumed = False
        if loud:
            resumed = pausing and self._quiet_run >= cfg.pause_frames
            self._quiet_run = 0
            self._last_voiced_end = self.position
            self._after = None  # a verdict holds only for the pause it was made on
        else:
            self._quiet_run += 1
        self._silent_run = 0 if is_speech else self._silent_run + 1
        if self._silent_run >= cfg.silence_frames and self._after is None \
                or self._after is not None and self._quiet_run >= self._after:
            return self._end(forced=False)
        if self.position - self._turn_start >= cfg.max_turn_frames * cfg.frame_samples:
            return self._end(forced=True)
        if resumed:
            return SpeechResumed(self.position)
        if pausing and self._quiet_run == cfg.pause_frames:
            return SpeechPaused(self._turn_start, self.position, self._last_voiced_end)
        return None

    def end_after(self, silence_frames: int) -> SpeechEnded | None:
        """The pause in progress ends the turn once it lasts `silence_frames` from the end of
        the speech, instead of the configured silence: at once if it already does. Speech
        resuming restores the configured silence."""
        if not self.speaking:
            return None
        self._after = max(1, silence_frames)
        return self._end(forced=False) if self._quiet_run >= self._after else None

    def end_now(self) -> SpeechEnded | None:
        """End the current turn here (a client commit while speech is still going on)."""
        return self._end(forced=False) if self.speaking else None

    def reset(self) -> None:
        """Forget any turn in progress; later turns start no earlier than here."""
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = self._quiet_run = 0
        self._after = None
        self._floor = self.frames

    def _end(self, *, forced: bool) -> SpeechEnded:
        event = SpeechEnded(self._turn_start, self.position, self._last_voiced_end, forced)
        self._after = None
        self._quiet_run = 0
        self.speaking = False
        self._voiced_run = 0
        self._silent_run = 0
        self._floor = self.frames
        return event
