"""Extraction, as a specification: what text and heading paths come out of Markdown, plain text,
HTML and PDF course documents, and which documents are refused, with which code."""

from __future__ import annotations

import io
import random

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from rag.extract import SUPPORTED_EXTENSIONS, Document, IngestError, extract


def texts(document: Document) -> dict[tuple[str, ...], str]:
    return {s.heading_path: s.text for s in document.sections}


def refused(filename: str, data: bytes, **options: int) -> IngestError:
    with pytest.raises(IngestError) as caught:
        extract(filename, data, **options)
    return caught.value


def make_pdf(pages: list[list[tuple[str | None, int, str]]], title: str | None = None) -> bytes:
    """A real PDF (fpdf2): per page, (bookmark title or None, bookmark level, paragraph)."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for page in pages:
        pdf.add_page()
        for bookmark, level, paragraph in page:
            if bookmark:
                pdf.start_section(bookmark, level=level)
                pdf.multi_cell(0, 8, bookmark, new_x="LMARGIN", new_y="NEXT")
            pdf.multi_cell(0, 8, paragraph, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def encrypted(pdf: bytes, user_password: str, owner_password: str | None = None) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password, owner_password)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- Markdown -------------------------------------------------------------------------------

MARKDOWN = b"""\
Welcome to the course.

# Fractions

