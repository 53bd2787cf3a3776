"""Progress per student and class reports: quiz answers checked server-side against the stored
quiz (`POST /api/ai/quiz/{id}/answers`), mastery per course section (`study.mastery`) and
`weakest` for the tutor's prompt, and `GET /api/classes/{id}/report` as JSON and CSV for the
class's teacher and admins only, counting only what each student did after joining. End to end
on SQLite and PostgreSQL (the real app under uvicorn, Supabase tokens from a loopback JWKS, the
loopback fake provider's structured output); the model, the marking and the CSV by plain calls."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dialogue.prompts import WEAK_NOTE
from store import queries
from store.models import (Content, FlaggedTurn, Interaction, Mastery, QuizAnswer, UsageEntry,
                          now)
from study import mastery
from study.answers import AnswerIn, AnswerProblem, mark
from study.mastery import MASTERED, Progress, ranked, replay, section_of, update
from study.reports import StudentActivity, cited_chunks, report_csv, report_json
from study.tutor import WEAK_SECTIONS_IN_PROMPT
from tests.conftest import make_settings
from tests.storage_fixtures import blank_db_url  # noqa: F401  (fixture: sqlite, postgresql)
from tests.test_quiz import quiz_for

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
FRACTIONS = "Algebra Basics > Dividing Fractions"


# --- the model, by plain calls ---------------------------------------------------------------

def test_a_section_is_the_first_two_headings_or_the_document():
    assert section_of("algebra.md", "Algebra Basics > Solving Linear Equations > Worked Example") \
        == "Algebra Basics > Solving Linear Equations"
    assert section_of("algebra.md", "Algebra Basics") == "Algebra Basics"
    assert section_of("glossary.txt", "") == "glossary.txt"


def test_mastery_is_a_moving_average_with_growing_review_intervals():
    p = Progress()
    for day in range(3):
        p = update(p, True, T0 + timedelta(days=day))
    assert round(p.score, 3) == 0.657 and (p.answers, p.correct) == (3, 3)
    assert p.interval_days == 6.25 and p.due_at == T0 + timedelta(days=2, hours=6 * 25)
    wrong = update(p, False, T0 + timedelta(days=3))
    assert round(wrong.score, 3) == 0.46 and wrong.interval_days == 0
    assert wrong.due_at == T0 + timedelta(days=3)  # due again at once
    for _ in range(10):
        p = update(p, True, T0)
    assert p.score > MASTERED and p.interval_days == 60  # capped


def test_weakest_first_then_due_mastered_sections_then_nothing_else():
    answers = ([(["A"], True, T0)] * 12 + [(["B"], False, T0), (["B", "C"], True, T0),
                                            (["D"], None, T0)])
    standing = replay(answers)
    assert set(standing) == {"A", "B", "C"}  # an unmarked answer changes nothing
    assert ranked(standing, T0) == ["B", "C"]  # A is mastered and not due
    assert ranked(standing, T0 + timedelta(days=61)) == ["B", "C", "A"]  # A due for review


def test_answers_are_marked_against_the_stored_questions():
    stored = [{"type": "mcq", "choices": ["1/8", "2", "4"], "answer_index": 1, "answer": "2",
               "sections": [FRACTIONS]},
              {"type": "open", "answer": "Multiply by the reciprocal.", "sections": []}]
    assert mark(stored, AnswerIn(question=0, choice=1)).correct is True
    assert mark(stored, AnswerIn(question=0, choice=2)).correct is False
    assert mark(stored, AnswerIn(question=0, choice=2)).sections == [FRACTIONS]
    open_ = mark(stored, AnswerIn(question=1, text="flip it", correct=True))
    assert (open_.correct, open_.self_assessed) == (True, True)
    unmarked = mark(stored, AnswerIn(question=1, text="no idea"))
    assert (unmarked.correct, unmarked.self_assessed) == (None, False)
    for bad in (AnswerIn(question=0, choice=1, correct=True), AnswerIn(question=0, choice=3),
                AnswerIn(question=0), AnswerIn(question=1, choice=0), AnswerIn(question=2)):
        with pytest.raises(AnswerProblem):
            mark(stored, bad)


def test_citations_and_a_csv_a_spreadsheet_cannot_run():
    assert cited_chunks("Flip it [c12], then multiply [c3][c12].") == [12, 3]
    a = StudentActivity("u1", "=HYPERLINK(\"x\")", "a@example.com", T0, voice_ms=90_000,
                        voice_questions=2, text_questions=1, flagged=1)
    a.sections.update({FRACTIONS: 2})
    a.mastery = replay([([FRACTIONS], False, T0)])
    rows = list(csv.reader(io.StringIO(report_csv(report_json({"id": "c"}, [a], T0)))))
    assert rows[1] == ["u1", "'=HYPERLINK(\"x\")", "a@example.com", T0.isoformat(), "1.5", "3",
                       "2", "1", f"{FRACTIONS} (2)", "0.0", f"{FRACTIONS} 0.0", "1"]


# --- end to end ------------------------------------------------------------------------------

async def start(fake, jwks, start_server, database_url: str):  # type: ignore[no-untyped-def]
    address = await start_server(make_settings(fake, supabase_url=jwks.project_url,
                                               database_url=database_url,
                                               load_sample_course=True))
    return f"http://{address}", start_server.apps[-1]


async def sign_in(client: httpx.AsyncClient, jwks, email: str) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
    me = await client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200, me.text
    return headers, me.json()["id"]


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return r.json()["error"]["code"]


async def make_quiz(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    r = await client.post("/api/ai/quiz", json={"topic": "dividing fractions", "questions": 3,
                                                "course": "sample"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["quiz"]


async def test_answers_are_checked_and_move_mastery(fake, jwks, start_server, blank_db_url):  # noqa: F811
    base, app = await start(fake, jwks, start_server, blank_db_url)
    fake.behaviour.structured_reply = quiz_for  # mcq, open, mcq; each citing a shown passage
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        student, student_id = await sign_in(client, jwks, "ada@example.com")
        other, _ = await sign_in(client, jwks, "bob@example.com")
        quiz = await make_quiz(client, student)
        url = f"/api/ai/quiz/{quiz['id']}/answers"

        r = await client.post(url, json={"answers": [
            {"question": 0, "choice": 1}, {"question": 1, "text": "Flip and multiply",
                                           "correct": True}]}, headers=student)
        assert r.status_code == 201, r.text
        result = r.json()
        first, second = result["answers"]
        assert (first["correct"], first["self_assessed"], first["answer_index"]) == (True, False, 1)
        assert (second["correct"], second["self_assessed"]) == (True, True)
        assert first["sections"] and first["sources"] == quiz["questions"][0]["sources"]
        assert result["score"] == {"questions": 3, "answered": 2, "correct": 2}
        touched = {m["section"] for m in result["mastery"]}
        assert touched == set(first["sections"]) | set(second["sections"])
        assert all(m["score"] > 0 for m in result["mastery"])

        r = await client.post(url, json={"answers": [{"question": 2, "choice": 0}]},
                              headers=student)
        assert r.status_code == 201 and r.json()["answers"][0]["correct"] is False
        assert r.json()["score"] == {"questions": 3, "answered": 3, "correct": 2}

        # each question once; only the student's own quiz; answers that fit their questions
        assert error(await client.post(url, json={"answers": [{"question": 0, "choice": 1}]},
                                       headers=student), 409) == "conflict"
        assert error(await client.post(url, json={"answers": [{"question": 0, "choice": 1}]},
                                       headers=other), 404) == "not_found"
        assert error(await client.post("/api/ai/quiz/nope/answers", json={"answers": [
            {"question": 0, "choice": 1}]}, headers=student), 404) == "not_found"
        quiz2 = await make_quiz(client, student)
        url2 = f"/api/ai/quiz/{quiz2['id']}/answers"
        for body in ({"answers": [{"question": 0, "choice": 7}]},
                     {"answers": [{"question": 0, "choice": 1, "correct": True}]},
                     {"answers": [{"question": 5, "choice": 1}]},
                     {"answers": [{"question": 0, "choice": 1}, {"question": 0, "choice": 2}]},
                     {"answers": []}, {"answers": [{"question": 0, "choice": "1"}]}):
            assert error(await client.post(url2, json=body, headers=student), 400) \
                == "invalid_request", body
        r = await client.post(url2, json={"answers": [{"question": 1, "text": "no idea"}]},
                              headers=student)  # unmarked: recorded, no mastery change
        assert r.status_code == 201 and r.json()["mastery"] == []

    async with app.state.services.db.session() as s:
        rows = (await s.execute(select(Mastery).where(Mastery.user_id == student_id))).scalars()
        stored = {m.section: (m.answers, m.correct) for m in rows}
        assert stored and all(m.course == "sample" for m in
                              (await s.execute(select(Mastery))).scalars())
        assert len((await s.execute(select(QuizAnswer))).scalars().all()) == 4
        weak = await mastery.weakest(s, student_id, "sample", 5)
        assert weak and set(weak) <= set(stored)  # one correct answer is far from mastered
        assert await mastery.weakest(s, student_id, "other course", 5) == []
        assert await mastery.weakest(s, student_id, "sample", 0) == []

    # the student's export carries their answers, mastery and flagged turns (and nobody else's)
    async with app.state.services.db.session() as s, s.begin():
        s.add(FlaggedTurn(session_id="s9", user_id=student_id, course="sample",
                          direction="input", categories=["violence"], text="flagged words"))
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        export = (await client.get("/api/me/export", headers=student)).json()
        assert [a["question"] for a in export["quiz_answers"]] == [0, 1, 2, 1]
        assert {m["section"]: (m["answers"], m["correct"])
                for m in export["mastery"]} == stored
        assert [(f["categories"], f["text"]) for f in export["flagged_turns"]] == [
            (["violence"], "flagged words")]
        bob_export = (await client.get("/api/me/export", headers=other)).json()
        assert (bob_export["quiz_answers"], bob_export["mastery"],
                bob_export["flagged_turns"]) == ([], [], [])

    # the tutor's prompt names the student's weakest sections (none for a student with no answers)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for who, named in ((student, weak[:WEAK_SECTIONS_IN_PROMPT]), (other, [])):
            r = await client.post("/api/ai/chat", json={"message": "Help me revise",
                                                        "course": "sample"}, headers=who)
            assert r.status_code == 200, r.text
            prompt = fake.chats[-1]["messages"][0]["content"]
            if named:
                assert WEAK_NOTE + "".join(f"\n- {name}" for name in named) in prompt
            else:
                assert WEAK_NOTE not in prompt


async def content_ids(app: Any) -> dict[str, tuple[int, str]]:
    """A passage id and its section for two sections of the sample course."""
    async with app.state.services.db.session() as s:
        rows = (await s.execute(select(Content.id, Content.source, Content.heading_path)
                                .where(Content.course == "sample"))).all()
    found: dict[str, tuple[int, str]] = {}
    for r in rows:
        for key in ("Dividing Fractions", "Photosynthesis"):
            if key in r.heading_path and key not in found:
                found[key] = (r.id, section_of(r.source, r.heading_path))
    assert len(found) == 2, found
    return found


async def test_a_class_report_counts_only_what_came_after_joining(fake, jwks, start_server,  # noqa: F811
                                                                  blank_db_url):
    base, app = await start(fake, jwks, start_server, blank_db_url)
    fake.behaviour.structured_reply = quiz_for
    passages = await content_ids(app)
    (fractions, fractions_section), (leaf, leaf_section) = (passages["Dividing Fractions"],
                                                            passages["Photosynthesis"])
    db = app.state.services.db
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        teacher, teacher_id = await sign_in(client, jwks, "teacher@example.com")
        other_teacher, other_id = await sign_in(client, jwks, "other@example.com")
        admin, admin_id = await sign_in(client, jwks, "admin@example.com")
        ada, ada_id = await sign_in(client, jwks, "ada@example.com")
        bob, bob_id = await sign_in(client, jwks, "bob@example.com")
        async with db.session() as s, s.begin():
            for uid, role in ((teacher_id, "teacher"), (other_id, "teacher"), (admin_id, "admin")):
                await queries.set_role(s, uid, role)
        room = (await client.post("/api/classes", json={"name": "5B", "course": "sample"},
                                  headers=teacher)).json()

        # before joining: a turn, voice time and a quiz answer the teacher must never count
        async with db.session() as s, s.begin():
            s.add(Interaction(session_id="s0", user_id=ada_id, course="sample", kind="voice",
                              transcript="before", answer=f"secret [c{leaf}]"))
            s.add(UsageEntry(user_id=ada_id, kind="voice_ms", amount=600_000))
            s.add(FlaggedTurn(session_id="s0", user_id=ada_id, direction="input",
                              categories=["violence"]))
        quiz = await make_quiz(client, ada)
        assert (await client.post(f"/api/ai/quiz/{quiz['id']}/answers", json={"answers": [
            {"question": 2, "choice": 0}]}, headers=ada)).status_code == 201

        for who in (ada, bob):
            r = await client.post("/api/classes/join", json={"code": room["join_code"]},
                                  headers=who)
            assert r.status_code == 201, r.text
        later = now() + timedelta(seconds=1)
        async with db.session() as s, s.begin():
            for i, (kind, answer) in enumerate((
                    ("voice", f"Flip the second fraction [c{fractions}]."),
                    ("text", f"Again: multiply by the reciprocal [c{fractions}][c{fractions}]."),
                    ("voice", f"Leaves make sugar from light [c{leaf}]."),
                    ("text", "I can help with your course."))):
                s.add(Interaction(session_id="s1", user_id=ada_id, course="sample", kind=kind,
                                  transcript=f"question {i}", answer=answer, created_at=later))
            s.add(Interaction(session_id="s2", user_id=bob_id, course="sample", kind="text",
                              transcript="how?", answer=f"Like this [c{fractions}].",
                              created_at=later))
            s.add(Interaction(session_id="s1", user_id=ada_id, kind="note", transcript="note",
                              answer=f"my note [c{leaf}]", created_at=later))
            s.add(UsageEntry(user_id=ada_id, kind="voice_ms", amount=90_000, created_at=later))
            for direction in ("input", "output"):  # moderation's flags, since joining
                s.add(FlaggedTurn(session_id="s1", user_id=ada_id, direction=direction,
                                  categories=["violence"], created_at=later))
        quiz = await make_quiz(client, ada)
        assert (await client.post(f"/api/ai/quiz/{quiz['id']}/answers", json={"answers": [
            {"question": 0, "choice": 1}, {"question": 2, "choice": 0}]},
            headers=ada)).status_code == 201

        r = await client.get(f"/api/classes/{room['id']}/report", headers=teacher)
        assert r.status_code == 200, r.text
        report = r.json()
        assert report["class"] == {"id": room["id"], "name": "5B", "course": "sample"}
        by_id = {st["user_id"]: st for st in report["students"]}
        a, b = by_id[ada_id], by_id[bob_id]
        assert (a["voice_minutes"], a["questions"], a["voice_questions"],
                a["text_questions"]) == (1.5, 4, 2, 2)
        assert a["sections_asked"] == [{"section": fractions_section, "questions": 2},
                                       {"section": leaf_section, "questions": 1}]
        assert (a["flagged_turns"], b["flagged_turns"]) == (2, 0)  # not the one before joining
        answered = {m["section"]: m for m in a["mastery"]["sections"]}
        assert answered and all(m["answers"] <= 2 for m in answered.values())  # not the 1st
        assert sum(m["answers"] for m in answered.values()) >= 2
        assert b["questions"] == 1 and b["mastery"] == {"mean": None, "sections": [],
                                                         "weakest": []}
        totals = report["totals"]
        assert totals["students"] == 2 and totals["questions"] == 5
        assert totals["most_asked_sections"][0] == {"section": fractions_section,
                                                    "questions": 3, "students": 2}
        assert {x["section"] for x in totals["lowest_mastery_sections"]} == set(answered)

        # CSV, by header or by parameter; the same numbers
        for kwargs in ({"headers": teacher | {"Accept": "text/csv"}},
                       {"headers": teacher, "params": {"format": "csv"}}):
            r = await client.get(f"/api/classes/{room['id']}/report", **kwargs)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
            rows = {row["user_id"]: row for row in csv.DictReader(io.StringIO(r.text))}
            assert rows[ada_id]["questions"] == "4" and rows[ada_id]["voice_minutes"] == "1.5"
            assert rows[ada_id]["sections_asked"] == (f"{fractions_section} (2); "
                                                      f"{leaf_section} (1)")
            assert (rows[ada_id]["flagged_turns"], rows[bob_id]["flagged_turns"]) == ("2", "0")
        assert error(await client.get(f"/api/classes/{room['id']}/report",
                                      params={"format": "xml"}, headers=teacher), 400) \
            == "invalid_request"

        # only the class's teacher and admins
        assert (await client.get(f"/api/classes/{room['id']}/report", headers=admin)
                ).status_code == 200
        assert error(await client.get(f"/api/classes/{room['id']}/report",
                                      headers=other_teacher), 404) == "not_found"
        assert error(await client.get("/api/classes/nope/report", headers=teacher),
                     404) == "not_found"
        assert error(await client.get(f"/api/classes/{room['id']}/report", headers=ada),
                     403) == "forbidden"
