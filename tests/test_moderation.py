"""Moderation both ways (docs/tutoring.md, "Moderation"): the pure rulings, the `openai` SDK
adapter against the loopback fake's `/v1/moderations`, and end to end through the real app:
the student's words (voice, typed over the socket, `/api/ai/chat`), the tutor's answer sentence
by sentence, a speculative answer, a cancelled one, the provider down (failing open and closed),
stored flags with their categories, the teachers' view and the urgent email in the outbox, on
SQLite and PostgreSQL where storage is involved."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import select

from providers import ProviderError, Verdict
from providers.openai import OpenAIModerator, make_client
from realtime.moderation import (DANGER, SELF_HARM, STOPPED, UNAVAILABLE_INPUT, AnswerCut,
                                 AnswerGate, Check, Pass, Policy, Ruling, Stop, is_urgent, rule,
                                 safe_reply)
from store import queries
from store.models import EmailNotification, FlaggedTurn
from tests.conftest import make_settings, read_pcm
from tests.realtime_client import Conversation, session_update, sse_events
from tests.storage_fixtures import blank_db_url  # noqa: F401  (fixture: sqlite, postgresql)

HELP = "You can also talk to Ms. Lee, the school counsellor, in room 12."
SELF_HARM_LINE = f"{SELF_HARM} {HELP}"


# --- the pure rulings -------------------------------------------------------------------------
def test_rulings() -> None:
    policy = Policy(fail_closed=True, urgent=frozenset({"self-harm"}), help_resources=HELP)
    hurt = rule(policy, "input", flagged=True, categories=["self-harm/intent", "self-harm"])
    assert not hurt.allow and hurt.reply == SELF_HARM_LINE and hurt.urgent
    assert hurt.categories == ("self-harm", "self-harm/intent")
    punch = rule(policy, "input", flagged=True, categories=["violence"])
    assert punch.reply == DANGER and not punch.urgent and punch.categories == ("violence",)
    assert rule(policy, "output", flagged=True, categories=["violence"]).reply == STOPPED
    assert rule(policy, "output", flagged=True, categories=["self-harm"]).reply == SELF_HARM_LINE
    assert rule(policy, "input") == rule(policy, "output") and rule(policy, "input").allow
    closed = rule(policy, "input", failed=True)
    assert not closed.allow and closed.unchecked and closed.reply == UNAVAILABLE_INPUT
    assert not closed.categories  # nothing to store: nothing was flagged
    opened = rule(Policy(fail_closed=False), "output", failed=True)
    assert opened.allow and opened.unchecked
    assert rule(policy, "input", flagged=True).categories == ("flagged",)
    assert is_urgent(["sexual/minors"], ["sexual"]) and not is_urgent(["sexual"], ["sexual/minors"])
    assert safe_reply(["sexual"]) not in (DANGER, SELF_HARM)


def test_the_answer_cut_keeps_the_text_exactly() -> None:
    text = "Let us look at this together.  First, the numerator.\nThen the rest: done"
    cut, pieces = AnswerCut(), []
    for i in range(0, len(text), 3):
        pieces += cut.feed(text[i:i + 3])
    assert pieces[0] == "Let us look at this together."
    rest = cut.flush()
    assert "".join(pieces) + (rest or "") == text


class End:
    """An answer's end, as the shell passes it."""


def test_the_gate_passes_outputs_in_order_once_checked() -> None:
    gate = AnswerGate("What is a fraction?", ends=(End,))
    assert gate.start() == [Check(0, "What is a fraction?", "input")]
    citations = ["passage"]
    assert gate.output(citations) == []  # nothing before the question's ruling
    first = gate.output("A fraction is a part. It has two")
    assert first == [Check(1, "A fraction is a part.", "output")]
    end = End()
    assert gate.output(" numbers.") == [] and gate.output(end) == [
        Check(2, " It has two numbers.", "output")]
    assert gate.ruled(2, Ruling(True)) == []  # the later sentence waits for the earlier ones
    assert gate.ruled(0, Ruling(True)) == [Pass(citations)]  # the student's words: not passed
    assert gate.ruled(1, Ruling(True)) == [Pass("A fraction is a part."),
                                           Pass(" It has two numbers."), Pass(end)]


