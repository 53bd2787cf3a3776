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


@dataclass
class Grounding:
    passages: list[Any] = field(default_factory=list)  # rag.search.Hit
    memories: list[Any] = field(default_factory=list)  # rag.search.MemoryHit
    retrieval_ms: float = 0.0

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
                 k: int, memory_k: int, wait_for_embedding: bool = True) -> Grounding:
    """Passages and memories are looked up concurrently; a failure of either degrades to none
    (the answer goes on ungrounded) rather than failing the turn. `wait_for_embedding=False`:
    a question whose embedding is not cached is ranked by full-text now, embedded later."""
    started = time.perf_counter()
    lookups = [retriever.search(question, course=course, k=k,
                                wait_for_embedding=wait_for_embedding)]
    if user_id is not None and memory_k:
        lookups.append(retriever.memory(question, user_id=user_id, k=memory_k))
    results = await asyncio.gather(*lookups, return_exceptions=True)
    for failure in (r for r in results if isinstance(r, BaseException)):
        log.warning("retrieval failed, answering without it: %r", failure)
    passages = results[0] if not isinstance(results[0], BaseException) else []
    memories = (results[1] if len(results) > 1 and not isinstance(results[1], BaseException)
                else [])
    return Grounding(list(passages), list(memories), (time.perf_counter() - started) * 1000)



def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rsplit(" ", 1)[0] + "…"
