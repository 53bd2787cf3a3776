"""Vector search over course chunks: `VectorIndex`, each course's embeddings as one in-memory
float32 matrix searched exactly (a dot product of unit vectors is the cosine), and the pgvector
query used instead when a database has the extension and the `embedding_vec` column. Also the
float32 little-endian blob format of the `content.embedding` column (`to_blob`, `from_blob`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from providers import normalise
from store.db import Database

log = logging.getLogger("tutor.rag")
_BLOB = np.dtype("<f4")  # fixed byte order, so a database moved between machines still reads


def to_blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=_BLOB).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    """A read-only float32 view of the bytes (no copy: retrieval reads many of these)."""
    return np.frombuffer(blob, dtype=_BLOB)


@dataclass(frozen=True)
class CourseVectors:
    ids: np.ndarray  # int64, (n,)
    matrix: np.ndarray  # float32, (n, d), rows of unit length

    @property
    def dimensions(self) -> int:
        return self.matrix.shape[1]


class VectorIndex:
    """Exact search is enough at course scale (1000 chunks × 1536 dims × 4 B = 6 MB, one
    matrix-vector product of ~1 ms), and needs no extension. Loaded from `content.embedding`
    once per course; call `refresh` after the course's content changes.

    `model`: only vectors made by this embedding model are loaded (vectors of different models
    must never be compared); None keeps all, so a course must then hold one model's vectors."""

    def __init__(self, *, model: str | None = None) -> None:
        self.model = model
        self._courses: dict[str, CourseVectors] = {}
        self._all_loaded = False  # every course in the table has been loaded once
        self._lock = asyncio.Lock()  # one load at a time: concurrent first searches share it

    def use_model(self, model: str) -> None:
        """Keep only `model`'s vectors from now on (what was loaded for another is reread)."""
        if model != self.model:
            self.model = model
            self._courses.clear()
            self._all_loaded = False

    def loaded(self, course: str) -> bool:
        return course in self._courses

    def ready(self, course: str | None) -> bool:
        """Whether `ensure(course)` would return at once (nothing to read)."""
        return self._all_loaded if course is None else course in self._courses

    def size(self, course: str | None = None) -> int:
        """Vectors held for `course` (None: all loaded courses)."""
        if course is not None:
            held = self._courses.get(course)
            return 0 if held is None else len(held.ids)
        return sum(len(c.ids) for c in self._courses.values())

    async def load(self, db: Database, course: str) -> int:
        """Load `course` unless it already is; returns its number of vectors."""
        if course not in self._courses:
            async with self._lock:
                if course not in self._courses:
                    self._courses[course] = await self._read(db, course)
        return self.size(course)

    async def load_all(self, db: Database) -> int:
        """Load every course not loaded yet (after this, `refresh` keeps the set current)."""
        if not self._all_loaded:
            async with self._lock:
                if not self._all_loaded:
                    async with db.session() as s:
                        courses = (await s.execute(text(
                            "SELECT DISTINCT course FROM content WHERE embedding IS NOT NULL"
                        ))).scalars().all()
                    for course in courses:
                        if course not in self._courses:
                            self._courses[course] = await self._read(db, course)
                    self._all_loaded = True
        return self.size()

    async def ensure(self, db: Database, course: str | None) -> int:
        """What a search calls first: the course (or, for None, every course) loaded."""
        return await (self.load_all(db) if course is None else self.load(db, course))

    async def refresh(self, db: Database, course: str) -> int:
        """Reread `course` from the database (after an ingestion or a deletion)."""
        async with self._lock:
            self._courses[course] = await self._read(db, course)
        return self.size(course)

    def forget(self, course: str) -> None:
        self._courses.pop(course, None)

    def forget_all(self) -> None:
        """Every course is reread on its next search (the content changed elsewhere)."""
        self._courses.clear()
        self._all_loaded = False

    def search(self, query_vec: np.ndarray, course: str | None,
               limit: int) -> list[tuple[int, float]]:
        """(content id, cosine), best first, among the loaded vectors of `course` (None: all
        loaded courses). A course whose vectors have other dimensions than the query (another
        model's) contributes nothing rather than failing."""
        if limit <= 0:
            return []
        query = normalise(np.asarray(query_vec, dtype=np.float32).reshape(-1))
        held = ([self._courses[course]] if course in self._courses else []) if course is not None \
            else list(self._courses.values())
        ids: list[np.ndarray] = []
        scores: list[np.ndarray] = []
        for vectors in held:
            if len(vectors.ids) == 0 or vectors.dimensions != query.shape[0]:
                continue
            top_ids, top_scores = _top(vectors.ids, vectors.matrix @ query, limit)
            ids.append(top_ids)
            scores.append(top_scores)
        if not ids:
            return []
        # Each course's own top `limit`, merged: the best `limit` overall are among them.
        top_ids, top_scores = _top(np.concatenate(ids), np.concatenate(scores), limit)
        return [(int(i), float(s)) for i, s in zip(top_ids, top_scores)]

    async def _read(self, db: Database, course: str) -> CourseVectors:
        sql = "SELECT id, embedding FROM content WHERE course = :course AND embedding IS NOT NULL"
        params: dict[str, object] = {"course": course}
        if self.model is not None:
            sql += " AND embedding_model = :model"
            params["model"] = self.model
        async with db.session() as s:
            rows = (await s.execute(text(sql + " ORDER BY id"), params)).all()
        # An empty or ragged blob is not a vector (float32: a multiple of 4 bytes).
        return _matrix(course, [(int(i), bytes(blob)) for i, blob in rows
                                if len(blob) and len(blob) % 4 == 0])


