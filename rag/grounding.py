"""Grounding one question: retrieve course passages and the student's own earlier turns, and
turn them into the prompt addition and the `tutor.citations` the client receives.

Shared by the voice loop and `/api/ai/chat`, so both ground answers the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from dialogue.prompts import grounded
from store.models import NOTE

SNIPPET_CHARS = 160
log = logging.getLogger("tutor.rag")


TIMED_OUT = "timed_out"  # a lookup did not finish within the budget: answered without it
FAILED = "failed"  # a lookup failed (the database or Redis unreachable): answered without it


@dataclass
class Grounding:
    passages: list[Any] = field(default_factory=list)  # rag.search.Hit
    memories: list[Any] = field(default_factory=list)  # rag.search.MemoryHit
    retrieval_ms: float = 0.0
    degraded: str | None = None  # None: every lookup came back; else TIMED_OUT or FAILED

    def citations(self) -> list[dict[str, Any]]:
        return [{"chunk_id": f"c{h.chunk_id}", "course": h.course, "document": h.source,
                 "heading": h.heading_path, "score": round(h.score, 5),
                 "snippet": _snippet(h.text)} for h in self.passages]

    def apply(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        return grounded(messages,
                        [(f"c{h.chunk_id}", h.heading_path, h.text) for h in self.passages],
                        [(m.transcript, m.answer) for m in self.memories if m.kind != NOTE],
                        [(m.transcript, m.answer) for m in self.memories if m.kind == NOTE])


async def ground(retriever: Any, question: str, *, course: str | None, user_id: str | None,
                 k: int, memory_k: int, wait_for_embedding: bool = True,
                 budget_s: float | None = None) -> Grounding:
    """Passages and memories are looked up concurrently; a failure of either degrades to none
    (the answer goes on ungrounded) rather than failing the turn. `wait_for_embedding=False`:
    a question whose embedding is not cached is ranked by full-text now, embedded later.
    `budget_s`: what has not come back by then is left out (`degraded` says so); the late lookup
    is left to finish on its own (its statement timeout bounds it) and its result dropped. It is
    not cancelled: cancelling an asyncpg query opens a new connection to send PostgreSQL the
    cancel request and throws the pooled one away, which under load is what makes the next
    lookups late (at 50 sessions, a third of the turns went over the budget that way)."""
    started = time.perf_counter()
    lookups = {"passages": asyncio.ensure_future(
        retriever.search(question, course=course, k=k, wait_for_embedding=wait_for_embedding))}
    if user_id is not None and memory_k:
        lookups["memories"] = asyncio.ensure_future(
            retriever.memory(question, user_id=user_id, k=memory_k))
    try:
        await asyncio.wait(lookups.values(), timeout=budget_s)
    finally:
        late = [name for name, task in lookups.items() if not task.done()]
        for name in late:
            _leave(lookups[name])  # also when the answer itself was cancelled (barge-in)
    found: dict[str, list[Any]] = {"passages": [], "memories": []}
    degraded = TIMED_OUT if late else None
    if late:
        log.warning("retrieval over its %.3f s budget, answering without %s", budget_s,
                    " and ".join(late))
    for name, task in lookups.items():
        if name in late:
            continue
        if (failure := task.exception()) is not None:
            log.warning("retrieval failed, answering without it: %r", failure)
            degraded = degraded or FAILED
        else:
            found[name] = list(task.result())
    return Grounding(found["passages"], found["memories"],
                     (time.perf_counter() - started) * 1000, degraded)


_late: set[asyncio.Task[Any]] = set()  # late lookups, held until they end


def _leave(task: asyncio.Task[Any]) -> None:
    _late.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _late.discard(task)
    if not task.cancelled() and task.exception() is not None:  # retrieved: no warning at exit
        log.info("late retrieval ended with %r", task.exception())


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
