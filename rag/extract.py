"""Text out of uploaded course documents: Markdown, plain text, HTML and PDF become a `Document`
of `Section`s, each under its heading path. Owns `IngestError`, the refusals every ingestion step
shares (unsupported type, too large, empty, undecodable, encrypted, duplicate).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePath
from typing import Callable

log = logging.getLogger("tutor.rag")


class IngestError(Exception):
    """A document that cannot be ingested, with a stable `code` a route can show as is."""

    def __init__(self, code: str, message: str, *, source: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.source = source  # set by rag.ingest, so a batch report says which file failed

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # raised in the worker process (rag.worker) and pickled back to the server
        return (IngestError, (self.code, self.message), {"source": self.source})

    def __repr__(self) -> str:
        return f"IngestError({self.code!r}, {self.message!r}, source={self.source!r})"


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]  # outermost heading first; () before the first heading
    text: str


@dataclass(frozen=True)
class Document:
    title: str
    sections: list[Section]


def file_type(filename: str) -> str:
    """The document type from the extension: "markdown", "text", "html" or "pdf"."""
    kind = _TYPES.get(PurePath(filename).suffix.lower())
    if kind is None:
        raise IngestError("unsupported_type", f"{PurePath(filename).name!r} is not a supported "
                          f"document type; supported: {', '.join(SUPPORTED_EXTENSIONS)}")
    return kind


def is_supported(filename: str) -> bool:
    return PurePath(filename).suffix.lower() in _TYPES


def extract(filename: str, data: bytes, *, max_bytes: int | None = None,
            max_pages: int | None = None, max_chars: int | None = None) -> Document:
    """The document's sections. CPU-bound (a large PDF takes seconds): rag.worker runs it in a
    worker process. Refused with `document_too_large`: over `max_bytes`, a PDF of more than
    `max_pages` pages (counted before any page is read), more than `max_chars` characters of text
    (a PDF stops being read as soon as it has them)."""
    kind = file_type(filename)
    if max_bytes is not None and len(data) > max_bytes:
        raise IngestError("document_too_large",
                          f"the document is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise IngestError("empty_document", "the document is empty (0 bytes)")
    stem = PurePath(filename).stem
    if kind == "pdf":
        document = _pdf(data, stem, max_pages, max_chars)
    else:
        document = _PARSERS[kind](_decode(data), stem)
    sections = [s for s in document.sections if s.text]
    if max_chars is not None:
        _check_chars(sum(len(s.text) for s in sections), max_chars)
    if not sections:
        hint = " (a scanned PDF needs OCR first)" if kind == "pdf" else ""
        raise IngestError("empty_document", f"no text found in the document{hint}")
    return Document(document.title, sections)


def _check_chars(chars: int, max_chars: int) -> None:
    if chars > max_chars:
        raise IngestError("document_too_large", f"the document has over {max_chars} characters "
                          f"of text; the limit is {max_chars} characters "
                          "(TUTOR_RAG_MAX_DOCUMENT_CHARS)")


def _check_pages(pages: int, max_pages: int | None) -> None:
    if max_pages is not None and pages > max_pages:
        raise IngestError("document_too_large", f"the PDF has more than {max_pages} pages; the "
                          f"limit is {max_pages} pages (TUTOR_RAG_MAX_PDF_PAGES)")


def _decode(data: bytes) -> str:
    if b"\0" in data:  # no text file has NUL bytes; UTF-16 or a binary file renamed .md does
        raise IngestError("undecodable", "the document contains NUL bytes: not UTF-8 text")
    try:
        text = data.decode("utf-8-sig")  # a BOM (Windows editors add one) is dropped
    except UnicodeDecodeError as exc:
        raise IngestError("undecodable", f"the document is not valid UTF-8 ({exc.reason} at "
                          f"byte {exc.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- paragraphs ------------------------------------------------------------------------------

_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+")


def _unwrap(lines: list[str]) -> list[str]:
    """Hard-wrapped lines joined into logical lines: a paragraph, or one list item.

    The chunker treats a line end as a boundary, so a sentence wrapped at 80 columns must not
    keep its line breaks; list items and table rows still start lines of their own."""
    logical: list[list[str]] = []  # joined once at the end: += would be quadratic
    joining = False
    for line in lines:
        line = line.strip()
        if not line:
            joining = False
            continue
        if joining and not _LIST_ITEM.match(line) and not line.startswith("|"):
            logical[-1].append(line)
        else:
            logical.append([line])
            joining = True
    return [" ".join(parts) for parts in logical]


def _paragraph_text(text: str) -> str:
    """Plain text as paragraphs separated by blank lines, list items on lines of their own."""
    blocks: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return "\n\n".join("\n".join(_unwrap(b)) for b in blocks if b)


def _text(text: str, stem: str) -> Document:
    return Document(stem, [Section((), _paragraph_text(text))])


# -- Markdown --------------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s+\S+")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)*\|?\s*$")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_CODE_SPAN = re.compile(r"(`{1,10})(.{1,2000}?)\1")
# Every span is bounded ({1,N}): an unclosed "*" or "[" then costs a bounded scan, not one to
# the end of a long paragraph (quadratic on a hostile upload).
_INLINE = [
    (re.compile(r"!\[([^\]]{0,500})\]\([^)]{0,2000}\)"), r"\1"),  # image → its alt text
    (re.compile(r"\[([^\]]{1,500})\]\([^)]{0,2000}\)"), r"\1"),  # [text](url) → text
    (re.compile(r"\[([^\]]{1,500})\]\[[^\]]{0,200}\]"), r"\1"),  # [text][ref] → text
    (re.compile(r"<((?:https?|mailto):[^>\s]{1,2000})>"), r"\1"),  # autolink
    (re.compile(r"(?<![\\\w])(\*\*|__)(?=\S)(.{1,300}?)(?<=\S)\1(?!\w)"), r"\2"),
    # Single * or _ only when not inside a word, so 2*3*4 and snake_case survive.
    (re.compile(r"(?<![\\\w*])\*(?=[^\s*])(.{1,300}?)(?<=[^\s\\*])\*(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\\\w_])_(?=[^\s_])(.{1,300}?)(?<=[^\s\\_])_(?![\w_])"), r"\1"),
    (re.compile(r"~~(?=\S)(.{1,300}?)(?<=\S)~~"), r"\1"),
    # Only paired tags: a lone "<b and c>" is more likely maths than markup.
    (re.compile(r"<([a-zA-Z][a-zA-Z0-9]{0,20})(?:\s[^<>]{0,500})?>(.{0,300}?)</\1>"), r"\2"),
    (re.compile(r"<br\s*/?>", re.I), " "),
    (re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~])"), r"\1"),  # backslash escapes
]


def _plain(line: str) -> str:
    """Inline Markdown to plain text; code spans keep their text untouched."""
    parts = _CODE_SPAN.split(line)  # text, ticks, code, text, ticks, code, ..., text
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 0:
            for pattern, replacement in _INLINE:
                part = pattern.sub(replacement, part)
            out.append(part)
        elif i % 3 == 2:
            out.append(part.strip() if part.strip() else part)
    return "".join(out)


class _Sections:
    """Sections under a heading stack, fed block by block (shared by Markdown and HTML)."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.stack: list[tuple[int, str]] = []
        self.blocks: list[str] = []

    def block(self, text: str) -> None:
        if text.strip():
            self.blocks.append(text)

    def heading(self, level: int, title: str) -> None:
        self.close()
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        if title:  # an empty heading still ends the section above it
            self.stack.append((level, title))

    def close(self) -> None:
        text = "\n\n".join(b.strip("\n") for b in self.blocks).strip()
        if text:
            self.sections.append(Section(tuple(t for _, t in self.stack), text))
        self.blocks = []