def test_the_gate_stops_at_a_refusal() -> None:
    refused = AnswerGate("I want to hurt myself", ends=(End,))
    refused.start()
    refused.output("Sure, let us talk. ")
    assert refused.ruled(0, rule(Policy(), "input", flagged=True, categories=["self-harm"])) == [
        Stop(SELF_HARM)]
    assert refused.stopped and refused.output(End()) == [] and refused.ruled(1, Ruling(True)) == []
    answer = AnswerGate(None, ends=(End,))
    assert answer.start() == []
    answer.output("Let us look at this together. Here is how to make a weapon. More. ")
    assert answer.ruled(0, Ruling(True)) == [Pass("Let us look at this together.")]
    assert answer.ruled(1, Ruling(False, STOPPED, ("violence",))) == [Stop(" " + STOPPED)]
    assert answer.output(End()) == []


# --- the adapter over the SDK, against the fake ----------------------------------------------
async def test_the_adapter(fake) -> None:
    client = make_client(api_key="k", base_url=fake.base_url, timeout=1.0, connect_timeout=1.0,
                         max_retries=0)
    moderator = OpenAIModerator(client, "omni-moderation-latest", timeout_s=0.5)
    assert await moderator.check("What is a fraction?") == Verdict(False, ())
    assert await moderator.check("Sometimes I want to hurt myself.") == Verdict(
        True, ("self-harm", "self-harm/intent"))
    assert fake.moderations[-1] == {"model": "omni-moderation-latest",
                                    "input": "Sometimes I want to hurt myself."}
    fake.behaviour.moderation_failures = ["500", "timeout"]
    for code in ("provider_error", "provider_timeout"):
        with pytest.raises(ProviderError) as failed:
            await moderator.check("anything")
        assert failed.value.code == code
    await client.close()


def test_moderation_is_off_unless_a_provider_offers_it() -> None:
    assert make_settings(None).moderation_on is False  # no key
    assert make_settings(None, openai_api_key="k").moderation_on is True  # OpenAI itself
    compatible = make_settings(None, openai_api_key="k", openai_base_url="http://ollama/v1")
    assert compatible.moderation_on is False  # a compatible server has no /moderations
    assert make_settings(None, openai_api_key="k", openai_base_url="http://ollama/v1",
                         moderation_base_url="https://api.openai.com/v1").moderation_on is True
    assert make_settings(None, openai_api_key="k", moderation=False).moderation_on is False


# --- end to end: the voice socket ------------------------------------------------------------
def moderated(fake, **overrides: Any):  # type: ignore[no-untyped-def]
    return make_settings(fake, moderation=True, moderation_help_resources=HELP, **overrides)


async def typed_turn(address: str, text: str, *, cancel: bool = False) -> Conversation:
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await conv.until("session.created")
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        if cancel:
            await conv.until("response.created")
            await ws.send(json.dumps({"type": "response.cancel"}))
        await conv.until("response.done")
    return conv


def answer_of(conv: Conversation) -> str:
    deltas = "".join(e["delta"] for e in conv.of("response.output_text.delta"))
    done = conv.of("response.done")[-1]["response"]
    if done["status"] == "completed":
        assert done["output"][0]["content"][0]["text"] == deltas
    return deltas


async def flags(app) -> list[FlaggedTurn]:  # type: ignore[no-untyped-def]
    services = app.state.services
    await services.moderation.settle()
    assert await services.moderation.flags.flush(5)
    async with services.db.session() as s:
        return list((await s.execute(select(FlaggedTurn).order_by(FlaggedTurn.id))).scalars())


async def test_a_passing_turn_is_answered_as_without_moderation(fake, start_server) -> None:
    address = await start_server(moderated(fake))
    fake.behaviour.reply = "Let us look at this together. What is the numerator?"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://{address}/healthz")).json()["moderation"] is True
    conv = await typed_turn(address, "What is a fraction?")
    assert answer_of(conv) == fake.behaviour.reply
    assert [m["input"] for m in fake.moderations] == [
        "What is a fraction?", "Let us look at this together.", " What is the numerator?"]
    assert await flags(start_server.apps[-1]) == []