def _matrix(course: str, rows: list[tuple[int, bytes]]) -> CourseVectors:
    if not rows:
        return CourseVectors(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))
    # One vector length per matrix: the most common one, should a course ever mix (a partial
    # re-embedding with another model when the index is not pinned to one).
    width, _ = Counter(len(blob) for _, blob in rows).most_common(1)[0]
    kept = [(i, blob) for i, blob in rows if len(blob) == width]
    if len(kept) < len(rows):
        log.warning("course %r: %d vectors of another length left out of the index", course,
                    len(rows) - len(kept))
    ids = np.fromiter((i for i, _ in kept), dtype=np.int64, count=len(kept))
    matrix = from_blob(b"".join(blob for _, blob in kept)).reshape(len(kept), -1)
    # Normalised again (a copy, which the read-only blob view needs anyway): a stored vector
    # that is not of unit length would otherwise outrank better matches.
    return CourseVectors(ids, normalise(matrix))


def _top(ids: np.ndarray, scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The `limit` best, best first; ties by id, so results do not depend on load order."""
    if len(scores) > limit:
        part = np.argpartition(-scores, limit - 1)[:limit]
        ids, scores = ids[part], scores[part]
    order = np.lexsort((ids, -scores))
    return ids[order], scores[order]


# --- pgvector -------------------------------------------------------------------------------
# Not exercised by the test suite: its PostgreSQL has no pgvector, and no migration creates
# `content.embedding_vec` yet. The query is used only when both exist (pgvector_ready), so a
# database without them always takes the in-memory path above.

async def has_pgvector(session: AsyncSession) -> bool:
    """True when the database is PostgreSQL with the `vector` extension installed."""
    if session.get_bind().dialect.name != "postgresql":
        return False
    found = await session.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'"))
    return found.first() is not None


async def pgvector_ready(session: AsyncSession) -> bool:
    """has_pgvector, and `content.embedding_vec` (the `vector` column a migration adds) exists."""
    if not await has_pgvector(session):
        return False
    found = await session.execute(text(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'content' AND column_name = 'embedding_vec'"))
    return found.first() is not None


def pgvector_search_sql(*, course: bool, model: bool) -> TextClause:
    """Nearest chunks by cosine distance (`<=>`; an HNSW index with vector_cosine_ops serves
    it). Parameters: :q (the vector as text, see vector_literal), :limit, and :course / :model
    when asked for."""
    where = ["embedding_vec IS NOT NULL"]
    if course:
        where.append("course = :course")
    if model:
        where.append("embedding_model = :model")
    return text("SELECT id, 1 - (embedding_vec <=> CAST(:q AS vector)) AS score FROM content "
                f"WHERE {' AND '.join(where)} "
                "ORDER BY embedding_vec <=> CAST(:q AS vector) LIMIT :limit")


def vector_literal(vector: np.ndarray) -> str:
    """pgvector's text form, '[0.1,0.2,…]' (float32 round-trips through repr)."""
    return "[" + ",".join(repr(float(x)) for x in np.asarray(vector, dtype=np.float32)) + "]"


async def pgvector_search(session: AsyncSession, query_vec: np.ndarray, *, course: str | None,
                          model: str | None, limit: int) -> list[tuple[int, float]]:
    params: dict[str, object] = {"q": vector_literal(query_vec), "limit": limit}
    if course is not None:
        params["course"] = course
    if model is not None:
        params["model"] = model
    sql = pgvector_search_sql(course=course is not None, model=model is not None)
    return [(int(i), float(s)) for i, s in (await session.execute(sql, params)).all()]
