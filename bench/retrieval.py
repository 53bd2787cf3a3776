"""Retrieval quality and latency on the sample course, in full-text, vector and hybrid modes:
recall@1, recall@5, MRR@5 and time per search call over bench/retrieval_questions.json, against a
fresh database and the loopback fake provider. Figures, not assertions; bench/results/retrieval.json.

    python -m bench.retrieval [--postgres postgresql://user@host/db] [--k 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from providers.openai import OpenAIEmbedder, make_client
from rag.ingest import IngestError, ingest_paths
from rag.search import MemoryQueryCache, Retriever
from rag.vectors import VectorIndex
from server.app import parser_for
from server.config import Settings
from store.db import Database, migrate, normalise_url
from tests.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
COURSE_DIR = ROOT / "rag" / "sample_course"
QUESTIONS = ROOT / "bench" / "retrieval_questions.json"
RESULTS = ROOT / "bench" / "results"
COURSE = "sample"
# Report name → Retriever.search(mode=...).
MODES = {"fulltext": "fts", "vector": "vector", "hybrid": "hybrid"}
EMBEDDING_MODEL = "text-embedding-3-small"
# Warm-up queries share no question's text, so the measured first pass still embeds every
# question (no query-cache hit) while connections, SQLite pages and the vector matrix are warm.
WARMUP = ["cells and energy", "fractions and decimals", "how to take notes", "graphs of lines",
          "plants and animals", "memory and sleep", "solving for an unknown", "genes and traits"]
CAVEAT = ("NOTE: the 'vector' figures (and the vector half of 'hybrid') use the fake provider's "
          "hashed bag-of-words embeddings, not a real embedding model.")


def collapse(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Question:
    question: str
    source: str
    answer: str  # whitespace-collapsed answer_text

    def relevant(self, hit: Any) -> bool:
        # Sources may be stored as paths; the label names the file.
        return Path(str(hit.source)).name == self.source and self.answer in collapse(hit.text)


def load_questions(path: Path) -> list[Question]:
    doc = json.loads(path.read_text())
    return [Question(q["question"], q["source"], collapse(q["answer_text"]))
            for q in doc["questions"]]


# -- one mode ----------------------------------------------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (with ~70 samples, p99 is the slowest call or next to it)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Pass:
    results: list[list[Any]]
    ms: list[float]  # wall time of each search call
    embed_ms: list[float]  # of which spent getting the query embedding (0 for full-text)
    cache_hits: int


async def timed_pass(retriever: Retriever, queries: list[str], k: int, mode: str) -> Pass:
    done = Pass([], [], [], 0)
    for query in queries:
        started = time.perf_counter()
        hits, timings = await retriever.search_timed(query, course=COURSE, k=k, mode=mode)
        done.ms.append((time.perf_counter() - started) * 1000)
        done.embed_ms.append(timings.embed_ms)
        done.cache_hits += bool(timings.cache_hit)
        done.results.append(list(hits))
    return done


def latency(p: Pass) -> dict[str, float | int]:
    return {"p50": round(statistics.median(p.ms), 3), "p99": round(percentile(p.ms, 99), 3),
            "embed_p50": round(statistics.median(p.embed_ms), 3), "cache_hits": p.cache_hits}


def score(questions: list[Question], results: list[list[Any]], k: int) -> dict[str, Any]:
    ranks: list[int | None] = []
    for q, hits in zip(questions, results):
        ranks.append(next((i + 1 for i, h in enumerate(hits[:k]) if q.relevant(h)), None))
    n = len(questions)
    by_source: dict[str, list[int | None]] = {}
    for q, r in zip(questions, ranks):
        by_source.setdefault(q.source, []).append(r)
    return {
        "recall@1": round(sum(r == 1 for r in ranks) / n, 4),
        f"recall@{k}": round(sum(r is not None for r in ranks) / n, 4),
        f"mrr@{k}": round(sum(1 / r for r in ranks if r is not None) / n, 4),
        f"recall@{k}_by_source": {s: round(sum(r is not None for r in rs) / len(rs), 3)
                                  for s, rs in sorted(by_source.items())},
        "missed": [q.question for q, r in zip(questions, ranks) if r is None],
    }


def merge(passes: list[Pass]) -> Pass:
    return Pass(passes[0].results, [t for p in passes for t in p.ms],
                [t for p in passes for t in p.embed_ms], sum(p.cache_hits for p in passes))


async def run_mode(db: Database, embedder: OpenAIEmbedder, vectors: VectorIndex, mode: str,
                   questions: list[Question], k: int, repeat: int) -> dict[str, Any]:
    retriever = Retriever(db, embedder, vectors=vectors, query_cache=MemoryQueryCache())
    queries = [q.question for q in questions]
    await timed_pass(retriever, WARMUP, k, mode)
    # Each round: an empty query cache (every question embedded), then the same questions again
    # (every embedding cached). Several rounds, because on ~70 calls p99 is just the slowest one.
    first, cached = [], []
    for _ in range(repeat):
        retriever.query_cache = MemoryQueryCache()
        first.append(await timed_pass(retriever, queries, k, mode))
        cached.append(await timed_pass(retriever, queries, k, mode))
    ids = [[[h.chunk_id for h in hits] for hits in p.results] for p in first + cached]
    metrics = score(questions, first[0].results, k)
    metrics["latency_ms"] = {"first_pass": latency(merge(first)),
                             "cached_pass": latency(merge(cached))}
    metrics["every_pass_same_results"] = all(i == ids[0] for i in ids)
    return metrics


# -- database ----------------------------------------------------------------------------------
async def _pg_admin(server_url: str, statement: str) -> None:
    dsn = make_url(normalise_url(server_url)).set(drivername="postgresql")
    connection = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def fresh_database(postgres: str | None, tmp: Path) -> tuple[str, str | None]:
    """(URL of a new empty database, name of the PostgreSQL database to drop afterwards)."""
    if postgres is None:
        return f"sqlite+aiosqlite:///{tmp / 'bench.db'}", None
    # A throwaway database on the given server, so the run never touches existing data.
    name = f"tutor_bench_{secrets.token_hex(6)}"
    await _pg_admin(postgres, f'CREATE DATABASE "{name}"')
    url = make_url(normalise_url(postgres)).set(database=name)
    return url.render_as_string(hide_password=False), name


# -- main --------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> dict[str, Any]:
    questions = load_questions(Path(args.questions))
    settings = Settings(_env_file=None)
    with tempfile.TemporaryDirectory(prefix="tutor-retrieval-") as tmp:
        url, pg_name = await fresh_database(args.postgres, Path(tmp))
        fake = FakeOpenAI()
        started_fake = False
        db: Database | None = None
        try:
            await fake.start()
            started_fake = True
            await asyncio.to_thread(migrate, url)
            db = Database(url)
            client = make_client(api_key="bench", base_url=fake.base_url, timeout=10,
                                 connect_timeout=2, max_retries=0)
            embedder = OpenAIEmbedder(client, EMBEDDING_MODEL)
            started = time.perf_counter()
            async with AsyncExitStack() as stack:
                ingested = await ingest_paths(db, embedder, parser_for(settings, stack),
                                              [COURSE_DIR], course=COURSE)
            ingest_s = time.perf_counter() - started
            failed = [r for r in ingested if isinstance(r, IngestError)]
            if failed:
                raise SystemExit(f"ingestion failed: {[(e.source, e.code) for e in failed]}")
            documents = {r.source: r.chunks for r in ingested}
            chunks = sum(documents.values())
            vectors = VectorIndex(model=EMBEDDING_MODEL)
            await vectors.refresh(db, COURSE)
            modes = {}
            for name, mode in MODES.items():
                modes[name] = await run_mode(db, embedder, vectors, mode, questions, args.k,
                                             args.repeat)
        finally:
            if db is not None:
                await db.close()
            if started_fake:
                await fake.stop()
            if pg_name is not None:
                await _pg_admin(args.postgres, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
    return {
        "command": " ".join(["python -m bench.retrieval", *sys.argv[1:]]),
        "backend": "postgresql" if args.postgres else "sqlite",
        "questions": len(questions),
        "questions_by_source": {s: sum(q.source == s for q in questions)
                                for s in sorted({q.source for q in questions})},
        "chunks": chunks,
        "chunks_by_document": documents,
        "ingest_seconds": round(ingest_s, 3),
        "k": args.k,
        "searches_timed_per_pass_kind": len(questions) * args.repeat,
        "embeddings": "fake provider: deterministic hashed bag-of-words (not a real embedding model)",
        "chunking": {"chunk_chars": settings.rag_chunk_chars,
                     "overlap_chars": settings.rag_chunk_overlap_chars},
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
                   f"{platform.python_version()}",
        "modes": modes,
    }


def print_table(report: dict[str, Any]) -> None:
    k = report["k"]
    print(f"\n{report['questions']} questions {report['questions_by_source']}, "
          f"{report['chunks']} chunks, {report['backend']}, k={k}")
    print(f"{'mode':<10}{'recall@1':>10}{f'recall@{k}':>10}{f'MRR@{k}':>9}"
          f"{'first p50':>12}{'first p99':>12}{'cached p50':>12}{'cached p99':>12}")
    for mode, m in report["modes"].items():
        first, cached = m["latency_ms"]["first_pass"], m["latency_ms"]["cached_pass"]
        print(f"{mode:<10}{m['recall@1']:>10.3f}{m[f'recall@{k}']:>10.3f}{m[f'mrr@{k}']:>9.3f}"
              f"{first['p50']:>9.2f} ms{first['p99']:>9.2f} ms"
              f"{cached['p50']:>9.2f} ms{cached['p99']:>9.2f} ms")
    print(f"recall@{k} by source:")
    for mode, m in report["modes"].items():
        print(f"  {mode:<9}", ", ".join(f"{s} {v:.2f}" for s, v in m[f"recall@{k}_by_source"].items()))
    print(f"Latency is per search call ({report['searches_timed_per_pass_kind']} each): 'first' "
          "embeds each question (query cache empty), 'cached' asks them again.")
    print(CAVEAT)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server URL; a throwaway database is created on it")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="rounds of timed passes per mode")
    parser.add_argument("--questions", default=str(QUESTIONS))
    parser.add_argument("--out", default=str(RESULTS / "retrieval.json"))
    args = parser.parse_args()
    print(CAVEAT)
    report = asyncio.run(main(args))
    print_table(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    cli()
