"""Ingestion, as a specification, on SQLite and PostgreSQL against the loopback provider: a
document is created, left alone when unchanged, replaced whole when changed; a failure at any step
leaves the previous version; duplicates, listing, deletion, directories; and the embedder."""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from sqlalchemy import event, select

from providers import ProviderError
from providers.openai import OpenAIEmbedder, make_client
from rag.ingest import (IngestError, IngestResult, delete_document, ingest, ingest_paths,
                        list_documents)
from rag.vectors import from_blob, to_blob
from rag.worker import Limits, Parser
from store.db import Database
from store.models import Content
from tests.fake_openai import EMBEDDING_DIMENSIONS, FakeOpenAI, fake_embedding
from tests.storage_fixtures import db  # noqa: F401  (fixture)

MODEL = "text-embedding-3-small"
LIMIT = 1_000_000

V1 = b"""# Fractions

A fraction has a numerator and a denominator. The denominator says how many equal parts.

## Dividing fractions

To divide by a fraction, multiply by its reciprocal. Flip the second fraction, then multiply.

## Adding fractions

Fractions are added over a common denominator.
"""
V2 = V1.replace(b"## Adding fractions", b"## Comparing fractions").replace(
    b"Fractions are added over a common denominator.",
    b"Compare fractions by cross multiplication. The larger product marks the larger fraction.")


def embedder(fake: FakeOpenAI, batch_size: int = 2) -> OpenAIEmbedder:
    client = make_client(api_key="k", base_url=fake.base_url, timeout=5, connect_timeout=2,
                         max_retries=0)
    return OpenAIEmbedder(client, MODEL, batch_size=batch_size)


@pytest.fixture
def parsers() -> Iterator[Callable[..., Parser]]:
    """Parsers with the given Limits (max_bytes LIMIT by default) and options, stopped after the
    test: documents are read in worker processes, as the server reads them."""
    made: list[Parser] = []

    def make(*, memory_bytes: int | None = None, timeout_s: float = 30, **limits: Any) -> Parser:
        made.append(Parser(Limits(**{"max_bytes": LIMIT, **limits}), memory_bytes=memory_bytes,
                           timeout_s=timeout_s))
        return made[-1]

    yield make
    for parser in made:
        parser.close()


@pytest.fixture
def parser(parsers: Callable[..., Parser]) -> Parser:
    return parsers()


async def put(parser: Parser, db: Database, embedder: OpenAIEmbedder | None, data: bytes, *,
              source: str = "fractions.md", course: str = "maths",
              filename: str | None = None) -> IngestResult:
    return await ingest(db, embedder, parser, course=course, source=source,
                        filename=filename or source, data=data)


async def rows(db: Database, course: str = "maths", source: str = "fractions.md") -> list[Content]:
    async with db.session() as s:
        query = (select(Content).where(Content.course == course, Content.source == source)
                 .order_by(Content.position))
        return list((await s.execute(query)).scalars())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- created, unchanged, replaced -----------------------------------------------------------

async def test_a_document_is_created_then_unchanged_then_replaced_whole(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    embed = embedder(fake, batch_size=2)

    created = await put(parser, db, embed, V1)

    assert created == IngestResult("created", "fractions.md", "maths", 3)
    stored = await rows(db)
    assert [(r.position, r.heading_path) for r in stored] == [
        (0, "Fractions"), (1, "Fractions > Dividing fractions"),
        (2, "Fractions > Adding fractions")]
    assert stored[1].text == ("To divide by a fraction, multiply by its reciprocal. Flip the "
                              "second fraction, then multiply.")
    assert {(r.content_hash, r.embedding_model) for r in stored} == {(sha(V1), MODEL)}
    for r in stored:
        vector = from_blob(r.embedding)
        assert vector.dtype == np.float32 and vector.shape == (EMBEDDING_DIMENSIONS,)
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-5)
    # Batches of at most batch_size, in the SDK's default (base64) encoding.
    assert sorted(e["inputs"] for e in fake.embeddings) == [1, 2]
    assert {(e["model"], e["encoding_format"]) for e in fake.embeddings} == {(MODEL, "base64")}

    # The same bytes again: nothing embedded, nothing rewritten.
    requests = len(fake.embeddings)
    assert await put(parser, db, embed, V1) == IngestResult("unchanged", "fractions.md", "maths", 3)
    assert len(fake.embeddings) == requests
    assert [r.id for r in await rows(db)] == [r.id for r in stored]

    replaced = await put(parser, db, embed, V2)

    assert replaced == IngestResult("replaced", "fractions.md", "maths", 3)
    now = await rows(db)
    assert {r.content_hash for r in now} == {sha(V2)}
    assert [r.position for r in now] == [0, 1, 2]
    assert now[2].heading_path == "Fractions > Comparing fractions"
    assert "common denominator" not in " ".join(r.text for r in now)  # the old rows are gone