def _markdown(text: str, stem: str) -> Document:
    title = None
    front = _FRONT_MATTER.match(text)
    if front:  # YAML front matter: metadata, not course text; its title is the document's
        found = re.search(r"^title:\s*['\"]?(.*?)['\"]?\s*$", front.group(1), re.M)
        title = found.group(1) if found else None
        text = text[front.end():]
    text = _COMMENT.sub("", text)
    out = _Sections()
    paragraph: list[str] = []  # source lines of the paragraph being read
    fence: str | None = None
    code: list[str] = []

    def end_paragraph() -> None:
        out.block("\n".join(_plain(line) for line in _unwrap(paragraph)))
        paragraph.clear()

    for line in text.split("\n"):
        if fence is not None:
            if re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                out.block("\n".join(code))  # the code's text is kept, the fences are not
                fence, code = None, []
            else:
                code.append(line.rstrip())
            continue
        if opened := _FENCE.match(line):
            end_paragraph()
            fence = opened.group(1)
            continue
        if heading := _ATX.match(line):
            end_paragraph()
            level = len(heading.group(1))
            title_text = _plain(heading.group(2) or "").strip()
            title = title or (title_text if level == 1 else None)
            out.heading(level, title_text)
            continue
        setext = _SETEXT.match(line)
        if setext and paragraph and not _LIST_ITEM.match(paragraph[-1]):
            level = 1 if setext.group(1)[0] == "=" else 2
            title_text = _plain(" ".join(p.strip() for p in paragraph))
            paragraph.clear()
            title = title or (title_text if level == 1 else None)
            out.heading(level, title_text)
            continue
        if _RULE.match(line) or not line.strip():
            end_paragraph()
            continue
        if _REFERENCE.match(line) or _TABLE_RULE.match(line):
            continue
        line = re.sub(r"^ {0,3}(?:>[ \t]?)+", "", line)  # blockquote markers
        bullet = re.match(r"^(\s*)[-*+][ \t]+(.*)$", line)
        if bullet:  # kept as a list item of its own, without the marker
            line = bullet.group(1) + "• " + bullet.group(2)
        if line.lstrip().startswith("|"):
            line = "| " + " | ".join(c.strip() for c in line.strip().strip("|").split("|")) + " |"
        paragraph.append(line)
    if fence is not None:  # an unclosed fence runs to the end of the document
        out.block("\n".join(code))
    end_paragraph()
    out.close()
    return Document(title or stem, out.sections)


