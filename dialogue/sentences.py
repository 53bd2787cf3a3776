"""Pure pieces of spoken answers: where to cut streaming text for synthesis, and how much of an
answer the student heard.

`SentenceSplitter` is fed the chat model's text deltas and gives back pieces as soon as they are
complete: a sentence (ending in . ! ? … followed by a space or newline), or a clause (at , ; : —)
once the text waiting is long, so the first piece goes to text-to-speech early and no piece is
too long to start playing soon. `heard_text` maps a playback position (ms) back to the words
spoken by then, for barge-in and `conversation.item.truncate`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)|\n+")
CLAUSE_END = re.compile(r"[,;:—–](?=\s)")


class SentenceSplitter:
    def __init__(self, *, min_chars: int = 12, clause_after_chars: int = 80,
                 max_chars: int = 240) -> None:
        self.min_chars = min_chars  # shorter sentences wait for the next ("Yes." + "...")
        self.clause_after_chars = clause_after_chars
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        pieces = []
        while True:
            cut = self._cut()
            if cut is None:
                return pieces
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if piece:
                pieces.append(piece)

    def flush(self) -> str | None:
        piece, self._buffer = self._buffer.strip(), ""
        return piece or None

    def _cut(self) -> int | None:
        text = self._buffer
        for m in SENTENCE_END.finditer(text):
            if len(text[:m.end()].strip()) >= self.min_chars:
                return m.end()
        if len(text) >= self.clause_after_chars:
            clauses = [m.end() for m in CLAUSE_END.finditer(text)
                       if m.end() >= self.min_chars]
            if clauses:
                return clauses[-1]
        if len(text) >= self.max_chars:  # no punctuation at all: cut at the last space
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None


@dataclass
class Piece:
    text: str
    ms: float = 0.0  # audio received for it so far
    done: bool = False


def heard_text(pieces: list[Piece], heard_ms: float) -> str:
    """The answer's words spoken within the first `heard_ms` of its audio: whole pieces, then the
    share of the words of the piece playing at that moment."""
    out: list[str] = []
    position = 0.0
    for piece in pieces:
        if heard_ms >= position + piece.ms and piece.done:
            out.append(piece.text)
            position += piece.ms
            continue
        if piece.ms > 0 and heard_ms > position:
            words = piece.text.split()
            share = min(1.0, (heard_ms - position) / piece.ms)
            out.append(" ".join(words[:int(len(words) * share)]))
        break
    return " ".join(w for w in out if w)
