"""Grounding a live turn: a question whose embedding is not cached is not held back by it."""

from __future__ import annotations

import asyncio

import numpy as np

from rag.grounding import ground
from rag.ingest import ingest
from rag.search import MemoryQueryCache, Retriever
from rag.vectors import VectorIndex
from rag.worker import Limits, Parser
from store.db import Database
from tests.fake_openai import fake_embedding
from tests.storage_fixtures import db  # noqa: F401  (fixture)

DOC = b"# Fractions\n\nTo divide by a fraction, multiply by its reciprocal. We flip the second one.\n"


async def put(db: Database, embedder: "SlowEmbedder") -> None:
    parser = Parser(Limits(max_bytes=10_000))
    try:
        await ingest(db, embedder, parser, course="maths", source="fractions.md",
                     filename="fractions.md", data=DOC)
    finally:
        parser.close()


class SlowEmbedder:
    model = "slow-model"

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.calls = 0

    async def embed(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return np.array([fake_embedding(t) for t in texts], dtype=np.float32)


async def test_a_new_question_is_ranked_by_words_now_and_embedded_for_next_time(db: Database):
    embedder = SlowEmbedder()
    await put(db, embedder)
    retriever = Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    retriever.embed_later_s = 0.05
    embedder.delay_s = 0.5  # a slow provider
    calls = embedder.calls
    grounding = await ground(retriever, "why flip the second fraction", course="maths",
                             user_id=None, k=3, memory_k=0, wait_for_embedding=False)
    assert grounding.retrieval_ms < 300  # did not wait for the 500 ms embedding
    assert embedder.calls == calls  # ... nor even start it during the turn
    assert [(p.fts_rank, p.vector_rank) for p in grounding.passages] == [(1, None)]
    await asyncio.sleep(0.8)  # embedded in the background a moment later, and cached
    assert embedder.calls == calls + 1
    again = await ground(retriever, "why flip the second fraction", course="maths",
                         user_id=None, k=3, memory_k=0, wait_for_embedding=False)
    assert embedder.calls == calls + 1  # from the cache
    assert [(p.fts_rank, p.vector_rank) for p in again.passages] == [(1, 1)]


async def test_a_question_missed_by_many_turns_at_once_is_embedded_once(db: Database):
    """A class asking the same new question together: one background embedding, not one each."""
    embedder = SlowEmbedder()
    await put(db, embedder)
    retriever = Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    retriever.embed_later_s = 0.05
    embedder.delay_s = 0.1
    calls = embedder.calls
    await asyncio.gather(*(ground(retriever, "why flip  the second fraction", course="maths",
                                  user_id=None, k=3, memory_k=0, wait_for_embedding=False)
                           for _ in range(10)))
    await asyncio.sleep(0.4)
    assert embedder.calls == calls + 1
    again = await ground(retriever, "why flip the second fraction", course="maths",
                         user_id=None, k=3, memory_k=0, wait_for_embedding=False)
    assert [(p.fts_rank, p.vector_rank) for p in again.passages] == [(1, 1)]
    # once embedded, a new miss of another question is embedded in its turn
    await ground(retriever, "fractions again", course="maths", user_id=None, k=3, memory_k=0,
                 wait_for_embedding=False)
    await asyncio.sleep(0.4)
    assert embedder.calls == calls + 2


async def test_waiting_for_the_embedding_uses_both_rankings_at_once(db: Database):
    embedder = SlowEmbedder()
    await put(db, embedder)
    retriever = Retriever(db, embedder, vectors=VectorIndex(), query_cache=MemoryQueryCache())
    grounding = await ground(retriever, "why flip the second fraction", course="maths",
                             user_id=None, k=3, memory_k=0)
    assert [(p.fts_rank, p.vector_rank) for p in grounding.passages] == [(1, 1)]


class StuckRetriever:
    """Passages at once, memories late (a database slow to answer): `release` lets them come."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.memory_finished = asyncio.Event()
        self.memory_cancelled = False

    async def search(self, query: str, **_: object) -> list[str]:
        return ["passage"]

    async def memory(self, query: str, **_: object) -> list[str]:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.memory_cancelled = True
            raise
        self.memory_finished.set()
        return ["memory"]


async def test_a_lookup_over_the_budget_is_left_out_and_left_to_finish():
    """Not cancelled: cancelling an asyncpg query costs PostgreSQL a new connection and the pool
    its connection, which under load makes the next lookups late too."""
    retriever = StuckRetriever()
    grounding = await ground(retriever, "why", course=None, user_id="u1", k=3, memory_k=3,
                             budget_s=0.05)
    assert grounding.degraded == "timed_out"
    assert (grounding.passages, grounding.memories) == (["passage"], [])  # what came is kept
    assert 50 <= grounding.retrieval_ms < 1000
    retriever.release.set()
    await asyncio.wait_for(retriever.memory_finished.wait(), 1)
    assert not retriever.memory_cancelled


async def test_a_failed_lookup_is_reported_and_a_complete_one_is_not():
    class Failing(StuckRetriever):
        async def memory(self, query: str, **_: object) -> list[str]:
            raise ConnectionRefusedError("database down")

    failed = await ground(Failing(), "why", course=None, user_id="u1", k=3, memory_k=3,
                          budget_s=1)
    assert (failed.degraded, failed.passages, failed.memories) == ("failed", ["passage"], [])
    complete = await ground(Failing(), "why", course=None, user_id=None, k=3, memory_k=3,
                            budget_s=1)
    assert (complete.degraded, complete.passages) == (None, ["passage"])