# -- HTML ------------------------------------------------------------------------------------

# Not course text: code, styling, site navigation, and markup that is never rendered as text.
_SKIPPED = {"script", "style", "nav", "noscript", "template", "svg", "iframe", "object"}
_BLOCKS = {"address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
           "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr",
           "li", "main", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead",
           "tr", "ul"}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HTMLText(HTMLParser):
    """Visible text, cut into blocks at block elements and into sections at h1–h6."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out = _Sections()
        self.title: str | None = None
        self.first_h1: str | None = None
        self.skipping: list[str] = []  # open skipped elements; text inside them is dropped
        self.in_head = self.in_title = False
        self.pre = 0
        self.heading: tuple[int, list[str]] | None = None
        self.line: list[str] = []
        self.title_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.skipping:
            if tag in _SKIPPED:
                self.skipping.append(tag)
            return
        if tag in _SKIPPED:
            self.skipping.append(tag)
        elif tag == "head":
            self.in_head = True
        elif tag == "body":
            self.in_head = False
        elif tag == "title" and self.title is None:
            self.in_title = True
        elif tag in _HEADINGS:
            self._flush()
            self.heading = (_HEADINGS[tag], [])
        elif tag == "br":
            self._flush()
        elif tag in ("td", "th"):
            self.line.append(" ")
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre":
                self.pre += 1

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if tag == "head":
            self.in_head = False
        elif tag == "title" and self.in_title:
            self.in_title = False
            self.title = " ".join("".join(self.title_parts).split()) or None
        elif tag in _HEADINGS and self.heading is not None:
            level, parts = self.heading
            self.heading = None
            text = " ".join("".join(parts).split())
            if text:
                self.first_h1 = self.first_h1 or (text if level == 1 else None)
                self.out.heading(level, text)
        elif tag in _BLOCKS:
            self._flush()
            if tag == "pre" and self.pre:
                self.pre -= 1

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        if self.in_title:
            self.title_parts.append(data)
        elif self.heading is not None:
            self.heading[1].append(data)
        elif not self.in_head:
            self.line.append(data)

    def _flush(self) -> None:
        text = "".join(self.line)
        self.line = []
        if self.pre:  # preformatted text keeps its lines
            self.out.block("\n".join(l.rstrip() for l in text.strip("\n").split("\n")))
        else:
            self.out.block(" ".join(text.split()))

    def document(self, stem: str) -> Document:
        self._flush()
        self.out.close()
        return Document(self.title or self.first_h1 or stem, self.out.sections)


def _html(text: str, stem: str) -> Document:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return parser.document(stem)


# -- PDF -------------------------------------------------------------------------------------

def _pdf(data: bytes, stem: str, max_pages: int | None = None,
         max_chars: int | None = None) -> Document:
    from pypdf import PdfReader, PasswordType  # imported here: only PDF uploads pay for it

    try:
        reader = PdfReader(io.BytesIO(data))
        encrypted = reader.is_encrypted
    except MemoryError:  # out of the worker's memory: refused as too large (rag.worker)
        raise
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...)
        raise IngestError("undecodable", f"not a readable PDF: {exc}") from None
    if encrypted:
        # Opening with the empty password works when only an owner password (restricting
        # printing or copying) is set; anything else needs a password we do not have.
        try:
            opened = reader.decrypt("") != PasswordType.NOT_DECRYPTED
        except Exception:  # e.g. AES without the cryptography package
            opened = False
        if not opened:
            raise IngestError("encrypted_document",
                              "the PDF is password-protected; upload it without a password")
    try:
        # The pages are counted before any is read (pypdf's own count loads every page), and
        # counted again once loaded, before any page's text is read.
        if max_pages is not None:
            _check_pages(_count_pages(reader, max_pages), max_pages)
        pages = list(reader.pages)
        title = reader.metadata.title if reader.metadata else None
    except (IngestError, MemoryError):
        raise
    except Exception as exc:
        raise IngestError("undecodable", f"not a readable PDF: {exc}") from None
    _check_pages(len(pages), max_pages)
    starts = _outline(reader)
    sections: list[Section] = []
    path: tuple[str, ...] = ()
    broken = chars = 0
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except MemoryError:
            raise
        except Exception:  # one broken page content stream should not lose the others
            log.warning("could not extract text from PDF page %d", number, exc_info=True)
            broken += 1
            continue
        before = len(sections)
        path = _split_page(text, starts.get(number - 1, []), path, number, sections)
        if max_chars is not None:  # stop reading as soon as the text is over the cap
            chars += sum(len(s.text) for s in sections[before:])
            _check_chars(chars, max_chars)
    if broken and not sections:
        raise IngestError("undecodable", "no page of the PDF could be read")
    return Document(str(title).strip() if title and str(title).strip() else stem, sections)


def _count_pages(reader, stop_after: int) -> int:  # type: ignore[no-untyped-def]
    """The leaves of the page tree, walked without trusting its /Count entries (a hostile file
    may lie) and only until there are more than `stop_after`: a 60 000-page PDF is refused
    after reading ~1 000 page objects, not all of them."""
    count, seen = 0, set()
    stack = [reader.trailer["/Root"]["/Pages"]]
    while stack and count <= stop_after:
        item = stack.pop()
        reference = getattr(item, "idnum", None)
        if reference is not None:
            if reference in seen:  # a page tree with a loop
                continue
            seen.add(reference)
        node = item.get_object()
        kids = node.get("/Kids")
        if kids is None:
            count += 1
        else:
            stack.extend(reversed(kids.get_object()))
    return count


def _outline(reader) -> dict[int, list[tuple[str, ...]]]:  # type: ignore[no-untyped-def]
    """The bookmark paths starting on each page (0-based), in document order."""
    starts: dict[int, list[tuple[str, ...]]] = {}

    def walk(items: list, parents: tuple[str, ...]) -> None:  # type: ignore[type-arg]
        last: tuple[str, ...] | None = None
        for item in items:
            if isinstance(item, list):  # the children of the entry just before
                walk(item, last or parents)
                continue
            title = " ".join(str(item.title or "").split())
            if not title:
                continue
            last = parents + (title,)
            page = reader.get_destination_page_number(item)
            if page is not None and page >= 0:
                starts.setdefault(page, []).append(last)

    try:
        walk(reader.outline, ())
    except MemoryError:
        raise
    except Exception:  # a broken outline is only a missed refinement
        log.warning("ignoring an unreadable PDF outline", exc_info=True)
        return {}
    return starts


def _split_page(text: str, starts: list[tuple[str, ...]], path: tuple[str, ...], number: int,
                sections: list[Section]) -> tuple[str, ...]:
    """Append the page's sections: cut where a bookmark's title appears in its text, each under
    (*bookmark path, "page N"); without bookmarks, the page is one section. Returns the path in
    force at the end of the page."""
    cursor = 0
    pieces: list[tuple[tuple[str, ...], str]] = []
    for start in starts:
        words = [re.escape(w) for w in start[-1].split()]
        found = re.compile(r"\s+".join(words)).search(text, cursor)
        at = found.start() if found else cursor  # not found: the bookmark takes what follows
        pieces.append((path, text[cursor:at]))
        # The title itself is dropped, as a Markdown heading is: it is in the heading path.
        cursor, path = found.end() if found else cursor, start
    pieces.append((path, text[cursor:]))
    for piece_path, piece in pieces:
        piece = re.sub(r"(\w)-\n(?=[a-z])", r"\1", piece)  # words hyphenated at a line end
        piece = _paragraph_text(piece).strip()
        if piece:
            sections.append(Section((*piece_path, f"page {number}"), piece))
    return path


_PARSERS: dict[str, Callable[[str, str], Document]] = {
    "markdown": _markdown, "text": _text, "html": _html,
}
_TYPES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".html": "html",
          ".htm": "html", ".pdf": "pdf"}
SUPPORTED_EXTENSIONS = tuple(_TYPES)
