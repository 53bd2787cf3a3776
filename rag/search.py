"""Retrieval: `Retriever.search` runs full-text and vector search over course chunks and fuses
their rankings (reciprocal rank fusion); `Retriever.memory` finds the student's own earlier turns.
Also the query-embedding caches (in-process LRU, Redis), so a repeated question costs no API call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Coroutine, Literal, Protocol

import numpy as np
from sqlalchemy import select

from store.db import Database
from store.models import Content

from .fts import fts_search, memory_search
from .mirror import CourseMirror
from .reader import SqliteReader
from .vectors import VectorIndex, from_blob, pgvector_ready, pgvector_search, to_blob

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from providers import Embedder

log = logging.getLogger("tutor.rag")

Mode = Literal["hybrid", "fts", "vector"]
RRF_K = 60  # the constant of Cormack et al.; it damps the weight of the very first ranks


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    course: str
    source: str
    heading_path: str
    text: str
    score: float  # fused: Σ 1/(60 + rank) over the rankings that found it
    fts_rank: int | None  # 1-based place in each ranking; None: not found by it
    vector_rank: int | None


@dataclass(frozen=True)
class MemoryHit:
    interaction_id: int
    transcript: str
    answer: str
    created_at: datetime
    score: float  # full-text score, higher is better
    kind: str = "voice"  # voice | text | note (a note: title in transcript, text in answer)


@dataclass
class Timings:
    """Milliseconds per stage of one search; 0 for a stage that did not run. Full-text and
    vector search run concurrently, so the stages add up to more than the wall time."""

    embed_ms: float = 0.0
    fts_ms: float = 0.0
    vector_ms: float = 0.0  # includes loading the course's vectors on first use
    fuse_ms: float = 0.0  # fusion and loading the winning rows
    total_ms: float = 0.0
    cache_hit: bool | None = None  # the query embedding came from the cache; None: not embedded


def fuse(rankings: dict[str, list[int]], k: int = RRF_K) -> list[tuple[int, float, dict[str, int]]]:
    """Reciprocal rank fusion: (id, Σ 1/(k + rank), {ranking: rank}), best first. Ties go to the
    better single rank, then the lower id, so the order is deterministic."""
    scores: dict[int, float] = {}
    ranks: dict[int, dict[str, int]] = {}
    for name, ids in rankings.items():
        for rank, id_ in enumerate(ids, start=1):
            scores[id_] = scores.get(id_, 0.0) + 1.0 / (k + rank)
            ranks.setdefault(id_, {})[name] = rank
    order = sorted(scores, key=lambda i: (-scores[i], min(ranks[i].values()), i))
    return [(i, scores[i], ranks[i]) for i in order]


# --- query-embedding caches -----------------------------------------------------------------

def normalise_query(query: str) -> str:
    """The text that is embedded and cached: NFKC, whitespace collapsed. Case is kept (it can
    carry meaning, and the embedding must be exactly that of the cached text)."""
    return " ".join(unicodedata.normalize("NFKC", query).split())


class QueryCache(Protocol):
    """Query embeddings by (embedding model, normalised query text)."""

    async def get(self, model: str, query: str) -> np.ndarray | None: ...

    async def put(self, model: str, query: str, vector: np.ndarray) -> None: ...


class MemoryQueryCache:
    """Least recently used, in this process. 2048 entries of 1536 dims are 12.6 MB."""

    def __init__(self, max_entries: int = 2048) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, model: str, query: str) -> np.ndarray | None:
        key = (model, normalise_query(query))
        vector = self._entries.get(key)
        if vector is not None:
            self._entries.move_to_end(key)
        return vector

    async def put(self, model: str, query: str, vector: np.ndarray) -> None:
        stored = np.array(vector, dtype=np.float32)  # a copy the caller cannot change
        stored.flags.writeable = False
        self._entries[(model, normalise_query(query))] = stored
        self._entries.move_to_end((model, normalise_query(query)))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


class RedisQueryCache:
    """Shared by every server process; values are the float32 little-endian bytes (as in
    `content.embedding`). The key is a hash, so a long question cannot make a long key."""

    PREFIX = "tutor:query-embedding:"

    def __init__(self, redis: Redis, ttl_s: int = 86400) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    def key(self, model: str, query: str) -> str:
        digest = hashlib.sha256(f"{model}\n{normalise_query(query)}".encode()).hexdigest()
        return self.PREFIX + digest

    async def get(self, model: str, query: str) -> np.ndarray | None:
        blob = await self.redis.get(self.key(model, query))
        return None if blob is None else from_blob(blob)

    async def put(self, model: str, query: str, vector: np.ndarray) -> None:
        await self.redis.set(self.key(model, query), to_blob(vector), ex=self.ttl_s)


# --- retrieval ------------------------------------------------------------------------------

class Retriever:
    """One per server. `embedder` None: full-text search only. `candidates`: how deep each
    ranking goes before fusion (at least k). `mirror`: the course passages and full-text index
    in memory (`rag.mirror`), searched instead of the database; None: the database each time."""

    def __init__(self, db: Database, embedder: Embedder | None, *, vectors: VectorIndex,
                 query_cache: QueryCache, candidates: int = 20,
                 mirror: CourseMirror | None = None,
                 reader: SqliteReader | None = None) -> None:
        self.db = db
        self.mirror = mirror
        if mirror is not None:  # another process changed the courses: reread the vectors too
            mirror.on_change = vectors.forget_all
        self.reader = reader  # SQLite: the memory lookup in one hop off the loop (rag.reader)
        self.embedder = embedder
        self.vectors = vectors
        if embedder is not None:
            # Query vectors come from this model: the index must hold no other model's, even
            # ones of the same length (which would compare without error, and meaninglessly).
            vectors.use_model(embedder.model)
        self.query_cache = query_cache
        self.candidates = candidates
        self.timings = Timings()  # of the last search to finish (search_timed for your own)
        self._pgvector: bool | None = None  # found out on first use
        self.embed_later_s = 0.5  # after a live turn's cache miss: once its answer has started
        self._background: set[asyncio.Task[None]] = set()
        self._embedding_later: set[str] = set()  # queries waiting for their background embedding

    async def content_changed(self, course: str) -> None:
        """This process changed `course`'s passages (an upload, a deletion): its vectors are
        reread and the mirror rebuilt now, so the next turn finds the new text."""
        await self.vectors.refresh(self.db, course)
        if self.mirror is not None:
            await self.mirror.refresh()

    async def search(self, query: str, *, course: str | None, k: int = 4,
                     mode: Mode = "hybrid", wait_for_embedding: bool = True) -> list[Hit]:
        """The k best chunks of `course` (None: every course); [] when there are none.

        mode "fts" / "vector" use one ranking only (for evaluation). In "hybrid", a failing
        embedding provider degrades the search to full-text (logged), because an answer with
        course text beats no answer; in "vector" it raises."""
        hits, self.timings = await self.search_timed(query, course=course, k=k, mode=mode,
                                                     wait_for_embedding=wait_for_embedding)
        return hits

    async def search_timed(self, query: str, *, course: str | None, k: int = 4,
                           mode: Mode = "hybrid", wait_for_embedding: bool = True
                           ) -> tuple[list[Hit], Timings]:
        """`wait_for_embedding=False` (live turns): the vector ranking uses the query's embedding
        only if it is cached; a new question is ranked by full-text alone now and embedded a
        moment later, off the turn's critical path, for the next time it is asked."""
        if mode not in ("hybrid", "fts", "vector"):
            raise ValueError(f"unknown search mode {mode!r}")
        timings = Timings()
        started = time.perf_counter()
        if k <= 0 or not query.strip():
            return [], timings
        depth = max(self.candidates, k)
        # Each ranking brings its rows along (one round trip each, run at once), so fusion
        # needs no further query in the usual case.
        rows: dict[int, Any] = {}
        runs: dict[str, Coroutine[Any, Any, list[int]]] = {}
        if mode != "vector":
            runs["fts"] = self._fts(query, course, depth, timings, rows)
        if mode != "fts":
            runs["vector"] = self._vector(query, course, depth, timings, rows,
                                          degrade=mode == "hybrid", wait=wait_for_embedding)
        if self.mirror is not None:
            # In memory, a ranking does not wait on anything once its course is loaded: run in
            # turn, without a task each. Two tasks cost two passes of the event loop's queue,
            # which is long when a class's turns end together (docs/benchmarks.md, "bursts").
            ranked = await _in_turn(runs)
        else:
            ranked = await _concurrently(runs)

        fuse_started = time.perf_counter()
        fused = fuse(ranked)
        # A few spare rows: the vector index may still hold a chunk deleted since it was loaded.
        wanted = fused[: k + 8]
        missing = [id_ for id_, _, _ in wanted if id_ not in rows]
        if missing:
            rows.update(await self._chunks(missing, course))
        hits = [Hit(r.id, r.course, r.source, r.heading_path, r.text, score,
                    ranks.get("fts"), ranks.get("vector"))
                for id_, score, ranks in wanted if (r := rows.get(id_)) is not None][:k]
        timings.fuse_ms = _ms(fuse_started)
        timings.total_ms = _ms(started)
        return hits, timings

    async def memory(self, query: str, *, user_id: str | None, k: int) -> list[MemoryHit]:
        """The k of `user_id`'s own earlier turns that best match `query`; nobody else's."""
        if not user_id or k <= 0:
            return []
        # One query: the user filter and the columns together, so the rows returned are
        # exactly the ones the filter admitted.
        if self.reader is not None:
            found: list[Any] = await self.reader.memory(query, user_id=user_id, limit=k)
        else:
            async with self.db.session() as s:
                found = await memory_search(s, query, user_id=user_id, limit=k, with_rows=True)
        return [MemoryHit(r.id, r.transcript, r.answer, _aware(_timestamp(r.created_at)),
                          float(r.score), r.kind) for r in found]

    async def _cached_embedding(self, query: str) -> np.ndarray | None:
        """A cache that fails (Redis down) counts as a miss: it must never fail a turn."""
        assert self.embedder is not None
        try:
            return await self.query_cache.get(self.embedder.model, normalise_query(query))
        except Exception as error:
            log.warning("query-embedding cache unavailable: %r", error)
            return None

    def _embed_later(self, query: str) -> None:
        """Embed (and cache) `query` once the turn that asked it is under way: the SDK call costs
        milliseconds of this event loop's time, and a hosted provider's round trip far more."""
        text = normalise_query(query)
        if text in self._embedding_later:
            return  # the same question missed in another turn: one call embeds it for both
        self._embedding_later.add(text)

        async def embed() -> None:
            try:
                await self.embed_query(query)
            except Exception as error:  # only a cache warm-up: the turn is long answered
                log.info("background query embedding failed: %r", error)
            finally:
                self._embedding_later.discard(text)

        def start() -> None:
            task = asyncio.ensure_future(embed())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        asyncio.get_running_loop().call_later(self.embed_later_s, start)

    async def embed_query(self, query: str) -> tuple[np.ndarray, bool]:
        """The query's embedding and whether it came from the cache."""
        if self.embedder is None:
            raise RuntimeError("no embedder configured")
        cached = await self._cached_embedding(query)
        if cached is not None:
            return cached, True
        model, text = self.embedder.model, normalise_query(query)
        vector = (await self.embedder.embed([text]))[0]
        try:
            await self.query_cache.put(model, text, vector)
        except Exception as error:
            log.warning("query-embedding cache unavailable: %r", error)
        return vector, False

    async def _fts(self, query: str, course: str | None, depth: int,
                   timings: Timings, rows: dict[int, Any]) -> list[int]:
        started = time.perf_counter()
        if self.mirror is not None:
            found: list[Any] = await self.mirror.fts(query, course=course, limit=depth)
        else:
            async with self.db.session() as s:
                found = await fts_search(s, query, course=course, limit=depth, with_rows=True)
        rows.update((r.id, r) for r in found)
        timings.fts_ms = _ms(started)
        return [r.id for r in found]

    async def _vector(self, query: str, course: str | None, depth: int, timings: Timings,
                      rows: dict[int, Any], *, degrade: bool, wait: bool = True) -> list[int]:
        if self.embedder is None:
            return []
        started = time.perf_counter()
        use_pgvector = await self._use_pgvector()
        # Without vectors for this course there is nothing to compare with: skip the embedding
        # call (and its cost) altogether.
        # Shielded: a live turn that stops waiting (its retrieval budget) must not abort a
        # course's first load, or a large course would never get loaded by live turns.
        if not use_pgvector and (self.vectors.size(course) if self.vectors.ready(course) else
                                 await asyncio.shield(self.vectors.ensure(self.db, course))) == 0:
            timings.vector_ms = _ms(started)
            return []
        load_ms = _ms(started)
        embed_started = time.perf_counter()
        if not wait:
            vector = await self._cached_embedding(query)
            timings.cache_hit = vector is not None
            if vector is None:
                self._embed_later(query)
                timings.embed_ms = _ms(embed_started)
                return []
        try:
            if wait:
                vector, timings.cache_hit = await self.embed_query(query)
        except Exception as error:
            if not degrade:
                raise
            log.warning("query embedding failed, searching by words only: %r", error)
            return []
        finally:
            timings.embed_ms = _ms(embed_started)
        search_started = time.perf_counter()
        if use_pgvector:
            async with self.db.session() as s:
                found = await pgvector_search(s, vector, course=course,
                                              model=self.embedder.model, limit=depth)
        else:
            found = self.vectors.search(vector, course, depth)
        ids = [i for i, _ in found]
        rows.update(await self._chunks(ids, course))
        timings.vector_ms = load_ms + _ms(search_started)
        return ids

    async def _use_pgvector(self) -> bool:
        if self._pgvector is None:
            async with self.db.session() as s:
                self._pgvector = await pgvector_ready(s)
        return self._pgvector

    async def _chunks(self, ids: list[int], course: str | None) -> dict[int, Any]:
        if not ids:
            return {}
        if self.mirror is not None:
            return await self.mirror.rows(ids, course)
        query = select(Content.id, Content.course, Content.source, Content.heading_path,
                       Content.text).where(Content.id.in_(ids))
        if course is not None:
            query = query.where(Content.course == course)
        async with self.db.session() as s:
            return {r.id: r for r in (await s.execute(query)).all()}


async def _in_turn(runs: dict[str, Coroutine[Any, Any, list[int]]]) -> dict[str, list[int]]:
    """Run the rankings one after the other; one failing closes the ones not started."""
    ranked: dict[str, list[int]] = {}
    try:
        for name, run in runs.items():
            ranked[name] = await run
    finally:
        for name, run in runs.items():
            if name not in ranked:
                run.close()  # never started (or failed): no "never awaited" warning
    return ranked


async def _concurrently(runs: dict[str, Coroutine[Any, Any, list[int]]]) -> dict[str, list[int]]:
    """Run the rankings at once. If one fails, the other is cancelled and the failure itself (not
    an ExceptionGroup, as a TaskGroup would give) reaches the caller."""
    tasks = {name: asyncio.ensure_future(run) for name, run in runs.items()}
    try:
        await asyncio.gather(*tasks.values())
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise
    return {name: task.result() for name, task in tasks.items()}


def _timestamp(value: Any) -> datetime:
    """A raw-SQL timestamp: a datetime from asyncpg, an ISO string from SQLite."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)  # SQLite: naive UTC


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000
