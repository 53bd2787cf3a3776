"""Reading documents away from the server: `prepare` (extract → caps → chunk → the texts to embed)
runs in a worker process with its own memory limit and a wall-clock timeout, so a hostile or
merely huge document costs that process, never the event loop voice sessions share.

`Parser` is the one way every ingestion (the upload route, `tutor ingest`, the sample course at
startup) reads a document: a small pool of single-process executors (one by default), started on
first use from the "forkserver" context (a fork of the threaded, asyncio server is unsafe), each
worker limited by `RLIMIT_AS`. A worker that runs out of memory, dies or overruns the timeout is
killed and replaced; its uploader gets `document_too_large`. The database writes and embedding
calls stay in the server, async.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .chunk import Chunk, chunk
from .extract import Document, IngestError, extract

log = logging.getLogger("tutor.rag")

HEADING_SEPARATOR = " > "


@dataclass(frozen=True)
class Limits:
    """What one document may be, and cost. Every cap is checked as early as it can be: the bytes
    before anything is read, a PDF's page count before any page is, the characters while they
    are extracted, the chunks before anything is embedded."""
    max_bytes: int = 10 * 1024 * 1024
    max_pages: int = 1000  # PDF pages
    max_chars: int = 2_000_000  # extracted text
    max_chunks: int = 4000
    chunk_chars: int = 900
    overlap_chars: int = 150


@dataclass(frozen=True)
class Prepared:
    """A document read and cut: its chunks, and for each the text to embed."""
    title: str
    chunks: list[Chunk]
    embedding_inputs: list[str]


def too_large(what: str, limit: str) -> IngestError:
    return IngestError("document_too_large", f"{what}; the limit is {limit}")


def prepare(filename: str, data: bytes, limits: Limits) -> Prepared:
    """The CPU-bound part of an ingestion, run in a worker process (pure: bytes in, chunks out).
    Raises IngestError."""
    document = extract(filename, data, max_bytes=limits.max_bytes, max_pages=limits.max_pages,
                       max_chars=limits.max_chars)
    chunks = chunk(document, max_chars=limits.chunk_chars, overlap_chars=limits.overlap_chars)
    if len(chunks) > limits.max_chunks:
        raise too_large(f"the document makes {len(chunks)} chunks",
                        f"{limits.max_chunks} chunks (TUTOR_RAG_MAX_DOCUMENT_CHUNKS)")
    return Prepared(document.title, chunks, [embedding_input(document, c) for c in chunks])


def embedding_input(document: Document, piece: Chunk) -> str:
    """What is embedded for a chunk: its text under its title and headings. A chunk saying "Flip
    the second one and multiply" is then found by a question about dividing fractions. Only
    the chunk's own text is stored."""
    context = [document.title] if document.title else []
    context += [h for h in piece.heading_path if h not in context]
    return f"{HEADING_SEPARATOR.join(context)}\n\n{piece.text}" if context else piece.text


def _limit_memory(memory_bytes: int | None) -> None:
    """Worker initializer: past this address space, allocations fail (MemoryError) in the
    worker, not in the server."""
    try:
        import resource
    except ImportError:  # not on Windows: no limit there
        return
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


def _ready() -> None:
    """A no-op job: returns once the worker is up."""


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class Parser:
    """Runs `prepare` in `workers` worker processes, one document at a time each; more uploads
    wait their turn. Not bound to an event loop until first used."""

    def __init__(self, limits: Limits, *, workers: int = 1, memory_bytes: int | None = None,
                 timeout_s: float = 60.0) -> None:
        if workers < 1:
            raise ValueError("need at least one worker")
        self.limits = limits
        self.workers = workers
        self.memory_bytes = memory_bytes
        self.timeout_s = timeout_s
        self._idle: list[ProcessPoolExecutor] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False

    async def prepare(self, filename: str, data: bytes) -> Prepared:
        """The document's chunks, read in a worker. Raises IngestError (`document_too_large` when
        the worker ran out of memory or time; the worker is then replaced)."""
        if self._closed:
            raise RuntimeError("the parser is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        async with self._slots:
            executor = self._idle.pop() if self._idle else None
            healthy = False
            try:
                if executor is None:
                    # A new worker is started before the clock runs: the timeout is the reading's.
                    executor = self._new()
                    await asyncio.wrap_future(executor.submit(_ready))
                future = executor.submit(prepare, filename, data, self.limits)
                result = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
                healthy = True
                return result
            except IngestError:
                healthy = True  # refused by the worker's own checks: the worker is fine
                raise
            except TimeoutError:
                raise too_large(f"reading the document took over {self.timeout_s:g} s",
                                f"{self.timeout_s:g} s (TUTOR_RAG_INGEST_TIMEOUT_S)") from None
            except (MemoryError, BrokenProcessPool):
                # MemoryError: an allocation failed under RLIMIT_AS; BrokenProcessPool: the
                # worker died (a C library aborting when malloc failed, or a kill).
                raise too_large("reading the document needed more memory than a worker has",
                                self._memory_text()) from None
            finally:
                if healthy and not self._closed:
                    self._idle.append(executor)
                elif executor is not None:  # out of time or memory, crashed, or cancelled
                    _kill(executor)

    def close(self) -> None:
        """Stop the workers now (a document being read is abandoned)."""
        self._closed = True
        while self._idle:
            _kill(self._idle.pop())

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=_context(), initializer=_limit_memory,
                                   initargs=(self.memory_bytes,))

    def _memory_text(self) -> str:
        if not self.memory_bytes:
            return "the machine's memory (no TUTOR_RAG_INGEST_MEMORY_MB)"
        return f"{self.memory_bytes // (1024 * 1024)} MiB (TUTOR_RAG_INGEST_MEMORY_MB)"


def _kill(executor: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public kill before Python 3.14 (kill_workers()); its process
    # table is the way to stop a worker stuck in a parse.
    for process in list((getattr(executor, "_processes", None) or {}).values()):
        log.info("stopping document worker %s", process.pid)
        try:
            process.kill()
        except (OSError, ValueError, AttributeError):  # already gone
            pass
    executor.shutdown(wait=False, cancel_futures=True)
