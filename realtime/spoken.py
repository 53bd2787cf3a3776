"""A spoken answer as the core keeps it: its text cut into pieces for synthesis, the audio each
piece has had, and from that what the student heard when it was cut short.

Pure bookkeeping (no clock: `now` is passed in). `Responses` opens one per answer in audio, hands
each piece to the shell as a `Synthesize` action and feeds the audio the shell gets back here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from audio.formats import AudioFormat, OutputEncoder
from audio.pcm import SPEECH_RATE, bytes_to_ms
from dialogue.sentences import Piece, SentenceSplitter, heard_text


@dataclass
class SpokenAnswer:
    """An answer being spoken: its pieces, and when its audio started going out."""

    encoder: OutputEncoder
    splitter: SentenceSplitter = field(default_factory=SentenceSplitter)
    pieces: list[Piece] = field(default_factory=list)
    text_done: bool = False
    first_audio_at: float | None = None
    failed: bool = False  # a piece's synthesis failed (said once to the client)

    @classmethod
    def new(cls, output_format: AudioFormat) -> "SpokenAnswer":
        return cls(OutputEncoder(output_format))

    def add(self, text: str) -> int:
        """A piece to synthesise; its index."""
        self.pieces.append(Piece(text))
        return len(self.pieces) - 1

    def audio(self, index: int, pcm: bytes, now: float) -> bytes:
        """Speech of piece `index` (PCM16 at SPEECH_RATE) went out at `now`: the bytes to send in
        the session's output format (possibly none yet: the encoder's resampler fills)."""
        if self.first_audio_at is None:
            self.first_audio_at = now
        self.pieces[index].ms += bytes_to_ms(len(pcm), SPEECH_RATE)
        return self.encoder.encode(pcm)

    @property
    def finished(self) -> bool:
        """The text is complete and every piece's audio has gone out."""
        return self.text_done and all(p.done for p in self.pieces)

    @property
    def sent_ms(self) -> float:
        return sum(p.ms for p in self.pieces)

    def heard(self, now: float | None) -> str:
        """What the student heard: the audio sent, no further than the time it has played."""
        if self.first_audio_at is None:
            return ""
        played = self.sent_ms if now is None else (now - self.first_audio_at) * 1000
        return heard_text(self.pieces, min(self.sent_ms, played))
