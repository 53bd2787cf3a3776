"""The in-memory course mirror (`rag.mirror`): a live turn's course retrieval touches no database
(statements counted with a SQLAlchemy event listener), a change made through this process is
seen by the very next search, one made by another process after the watcher's next check, and
on SQLite the mirror ranks exactly as the database does. Also the SQLite memory reader
(`rag.reader`). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import delete, event

from rag.mirror import CourseMirror
from rag.reader import SqliteReader
from rag.search import MemoryQueryCache, Retriever
from rag.vectors import VectorIndex
from store.db import Database
from store.models import Content
from tests.storage_fixtures import db  # noqa: F401  (fixture)
from tests.test_rag_search import (HashingEmbedder, add_chunk, add_embedded, add_turn, fts,
                                   make_user)

TEXTS = ["Photosynthesis turns light into chemical energy in the chloroplasts.",
         "Fractions: to divide, multiply by the reciprocal of the second fraction.",
         "The derivative of x squared is two x.",
         "Chloroplasts hold chlorophyll, which absorbs red and blue light.",
         "Mitochondria release energy by respiration."]


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the database engine executes inside the block."""
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)


def mirrored(db: Database, embedder: HashingEmbedder | None = None,
             check_s: float = 0.0) -> Retriever:
    return Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache(),
                     mirror=CourseMirror(db, check_s=check_s))


async def test_a_cached_course_costs_no_database_round_trip(db: Database) -> None:
    embedder = HashingEmbedder()
    for t in TEXTS:
        await add_embedded(db, embedder, t, course="science")
    r = mirrored(db, embedder)
    question = "how do chloroplasts use light"
    await r.embed_query(question)  # the live path uses only a cached embedding
    first = await r.search(question, course="science", wait_for_embedding=False)  # loads
    assert first and first[0].vector_rank is not None and first[0].fts_rank is not None
    with statements(db) as seen:
        again = await r.search(question, course="science", wait_for_embedding=False)
        fts_only = await r.search("derivative of x squared", course="science",
                                  wait_for_embedding=False)
    assert seen == []
    assert again == first
    assert fts_only and "derivative" in fts_only[0].text
    # without the mirror the same search goes to the database (the listener does count)
    plain = Retriever(db, embedder, vectors=VectorIndex(), query_cache=r.query_cache)
    await plain.search(question, course="science", wait_for_embedding=False)
    with statements(db) as seen:
        assert await plain.search(question, course="science", wait_for_embedding=False) == first
    assert len(seen) >= 1


async def test_a_change_through_this_process_is_seen_by_the_next_search(db: Database) -> None:
    r = mirrored(db)
    await add_chunk(db, TEXTS[0], course="biology", source="a.md")
    assert [h.text for h in await r.search("photosynthesis", course="biology")] == [TEXTS[0]]
    new = await add_chunk(db, "Photosynthesis also needs water and carbon dioxide.",
                          course="biology", source="b.md")
    await r.content_changed("biology")  # what the upload and delete routes call
    assert {h.chunk_id for h in await r.search("photosynthesis", course="biology")} >= {new}
    async with db.session() as s, s.begin():
        await s.execute(delete(Content).where(Content.source == "a.md"))
    await r.content_changed("biology")
    assert [h.chunk_id for h in await r.search("photosynthesis", course="biology")] == [new]
    assert r.mirror is not None and r.mirror.rebuilds == 3


async def test_a_change_by_another_process_is_seen_after_the_next_check(db: Database) -> None:
    r = mirrored(db, check_s=0.05)
    assert r.mirror is not None
    await add_chunk(db, TEXTS[1], course="maths")
    await r.mirror.refresh()
    r.mirror.start()
    try:
        assert await r.search("mitochondria", course="maths") == []
        # written behind the mirror's back, as `tutor ingest` or another server would
        new = await add_chunk(db, TEXTS[4], course="maths", source="other.md")
        for _ in range(100):
            hits = await r.search("mitochondria", course="maths")
            if hits:
                break
            await asyncio.sleep(0.02)
        assert [h.chunk_id for h in hits] == [new]
        # and a replacement of the same size (a delete then an insert) is a change too
        async with db.session() as s, s.begin():
            await s.execute(delete(Content).where(Content.id == new))
        replaced = await add_chunk(db, "Mitochondria: the powerhouse of the cell.",
                                   course="maths", source="other.md")
        for _ in range(100):
            hits = await r.search("powerhouse", course="maths")
            if hits:
                break
            await asyncio.sleep(0.02)
        assert [h.chunk_id for h in hits] == [replaced]
    finally:
        await r.mirror.stop()


