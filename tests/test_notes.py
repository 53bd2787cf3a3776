"""Students' notes end to end: the real app under uvicorn (migrated at startup) on SQLite and on
PostgreSQL, Supabase tokens from a loopback JWKS, the loopback fake provider. Notes are written,
listed, searched, paged, edited and deleted over REST, by their owner only; a typed or spoken turn
is saved as a note in one call; the tutor recalls a note when asked about it (the fake provider
records the prompt); notes stay out of the turn listings, class views and weekly summaries, and
are in the export."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import select

from notify.summary import queue_weekly_summaries
from dialogue.prompts import NOTES
from store import queries
from store.models import EmailNotification, Interaction, now
from study.notes import MAX_TEXT_CHARS, MAX_TITLE_CHARS
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update, sse_events
from tests.storage_fixtures import blank_db_url  # noqa: F401  (fixture: sqlite, postgresql)

FRACTIONS_NOTE = "To divide by a fraction, flip the second one and multiply: 3/4 ÷ 1/2 = 3/2."


class Api:
    """One signed-in student (or teacher) talking to the server."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], user_id: str) -> None:
        self.client, self.headers, self.id = client, headers, user_id

    async def post(self, body: Any, **kw: Any) -> httpx.Response:
        if isinstance(body, (bytes, str)):
            return await self.client.post("/api/notes", content=body, headers={
                **self.headers, "content-type": "application/json"}, **kw)
        return await self.client.post("/api/notes", json=body, headers=self.headers, **kw)

    async def note(self, **body: Any) -> dict[str, Any]:
        r = await self.post(body)
        assert r.status_code == 201, r.text
        assert r.headers["location"] == f"/api/notes/{r.json()['id']}"
        return r.json()

    async def get(self, path: str = "/api/notes", **params: Any) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers)

    async def patch(self, note_id: int, body: Any) -> httpx.Response:
        return await self.client.patch(f"/api/notes/{note_id}", json=body, headers=self.headers)

    async def delete(self, note_id: int) -> httpx.Response:
        return await self.client.delete(f"/api/notes/{note_id}", headers=self.headers)

    async def listed(self, **params: Any) -> list[dict[str, Any]]:
        r = await self.get(**params)
        assert r.status_code == 200, r.text
        return r.json()["items"]

    async def ask(self, message: str, **body: Any) -> list[tuple[str, Any]]:
        r = await self.client.post("/api/ai/chat", json={"message": message, **body},
                                   headers=self.headers)
        assert r.status_code == 200, r.text
        return sse_events(r.text)


async def start(fake, jwks, start_server, database_url: str, **overrides: Any):  # type: ignore[no-untyped-def]
    """A server with Supabase sign-in (no guest), on the given database; its base URL and app."""
    address = await start_server(make_settings(fake, supabase_url=jwks.project_url,
                                               database_url=database_url, **overrides))
    return f"http://{address}", start_server.apps[-1]


async def sign_in(client: httpx.AsyncClient, jwks, email: str) -> Api:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200, me.text
    return Api(client, headers, me.json()["id"])


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["error"]["code"]


def system_prompt(fake) -> str:  # type: ignore[no-untyped-def]
    messages = fake.chats[-1]["messages"]
    assert messages[0]["role"] == "system"
    return messages[0]["content"]


# --- 1. writing, reading, editing, deleting: the owner only -----------------------------------

