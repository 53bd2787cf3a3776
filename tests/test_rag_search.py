"""Retrieval, as a specification: full-text search (words, stems, any punctuation, courses),
vector search, their fusion, the student's memory of their own turns (and only theirs), the
full-text migration, and the query-embedding caches. Every database test runs on SQLite and on
PostgreSQL; chunks are inserted directly, and vectors come from a small word-hashing embedder.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import datetime

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis.asyncio import Redis
from sqlalchemy import delete, inspect, insert, text, update

from providers import ProviderError
from rag.fts import fts5_query, fts_search, memory_search, terms, websearch_query
from rag.search import (Hit, MemoryQueryCache, RedisQueryCache, Retriever, fuse,
                        normalise_query)
from rag.vectors import (VectorIndex, has_pgvector, pgvector_ready, pgvector_search_sql,
                         to_blob, vector_literal)
from store import queries as q
from store.db import Database, alembic_config, migrate
from store.models import Base, Content, Interaction
from tests.services import redis_client  # noqa: F401  (fixture)
from tests.storage_fixtures import blank_db_url, db  # noqa: F401  (fixtures)

# Questions that would be syntax errors if passed to FTS5 MATCH (or to_tsquery) as they are.
HOSTILE = ['what is x^2?', '"unbalanced quote', "it's", 'NEAR(a b)', 'a AND OR NOT b', '*',
           'heading_path: fractions', '-minus +plus', "'); DROP TABLE content; --", '(((', '',
           '   ', '???', 'ünïcödé façade', '2+2=4', 'a\x00b', '🙂 emoji', 'x' * 5000,
           ' '.join(['fractions'] * 500)]


class HashingEmbedder:
    """Deterministic stand-in for an embedding model: each word adds one of 64 directions, so
    texts sharing words are close. Counts its calls, and can be told to fail."""

    def __init__(self, model: str = "hash-64", fail: bool = False) -> None:
        self.model = model
        self.fail = fail
        self.calls = 0

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise ProviderError("provider_unavailable", "the embedding provider is down")
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, value in enumerate(texts):
            for word in re.findall(r"\w+", value.lower()):
                out[row, hashlib.sha256(word.encode()).digest()[0] % 64] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


async def add_chunk(db: Database, text_: str, *, course: str = "maths", heading: str = "",
                    source: str = "notes.md", embedding: np.ndarray | None = None,
                    model: str = "hash-64") -> int:
    async with db.session() as s, s.begin():
        result = await s.execute(insert(Content).values(
            course=course, source=source, content_hash="0" * 64, heading_path=heading,
            position=0, text=text_, embedding=None if embedding is None else to_blob(embedding),
            embedding_model=None if embedding is None else model).returning(Content.id))
        return result.scalar_one()


async def add_embedded(db: Database, embedder: HashingEmbedder, text_: str, **kw) -> int:  # type: ignore[no-untyped-def]
    return await add_chunk(db, text_, embedding=(await embedder.embed([text_]))[0], **kw)


async def fts(db: Database, query: str, course: str | None = None, limit: int = 10) -> list[int]:
    async with db.session() as s:
        return [i for i, _ in await fts_search(s, query, course=course, limit=limit)]


def retriever(db: Database, embedder: HashingEmbedder | None = None, **kw) -> Retriever:  # type: ignore[no-untyped-def]
    return Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache(), **kw)


# --- full-text search -------------------------------------------------------------------------

async def test_full_text_finds_chunks_by_their_words_and_by_stems(db: Database) -> None:
    dividing = await add_chunk(db, "To divide by a fraction, flip it and multiply.",
                               heading="Fractions > Division")
    adding = await add_chunk(db, "Adding fractions needs a common denominator.",
                             heading="Fractions > Addition")
    await add_chunk(db, "Photosynthesis turns light into chemical energy.", course="biology")

    assert await fts(db, "multiply") == [dividing]
    assert (await fts(db, "dividing fractions"))[0] == dividing  # dividing ~ divide, fractions ~ fraction
    assert set(await fts(db, "fractions")) == {dividing, adding}
    assert await fts(db, "Division") == [dividing]  # the heading path is searched too
    assert await fts(db, "denominators") == [adding]
    assert await fts(db, "quantum chromodynamics") == []
    assert await fts(db, "what is the") == []  # stop words alone match nothing, on both backends


async def test_any_question_is_a_safe_query(db: Database) -> None:
    await add_chunk(db, "x squared, written x^2, is x times x.")
    user = await make_user(db)
    await add_turn(db, user, "what is x^2?", "x times x")
    search = retriever(db, HashingEmbedder())
    for question in HOSTILE:
        await fts(db, question)
        async with db.session() as s:
            await memory_search(s, question, user_id=user, limit=3)
        await search.search(question, course=None)
        await search.memory(question, user_id=user, k=3)
    assert await fts(db, "what is x^2?") != []
    # Each word is quoted on its own: nothing the student says is read as FTS5 syntax.
    assert fts5_query('NEAR(a b) "x" OR y*') == '"near" OR "b" OR "x" OR "y"'
    assert websearch_query("-minus OR x^2") == "minus or x or 2"
    assert terms("The the THE fraction fractions") == ["fraction", "fractions"]


async def test_the_course_filter_keeps_other_courses_out(db: Database) -> None:
    maths = await add_chunk(db, "Energy is conserved in every closed system.", course="physics-101")
    other = await add_chunk(db, "Energy flows through the food chain.", course="biology-101")
    assert set(await fts(db, "energy")) == {maths, other}
    assert await fts(db, "energy", course="physics-101") == [maths]
    assert await fts(db, "energy", course="no-such-course") == []

    hits = await retriever(db).search("energy", course="biology-101")
    assert [(h.chunk_id, h.course) for h in hits] == [(other, "biology-101")]


async def test_full_text_scores_rank_closer_matches_first(db: Database) -> None:
    both = await add_chunk(db, "The chain rule differentiates a composition of functions.")
    one = await add_chunk(db, "A chain of islands.")
    found = await fts(db, "chain rule")
    assert found == [both, one]
    async with db.session() as s:
        scores = [score for _, score in await fts_search(s, "chain rule", course=None, limit=5)]
    assert scores == sorted(scores, reverse=True)


# --- keeping the full-text index in step --------------------------------------------------------

async def test_the_index_follows_updates_and_deletes(db: Database) -> None:
    chunk = await add_chunk(db, "Photosynthesis happens in chloroplasts.")
    kept = await add_chunk(db, "Chloroplasts are green.")
    async with db.session() as s, s.begin():
        await s.execute(update(Content).where(Content.id == chunk)
                        .values(text="Respiration happens in mitochondria."))
    assert await fts(db, "photosynthesis") == []
    assert await fts(db, "mitochondria") == [chunk]
    assert await fts(db, "chloroplasts") == [kept]

    # Rewriting only the embedding leaves the text indexed as it was.
    async with db.session() as s, s.begin():
        await s.execute(update(Content).where(Content.id == chunk)
                        .values(embedding=to_blob(np.ones(4, dtype=np.float32))))
    assert await fts(db, "mitochondria") == [chunk]

    async with db.session() as s, s.begin():
        await s.execute(delete(Content).where(Content.id == chunk))
    assert await fts(db, "mitochondria respiration") == []
    assert await retriever(db).search("mitochondria", course=None) == []
    await assert_fts5_consistent(db)


async def test_deleting_a_user_removes_their_turns_from_the_index(db: Database) -> None:
    ada, bob = await make_user(db), await make_user(db)
    await add_turn(db, ada, "how do volcanoes erupt", "magma pressure")
    await add_turn(db, bob, "how do volcanoes form", "plate boundaries")
    async with db.session() as s, s.begin():
        await q.delete_user(s, bob)  # interactions go by ON DELETE CASCADE
    async with db.session() as s:
        assert len(await memory_search(s, "volcanoes", user_id=ada, limit=5)) == 1
        assert await memory_search(s, "volcanoes", user_id=bob, limit=5) == []
    await assert_fts5_consistent(db)


async def assert_fts5_consistent(db: Database) -> None:
    """SQLite only: FTS5's own check that the index matches its content table exactly."""
    if not db.is_sqlite:
        return
    async with db.session() as s, s.begin():
        for table in ("fts_content", "fts_interactions"):
            await s.execute(text(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"))


# --- vector search ------------------------------------------------------------------------------

async def test_vector_search_ranks_the_most_similar_first(db: Database) -> None:
    embedder = HashingEmbedder()
    close = await add_embedded(db, embedder, "mitochondria produce energy for the cell")
    middle = await add_embedded(db, embedder, "the cell membrane protects the cell")
    far = await add_embedded(db, embedder, "tectonic plates drift slowly")

    index = VectorIndex()
    assert await index.load(db, "maths") == 3
    query = (await embedder.embed(["which organelle produces energy for the cell"]))[0]
    found = index.search(query, "maths", 3)
    assert [i for i, _ in found] == [close, middle, far]
    assert found[0][1] > found[1][1] > found[2][1]
    assert found[0][1] <= 1.0 + 1e-6
    assert index.search(query, "maths", 1) == found[:1]
    assert index.search(query, "history", 3) == []  # not loaded, not known: nothing
    assert index.search(np.ones(8, dtype=np.float32), "maths", 3) == []  # another model's size

    hits = await retriever(db, embedder).search("which organelle produces energy for the cell",
                                                course="maths", k=3, mode="vector")
    assert [h.chunk_id for h in hits] == [close, middle, far]
    assert all(h.fts_rank is None and h.vector_rank is not None for h in hits)


async def test_the_index_sees_new_content_after_refresh_and_searches_all_courses(db: Database) -> None:
    embedder = HashingEmbedder()
    index = VectorIndex(model=embedder.model)
    search = Retriever(db, embedder, vectors=index, query_cache=MemoryQueryCache())
    first = await add_embedded(db, embedder, "prime numbers have two divisors", course="maths")
    assert [h.chunk_id for h in await search.search("prime divisors", course="maths",
                                                    mode="vector")] == [first]

    later = await add_embedded(db, embedder, "prime ministers lead governments", course="civics")
    other_model = await add_chunk(db, "prime time television", course="civics",
                                  embedding=np.ones(64, dtype=np.float32), model="other-model")
    assert index.size() == 1  # loaded courses stay as they were until refreshed
    await index.refresh(db, "civics")
    hits = await search.search("prime ministers", course=None, mode="vector")
    assert [h.chunk_id for h in hits] == [later, first]  # every loaded course
    assert other_model not in {h.chunk_id for h in hits}  # never compared across models

    # An index not pinned to a model takes the retriever's: a same-length vector of another
    # model is never compared with the query.
    impostor = await add_chunk(db, "prime suspects", course="civics", model="hash-64-v0",
                               embedding=(await embedder.embed(["prime ministers"]))[0])
    unpinned = Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    found = {h.chunk_id for h in await unpinned.search("prime ministers", course=None,
                                                       mode="vector")}
    assert found == {later, first} and impostor not in found

    # A chunk deleted since its course was loaded is never returned.
    async with db.session() as s, s.begin():
        await s.execute(delete(Content).where(Content.id == later))
    assert [h.chunk_id for h in await search.search("prime ministers", course=None,
                                                    mode="vector")] == [first]


# --- fusion ---------------------------------------------------------------------------------------

def test_reciprocal_rank_fusion() -> None:
    fused = fuse({"fts": [10, 20, 30], "vector": [30, 40]})
    assert [i for i, _, _ in fused] == [30, 10, 20, 40]
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[0][2] == {"fts": 3, "vector": 1}
    assert fused[1] == (10, pytest.approx(1 / 61), {"fts": 1})
    assert fuse({"fts": [], "vector": []}) == []


async def test_a_chunk_found_by_both_searches_outranks_chunks_found_by_one(db: Database) -> None:
    embedder = HashingEmbedder()
    question = "how does the pythagorean theorem relate the sides"
    both = await add_embedded(db, embedder, "The pythagorean theorem relates the sides of a "
                                            "right triangle.")
    words_only = await add_chunk(db, "Pythagorean theorem, pythagorean triples, theorem sides.")
    meaning_only = await add_chunk(db, "Zebras migrate across the savanna.",
                                   embedding=(await embedder.embed([question]))[0])

    hits = await retriever(db, embedder).search(question, course="maths", k=3)
    by_id = {h.chunk_id: h for h in hits}
    assert hits[0].chunk_id == both
    assert by_id[both].fts_rank is not None and by_id[both].vector_rank is not None
    assert by_id[words_only].vector_rank is None and by_id[words_only].fts_rank is not None
    assert by_id[meaning_only].fts_rank is None and by_id[meaning_only].vector_rank == 1
    assert hits[0].score > hits[1].score >= hits[2].score
    assert hits[0] == Hit(both, "maths", "notes.md", "", by_id[both].text, hits[0].score,
                          by_id[both].fts_rank, by_id[both].vector_rank)

    # The same three, ranked by one search each, for evaluation.
    assert (await retriever(db, embedder).search(question, course="maths", k=3, mode="fts")
            )[0].vector_rank is None
    assert {h.chunk_id for h in await retriever(db, embedder).search(
        question, course="maths", k=3, mode="vector")} == {both, meaning_only}


async def test_k_is_respected(db: Database) -> None:
    embedder = HashingEmbedder()
    for n in range(10):
        await add_embedded(db, embedder, f"triangle fact number {n}")
    search = retriever(db, embedder)
    for mode in ("hybrid", "fts", "vector"):
        assert len(await search.search("triangle", course="maths", k=3, mode=mode)) == 3
        assert len(await search.search("triangle", course="maths", k=1, mode=mode)) == 1
        assert await search.search("triangle", course="maths", k=0, mode=mode) == []
    assert len(await search.search("triangle", course="maths", k=50)) == 10


async def test_no_content_or_an_unknown_course_gives_no_hits(db: Database) -> None:
    embedder = HashingEmbedder()
    for search in (retriever(db, embedder), retriever(db)):
        for mode in ("hybrid", "fts", "vector"):
            assert await search.search("fractions", course=None, mode=mode) == []
            assert await search.search("fractions", course="maths", mode=mode) == []
    assert embedder.calls == 0  # no vectors anywhere: nothing worth an embedding call

    await add_embedded(db, embedder, "fractions are parts of a whole")
    search = retriever(db, embedder)
    for mode in ("hybrid", "fts", "vector"):
        assert await search.search("fractions", course="history", mode=mode) == []
        assert len(await search.search("fractions", course="maths", mode=mode)) == 1


async def test_a_failing_embedder_degrades_hybrid_search_to_full_text(db: Database) -> None:
    chunk = await add_embedded(db, HashingEmbedder(), "Integrals measure area under a curve.")
    search = retriever(db, HashingEmbedder(fail=True))
    hits = await search.search("integrals area", course="maths")
    assert [(h.chunk_id, h.fts_rank, h.vector_rank) for h in hits] == [(chunk, 1, None)]
    with pytest.raises(ProviderError):
        await search.search("integrals area", course="maths", mode="vector")


async def test_timings_are_reported_per_stage(db: Database) -> None:
    await add_embedded(db, HashingEmbedder(), "Vectors have a magnitude and a direction.")
    search = retriever(db, HashingEmbedder())
    hits, timings = await search.search_timed("vector magnitude", course="maths")
    assert len(hits) == 1
    assert timings.fts_ms > 0 and timings.embed_ms > 0 and timings.vector_ms > 0
    assert timings.fuse_ms > 0 and timings.total_ms >= timings.fuse_ms
    assert timings.cache_hit is False
    await search.search("vector magnitude", course="maths")
    assert search.timings.cache_hit is True


# --- the student's memory -------------------------------------------------------------------------

async def make_user(db: Database) -> str:
    async with db.session() as s, s.begin():
        user = await q.upsert_user(s, provider="google", subject=secrets.token_hex(4), email=None,
                                   name=None)
        return user.id


async def add_turn(db: Database, user_id: str, transcript: str, answer: str) -> int:
    async with db.session() as s, s.begin():
        turn = Interaction(session_id="sess", user_id=user_id, transcript=transcript, answer=answer)
        s.add(turn)
        await s.flush()
        return turn.id


async def test_memory_returns_only_that_students_own_turns(db: Database) -> None:
    ada, bob = await make_user(db), await make_user(db)
    ada_turns = {await add_turn(db, ada, "How do I divide fractions?", "Flip the second one."),
                 await add_turn(db, ada, "Why flip the fraction when dividing?", "Reciprocals.")}
    bob_turns = {await add_turn(db, bob, "How do I divide fractions?", "Flip the second one."),
                 await add_turn(db, bob, "Dividing fractions again, fractions fractions", "Flip.")}
    silent = await make_user(db)

    async with db.session() as s:
        for user, own in ((ada, ada_turns), (bob, bob_turns)):
            # Limits far above the number of rows: the filter, not the cut-off, keeps others out.
            found = {i for i, _ in await memory_search(s, "dividing fractions flip", user_id=user,
                                                       limit=100)}
            assert found == own
        assert await memory_search(s, "dividing fractions", user_id=silent, limit=100) == []
        with pytest.raises(ValueError):
            await memory_search(s, "fractions", user_id="", limit=3)

    search = retriever(db)
    memories = await search.memory("divide fractions", user_id=ada, k=10)
    assert {m.interaction_id for m in memories} == ada_turns
    assert all(isinstance(m.created_at, datetime) and m.created_at.tzinfo for m in memories)
    assert {m.transcript for m in memories} >= {"How do I divide fractions?"}
    assert len(await search.memory("divide fractions", user_id=bob, k=1)) == 1
    assert await search.memory("divide fractions", user_id=None, k=10) == []
    assert await search.memory("divide fractions", user_id=silent, k=10) == []


# --- query-embedding caches -----------------------------------------------------------------------

async def test_a_repeated_question_is_embedded_once(db: Database) -> None:
    embedder = HashingEmbedder()
    await add_embedded(db, embedder, "Momentum is mass times velocity.")
    embedder.calls = 0
    cache = MemoryQueryCache()
    search = Retriever(db, embedder, vectors=VectorIndex(), query_cache=cache)
    first = await search.search("what is momentum", course="maths")
    again = await search.search("  what is\tmomentum ", course="maths")
    assert first == again
    assert embedder.calls == 1
    # Keyed by model too: another model's vector is never reused.
    assert await cache.get("hash-64", "what is momentum") is not None
    assert await cache.get("hash-64-v2", "what is momentum") is None


async def test_the_in_process_cache_forgets_the_least_recently_used() -> None:
    cache = MemoryQueryCache(max_entries=2)
    await cache.put("m", "a", np.ones(3))
    await cache.put("m", "b", np.ones(3))
    assert await cache.get("m", "a") is not None  # "a" is now the most recently used
    await cache.put("m", "c", np.ones(3))
    assert await cache.get("m", "b") is None
    assert await cache.get("m", "a") is not None and await cache.get("m", "c") is not None
    assert len(cache) == 2
    assert normalise_query(" x \n y ") == "x y"


async def test_the_redis_cache_is_shared_between_retrievers(db: Database, redis_client: Redis) -> None:
    embedder = HashingEmbedder(model=f"hash-64-{secrets.token_hex(4)}")  # keys of this test only
    await add_embedded(db, embedder, "Momentum is mass times velocity.", model=embedder.model)
    embedder.calls = 0
    cache = RedisQueryCache(redis_client, ttl_s=60)
    key = cache.key(embedder.model, "what is momentum")
    try:
        hits = await Retriever(db, embedder, vectors=VectorIndex(), query_cache=cache).search(
            "what is momentum", course="maths", mode="vector")
        # A second retriever, as in another server process, finds the vector in Redis.
        again = await Retriever(db, embedder, vectors=VectorIndex(), query_cache=cache).search(
            "what is  momentum", course="maths", mode="vector")
        assert hits == again and len(hits) == 1
        assert embedder.calls == 1
        assert 0 < await redis_client.ttl(key) <= 60
        stored = await cache.get(embedder.model, "what is momentum")
        assert stored is not None and stored.dtype == np.float32 and stored.shape == (64,)
    finally:
        await redis_client.delete(key)


async def test_an_unreachable_redis_cache_is_a_miss_not_a_failure(db: Database) -> None:
    embedder = HashingEmbedder()
    chunk = await add_embedded(db, embedder, "Momentum is mass times velocity.")
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        search = Retriever(db, embedder, vectors=VectorIndex(), query_cache=RedisQueryCache(dead))
        hits = await search.search("momentum", course="maths", mode="vector")
        assert [h.chunk_id for h in hits] == [chunk]
    finally:
        await dead.aclose()


# --- pgvector -------------------------------------------------------------------------------------

async def test_pgvector_is_detected_as_absent_here(db: Database) -> None:
    """Neither test database has pgvector (it cannot be installed here), so the pgvector query
    is never run by these tests: only the SQL it would send is checked."""
    async with db.session() as s:
        assert await has_pgvector(s) is False
        assert await pgvector_ready(s) is False


def test_the_pgvector_query_orders_by_cosine_distance() -> None:
    sql = str(pgvector_search_sql(course=True, model=True))
    assert "ORDER BY embedding_vec <=> CAST(:q AS vector) LIMIT :limit" in sql
    assert "course = :course" in sql and "embedding_model = :model" in sql
    assert "1 - (embedding_vec <=> CAST(:q AS vector)) AS score" in sql
    bare = str(pgvector_search_sql(course=False, model=False))
    assert ":course" not in bare and ":model" not in bare
    assert vector_literal(np.array([0.5, -1.0, 0.25], dtype=np.float32)) == "[0.5,-1.0,0.25]"


# --- the migration --------------------------------------------------------------------------------

async def test_the_full_text_migration_round_trips_and_indexes_existing_rows(blank_db_url: str) -> None:
    await asyncio.to_thread(migrate, blank_db_url, "0001")
    database = Database(blank_db_url)
    try:
        before = await add_chunk(database, "Stored before full-text search existed.")
        await asyncio.to_thread(migrate, blank_db_url)
        assert await fts(database, "existed") == [before]  # indexed by the migration itself

        await asyncio.to_thread(command.downgrade, alembic_config(blank_db_url), "0001")
        assert await fts_objects(database) == set()
        after = await add_chunk(database, "Stored while full-text search was gone.")

        await asyncio.to_thread(migrate, blank_db_url)
        assert set(await fts(database, "stored")) == {before, after}
        assert await fts(database, "gone") == [after]
        await assert_fts5_consistent(database)
    finally:
        await database.close()


async def test_the_full_text_objects_are_the_only_schema_the_models_do_not_describe(
        db: Database) -> None:
    """Autogenerate must ignore them, through the filter env.py uses."""
    from store.models import described_by_models as include_name

    async with db.engine.connect() as conn:
        unfiltered = await conn.run_sync(lambda c: compare_metadata(
            MigrationContext.configure(c), Base.metadata))
        filtered = await conn.run_sync(lambda c: compare_metadata(
            MigrationContext.configure(c, opts={"include_name": include_name}), Base.metadata))
    assert unfiltered != []
    assert filtered == []
    sqlite = {f"fts_{t}{e}" for t in ("content", "interactions")
              for e in ("", "_insert", "_delete", "_update")}
    postgres = {"content.search", "interactions.search", "fts_content_search",
                "fts_interactions_search"}
    assert await fts_objects(db) == (sqlite if db.is_sqlite else postgres)


async def fts_objects(db: Database) -> set[str]:
    """The migration's objects present: SQLite's FTS5 tables, PostgreSQL's columns and indexes."""
    def inspect_(c) -> set[str]:  # type: ignore[no-untyped-def]
        found = inspect(c)
        names = {t for t in found.get_table_names() if t in ("fts_content", "fts_interactions")}
        for table in ("content", "interactions"):
            names |= {f"{table}.search" for col in found.get_columns(table) if col["name"] == "search"}
            names |= {i["name"] for i in found.get_indexes(table) if i["name"].startswith("fts_")}
        return names

    async with db.engine.connect() as conn:
        objects = await conn.run_sync(inspect_)
        if db.is_sqlite:
            triggers = await conn.execute(text("SELECT name FROM sqlite_master "
                                               "WHERE type = 'trigger' AND name LIKE 'fts~_%' "
                                               "ESCAPE '~'"))
            objects |= set(triggers.scalars().all())
    return objects