async def test_the_stored_vectors_find_the_chunk_about_the_question(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, embedder(fake), V1)

    question = np.asarray(fake_embedding("How do I divide fractions?"), dtype=np.float32)
    best = max(await rows(db), key=lambda r: float(from_blob(r.embedding) @ question))

    assert best.heading_path == "Fractions > Dividing fractions"


async def test_a_database_failure_while_writing_leaves_the_previous_version_whole(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, embedder(fake), V1)
    before = [(r.id, r.text) for r in await rows(db)]

    def disk_full(conn, cursor, statement: str, *args: Any) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO CONTENT"):
            raise RuntimeError("disk full")

    # The delete of the old rows has run when the insert fails: one transaction undoes both.
    event.listen(db.engine.sync_engine, "before_cursor_execute", disk_full)
    try:
        with pytest.raises(Exception, match="disk full"):
            await put(parser, db, embedder(fake), V2)
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", disk_full)

    assert [(r.id, r.text) for r in await rows(db)] == before


async def test_an_embedding_failure_leaves_the_previous_version_intact(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, embedder(fake), V1)
    before = [(r.id, r.content_hash) for r in await rows(db)]
    fake.behaviour.embedding_failures = ["500"]

    with pytest.raises(ProviderError) as caught:
        await put(parser, db, embedder(fake, batch_size=1), V2)

    assert caught.value.code == "provider_error" and "500" in caught.value.message
    assert [(r.id, r.content_hash) for r in await rows(db)] == before
    # The next attempt, with the provider back, goes through.
    assert (await put(parser, db, embedder(fake), V2)).status == "replaced"


async def test_an_undecodable_new_version_leaves_the_previous_version_intact(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, embedder(fake), V1)
    before = [(r.id, r.content_hash) for r in await rows(db)]

    with pytest.raises(IngestError) as caught:
        await put(parser, db, embedder(fake), b"\x00\x01binary\xff")

    assert (caught.value.code, caught.value.source) == ("undecodable", "fractions.md")
    assert [(r.id, r.content_hash) for r in await rows(db)] == before


async def test_the_same_bytes_under_another_name_are_a_duplicate(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, embedder(fake), V1)
    requests = len(fake.embeddings)

    with pytest.raises(IngestError) as caught:
        await put(parser, db, embedder(fake), V1, source="copy of fractions.md")

    assert caught.value.code == "duplicate_document"
    assert "fractions.md" in caught.value.message
    assert await rows(db, source="copy of fractions.md") == []
    assert len(fake.embeddings) == requests  # refused before paying for embeddings
    # Another course may hold the same document.
    assert (await put(parser, db, embedder(fake), V1, course="physics")).status == "created"


