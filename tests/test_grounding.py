"""Grounding a live turn: a slow query embedding never holds the answer back past its budget."""

from __future__ import annotations

import asyncio

import numpy as np

from rag.grounding import ground
from rag.ingest import ingest
from rag.search import MemoryQueryCache, Retriever
from rag.vectors import VectorIndex
from store.db import Database
from tests.fake_openai import fake_embedding
from tests.storage_fixtures import db  # noqa: F401  (fixture)

DOC = b"# Fractions\n\nTo divide by a fraction, multiply by its reciprocal. We flip the second one.\n"


class SlowEmbedder:
    model = "slow-model"

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.calls = 0

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return np.array([fake_embedding(t) for t in texts], dtype=np.float32)


async def test_a_slow_query_embedding_gives_way_to_full_text_and_is_cached(db: Database):
    embedder = SlowEmbedder()
    await ingest(db, embedder, course="maths", source="fractions.md", filename="fractions.md",
                 data=DOC, max_bytes=10_000)
    retriever = Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    embedder.delay_s = 0.5
    grounding = await ground(retriever, "why flip the second fraction", course="maths",
                             user_id=None, k=3, memory_k=0, budget_ms=50)
    assert grounding.retrieval_ms < 400  # did not wait for the 500 ms embedding
    assert [p.fts_rank for p in grounding.passages] == [1]  # full-text found it on its own
    assert grounding.passages[0].vector_rank is None
    await asyncio.sleep(0.6)  # the embedding finished in the background, and was cached
    calls = embedder.calls
    again = await ground(retriever, "why flip the second fraction", course="maths",
                         user_id=None, k=3, memory_k=0, budget_ms=50)
    assert embedder.calls == calls  # served from the cache, within the budget
    assert again.passages[0].vector_rank == 1 and again.passages[0].fts_rank == 1
