"""Hostile course documents, built in a few milliseconds: many pages, pages slow to read, and a
small PDF whose content stream inflates to tens of megabytes (a "flate bomb")."""

from __future__ import annotations

import io
import zlib

from fpdf import FPDF
from pypdf import PdfReader, PdfWriter
from pypdf.generic import EncodedStreamObject, NameObject


def _one_page(lines: int = 1) -> PdfWriter:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=8)
    pdf.add_page()
    for i in range(lines):
        pdf.cell(text=f"Line {i}. The mitochondrion makes ATP in the cell.", new_x="LMARGIN",
                 new_y="NEXT")
    return PdfWriter(clone_from=PdfReader(io.BytesIO(bytes(pdf.output()))))


def _bytes(writer: PdfWriter) -> bytes:
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def many_pages_pdf(pages: int) -> bytes:
    """`pages` blank pages (the finding: 60 000 of them in 9 MB)."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(72, 72)
    return _bytes(writer)


def slow_pdf(pages: int) -> bytes:
    """`pages` pages sharing one content stream of 80 lines: a few KB, ~15 ms a page to read."""
    source = _one_page(80).pages[0]
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_page(source)
    return _bytes(writer)


def flate_bomb_pdf(megabytes: int) -> bytes:
    """One page whose content stream is a few hundred KB and inflates to `megabytes` MB.

    Built without compressing megabytes: a 1 MB block deflated once with a full flush is
    self-contained, so repeating it is a valid stream (wrapped in zlib's header and checksum)."""
    block = b"BT /F1 8 Tf 10 10 Td (The mitochondrion makes ATP.) Tj ET\n" * 17_000
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(megabytes):
        checksum = zlib.adler32(block, checksum)
    data = (b"\x78\xda" + piece * megabytes + deflate.flush(zlib.Z_FINISH)
            + checksum.to_bytes(4, "big"))
    writer = _one_page()
    stream = EncodedStreamObject()
    stream._data = data  # already encoded
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    writer.pages[0][NameObject("/Contents")] = writer._add_object(stream)
    return _bytes(writer)