async def test_on_sqlite_the_mirror_ranks_as_the_database(db: Database) -> None:
    for i, t in enumerate(TEXTS * 3):
        await add_chunk(db, t, course="science" if i % 2 else "other", heading=f"part {i}")
    mirror = CourseMirror(db, check_s=0)
    for query in ["chloroplasts light energy", "fraction", "x squared derivative", "what?",
                  "energy", "part 3 light"]:
        for course in ("science", None):
            found = [p.id for p in await mirror.fts(query, course=course, limit=20)]
            if not db.is_sqlite:  # PostgreSQL ranks by ts_rank_cd: the same rows, maybe not order
                assert set(found) == set(await fts(db, query, course=course, limit=20)), query
            else:
                assert found == await fts(db, query, course=course, limit=20), query
    await mirror.stop()


async def test_the_sqlite_reader_finds_what_the_database_finds_and_only_the_users_own(
        db: Database) -> None:
    """The memory lookup in one hop (rag.reader): the same rows as the database path, the user
    filter in its SQL, and no statement through the engine."""
    reader = SqliteReader.for_url(db.url)
    if not db.is_sqlite:
        assert reader is None  # PostgreSQL keeps its own path
        return
    assert reader is not None
    ada, bob = await make_user(db), await make_user(db)
    for user, words in [(ada, "fractions are parts of a whole"), (ada, "the derivative of x"),
                        (bob, "fractions of a cake"), (ada, "dividing fractions")]:
        await add_turn(db, user, words, "an answer")
    through_db = Retriever(db, None, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    through_reader = Retriever(db, None, vectors=VectorIndex(), query_cache=MemoryQueryCache(),
                               reader=reader)
    try:
        for question in ["fractions", "what is a derivative", "cake", "?"]:
            expected = await through_db.memory(question, user_id=ada, k=3)
            with statements(db) as seen:
                got = await through_reader.memory(question, user_id=ada, k=3)
            assert seen == []
            assert got == expected, question
        assert [m.transcript for m in await through_reader.memory("cake fractions", user_id=ada,
                                                                  k=5)] \
            == [m.transcript for m in await through_db.memory("cake fractions", user_id=ada, k=5)]
        assert all("cake" not in m.transcript
                   for m in await through_reader.memory("cake", user_id=ada, k=5))
    finally:
        reader.close()


async def test_vectors_are_reread_after_a_change_by_another_process(db: Database) -> None:
    embedder = HashingEmbedder()
    await add_embedded(db, embedder, TEXTS[0], course="science")
    r = mirrored(db, embedder, check_s=0.05)
    assert r.mirror is not None
    await r.mirror.refresh()
    r.mirror.start()
    try:
        await r.search("chloroplasts", course="science")  # waits for the embedding: vectors on
        assert r.vectors.size("science") == 1
        new = await add_embedded(db, embedder, TEXTS[3], course="science", source="b.md")
        for _ in range(100):
            if not r.vectors.loaded("science"):
                break
            await asyncio.sleep(0.02)
        hits = await r.search("chlorophyll absorbs red and blue", course="science")
        assert r.vectors.size("science") == 2
        assert any(h.chunk_id == new and h.vector_rank is not None for h in hits)
    finally:
        await r.mirror.stop()


async def test_an_ingestion_in_this_process_is_seen_by_the_next_search(db: Database) -> None:
    """Whoever calls rag.ingest in this process (a route, a script, the sample course), the
    mirrors of that database see it on their next search, without waiting for the watcher."""
    from rag.ingest import delete_document, ingest
    from rag.worker import Limits, Parser

    r = mirrored(db)  # no watcher
    assert await r.search("mitochondria", course="bio") == []
    parser = Parser(Limits())
    try:
        await ingest(db, None, parser, course="bio", source="cells.md", filename="cells.md",
                     data=b"# Cells\n\nMitochondria release energy by respiration.\n")
    finally:
        parser.close()
    assert [h.source for h in await r.search("mitochondria", course="bio")] == ["cells.md"]
    assert await delete_document(db, "bio", "cells.md") == 1
    assert await r.search("mitochondria", course="bio") == []