A fraction has a *numerator* and a **denominator**. See [the guide](https://example.org/guide)
for the __full__ story, or ![a pie chart](pie.png) the picture.

## Dividing fractions

To divide, flip the second fraction and multiply:

- keep the first fraction
- flip the second one,
  then multiply

```python
# not a heading, inside code
print(Fraction(1, 2) / Fraction(3, 4))
```

### Why it works

Dividing by a number is multiplying by its reciprocal; `a_b * c` stays as written.

## Comparing fractions ##

Use a common denominator.

# Decimals

A decimal like 3.14 is a fraction too.
"""


def test_markdown_headings_build_the_heading_path_and_markup_becomes_plain_text() -> None:
    document = extract("fractions.md", MARKDOWN)

    assert document.title == "Fractions"  # the first level-1 heading
    assert [s.heading_path for s in document.sections] == [
        (),
        ("Fractions",),
        ("Fractions", "Dividing fractions"),
        ("Fractions", "Dividing fractions", "Why it works"),
        ("Fractions", "Comparing fractions"),  # closing #s are not part of the title
        ("Decimals",),  # a level-1 heading closes every deeper one
    ]
    sections = texts(document)
    assert sections[()] == "Welcome to the course."
    assert sections[("Fractions",)] == ("A fraction has a numerator and a denominator. See the "
                                        "guide for the full story, or a pie chart the picture.")
    dividing = sections[("Fractions", "Dividing fractions")]
    # Code keeps its text (fences gone), and a "#" line inside it is not a heading.
    assert "# not a heading, inside code\nprint(Fraction(1, 2) / Fraction(3, 4))" in dividing
    assert "```" not in dividing
    # A wrapped list item is one line; each item keeps a line of its own.
    assert "• keep the first fraction\n• flip the second one, then multiply" in dividing
    why = sections[("Fractions", "Dividing fractions", "Why it works")]
    assert "a_b * c stays as written" in why and "`" not in why


def test_markdown_front_matter_setext_headings_and_hard_wrapped_paragraphs() -> None:
    document = extract("notes.markdown", b"---\ntitle: Ratio notes\nauthor: me\n---\n"
                                         b"Ratios\n======\n\nA ratio compares two\nquantities "
                                         b"of the same kind.\n\nParts\n-----\n\nText.\n")

    assert document.title == "Ratio notes"
    assert texts(document) == {("Ratios",): "A ratio compares two quantities of the same kind.",
                               ("Ratios", "Parts"): "Text."}


def test_markdown_without_headings_is_titled_after_the_file() -> None:
    document = extract("lesson-3.md", "\ufeffJust some notes.\r\nOn two lines.\r\n".encode())

    assert document.title == "lesson-3"
    assert texts(document) == {(): "Just some notes. On two lines."}  # BOM and CRLF handled


# --- plain text -----------------------------------------------------------------------------

def test_plain_text_is_one_section_of_unwrapped_paragraphs() -> None:
    document = extract("ratios.TXT", b"Ratios compare\nquantities.\n\n\n1. First item\n"
                                     b"2. Second item\n")

    assert document.title == "ratios"
    assert texts(document) == {(): "Ratios compare quantities.\n\n1. First item\n2. Second item"}


# --- HTML -----------------------------------------------------------------------------------

HTML = b"""<!doctype html>
<html><head><title>Fractions | Maths course</title>
<style>body { color: red }</style><script>var notText = 1;</script></head>
<body>
<nav><a href="/">Home</a> <a href="/about">About</a></nav>
<h1>Fractions</h1>
<p>A fraction has a <em>numerator</em> and a
   <strong>denominator</strong>.</p>
<h2>Dividing</h2>
<ul><li>Flip the second fraction.</li><li>Multiply &amp; simplify.</li></ul>
<pre>1/2 : 3/4
  = 1/2 * 4/3</pre>
<h3>Why</h3><p>Because of reciprocals.</p>
<script>document.write("nope")</script>
<h2>Comparing</h2><table><tr><td>1/2</td><td>0.5</td></tr></table>
</body></html>"""


def test_html_headings_build_the_path_and_scripts_styles_and_navigation_are_dropped() -> None:
    document = extract("fractions.html", HTML)

    assert document.title == "Fractions | Maths course"
    assert texts(document) == {
        ("Fractions",): "A fraction has a numerator and a denominator.",
        ("Fractions", "Dividing"): "Flip the second fraction.\n\nMultiply & simplify.\n\n"
                                   "1/2 : 3/4\n  = 1/2 * 4/3",
        ("Fractions", "Dividing", "Why"): "Because of reciprocals.",
        ("Fractions", "Comparing"): "1/2 0.5",
    }
    everything = " ".join(texts(document).values())
    for dropped in ("Home", "About", "notText", "nope", "color"):
        assert dropped not in everything


def test_an_html_fragment_without_title_is_named_by_its_first_heading() -> None:
    document = extract("page.htm", b"<h1>Percentages</h1><p>Per hundred.</p>")

    assert document.title == "Percentages"
    assert texts(document) == {("Percentages",): "Per hundred."}


# --- PDF ------------------------------------------------------------------------------------

def test_pdf_gives_a_section_per_page_with_the_page_in_the_heading_path() -> None:
    pdf = make_pdf([[(None, 0, "A fraction has a numerator and a denominator.")],
                    [(None, 0, "To divide by a fraction, multiply by its reciprocal.")]])

    document = extract("handbook.pdf", pdf)

    assert document.title == "handbook"
    assert texts(document) == {
        ("page 1",): "A fraction has a numerator and a denominator.",
        ("page 2",): "To divide by a fraction, multiply by its reciprocal.",
    }


def test_pdf_bookmarks_refine_the_heading_path_within_and_across_pages() -> None:
    pdf = make_pdf([
        [("Fractions", 0, "A fraction has a numerator and a denominator."),
         ("Dividing", 1, "Multiply by the reciprocal.")],
        [(None, 0, "More about dividing.")],
        [("Decimals", 0, "A decimal like 3.14 has a fractional part.")],
    ], title="Fractions handbook")

    document = extract("handbook.pdf", pdf)

    assert document.title == "Fractions handbook"  # from the PDF's metadata
    assert texts(document) == {
        ("Fractions", "page 1"): "A fraction has a numerator and a denominator.",
        ("Fractions", "Dividing", "page 1"): "Multiply by the reciprocal.",
        ("Fractions", "Dividing", "page 2"): "More about dividing.",  # still under the bookmark
        ("Decimals", "page 3"): "A decimal like 3.14 has a fractional part.",
    }


def test_password_protected_pdf_is_refused_but_an_owner_password_alone_is_not() -> None:
    pdf = make_pdf([[(None, 0, "Secret fractions.")]])

    assert refused("locked.pdf", encrypted(pdf, "secret")).code == "encrypted_document"
    # Only restricting permissions (the document opens without a password): readable.
    assert texts(extract("restricted.pdf", encrypted(pdf, "", "owner"))) == {
        ("page 1",): "Secret fractions."}


def test_a_pdf_with_no_text_is_empty() -> None:
    pdf = FPDF()
    pdf.add_page()  # a blank page, as a scanned page looks to a text extractor

    error = refused("scan.pdf", bytes(pdf.output()))

    assert error.code == "empty_document" and "OCR" in error.message


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("filename", ["a.md", "a.txt", "a.html", "a.pdf"])
def test_an_empty_file_is_refused(filename: str) -> None:
    assert refused(filename, b"").code == "empty_document"


@pytest.mark.parametrize("data", [b"   \n\n\t\n", b"<html><script>x()</script></html>",
                                  b"# Only a heading\n"])
def test_a_document_with_no_text_is_refused(data: bytes) -> None:
    assert refused("a.html" if data.startswith(b"<") else "a.md", data).code == "empty_document"


def test_binary_garbage_named_as_a_text_type_is_undecodable() -> None:
    assert refused("notes.md", b"PK\x03\x04\x00\x00 a zip file").code == "undecodable"
    assert refused("notes.txt", "caf\u00e9".encode("latin-1")).code == "undecodable"
    assert refused("notes.md", "héllo".encode("utf-16")).code == "undecodable"  # NUL bytes


def test_random_bytes_named_pdf_are_undecodable() -> None:
    garbage = random.Random(7).randbytes(4096)

    assert refused("book.pdf", garbage).code == "undecodable"
    assert refused("book.pdf", b"%PDF-1.7\nnot really").code == "undecodable"


def test_an_unsupported_type_is_refused_naming_the_supported_ones() -> None:
    error = refused("lesson.docx", b"PK\x03\x04")

    assert error.code == "unsupported_type"
    assert all(extension in error.message for extension in SUPPORTED_EXTENSIONS)
    assert refused("README", b"text").code == "unsupported_type"  # no extension at all


def test_a_document_over_the_callers_limit_is_refused() -> None:
    assert refused("big.md", b"x" * 101, max_bytes=100).code == "document_too_large"
    assert extract("ok.md", b"x" * 100, max_bytes=100).sections  # the limit itself is allowed