async def test_without_an_embedder_chunks_are_stored_without_vectors_and_embedded_later(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    assert (await put(parser, db, None, V1)).status == "created"
    assert {(r.embedding, r.embedding_model) for r in await rows(db)} == {(None, None)}
    # Nothing to add without an embedder: the same bytes are left alone.
    assert (await put(parser, db, None, V1)).status == "unchanged"

    # An embedder now: the same bytes are worth embedding, so they are stored again.
    assert (await put(parser, db, embedder(fake), V1)).status == "replaced"
    assert all(r.embedding is not None and r.embedding_model == MODEL for r in await rows(db))

    # Without one again: the same bytes are unchanged (their vectors are kept).
    assert (await put(parser, db, None, V1)).status == "unchanged"
    assert all(r.embedding is not None for r in await rows(db))


async def test_refusals_name_the_source_and_store_nothing(
        db: Database, parsers: Callable[..., Parser]) -> None:
    parser = parsers()
    cases = {"unsupported_type": dict(data=V1, filename="fractions.docx"),
             "document_too_large": dict(data=V1, parser=parsers(max_bytes=10)),
             "empty_document": dict(data=b""),
             "invalid_name": dict(data=V1, course=" ")}
    for code, options in cases.items():
        data = options.pop("data")
        with pytest.raises(IngestError) as caught:
            await put(options.pop("parser", parser), db, None, data,  # type: ignore[arg-type]
                      **options)
        assert (caught.value.code, caught.value.source) == (code, "fractions.md")
    assert await list_documents(db) == []


# --- concurrent uploads ---------------------------------------------------------------------

async def test_two_versions_uploaded_at_once_leave_exactly_one_of_them(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    await put(parser, db, None, b"# Start\n\nThe first version.")

    results = await asyncio.gather(put(parser, db, embedder(fake), V1), put(parser, db, embedder(fake), V2))

    assert sorted(r.status for r in results) == ["replaced", "replaced"]
    stored = await rows(db)
    assert len({r.content_hash for r in stored}) == 1
    assert [r.position for r in stored] == list(range(len(stored)))


async def test_the_same_bytes_uploaded_at_once_under_two_names_are_stored_once(
        db: Database, fake: FakeOpenAI, parser: Parser) -> None:
    results = await asyncio.gather(put(parser, db, embedder(fake), V1, source="a.md"),
                                   put(parser, db, embedder(fake), V1, source="b.md"),
                                   return_exceptions=True)

    assert sorted(type(r).__name__ for r in results) == ["IngestError", "IngestResult"]
    error = next(r for r in results if isinstance(r, IngestError))
    assert error.code == "duplicate_document"
    assert [d["source"] for d in await list_documents(db)] == [
        next(r.source for r in results if isinstance(r, IngestResult))]


# --- listing and deleting -------------------------------------------------------------------

async def test_documents_are_listed_per_course_and_deleted(db: Database,
                                                          parser: Parser) -> None:
    await put(parser, db, None, V1)
    await put(parser, db, None, V2, source="comparing.md")
    await put(parser, db, None, b"Forces make things move.", source="forces.txt", course="physics")

    listed = await list_documents(db)

    assert [(d["course"], d["source"], d["chunks"], d["content_hash"]) for d in listed] == [
        ("maths", "comparing.md", 3, sha(V2)), ("maths", "fractions.md", 3, sha(V1)),
        ("physics", "forces.txt", 1, sha(b"Forces make things move."))]
    assert all(d["updated_at"].tzinfo is not None and d["embedding_model"] is None
               for d in listed)
    assert [d["source"] for d in await list_documents(db, "physics")] == ["forces.txt"]

    assert await delete_document(db, "maths", "fractions.md") == 3
    assert await delete_document(db, "maths", "fractions.md") == 0
    assert [d["source"] for d in await list_documents(db, "maths")] == ["comparing.md"]


# --- directories ----------------------------------------------------------------------------

async def test_ingest_paths_walks_directories_and_goes_on_after_a_failed_file(
        db: Database, fake: FakeOpenAI, parsers: Callable[..., Parser], tmp_path: Path) -> None:
    course = tmp_path / "course"
    (course / "units" / "two").mkdir(parents=True)
    (course / ".drafts").mkdir()
    (course / "intro.md").write_bytes(V1)
    (course / "units" / "ratios.txt").write_text("Ratios compare quantities. A ratio is 2:3.")
    (course / "units" / "two" / "page.html").write_text("<h1>Percent</h1><p>Per hundred.</p>")
    (course / "units" / "scan.pdf").write_bytes(random.Random(1).randbytes(2000))
    (course / "units" / "empty.txt").write_bytes(b"")
    (course / "units" / "huge.md").write_bytes(b"x " * 5000)
    (course / "diagram.png").write_bytes(b"\x89PNG")  # not a document type: not walked
    (course / ".drafts" / "secret.md").write_text("# Draft")  # hidden: not walked
    single = tmp_path / "syllabus.md"
    single.write_text("# Syllabus\n\nFractions, then ratios.")

    small = parsers(max_bytes=5000)
    results = await ingest_paths(db, embedder(fake), small, [course, single], "maths")

    outcome = [(r.source, r.status if isinstance(r, IngestResult) else r.code) for r in results]
    assert outcome == [("intro.md", "created"), ("units/empty.txt", "empty_document"),
                       ("units/huge.md", "document_too_large"), ("units/ratios.txt", "created"),
                       ("units/scan.pdf", "undecodable"), ("units/two/page.html", "created"),
                       ("syllabus.md", "created")]
    assert [d["source"] for d in await list_documents(db)] == [
        "intro.md", "syllabus.md", "units/ratios.txt", "units/two/page.html"]

    # Run again: every good file is unchanged, and nothing is embedded twice.
    requests = len(fake.embeddings)
    again = await ingest_paths(db, embedder(fake), small, [course, single], "maths")
    assert [r.status for r in again if isinstance(r, IngestResult)] == ["unchanged"] * 4
    assert len(fake.embeddings) == requests


async def test_ingest_paths_reports_a_provider_failure_per_file(
        db: Database, fake: FakeOpenAI, parser: Parser, tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("First document.")
    (tmp_path / "b.md").write_text("Second document.")
    fake.behaviour.embedding_failures = ["500"]

    results = await ingest_paths(db, embedder(fake), parser, [tmp_path, tmp_path / "missing.md"],
                                 "maths")

    assert [(r.source, r.code if isinstance(r, IngestError) else r.status) for r in results] == [
        ("a.md", "provider_error"), ("b.md", "created"), ("missing.md", "unreadable")]


# --- the embedder ---------------------------------------------------------------------------

async def test_the_embedder_keeps_input_order_across_concurrent_batches(fake: FakeOpenAI) -> None:
    texts = [f"Lesson {i} is about fractions number {i * 7}." for i in range(23)]

    vectors = await embedder(fake, batch_size=3).embed(texts)

    assert vectors.dtype == np.float32 and vectors.shape == (23, EMBEDDING_DIMENSIONS)
    expected = np.asarray([fake_embedding(t) for t in texts], dtype=np.float32)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    assert sorted(e["inputs"] for e in fake.embeddings) == [2] + [3] * 7
    assert (await embedder(fake).embed([])).shape[0] == 0


async def test_the_fake_provider_answers_floats_when_asked_and_words_in_common_are_similar(
        fake: FakeOpenAI) -> None:
    client = make_client(api_key="k", base_url=fake.base_url, timeout=5, connect_timeout=2,
                         max_retries=0)
    texts = ["dividing fractions", "How do I divide a fraction?", "Newton's laws of motion"]

    response = await client.embeddings.create(model=MODEL, input=texts, encoding_format="float")

    assert fake.embeddings[-1] == {"model": MODEL, "inputs": 3, "encoding_format": "float"}
    a, b, c = (np.asarray(d.embedding) for d in response.data)
    assert a @ b > 0.5 > abs(a @ c)
    assert response.usage.total_tokens == 2 + 6 + 4


async def test_an_embedding_failure_is_a_provider_error(fake: FakeOpenAI) -> None:
    fake.behaviour.embedding_failures = ["500"]

    with pytest.raises(ProviderError) as caught:
        await embedder(fake, batch_size=1).embed(["one", "two", "three"])

    assert caught.value.code == "provider_error"


def test_vectors_are_stored_as_little_endian_float32() -> None:
    vector = np.asarray([0.5, -1.25, 3.0], dtype=np.float32)

    blob = to_blob(vector)

    assert blob == b"\x00\x00\x00\x3f\x00\x00\xa0\xbf\x00\x00\x40\x40"
    np.testing.assert_array_equal(from_blob(blob), vector)
