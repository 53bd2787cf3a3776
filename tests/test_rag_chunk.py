"""Chunking, as a specification: sections are never merged, chunks end at sentence ends, the
overlap is whole sentences within its bound, and the same input always gives the same chunks."""

from __future__ import annotations

import random

import pytest

from rag.chunk import Chunk, chunk, sentence_spans
from rag.extract import Document, Section

WORDS = ("fraction numerator denominator divide multiply reciprocal common simplify half quarter "
         "whole part equal compare").split()


def sentences(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 18))).capitalize() + "."
            for _ in range(n)]


def sentence_texts(text: str) -> list[str]:
    return [text[a:b] for a, b in sentence_spans(text, 10**6)]


def doc(*sections: tuple[tuple[str, ...], str]) -> Document:
    return Document("T", [Section(path, text) for path, text in sections])


def test_sentences_end_at_stops_before_a_capital_or_digit_but_not_inside_abbreviations() -> None:
    text = ("Divide 3.14 by 2, e.g. Halve it. Dr. Smith agrees! Does it work? Yes: 1.5 is "
            "half of 3. J. Smith wrote U.S. Textbooks. 2 more examples follow. Fractions, "
            "decimals, etc. are numbers")

    assert sentence_texts(text) == [
        "Divide 3.14 by 2, e.g. Halve it.",
        "Dr. Smith agrees!",
        "Does it work?",
        "Yes: 1.5 is half of 3.",
        "J. Smith wrote U.S. Textbooks.",
        "2 more examples follow.",
        "Fractions, decimals, etc. are numbers",  # a lower-case word does not start a sentence
    ]


def test_a_line_end_is_always_a_boundary() -> None:
    assert sentence_texts("• Flip the second fraction\n• Multiply\n\nprint(1 / 2)") == [
        "• Flip the second fraction", "• Multiply", "print(1 / 2)"]


def test_chunks_never_span_two_sections_and_carry_their_heading_path() -> None:
    document = doc((("Fractions",), "A short section."),
                   (("Fractions", "Dividing"), " ".join(sentences(30))),
                   (("Decimals",), "Another short one."))

    chunks = chunk(document, max_chars=300, overlap_chars=80)

    assert chunks[0] == Chunk(0, ("Fractions",), "A short section.")
    assert chunks[-1] == Chunk(len(chunks) - 1, ("Decimals",), "Another short one.")
    middle = chunks[1:-1]
    assert len(middle) > 3 and all(c.heading_path == ("Fractions", "Dividing") for c in middle)
    assert [c.position for c in chunks] == list(range(len(chunks)))


def test_chunks_are_whole_sentences_packed_up_to_the_limit() -> None:
    parts = sentences(60)
    text = " ".join(parts)

    chunks = chunk(doc(((), text)), max_chars=400, overlap_chars=0)

    for piece in chunks:
        assert len(piece.text) <= 400
        assert piece.text == piece.text.strip()
        # Each chunk is a run of whole sentences: it starts and ends where sentences do.
        assert any(piece.text.startswith(s) for s in parts)
        assert any(piece.text.endswith(s) for s in parts)
    # Packed: the next sentence would not have fitted.
    for piece, following in zip(chunks, chunks[1:]):
        assert len(piece.text) + 1 + len(following.text.split(". ")[0]) + 1 > 400
    # Without overlap, the chunks are the text, in order, nothing lost.
    assert " ".join(c.text for c in chunks) == text


def test_consecutive_chunks_overlap_by_whole_trailing_sentences_within_the_bound() -> None:
    parts = sentences(80, seed=2)
    text = " ".join(parts)

    chunks = chunk(doc(((), text)), max_chars=500, overlap_chars=150)

    overlaps = 0
    for previous, current in zip(chunks, chunks[1:]):
        shared = [s for s in parts if s in previous.text and current.text.startswith(s)]
        if shared:
            overlap = next(p for p in _suffixes(previous.text) if current.text.startswith(p))
            assert len(overlap) <= 150
            assert overlap == previous.text[-len(overlap):]
            assert any(overlap.startswith(s) for s in parts)  # starts at a sentence start
            assert len(current.text) > len(overlap)  # and every chunk brings something new
            overlaps += 1
    assert overlaps >= len(chunks) // 2
    assert all(len(c.text) <= 500 for c in chunks)
    # Every sentence is in some chunk.
    assert all(any(s in c.text for c in chunks) for s in parts)


def _suffixes(text: str) -> list[str]:
    """Suffixes of `text` starting at a sentence start, longest first."""
    return [text[a:] for a, _ in sentence_spans(text, 10**6)]


def test_no_overlap_across_sections_and_none_when_asked_for_none() -> None:
    parts = sentences(6, seed=3)
    document = doc((("A",), " ".join(parts[:3])), (("B",), " ".join(parts[3:])))

    chunks = chunk(document, max_chars=1000, overlap_chars=500)

    assert [c.text for c in chunks] == [" ".join(parts[:3]), " ".join(parts[3:])]


def test_a_sentence_longer_than_the_limit_is_cut_at_word_boundaries() -> None:
    long_sentence = " ".join(["Denominator"] + ["denominator"] * 99) + "."  # 1200 characters
    text = f"Short start. {long_sentence} Short end."

    chunks = chunk(doc(((), text)), max_chars=200, overlap_chars=50)

    assert all(len(c.text) <= 200 for c in chunks)
    vocabulary = {"Denominator", "denominator", "Short", "start", "end"}
    assert all(set(c.text.replace(".", "").split()) <= vocabulary for c in chunks)  # no cut word
    assert chunks[0].text == "Short start."  # the long sentence did not fit beside it
    assert chunks[-1].text.endswith("denominator. Short end.")


def test_a_word_longer_than_the_limit_is_cut_where_it_must_be() -> None:
    chunks = chunk(doc(((), "x" * 250)), max_chars=100, overlap_chars=10)

    assert [len(c.text) for c in chunks] == [100, 100, 50]


def test_decimals_and_e_g_stay_inside_their_sentence() -> None:
    text = ("Pi is about 3.14 and e is about 2.72, e.g. Euler's number. "
            "Round 2.5 up, i.e. To 3.")

    chunks = chunk(doc(((), text)), max_chars=60, overlap_chars=0)

    assert [c.text for c in chunks] == [
        "Pi is about 3.14 and e is about 2.72, e.g. Euler's number.", "Round 2.5 up, i.e. To 3."]


def test_chunking_is_deterministic() -> None:
    document = doc((("A",), " ".join(sentences(50, seed=4))), (("B",), " ".join(sentences(9))))

    first = chunk(document, max_chars=350, overlap_chars=120)

    assert first == chunk(document, max_chars=350, overlap_chars=120)
    assert first != chunk(document, max_chars=200, overlap_chars=120)


@pytest.mark.parametrize("max_chars, overlap_chars", [(0, 0), (100, 100), (100, -1)])
def test_impossible_sizes_are_refused(max_chars: int, overlap_chars: int) -> None:
    with pytest.raises(ValueError):
        chunk(doc(((), "Text.")), max_chars=max_chars, overlap_chars=overlap_chars)
