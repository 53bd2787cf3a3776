"""Course knowledge end to end: the real app under uvicorn, the loopback provider for embeddings,
transcription and answers, Supabase tokens from a loopback JWKS, and real HTTP and WebSocket
clients. Documents are uploaded, refused, listed and deleted over REST; a question (spoken or
typed) is answered from the course with its citations first; a student's earlier turns come back
to them, and to nobody else."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
from typing import Any

import httpx
import pytest
import websockets
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from dialogue.prompts import GROUNDING, NO_MATERIAL
from store import queries
from tests.conftest import make_settings, read_pcm
from tests.hostile_documents import flate_bomb_pdf, many_pages_pdf
from tests.realtime_client import Conversation, session_update, sse_events

FRACTION_QUESTION = "Why do we flip the second fraction when dividing?"
CITATION_KEYS = {"chunk_id", "course", "document", "heading", "score", "snippet"}
CHUNK_ID = re.compile(r"^c\d+$")

NOTES = b"""\
# Tide pools

## Anemones

Sea anemones cling to rocks in tide pools and sting small fish with tentacles full of nematocysts.

## Starfish

A starfish can regrow a lost arm; it eats mussels by pushing its stomach out through its mouth.
"""
NOTES_V2 = NOTES + b"""
## Hermit crabs

