"""Cutting a `Document` into retrieval-sized `Chunk`s: whole sentences packed up to a size, never
across a heading, consecutive chunks of a section sharing a few trailing sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .extract import Document


@dataclass(frozen=True)
class Chunk:
    position: int  # 0..n-1 across the document
    heading_path: tuple[str, ...]
    text: str


def chunk(document: Document, *, max_chars: int = 900, overlap_chars: int = 150) -> list[Chunk]:
    """Deterministic: the same document and sizes always give the same chunks."""
    if max_chars < 1 or not 0 <= overlap_chars < max_chars:
        raise ValueError("need max_chars >= 1 and 0 <= overlap_chars < max_chars")
    chunks: list[Chunk] = []
    for section in document.sections:
        # One section at a time: a heading is a change of subject, and a chunk straddling two
        # would be retrieved for either and answer neither well.
        for text in _pack(section.text, sentence_spans(section.text, max_chars),
                          max_chars, overlap_chars):
            chunks.append(Chunk(len(chunks), section.heading_path, text))
    return chunks


# A sentence ends at . ! ? (or …), maybe closed by quotes or brackets, before a space; whether
# it really ends is decided by what follows (_ends_sentence).
_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=[ \t]+)")
_LAST_WORD = re.compile(r"\S+$")
_OPENERS = "\"'“‘([¿¡"
# Lower-cased words whose period is not a full stop. "etc." is left out on purpose: it ends
# sentences about as often as not.
_ABBREVIATIONS = {"e.g.", "i.e.", "cf.", "vs.", "viz.", "approx.", "dr.", "mr.", "mrs.", "ms.",
                  "prof.", "st.", "no.", "nos.", "fig.", "figs.", "eq.", "eqs.", "ch.", "sec.",
                  "p.", "pp.", "vol.", "ca.", "jr.", "sr.", "ex."}


def _ends_sentence(text: str, end: int, punctuation: str) -> bool:
    after = end
    while after < len(text) and text[after] in " \t":
        after += 1
    while after < len(text) and text[after] in _OPENERS:
        after += 1
    if after >= len(text) or not (text[after].isupper() or text[after].isdigit()):
        return False
    if punctuation.rstrip("\"'”’)]") != ".":
        return True
    word = _LAST_WORD.search(text, max(0, end - 40), end).group().lstrip(_OPENERS).lower()
    # Abbreviations, initials ("J. Smith") and dotted acronyms ("U.S.") are not sentence ends.
    return not (word in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+", word))


def sentence_spans(text: str, max_chars: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence of `text`, with no surrounding whitespace. A line end is
    always a boundary (extraction puts one after each paragraph, list item or code line); a
    sentence longer than `max_chars` comes in pieces cut at spaces."""
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", text):
        start = line.start()
        for end in _END.finditer(text, line.start(), line.end()):
            if _ends_sentence(text, end.end(), end.group()):
                spans.extend(_fit(text, start, end.end(), max_chars))
                start = end.end()
        spans.extend(_fit(text, start, line.end(), max_chars))
    return spans


_WORD = re.compile(r"\S+")


def _fit(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """The span trimmed of whitespace, cut at spaces into pieces of at most max_chars (a single
    word longer than that is cut where it must be)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
    pieces: list[tuple[int, int]] = []
    for w_start, w_end in words:
        while w_end - w_start > max_chars:
            pieces.append((w_start, w_start + max_chars))
            w_start += max_chars
        if pieces and w_end - pieces[-1][0] <= max_chars:
            pieces[-1] = (pieces[-1][0], w_end)
        else:
            pieces.append((w_start, w_end))
    return pieces


def _pack(text: str, units: list[tuple[int, int]], max_chars: int,
          overlap_chars: int) -> list[str]:
    """Greedy packing of consecutive units (sentences) into slices of `text` of at most
    max_chars; each slice after the first starts with the previous one's last whole units
    when they total at most overlap_chars, so a fact cut at a boundary is whole in one chunk."""
    texts: list[str] = []
    first = nxt = 0  # the chunk's first unit; the first unit not yet in any chunk
    while nxt < len(units):
        if texts:
            previous, first = first, nxt
            end = units[nxt - 1][1]
            while first - 1 >= previous and end - units[first - 1][0] <= overlap_chars:
                first -= 1
            # The overlap gives way when the next new unit would not fit beside it.
            while first < nxt and units[nxt][1] - units[first][0] > max_chars:
                first += 1
        last = nxt
        while last + 1 < len(units) and units[last + 1][1] - units[first][0] <= max_chars:
            last += 1
        texts.append(text[units[first][0]:units[last][1]])
        nxt = last + 1
    return texts