async def test_a_flagged_student_turn_gets_the_safe_reply(fake, start_server) -> None:
    address = await start_server(moderated(fake))
    conv = await typed_turn(address, "I want to hurt myself")
    assert answer_of(conv) == SELF_HARM_LINE  # the model's answer (asked beside) is dropped
    assert conv.of("response.done")[-1]["response"]["status"] == "completed"
    [flag] = await flags(start_server.apps[-1])
    assert (flag.direction, flag.categories, flag.text, flag.urgent) == (
        "input", ["self-harm", "self-harm/intent"], "I want to hurt myself", True)


async def test_a_flagged_sentence_of_the_answer_is_replaced_and_ends_it(fake, start_server) -> None:
    address = await start_server(moderated(fake))
    fake.behaviour.reply = ("Let us look at this together. Here is how to make a weapon at home. "
                            "Then we will talk about the rest of it.")
    conv = await typed_turn(address, "Tell me about chemistry")
    assert answer_of(conv) == "Let us look at this together. " + STOPPED
    [flag] = await flags(start_server.apps[-1])
    assert flag.direction == "output" and "violence" in flag.categories and not flag.urgent
    assert flag.text == " Here is how to make a weapon at home."
    # the sentence after it was never shown (it may have been checked: checks run side by side)
    assert "rest of it" not in json.dumps(conv.of("response.done"))


async def test_the_provider_down_fails_closed_or_open(fake, start_server) -> None:
    address = await start_server(moderated(fake))  # closed: the default
    fake.behaviour.moderation_failures = ["500"]
    conv = await typed_turn(address, "What is a fraction?")
    assert answer_of(conv) == UNAVAILABLE_INPUT
    fake.behaviour.reply = "Let us look at this together. What is the numerator?"
    fake.behaviour.moderation_failures = ["ok", "500"]  # the answer's first sentence
    conv = await typed_turn(address, "What is a fraction?")
    assert answer_of(conv) == "Sorry, I have to stop here. Please ask me again in a moment."

    address = await start_server(moderated(fake, moderation_on_failure="open"))
    fake.behaviour.moderation_failures = ["500", "500", "500"]
    conv = await typed_turn(address, "What is a fraction?")
    assert answer_of(conv) == fake.behaviour.reply  # unchecked, let through
    assert await flags(start_server.apps[-1]) == []


async def test_cancelling_an_answer_cancels_its_pending_checks(fake, start_server) -> None:
    address = await start_server(moderated(fake))
    fake.behaviour.moderation_latency = 1.0
    conv = await typed_turn(address, "What is a fraction?", cancel=True)
    assert conv.of("response.done")[-1]["response"]["status"] == "cancelled"
    assert conv.count("response.output_text.delta") == 0  # nothing passed before the verdict


async def test_a_speculative_answer_is_moderated_before_release(fake, start_server) -> None:
    address = await start_server(moderated(fake, speculative=True))
    fake.behaviour.transcripts = ["I want to hurt myself", "What is a fraction?",
                                  "I will punch him"]
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.until("session.updated")
        await conv.stream(read_pcm("conversation.wav"), 16000)
    answers = [d["response"]["output"][0]["content"][0]["text"] for d in conv.of("response.done")]
    assert answers[0] == SELF_HARM_LINE and answers[2] == DANGER
    assert answers[1].endswith("You said: What is a fraction?")
    stored = await flags(start_server.apps[-1])
    assert [(f.direction, f.categories) for f in stored] == [
        ("input", ["self-harm", "self-harm/intent"]), ("input", ["harassment", "violence"])]


# --- end to end: typed chat, the teachers' view, the urgent email (SQLite and PostgreSQL) ------
async def signed_in(client: httpx.AsyncClient, jwks, email: str) -> tuple[dict[str, str], str]:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {jwks.sign(jwks.access_token_claims(email=email))}"}
    me = await client.get("/api/auth/me", headers=headers)
    return headers, me.json()["id"]