async def test_a_student_writes_reads_edits_and_deletes_notes_and_nobody_else_can(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        ada, bob = await sign_in(client, jwks, "ada@example.com"), await sign_in(
            client, jwks, "bob@example.com")

        note = await ada.note(text="  Mitochondria make ATP.\n", title=" Cell   biology ",
                              course="biology")
        assert note["text"] == "Mitochondria make ATP."  # trimmed
        assert note["title"] == "Cell biology"  # whitespace collapsed
        assert (note["course"], note["turn_id"], note["updated_at"]) == ("biology", None, None)
        assert note["session_id"].startswith("note_") and note["created_at"]
        plain = await ada.note(text="No title, no course.")
        assert (plain["title"], plain["course"]) == (None, None)

        r = await ada.get(f"/api/notes/{note['id']}")
        assert r.status_code == 200 and r.json() == note
        assert [n["id"] for n in await ada.listed()] == [plain["id"], note["id"]]  # newest first

        r = await ada.patch(note["id"], {"text": "Mitochondria make ATP by respiration.",
                                         "title": None})
        assert r.status_code == 200, r.text
        edited = r.json()
        assert edited["text"] == "Mitochondria make ATP by respiration."
        assert edited["title"] is None and edited["course"] == "biology"  # untouched
        assert edited["updated_at"] and edited["created_at"] == note["created_at"]
        assert (await ada.get(f"/api/notes/{note['id']}")).json() == edited
        r = await ada.patch(note["id"], {"course": None, "title": "Cells"})
        assert (r.json()["course"], r.json()["title"], r.json()["text"]) == (
            None, "Cells", edited["text"])

        # another student: the same 404 as for a note that does not exist, and nothing changes
        for r in (await bob.get(f"/api/notes/{note['id']}"),
                  await bob.patch(note["id"], {"text": "mine now"}),
                  await bob.delete(note["id"]),
                  await ada.get("/api/notes/999999999"),
                  await ada.get(f"/api/notes/{2**70}")):
            assert error(r, 404) == "note_not_found"
        assert await bob.listed() == []
        assert (await ada.get(f"/api/notes/{note['id']}")).json()["text"] == edited["text"]
        # and a turn is not a note
        await ada.ask("What is a prime number?")
        assert await app.state.services.writer.flush(5)  # the turn is written off the request's path
        turn_id = (await ada.get("/api/me/interactions")).json()["items"][0]["id"]
        assert error(await ada.get(f"/api/notes/{turn_id}"), 404) == "note_not_found"
        assert error(await ada.delete(turn_id), 404) == "note_not_found"

        # nobody signed in
        assert (await client.get("/api/notes")).status_code == 401
        assert (await client.post("/api/notes", json={"text": "x"})).status_code == 401
        assert (await client.get(f"/api/notes/{note['id']}")).status_code == 401
        assert (await client.delete(f"/api/notes/{note['id']}")).status_code == 401

        assert (await ada.delete(note["id"])).status_code == 204
        assert error(await ada.get(f"/api/notes/{note['id']}"), 404) == "note_not_found"
        assert error(await ada.delete(note["id"]), 404) == "note_not_found"
        assert [n["id"] for n in await ada.listed()] == [plain["id"]]


# --- 2. refusals ------------------------------------------------------------------------------

async def test_bad_requests_get_clear_codes_and_store_nothing(fake, jwks, start_server,
                                                              blank_db_url):  # noqa: F811
    base, _ = await start(fake, jwks, start_server, blank_db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        ada = await sign_in(client, jwks, "ada@example.com")
        refusals: list[tuple[Any, int, str]] = [
            (b"not json", 400, "invalid_json"),
            (b"", 400, "invalid_json"),
            ([{"text": "a list"}], 400, "invalid_json"),
            ({}, 400, "text_required"),
            ({"text": "   \n "}, 400, "text_required"),
            ({"title": "only a title"}, 400, "text_required"),
            ({"text": 42}, 400, "invalid_field"),
            ({"text": None}, 400, "invalid_field"),
            ({"text": "x" * (MAX_TEXT_CHARS + 1)}, 400, "text_too_long"),
            ({"text": "ok", "title": "t" * (MAX_TITLE_CHARS + 1)}, 400, "title_too_long"),
            ({"text": "ok", "title": 7}, 400, "invalid_field"),
            ({"text": "ok", "course": "c" * 201}, 400, "invalid_field"),
            ({"text": "ok", "course": ["algebra"]}, 400, "invalid_field"),
            ({"text": "ok", "turn_id": "seven"}, 400, "invalid_field"),
            ({"text": "ok", "turn_id": True}, 400, "invalid_field"),
            ({"text": "ok", "turn_id": -1}, 400, "invalid_field"),
            ({"text": "ok", "turn_id": 2**63}, 400, "invalid_field"),
            ({"from_turn": 1.5}, 400, "invalid_field"),
            ({"from_turn": 1, "turn_id": 1}, 400, "conflicting_fields"),
            ({"text": "ok", "colour": "red"}, 400, "unknown_field"),
            ({"text": "ok", "turn_id": 123456}, 404, "turn_not_found"),
            ({"from_turn": 123456}, 404, "turn_not_found"),
            ({"from_turn": "resp_nope"}, 404, "turn_not_found"),
            (json.dumps({"text": "x" * 200_000}).encode(), 413, "body_too_large"),
        ]
        for body, status, code in refusals:
            assert error(await ada.post(body), status) == code, body if len(str(body)) < 99 else code
        assert await ada.listed() == []

        # exactly at the limits is fine
        big = await ada.note(text="y" * MAX_TEXT_CHARS, title="t" * MAX_TITLE_CHARS)
        assert len(big["text"]) == MAX_TEXT_CHARS
        for body, code in [({}, "nothing_to_update"), ({"text": ""}, "text_required"),
                           ({"text": None}, "invalid_field"),
                           ({"text": "z" * (MAX_TEXT_CHARS + 1)}, "text_too_long"),
                           ({"turn_id": 1}, "unknown_field"), ({"from_turn": 1}, "unknown_field")]:
            assert error(await ada.patch(big["id"], body), 400) == code, body
        r = await client.patch(f"/api/notes/{big['id']}", content=b"[1]", headers=ada.headers)
        assert error(r, 400) == "invalid_json"
        assert (await ada.get(f"/api/notes/{big['id']}")).json() == big  # unchanged

        assert error(await ada.get(q="x" * 1001), 400) == "query_too_long"
        assert error(await ada.get(limit="ten"), 400) == "invalid_request"
        assert error(await ada.get(before="x"), 400) == "invalid_request"
        assert (await ada.get("/api/notes/abc")).status_code == 404


# --- 3. search and paging ---------------------------------------------------------------------

async def test_notes_are_searched_by_their_words_filtered_by_course_and_paged(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        ada, bob = await sign_in(client, jwks, "ada@example.com"), await sign_in(
            client, jwks, "bob@example.com")
        fractions = await ada.note(text=FRACTIONS_NOTE, course="algebra")
        titled = await ada.note(title="Fractions vocabulary", text="numerator over denominator",
                                course="algebra")
        cells = await ada.note(text="Plant cells have walls and chloroplasts.", course="biology")
        await bob.note(text="My own fraction tricks.", course="algebra")
        # a turn that mentions fractions is not a note, and is not listed
        await ada.ask("How do I add fractions?", course="algebra")
        assert await app.state.services.writer.flush(5)  # written, so the search could find it

        ids = lambda items: [n["id"] for n in items]  # noqa: E731
        # stemmed ("fraction" finds "fractions"), over title and text, the student's own only
        assert ids(await ada.listed(q="fraction")) == [titled["id"], fractions["id"]]
        assert ids(await ada.listed(q="What did I write about FRACTIONS?!")) == [
            titled["id"], fractions["id"]]
        assert ids(await ada.listed(q="vocabulary")) == [titled["id"]]  # the title alone
        assert ids(await ada.listed(q="chloroplast walls")) == [cells["id"]]
        assert ids(await ada.listed(q="fractions OR cells")) == ids(await ada.listed())
        assert await ada.listed(q="the of and") == []  # stop words only: nothing to look for
        assert await ada.listed(q='"unbalanced (quotes* ^NEAR') == []
        assert await ada.listed(q="photosynthesis") == []
        assert [n["text"] for n in await bob.listed(q="fraction")] == ["My own fraction tricks."]

        assert ids(await ada.listed(course="biology")) == [cells["id"]]
        assert ids(await ada.listed(course="algebra", q="numerator")) == [titled["id"]]
        assert await ada.listed(course="history") == []

        # an edit is searchable at once; the old words are gone
        assert (await ada.patch(cells["id"], {"text": "Mitochondria"})).status_code == 200
        assert await ada.listed(q="chloroplasts") == []
        assert ids(await ada.listed(q="mitochondria")) == [cells["id"]]

        # keyset paging, with and without a query
        more = [await ada.note(text=f"fraction fact {i}", course="algebra") for i in range(5)]
        every = ids(await ada.listed(limit=200))
        assert every == sorted(every, reverse=True) and len(every) == 8
        for params, expected in [({}, every),
                                 ({"q": "fraction"}, ids(reversed(more)) + [titled["id"],
                                                                            fractions["id"]])]:
            pages, before = [], None
            while True:
                r = await ada.get(limit=3, **params, **({"before": before} if before else {}))
                body = r.json()
                pages.append(ids(body["items"]))
                if body["next_before"] is None:
                    break
                assert body["next_before"] == body["items"][-1]["id"]
                before = body["next_before"]
            assert [i for page in pages for i in page] == expected
            assert all(len(p) <= 3 for p in pages)


# --- 4. a turn saved as a note in one call ----------------------------------------------------

async def test_a_typed_or_spoken_turn_is_saved_as_a_note_in_one_call(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    fake.behaviour.reply = "Flip the second fraction and multiply."
    async with httpx.AsyncClient(base_url=base) as client:
        ada, bob = await sign_in(client, jwks, "ada@example.com"), await sign_in(
            client, jwks, "bob@example.com")
        events = await ada.ask("How do I divide fractions?", course="algebra")
        assert events[-1][0] == "done"
        r = await ada.post({"from_turn": await _last_turn_id(ada, app)})
        assert r.status_code == 201, r.text
        saved = r.json()
        [turn] = (await ada.get("/api/me/interactions")).json()["items"]
        assert saved["turn_id"] == turn["id"] and turn["kind"] == "text"
        assert saved["text"] == ("Question: How do I divide fractions?\n"
                                 "Answer: Flip the second fraction and multiply.")
        assert saved["title"] == "How do I divide fractions?"
        assert saved["course"] == "algebra" and saved["session_id"] == turn["session_id"]

        # with the student's own words first, their own title and course; the id as a string
        r = await ada.post({"from_turn": str(turn["id"]), "text": "Keep for the test!",
                            "title": "Dividing", "course": "revision"})
        mine = r.json()
        assert mine["text"].startswith("Keep for the test!\n\nQuestion: How do I divide")
        assert (mine["title"], mine["course"], mine["turn_id"]) == ("Dividing", "revision",
                                                                    turn["id"])
        # text of one's own, linked to the turn
        linked = await ada.note(text="Ask about mixed numbers next time.", turn_id=turn["id"])
        assert (linked["turn_id"], linked["course"], linked["session_id"]) == (
            turn["id"], "algebra", turn["session_id"])

        # someone else's turn, or a note, cannot be saved
        assert error(await bob.post({"from_turn": turn["id"]}), 404) == "turn_not_found"
        assert error(await bob.post({"text": "x", "turn_id": turn["id"]}), 404) == "turn_not_found"
        assert error(await ada.post({"from_turn": saved["id"]}), 404) == "turn_not_found"
        # the composed text counts against the limit
        r = await ada.post({"from_turn": turn["id"], "text": "w" * MAX_TEXT_CHARS})
        assert error(r, 400) == "text_too_long"

    # a spoken turn, by the response id the socket announced, saved at once (the turn may still
    # be in the background writer's queue: the route waits for it)
    fake.behaviour.transcripts = ["How do I divide fractions?"]
    fake.behaviour.reply = "You multiply by the reciprocal."
    async with websockets.connect(f"{base.replace('http', 'ws')}/api/voice?course=algebra",
                                  additional_headers=ada.headers) as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_fractions.wav"), 16000)  # waits for the answer
        [done] = conv.of("response.done") or [await conv.until("response.done")]
    response_id = done["response"]["id"]
    async with httpx.AsyncClient(base_url=base) as client:
        ada.client = client
        r = await ada.post({"from_turn": response_id})
        assert r.status_code == 201, r.text
        spoken = r.json()
        assert spoken["text"] == ("Question: How do I divide fractions?\n"
                                  "Answer: You multiply by the reciprocal.")
        async with app.state.services.db.session() as s:
            turn_row = await s.get(Interaction, spoken["turn_id"])
        assert (turn_row.kind, turn_row.response_id, turn_row.user_id) == (
            "voice", response_id, ada.id)
        assert spoken["session_id"] == turn_row.session_id and spoken["course"] == "algebra"


async def _last_turn_id(api: Api, app) -> int:  # type: ignore[no-untyped-def]
    """The newest turn's id, read from the database once the writer has stored it."""
    assert await app.state.services.writer.flush(5)
    async with app.state.services.db.session() as s:
        return (await s.execute(select(Interaction.id).where(Interaction.user_id == api.id)
                                .order_by(Interaction.id.desc()).limit(1))).scalar_one()


# --- 5. the tutor recalls notes; they stay where they belong -----------------------------------

async def test_the_tutor_recalls_a_students_note_and_only_theirs(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        ada, bob = await sign_in(client, jwks, "ada@example.com"), await sign_in(
            client, jwks, "bob@example.com")
        note = await ada.note(text=FRACTIONS_NOTE, title="Dividing fractions", course="algebra")
        await ada.note(text="Photosynthesis happens in chloroplasts.", course="biology")

        await ada.ask("What did I write about fractions?", course="algebra")
        system = system_prompt(fake)
        assert NOTES in system
        notes_part = system[system.index(NOTES):]
        assert f"- Dividing fractions: {FRACTIONS_NOTE}" in notes_part
        assert "chloroplasts" not in system
        assert "Tutor: " + FRACTIONS_NOTE not in system  # a note is not an earlier answer

        # Bob asks the same: Ada's note never reaches his prompt
        await bob.ask("What did I write about fractions?", course="algebra")
        assert FRACTIONS_NOTE not in system_prompt(fake) and NOTES not in system_prompt(fake)

        # an edit is what the tutor recalls next; a deleted note is forgotten
        r = await ada.patch(note["id"], {"text": "Fractions: keep, change, flip (KCF)."})
        assert r.status_code == 200
        await ada.ask("Remind me what I noted on fractions", course="algebra")
        assert "keep, change, flip (KCF)" in system_prompt(fake)
        assert FRACTIONS_NOTE not in system_prompt(fake)
        assert (await ada.delete(note["id"])).status_code == 204
        await ada.ask("What was KCF in my notes?")
        assert "keep, change, flip" not in system_prompt(fake)

        # a long note goes into the prompt shortened
        await ada.note(text="Zebra facts. " + "stripes " * 2000)
        await ada.ask("zebra?")
        zebra = next(line for line in system_prompt(fake).splitlines()
                     if line.startswith("- Zebra facts."))
        assert len(zebra) < 1600 and zebra.endswith("…")


async def test_notes_stay_out_of_turn_listings_class_views_and_summaries_but_are_exported(
        fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    async with httpx.AsyncClient(base_url=base) as client:
        ada = await sign_in(client, jwks, "ada@example.com")
        teacher = await sign_in(client, jwks, "teacher@example.com")
        async with app.state.services.db.session() as s, s.begin():
            await queries.set_role(s, teacher.id, "teacher")
        room = (await client.post("/api/classes", json={"name": "7B"},
                                  headers=teacher.headers)).json()
        r = await client.post("/api/classes/join", json={"code": room["join_code"]},
                              headers=ada.headers)
        assert r.status_code == 201

        await ada.ask("How do I divide fractions?")
        note = await ada.note(text="Private: I find fractions hard.", title="Feelings")
        await _last_turn_id(ada, app)

        mine = (await ada.get("/api/me/interactions")).json()["items"]
        assert [t["transcript"] for t in mine] == ["How do I divide fractions?"]
        seen = (await client.get(f"/api/classes/{room['id']}/interactions",
                                 headers=teacher.headers)).json()["items"]
        assert [t["transcript"] for t in seen] == ["How do I divide fractions?"]
        assert error(await teacher.get(f"/api/notes/{note['id']}"), 404) == "note_not_found"

        export = (await ada.get("/api/me/export")).json()
        assert [t["transcript"] for t in export["interactions"]] == ["How do I divide fractions?"]
        assert export["notes"] == [note]

        # the weekly summary counts questions, sessions and topics of turns only
        queued = await queue_weekly_summaries(app.state.services.db, now() - timedelta(days=1))
        assert queued == 1
        async with app.state.services.db.session() as s:
            [mail] = (await s.execute(select(EmailNotification).where(
                EmailNotification.template == "weekly_summary"))).scalars()
        assert (mail.payload["questions"], mail.payload["sessions"]) == (1, 1)
        assert "hard" not in mail.payload["topics"] and "feelings" not in mail.payload["topics"]


# --- 6. plan limits -----------------------------------------------------------------------------

async def test_note_requests_count_against_the_plans_request_limit(
        fake, jwks, start_server, tmp_path):
    tiers = tmp_path / "tiers.json"
    tiers.write_text(json.dumps({"tiers": {"free": {
                                                    "requests_per_minute": {"default": 4}}},
                                 "default": "free"}))
    base, _ = await start(fake, jwks, start_server,
                          f"sqlite+aiosqlite:///{tmp_path}/limits.db", tiers_file=str(tiers))
    async with httpx.AsyncClient(base_url=base) as client:
        ada = await sign_in(client, jwks, "ada@example.com")  # /api/auth/me: another group
        statuses = [(await ada.post({"text": f"note {i}"})).status_code for i in range(3)]
        statuses += [(await ada.get()).status_code, (await ada.get()).status_code]
        assert statuses == [201, 201, 201, 200, 429]
        r = await ada.post({"text": "one more"})
        assert error(r, 429) == "rate_limited" and r.headers["retry-after"]
