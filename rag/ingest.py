"""Putting a course document into the `content` table (extract → chunk → embed → store), keyed by
(course, source) and by the SHA-256 of its bytes; listing and deleting ingested documents.
Every ingestion (upload route, `tutor ingest`, the sample course) goes through `ingest`, which
has the document read and cut in a worker process (`rag.worker.Parser`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from providers import Embedder, ProviderError
from store.db import Database
from store.models import COURSE_CHARS, SOURCE_CHARS, Content, now

from .extract import IngestError, file_type, is_supported
from .mirror import content_changed
from .vectors import to_blob
from .worker import HEADING_SEPARATOR, Parser

__all__ = ["IngestError", "IngestResult", "delete_document", "ingest", "ingest_paths",
           "list_documents"]

log = logging.getLogger("tutor.rag")



@dataclass(frozen=True)
class IngestResult:
    status: Literal["created", "replaced", "unchanged"]
    source: str
    course: str
    chunks: int


async def ingest(db: Database, embedder: Embedder | None, parser: Parser, *, course: str,
                 source: str, filename: str, data: bytes) -> IngestResult:
    """Store `data` as the current version of (course, source).

    The same bytes again are "unchanged" and cost nothing (unless they were stored without
    vectors, or with another model's, and an embedder is given now). Everything that can fail
    slowly or expensively (extraction in `parser`'s worker, with its caps, then the embedding
    calls) happens before the database is touched, and the swap is one transaction: a failure
    leaves the previous version whole. Raises IngestError, or ProviderError when the embedding
    provider fails."""
    try:
        _check_names(course, source)
        file_type(filename)  # unsupported_type before anything is read or hashed
        _check_size(len(data), parser.limits.max_bytes)
        digest = hashlib.sha256(data).hexdigest()
        model = embedder.model if embedder is not None else None
        async with db.session() as s:
            stored = await _stored_versions(s, course, digest)
        if source in stored and (model is None or stored[source] == model):
            async with db.session() as s:
                return IngestResult("unchanged", source, course, await _count(s, course, source))
        _refuse_duplicate(stored, source)

        # Parsing a large PDF takes seconds of CPU and much memory: in a worker process, not
        # on the event loop (or in the process) that voice sessions share.
        prepared = await parser.prepare(filename, data)
        chunks = prepared.chunks
        vectors = None
        if embedder is not None:
            vectors = await embedder.embed(prepared.embedding_inputs)
        rows = [dict(course=course, source=source, content_hash=digest,
                     heading_path=HEADING_SEPARATOR.join(c.heading_path), position=c.position,
                     text=c.text, embedding=to_blob(vectors[i]) if vectors is not None else None,
                     embedding_model=model, created_at=now())
                for i, c in enumerate(chunks)]

        async with db.session() as s, s.begin():
            replaced = await _replace(s, course, source, rows)
            # Checked again under the lock: the same bytes may have been stored under another
            # name while we were embedding (raising here rolls the delete back).
            _refuse_duplicate(await _stored_versions(s, course, digest), source)
        content_changed(db)  # this process's course mirrors (rag.mirror) rebuild
        return IngestResult("replaced" if replaced else "created", source, course, len(rows))
    except IngestError as error:
        error.source = source
        raise


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise IngestError("document_too_large", f"the document is {size} bytes; the limit is "
                          f"{max_bytes} bytes (TUTOR_RAG_MAX_DOCUMENT_BYTES)")


def _check_names(course: str, source: str) -> None:
    if not course.strip() or len(course) > COURSE_CHARS:
        raise IngestError("invalid_name", f"a course name is 1 to {COURSE_CHARS} characters")
    if not source.strip() or len(source) > SOURCE_CHARS:
        raise IngestError("invalid_name", f"a source name is 1 to {SOURCE_CHARS} characters")


async def _stored_versions(s: AsyncSession, course: str, digest: str) -> dict[str, str | None]:
    """The sources of `course` whose current bytes hash to `digest`, with their embedding model."""
    query = (select(Content.source, func.max(Content.embedding_model))
             .where(Content.course == course, Content.content_hash == digest)
             .group_by(Content.source).order_by(Content.source))
    return {source: model for source, model in (await s.execute(query)).all()}


def _refuse_duplicate(stored: dict[str, str | None], source: str) -> None:
    others = [name for name in stored if name != source]
    if others:
        raise IngestError("duplicate_document", f"the same document is already in this course "
                          f"as {others[0]!r}")


async def _replace(s: AsyncSession, course: str, source: str, rows: list[dict[str, Any]]) -> bool:
    """Swap the rows of (course, source) for `rows`; True if there were rows before."""
    if s.get_bind().dialect.name == "postgresql":
        # Ingestions into one course take turns for this short write: two versions of one
        # source uploaded at once would otherwise both survive (each DELETE misses the other's
        # uncommitted rows), and the duplicate check could miss a simultaneous twin. SQLite
        # needs nothing: the DELETE below takes its single writer lock first.
        await s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
                        {"key": f"rag.content:{course}"})
    result = await s.execute(delete(Content).where(Content.course == course,
                                                   Content.source == source))
    if rows:
        await s.execute(insert(Content), rows)
    return bool(result.rowcount)


async def _count(s: AsyncSession, course: str, source: str) -> int:
    query = select(func.count()).where(Content.course == course, Content.source == source)
    return (await s.execute(query)).scalar_one()


async def list_documents(db: Database, course: str | None = None) -> list[dict[str, Any]]:
    """One entry per (course, source), ordered by course then source: its chunk count, content
    hash, embedding model (None: stored without vectors) and `updated_at`, when this version was
    stored (a changed upload replaces the rows, so it is also when the source last changed)."""
    query = (select(Content.course, Content.source, func.count(), func.max(Content.content_hash),
                    func.max(Content.embedding_model), func.min(Content.created_at))
             .group_by(Content.course, Content.source).order_by(Content.course, Content.source))
    if course is not None:
        query = query.where(Content.course == course)
    async with db.session() as s:
        result = (await s.execute(query)).all()
    return [{"course": c, "source": src, "chunks": n, "content_hash": digest,
             "embedding_model": model,
             "updated_at": at if at is None or at.tzinfo else at.replace(tzinfo=timezone.utc)}
            for c, src, n, digest, model, at in result]


async def delete_document(db: Database, course: str, source: str) -> int:
    """Remove every chunk of (course, source); returns how many rows went (0: it was not there)."""
    async with db.session() as s, s.begin():
        result = await s.execute(delete(Content).where(Content.course == course,
                                                       Content.source == source))
    if result.rowcount:
        content_changed(db)
    return result.rowcount or 0


async def ingest_paths(db: Database, embedder: Embedder | None, parser: Parser,
                       paths: list[Path], course: str) -> list[IngestResult | IngestError]:
    """Ingest files, and the supported files under directories (sorted, hidden ones skipped), one
    result per file in that order; a failed file is reported and the others go on.

    A file's source name is its path relative to the directory given (POSIX separators), or its
    bare name when the file itself was given."""
    results: list[IngestResult | IngestError] = []
    for path, source in _walk(paths):
        try:
            _check_size(path.stat().st_size, parser.limits.max_bytes)  # without reading it
            data = await asyncio.to_thread(path.read_bytes)
            results.append(await ingest(db, embedder, parser, course=course, source=source,
                                        filename=path.name, data=data))
        except IngestError as error:
            error.source = source
            results.append(error)
        except ProviderError as error:
            results.append(IngestError(error.code, error.message, source=source))
        except OSError as error:
            results.append(IngestError("unreadable", f"could not read {path}: "
                                       f"{error.strerror or error}", source=source))
        if isinstance(results[-1], IngestError):
            log.warning("not ingested: %s: %s (%s)", source, results[-1].message, results[-1].code)
    return results


def _walk(paths: list[Path]) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    for root in paths:
        root = Path(root)
        if not root.is_dir():
            found.append((root, root.name))  # a missing or unsupported file is reported by ingest
            continue
        files = sorted(p.relative_to(root) for p in root.rglob("*")
                       if p.is_file() and is_supported(p.name))
        found += [(root / rel, rel.as_posix()) for rel in files
                  if not any(part.startswith(".") for part in rel.parts)]
    return found