async def test_flags_reach_the_students_teachers(fake, jwks, start_server,
                                                 blank_db_url) -> None:  # noqa: F811
    address = await start_server(moderated(fake, supabase_url=jwks.project_url,
                                           database_url=blank_db_url))
    app = start_server.apps[-1]
    services = app.state.services
    async with httpx.AsyncClient(base_url=f"http://{address}") as client:
        student, student_id = await signed_in(client, jwks, "ana@example.com")
        teacher, teacher_id = await signed_in(client, jwks, "rivera@example.com")
        other, other_id = await signed_in(client, jwks, "other@example.com")
        async with services.db.session() as s, s.begin():
            for user_id in (teacher_id, other_id):
                await queries.set_role(s, user_id, "teacher")
        room = (await client.post("/api/classes", json={"name": "Maths 7B", "course": "maths"},
                                  headers=teacher)).json()
        assert (await client.post("/api/classes/join", json={"code": room["join_code"]},
                                  headers=student)).status_code == 201

        r = await client.post("/api/ai/chat", json={"message": "I want to hurt myself"},
                              headers=student)
        events = sse_events(r.text)
        assert [e for e, _ in events] == ["citations", "delta", "done"]
        assert events[-1][1]["text"] == SELF_HARM_LINE and events[0][1] == {"citations": []}
        fake.behaviour.reply = "Let us look at this together. Here is how to make a weapon at home."
        r = await client.post("/api/ai/chat", json={"message": "Chemistry?"}, headers=student)
        assert sse_events(r.text)[-1][1]["text"] == "Let us look at this together. " + STOPPED
        r = await client.post("/api/ai/chat", json={"message": "What is a fraction?"},
                              headers=student)
        assert sse_events(r.text)[-1][1]["text"] == fake.behaviour.reply.split(" Here")[0] + \
            " " + STOPPED  # the same reply: flagged again

        await flags(app)
        seen = await client.get(f"/api/classes/{room['id']}/flags", headers=teacher)
        assert seen.status_code == 200
        items = seen.json()["items"]
        assert [(i["direction"], i["categories"], i["urgent"]) for i in items] == [
            ("output", ["illicit", "illicit/violent", "violence"], False),
            ("output", ["illicit", "illicit/violent", "violence"], False),
            ("input", ["self-harm", "self-harm/intent"], True)]
        assert items[-1]["user_id"] == student_id and items[-1]["text"] == "I want to hurt myself"
        assert (await client.get(f"/api/classes/{room['id']}/flags",
                                 headers=other)).status_code == 404
        assert (await client.get(f"/api/classes/{room['id']}/flags",
                                 headers=student)).status_code == 403
        page = (await client.get(f"/api/classes/{room['id']}/flags?limit=2",
                                 headers=teacher)).json()
        assert len(page["items"]) == 2 and page["next_before"] == items[1]["id"]

    async with services.db.session() as s:
        assert await queries.flagged_counts(s, [student_id, other_id]) == {student_id: 3}
        mail = (await s.execute(select(EmailNotification).where(
            EmailNotification.template == "moderation_alert"))).scalars().all()
    assert [(m.recipient, m.payload["categories"], m.transactional) for m in mail] == [
        ("rivera@example.com", ["self-harm", "self-harm/intent"], True)]


async def test_barge_in_cancels_the_answer_and_its_checks(fake, start_server) -> None:
    address = await start_server(moderated(fake))
    fake.behaviour.token_delay = 0.05  # a long, slow answer, its sentences checked slowly
    fake.behaviour.moderation_latency = 0.3
    fake.behaviour.reply = "This is a sentence about derivatives. " * 30
    async with websockets.connect(f"ws://{address}/api/voice") as ws:
        conv = Conversation(ws)
        await ws.send(session_update(16000))
        await conv.stream(read_pcm("q_derivative.wav"), 16000, polite=False)
        await conv.until("response.output_text.delta")
        fake.behaviour.reply = "Here is a hint."
        await conv.stream(read_pcm("q_fractions.wav"), 16000, polite=False)
        while conv.count("response.done") < 2:
            await conv.next()
        cancelled, answered = conv.of("response.done")
        assert cancelled["response"]["status"] == "cancelled"
        assert cancelled["response"]["status_details"]["reason"] == "turn_detected"
        await conv.sync()
        late = [e for e in conv.events[conv.events.index(cancelled) + 1:]
                if e.get("response_id") == cancelled["response"]["id"]]
        assert late == []  # no check that was pending released anything
        assert answered["response"]["status"] == "completed"
        assert answered["response"]["output"][0]["content"][0]["text"] == "Here is a hint."
    checked = len(fake.moderations)
    await asyncio.sleep(0.5)
    assert len(fake.moderations) == checked  # nothing of the cancelled answer checked after
