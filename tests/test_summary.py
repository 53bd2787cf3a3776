"""`POST /api/ai/summary` end to end: the real app under uvicorn with Supabase sign-in (tokens from
a loopback JWKS), the sample course, sessions recorded in the database as the voice loop records
them, and the real `openai` SDK's structured output against the loopback fake provider. A student
gets their own session summarised with its citations; another student's session, or an unknown
one, is a 404 that costs nothing."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.fake_openai import Refusal, prompt_passage_ids, strict_schema_problem

CITATION_KEYS = {"chunk_id", "course", "document", "heading", "score", "snippet"}
TURNS = [("How do I divide two fractions?", "Flip the second one and multiply [c3]."),
         ("So 1/2 divided by 1/4 is 2?", "Yes: 1/2 times 4 is 2."),
         ("What do mitochondria do?", "They release energy from food in cellular respiration.")]


async def signed_in(fake, jwks, start_server, **overrides: Any) -> tuple[str, Any]:
    address = await start_server(make_settings(fake, supabase_url=jwks.project_url,
                                               load_sample_course=True, **overrides))
    return f"http://{address}", start_server.apps[-1]


async def student(client: httpx.AsyncClient, jwks, email: str) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200, me.text
    return headers, me.json()["id"]


async def record(app, user_id: str, session_id: str, turns: list[tuple[str, str]],  # type: ignore[no-untyped-def]
                 course: str | None = "sample") -> None:
    """Turns written as the voice loop writes them (the background writer)."""
    for transcript, answer in turns:
        app.state.services.writer.submit({"session_id": session_id, "user_id": user_id, "kind": "voice",
                                 "course": course, "transcript": transcript, "answer": answer,
                                 "status": "completed", "cancelled": False})
    assert await app.state.services.writer.flush(5)


def structured_requests(fake) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    return [c for c in fake.chats if (c.get("response_format") or {}).get("type") == "json_schema"]


def summary_of(body: dict[str, Any], *, sources: list[str] | None = None) -> dict[str, Any]:
    ids = prompt_passage_ids(body)
    return {"summary": "You worked on dividing fractions and met mitochondria.",
            "key_points": [
                {"point": "To divide by a fraction, multiply by its reciprocal.",
                 "sources": sources if sources is not None else ids[:1]},
                {"point": "Mitochondria release energy.", "sources": []}],
            "topics": ["Fractions", "fractions", "Cells"]}


async def test_a_student_gets_their_own_session_summarised(fake, jwks, start_server):
    base, app = await signed_in(fake, jwks, start_server)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ana, ana_id = await student(client, jwks, "ana@example.com")
        await record(app, ana_id, "sess_ana1", TURNS)
        await record(app, ana_id, "sess_ana0", [("What is a verb?", "A doing word.")], None)
        fake.behaviour.structured_reply = summary_of
        r = await client.post("/api/ai/summary", json={"session_id": "sess_ana1"}, headers=ana)
    assert r.status_code == 200, r.text
    result = r.json()
    shown = prompt_passage_ids(structured_requests(fake)[0])
    assert result | {"citations": None} == {
        "session_id": "sess_ana1", "course": "sample", "turns": 3, "truncated": False,
        "summary": "You worked on dividing fractions and met mitochondria.",
        "key_points": [{"point": "To divide by a fraction, multiply by its reciprocal.",
                        "sources": shown[:1]},
                       {"point": "Mitochondria release energy.", "sources": []}],
        "topics": ["Fractions", "Cells"], "citations": None, "model": "gpt-4o-mini"}
    assert [c["chunk_id"] for c in result["citations"]] == shown[:1]
    assert all(set(c) == CITATION_KEYS and c["course"] == "sample" for c in result["citations"])

    [sent] = structured_requests(fake)
    spec = sent["response_format"]["json_schema"]
    assert spec["name"] == "session_summary" and spec["strict"] is True
    assert strict_schema_problem(spec) is None and not sent.get("stream")
    system = sent["messages"][0]["content"]
    positions = [system.index(f"Student: {q}") for q, _ in TURNS]
    assert positions == sorted(positions)  # oldest first
    assert "What is a verb?" not in system  # only this session
    assert "[c3]" not in system  # the tutor's old passage mention is not offered as a passage
    assert "Dividing Fractions" in system or "Mitochondria" in system  # passages found for it


async def test_another_students_session_is_not_found_and_costs_nothing(fake, jwks, start_server,
                                                                       tmp_path):
    path = tmp_path / "tiers.json"
    path.write_text(json.dumps({"tiers": {"one": {"chat_messages_per_day": 1}},
                                "default": "one"}))
    base, app = await signed_in(fake, jwks, start_server, tiers_file=path)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ana, ana_id = await student(client, jwks, "ana@example.com")
        ben, _ = await student(client, jwks, "ben@example.com")
        await record(app, ana_id, "sess_ana1", TURNS)
        theirs = await client.post("/api/ai/summary", json={"session_id": "sess_ana1"},
                                   headers=ben)
        unknown = await client.post("/api/ai/summary", json={"session_id": "sess_nope"},
                                    headers=ben)
        anonymous = await client.post("/api/ai/summary", json={"session_id": "sess_ana1"})
        assert fake.chats == []
        # Ben's one typed question of the day is still there; then it is spent
        await record(app, (await client.get("/api/auth/me", headers=ben)).json()["id"],
                     "sess_ben1", TURNS[:1])
        own = await client.post("/api/ai/summary", json={"session_id": "sess_ben1"}, headers=ben)
        again = await client.post("/api/ai/summary", json={"session_id": "sess_ben1"},
                                  headers=ben)
    for r in (theirs, unknown):
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert theirs.json()["error"]["message"] == "you have no session 'sess_ana1'"
    assert anonymous.status_code == 401
    assert own.status_code == 200, own.text
    assert again.status_code == 402 and again.json()["error"]["code"] == "quota_exceeded"


async def test_summary_output_is_validated_and_retried_once(fake, start_server):
    base = f"http://{await start_server(make_settings(fake, load_sample_course=True))}"
    app = start_server.apps[-1]
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        guest = (await client.get("/api/auth/me")).json()["id"]
        await record(app, guest, "sess_g", TURNS)
        # made-up ids are dropped; an empty summary is sent back once
        fake.behaviour.structured = [
            lambda body: summary_of(body) | {"summary": "  "},
            lambda body: summary_of(body, sources=["c999999"])]
        ok = await client.post("/api/ai/summary", json={"session_id": "sess_g"})
        fake.behaviour.structured = ["nope", {"summary": "x", "key_points": [], "topics": []}]
        bad = await client.post("/api/ai/summary", json={"session_id": "sess_g"})
        fake.behaviour.structured = [Refusal("No.")]
        refused = await client.post("/api/ai/summary", json={"session_id": "sess_g"})
        fake.behaviour.chat_failures = ["500"]
        failed = await client.post("/api/ai/summary", json={"session_id": "sess_g"})
        bodies = [await client.post("/api/ai/summary", json=b)
                  for b in ({}, {"session_id": ""}, {"session_id": 5}, {"session": "sess_g"})]
    assert ok.status_code == 200, ok.text
    assert ok.json()["key_points"][0]["sources"] == [] and ok.json()["citations"] == []
    retry = structured_requests(fake)[1]["messages"][-1]["content"]
    assert "summary: String should have at least 1 character" in retry
    assert bad.status_code == 502 and bad.json()["error"]["code"] == "provider_invalid_output"
    assert "key_points: List should have at least 1 item" in bad.json()["error"]["message"]
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "provider_refused"
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "provider_error"
    assert [b.status_code for b in bodies] == [400] * 4
    assert {b.json()["error"]["code"] for b in bodies} == {"invalid_request"}


async def test_a_long_session_is_summarised_from_its_latest_turns(fake, start_server):
    base = f"http://{await start_server(make_settings(fake))}"  # no course: nothing to cite
    app = start_server.apps[-1]
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        guest = (await client.get("/api/auth/me")).json()["id"]
        await record(app, guest, "sess_long",
                     [(f"question number {i}", f"answer {i}") for i in range(65)], None)
        r = await client.post("/api/ai/summary", json={"session_id": "sess_long"})
    assert r.status_code == 200, r.text
    assert (r.json()["turns"], r.json()["truncated"], r.json()["citations"]) == (60, True, [])
    system = structured_requests(fake)[0]["messages"][0]["content"]
    assert "question number 4\n" not in system and "question number 5\n" in system
    assert "question number 64" in system and "earlier turns of this session are left out" in system
    assert 'leave every "sources" empty' in system


async def test_without_a_provider_it_says_what_to_configure(start_server):
    base = f"http://{await start_server(make_settings(None))}"
    async with httpx.AsyncClient(base_url=base) as client:
        r = await client.post("/api/ai/summary", json={"session_id": "sess_x"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "provider_not_configured"


async def test_notes_in_a_session_are_not_turns_of_it(fake, jwks, start_server):
    """A turn saved as a note takes the turn's session; the summary still counts and shows the
    turns only."""
    base, app = await signed_in(fake, jwks, start_server)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        ana, ana_id = await student(client, jwks, "ana@example.com")
        await record(app, ana_id, "sess_ana1", TURNS)
        app.state.services.writer.submit({"session_id": "sess_ana1", "user_id": ana_id, "kind": "note",
                                 "course": "sample", "transcript": "My note on fractions",
                                 "answer": "Flip and multiply.", "status": "completed",
                                 "cancelled": False})
        assert await app.state.services.writer.flush(5)
        fake.behaviour.structured_reply = summary_of
        r = await client.post("/api/ai/summary", json={"session_id": "sess_ana1"}, headers=ana)
    assert r.status_code == 200, r.text
    assert r.json()["turns"] == len(TURNS)
    prompt = json.dumps(structured_requests(fake)[0]["messages"])
    assert "My note on fractions" not in prompt