A hermit crab borrows an empty snail shell and moves into a bigger one as it grows.
"""


# --- helpers ---------------------------------------------------------------------------------

async def signed_in_server(fake, jwks, start_server, **overrides: Any) -> tuple[str, Any]:
    """A server with Supabase sign-in configured, so there is no guest: every call needs a token."""
    address = await start_server(make_settings(fake, supabase_url=jwks.project_url, **overrides))
    return f"http://{address}", start_server.apps[-1]


async def user(client: httpx.AsyncClient, app, jwks, email: str,  # type: ignore[no-untyped-def]
               role: str | None = None) -> tuple[dict[str, str], str]:
    """Bearer headers of a new Supabase user (created by their first call) and their id."""
    headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200, me.text
    if role is not None:
        async with app.state.services.db.session() as s, s.begin():
            await queries.set_role(s, me.json()["id"], role)
    return headers, me.json()["id"]


def upload(name: str, data: bytes, course: str = "marine") -> dict[str, Any]:
    return {"files": {"file": (name, data, "application/octet-stream")}, "data": {"course": course}}



async def ask(client: httpx.AsyncClient, message: str, headers: dict[str, str] | None = None,
              **body: Any) -> list[tuple[str, Any]]:
    r = await client.post("/api/ai/chat", json={"message": message, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return sse_events(r.text)


def system_prompt(fake) -> str:  # type: ignore[no-untyped-def]
    messages = fake.chats[-1]["messages"]
    assert messages[0]["role"] == "system"
    return messages[0]["content"]


def check_citation(c: dict[str, Any]) -> None:
    assert set(c) == CITATION_KEYS, c
    assert CHUNK_ID.match(c["chunk_id"]), c
    assert isinstance(c["score"], float) and c["score"] > 0
    assert c["snippet"] and len(c["snippet"]) <= 160


def encrypted_pdf() -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Secret tide pool notes.")
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(bytes(pdf.output()))))
    writer.encrypt("secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def search(client: httpx.AsyncClient, query: str, headers: dict[str, str] | None = None,
                 **body: Any) -> list[dict[str, Any]]:
    r = await client.post("/api/rag/search", json={"query": query, **body}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


# --- 1. documents over REST ------------------------------------------------------------------

async def test_a_teacher_uploads_replaces_lists_and_deletes_a_document(fake, jwks, start_server):
    base, app = await signed_in_server(fake, jwks, start_server)
    async with httpx.AsyncClient(base_url=base) as client:
        teacher, _ = await user(client, app, jwks, "teacher@example.com", "teacher")
        student, _ = await user(client, app, jwks, "student@example.com")

        # a new document is created, and split into chunks
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES))
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["status"] == "created" and created["chunks"] >= 1
        assert (created["course"], created["source"]) == ("marine", "notes.md")

        # the same bytes again cost nothing
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES))
        assert (r.status_code, r.json()["status"]) == (200, "unchanged")
        assert r.json()["chunks"] == created["chunks"]

        # changed bytes replace the previous version
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES_V2))
        assert (r.status_code, r.json()["status"]) == (200, "replaced")
        chunks = r.json()["chunks"]
        assert chunks >= created["chunks"]
        assert any("hermit crab" in h["text"] for h in
                   await search(client, "hermit crab shell", teacher, course="marine"))

        # the teacher sees it in the list, with its chunk count
        r = await client.get("/api/rag/documents", params={"course": "marine"}, headers=teacher)
        assert r.status_code == 200
        [listed] = r.json()["items"]
        assert (listed["course"], listed["source"], listed["chunks"]) == ("marine", "notes.md", chunks)

        # a student may search, but not manage documents
        assert any("starfish" in h["text"].lower() for h in
                   await search(client, "starfish", student, course="marine"))
        assert (await client.post("/api/rag/documents", headers=student,
                                  **upload("mine.md", b"# Mine\n\nStudent notes."))).status_code == 403
        assert (await client.get("/api/rag/documents", headers=student)).status_code == 403
        assert (await client.delete("/api/rag/documents", headers=student,
                                    params={"course": "marine", "source": "notes.md"})).status_code == 403
        # nobody signed in: 401, for searching too
        assert (await client.post("/api/rag/documents", **upload("anon.md", NOTES))).status_code == 401
        assert (await client.get("/api/rag/documents")).status_code == 401
        assert (await client.delete("/api/rag/documents",
                                    params={"course": "marine", "source": "notes.md"})).status_code == 401
        assert (await client.post("/api/rag/search", json={"query": "starfish"})).status_code == 401
        # the refused calls changed nothing
        r = await client.get("/api/rag/documents", headers=teacher)
        assert [(d["source"], d["chunks"]) for d in r.json()["items"]] == [("notes.md", chunks)]

        # deleting it removes it from the list and from search
        params = {"course": "marine", "source": "notes.md"}
        assert (await client.delete("/api/rag/documents", params=params, headers=teacher)).status_code == 204
        assert (await client.get("/api/rag/documents", headers=teacher)).json() == {"items": []}
        assert await search(client, "starfish anemones hermit crab", teacher, course="marine") == []
        r = await client.delete("/api/rag/documents", params=params, headers=teacher)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# --- 2. bad uploads ---------------------------------------------------------------------------

async def test_bad_uploads_get_clear_errors_and_leave_the_previous_version_whole(
        fake, jwks, start_server):
    base, app = await signed_in_server(fake, jwks, start_server, rag_max_document_bytes=2000)
    async with httpx.AsyncClient(base_url=base) as client:
        teacher, _ = await user(client, app, jwks, "teacher@example.com", "teacher")
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES))
        assert r.status_code == 201
        chunks = r.json()["chunks"]
        before = await search(client, "starfish regrow arm", teacher, course="marine")
        assert any("starfish" in h["text"].lower() for h in before)

        garbage = random.Random(7).randbytes(1500)
        refusals = [
            ("notes.md", b"", 400, "empty_document"),
            ("notes.md", NOTES + b"x" * 2000, 413, "document_too_large"),
            ("notes.md", b"# Big\n\n" + b"word " * 200_000, 413, "document_too_large"),
            ("notes.md", b"# Notes\n\0\0\0\x01binary" * 10, 400, "undecodable"),
            ("notes.pdf", garbage, 400, "undecodable"),
            ("locked.pdf", encrypted_pdf(), 400, "encrypted_document"),
            ("notes.docx", b"PK\x03\x04 a Word file", 415, "unsupported_type"),
            ("copy-of-notes.md", NOTES, 400, "duplicate_document"),
        ]
        for name, data, status, code in refusals:
            r = await client.post("/api/rag/documents", headers=teacher, **upload(name, data))
            assert (r.status_code, r.json()["error"]["code"]) == (status, code), (name, r.text)
            assert r.json()["error"]["message"], name  # says what is wrong, in words

        # a form without its course, or without a file
        r = await client.post("/api/rag/documents", headers=teacher,
                              files={"file": ("notes.md", NOTES_V2)})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        r = await client.post("/api/rag/documents", headers=teacher, data={"course": "marine"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        # a good new version whose embedding fails is refused as a whole (502), not half-stored
        fake.behaviour.embedding_failures = ["500"]
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES_V2))
        assert r.status_code == 502 and "nothing changed" in r.json()["error"]["message"]

        # only the first version is there, whole, and still found
        r = await client.get("/api/rag/documents", headers=teacher)
        assert [(d["source"], d["chunks"]) for d in r.json()["items"]] == [("notes.md", chunks)]
        assert await search(client, "starfish regrow arm", teacher, course="marine") == before


async def test_hostile_documents_are_refused_by_their_caps_and_the_previous_version_stays(
        fake, jwks, start_server):
    """Issue 15: a PDF of many pages is refused before its pages are read, a small PDF inflating
    past the reading worker's memory is refused, the previous version stays, and the next upload
    is read by a new worker."""
    base, app = await signed_in_server(fake, jwks, start_server, rag_max_pdf_pages=50,
                                       rag_ingest_memory_mb=128)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        teacher, _ = await user(client, app, jwks, "teacher@example.com", "teacher")
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES))
        assert r.status_code == 201
        chunks = r.json()["chunks"]

        for name, data, says in [("notes.pdf", many_pages_pdf(200), "TUTOR_RAG_MAX_PDF_PAGES"),
                                 ("notes.pdf", flate_bomb_pdf(70), "TUTOR_RAG_INGEST_MEMORY_MB")]:
            r = await client.post("/api/rag/documents", headers=teacher,
                                  files={"file": (name, data)},
                                  data={"course": "marine", "source": "notes.md"})
            assert (r.status_code, r.json()["error"]["code"]) == (413, "document_too_large")
            assert says in r.json()["error"]["message"], r.text

        r = await client.get("/api/rag/documents", headers=teacher)
        assert [(d["source"], d["chunks"]) for d in r.json()["items"]] == [("notes.md", chunks)]
        r = await client.post("/api/rag/documents", headers=teacher, **upload("notes.md", NOTES_V2))
        assert (r.status_code, r.json()["status"]) == (200, "replaced")


# --- 3. search --------------------------------------------------------------------------------

async def test_search_finds_the_passage_that_answers_a_question(fake, start_server):
    address = await start_server(make_settings(fake, load_sample_course=True))
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:  # dev guest
        hits = await search(client, FRACTION_QUESTION, course="sample", k=3)
        assert 1 <= len(hits) <= 3
        for h in hits:
            assert set(h) == {"chunk_id", "course", "document", "heading", "text", "score",
                              "fts_rank", "vector_rank"}
            assert CHUNK_ID.match(h["chunk_id"]) and h["course"] == "sample"
            assert h["score"] > 0 and (h["fts_rank"] or h["vector_rank"])
        top = hits[0]
        assert top["document"] == "algebra.md"
        assert "Dividing Fractions" in top["heading"]
        assert "flip the second fraction" in top["text"]
        assert top["fts_rank"] is not None and top["vector_rank"] is not None  # both agreed
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

        assert len(await search(client, FRACTION_QUESTION, course="sample", k=1)) == 1
        assert len(await search(client, "cells", course="sample", k=7)) == 7
        # a course with nothing in it is no error, just no passages
        r = await client.post("/api/rag/search", json={"query": FRACTION_QUESTION,
                                                       "course": "no-such-course"})
        assert (r.status_code, r.json()) == (200, {"items": []})

        for bad in ({"query": ""}, {"query": "   "}, {}, {"query": 3},
                    {"query": "fractions", "k": 0}, {"query": "fractions", "k": 51},
                    {"query": "fractions", "k": "3"}):
            r = await client.post("/api/rag/search", json=bad)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request"), bad
        r = await client.post("/api/rag/search", content=b"not json")
        assert r.status_code == 400


# --- 4. a voice turn grounded in the course --------------------------------------------------

async def test_a_spoken_question_is_answered_from_the_course_with_citations_first(
        fake, start_server):
    address = await start_server(make_settings(fake, load_sample_course=True))
    fake.behaviour.transcripts = ["How does photosynthesis work?"]
    async with websockets.connect(f"ws://{address}/api/voice?course=sample") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_photosynthesis.wav"), 16000)
        metrics = await conv.until("tutor.response.metrics")

    rid = metrics["response_id"]
    mine = [(i, e) for i, e in enumerate(conv.events) if e.get("response_id") == rid
            or e.get("response", {}).get("id") == rid]
    kinds = [e["type"] for _, e in mine]
    created, cited = kinds.index("response.created"), kinds.index("tutor.citations")
    first_delta = kinds.index("response.output_text.delta")
    assert created < cited < first_delta, kinds
    citations = mine[cited][1]["citations"]
    assert citations and all(c["course"] == "sample" for c in citations)
    for c in citations:
        check_citation(c)
    assert citations[0]["document"] == "biology.md"
    assert any(c["heading"].endswith("> Photosynthesis") for c in citations)

    # the model was given exactly those passages, by id, with the instructions to cite them
    [chat] = fake.chats
    system = chat["messages"][0]["content"]
    assert GROUNDING in system and "[c12]" in system
    for c in citations:
        assert f"[{c['chunk_id']}]" in system
    assert chat["messages"][-1] == {"role": "user", "content": "How does photosynthesis work?"}
    assert metrics["retrieval_ms"] > 0


# --- 5. a typed question over /api/ai/chat ---------------------------------------------------

async def test_a_typed_question_gets_citations_before_the_answer(fake, start_server):
    address = await start_server(make_settings(fake, load_sample_course=True))
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        events = await ask(client, FRACTION_QUESTION, course="sample")
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "citations" and kinds[-1] == "done" and "delta" in kinds
    citations = events[0][1]["citations"]
    assert citations
    for c in citations:
        check_citation(c)
    assert citations[0]["document"] == "algebra.md"
    assert "Dividing Fractions" in citations[0]["heading"]
    system = system_prompt(fake)
    assert GROUNDING in system
    assert all(f"[{c['chunk_id']}]" in system for c in citations)

    # when the embedding provider fails, the answer is still grounded, by words alone (a new
    # question is embedded just after its turn; that is the request that fails)
    fake.behaviour.embedding_failures = ["500"]
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        events = await ask(client, "What does the enzyme rubisco do in the Calvin cycle?",
                           course="sample")
    for _ in range(100):
        if not fake.behaviour.embedding_failures:
            break
        await asyncio.sleep(0.02)
    assert fake.behaviour.embedding_failures == []  # the failure was met
    assert events[-1][0] == "done"
    [cited] = [data["citations"] for kind, data in events if kind == "citations"]
    assert any(c["heading"].endswith("> The Calvin Cycle") for c in cited)


# --- 6. a student's memory, theirs alone ------------------------------------------------------

async def test_a_student_is_reminded_of_their_own_earlier_turns_and_nobody_else_is(
        fake, jwks, start_server):
    base, app = await signed_in_server(fake, jwks, start_server)
    async with httpx.AsyncClient(base_url=base) as client:
        alice, alice_id = await user(client, app, jwks, "alice@example.com")
        bob, bob_id = await user(client, app, jwks, "bob@example.com")
        await ask(client, "Remember my cat is named Pixel, what is osmosis?", alice)
        await ask(client, "My cat is named Whiskers and he sleeps all day.", bob)
        assert await app.state.services.writer.flush(5)

        # a new chat: Alice's earlier question comes back to her
        await ask(client, "What is my cat called?", alice)
        system = system_prompt(fake)
        assert "Remember my cat is named Pixel, what is osmosis?" in system
        assert "Whiskers" not in system

        # Bob asks the very same thing: he gets his own turn back, never Alice's
        await ask(client, "What is my cat called?", bob)
        system = system_prompt(fake)
        assert "Whiskers" in system
        assert "Pixel" not in system

    # ... and in a voice session too (a typed turn over the socket)
    async with websockets.connect(f"{base.replace('http', 'ws')}/api/voice",
                                  additional_headers=alice) as ws:
        conv = Conversation(ws)
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What was my cat's name again?"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        await conv.until("response.done")
    system = system_prompt(fake)
    assert "Remember my cat is named Pixel" in system and "Whiskers" not in system

    retriever = app.state.services.retriever
    assert await retriever.memory("Pixel", user_id=bob_id, k=5) == []
    assert not any("Pixel" in m.transcript + m.answer  # his own cat turns only
                   for m in await retriever.memory("cat Pixel", user_id=bob_id, k=5))
    assert [m.transcript for m in await retriever.memory("Pixel", user_id=alice_id, k=5)] == [
        "Remember my cat is named Pixel, what is osmosis?"]


# --- 7. no course content at all --------------------------------------------------------------

async def test_without_course_content_the_question_is_still_answered(fake, start_server):
    address = await start_server(make_settings(fake))  # no sample course, nothing uploaded
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        events = await ask(client, "What is osmosis?")
    assert events[0] == ("citations", {"citations": []})
    assert [kind for kind, _ in events[1:]] == ["delta"] * (len(events) - 2) + ["done"]
    assert events[-1][1]["text"]
    system = system_prompt(fake)
    assert NO_MATERIAL in system and "does not seem to cover it" in system
    assert GROUNDING not in system
